"""The ``[train]`` section (budget, optimiser, bookkeeping) and ``[finetune]`` (what a run
freezes, per-group learning rates, gradual unfreezing), with the checks that need the tasks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from polytask.config_errors import MAX_LAYERS, BatchSize, Epochs, Schema, Steps
from polytask.devices import DEVICE_PATTERN, Precision
from polytask.errors import ConfigError
from polytask.tasks import Task


class TrainConfig(Schema):
    """Optimisation budget and bookkeeping."""

    epochs: Epochs = Field(default=20, description="passes over the training data at most")
    batch_size: BatchSize = Field(
        default=256, description="rows per training step (the global batch under torchrun)"
    )
    eval_batch_size: BatchSize = Field(
        default=8192, description="rows per forward pass when evaluating and predicting"
    )
    lr: float = Field(
        default=1e-3, gt=0.0, description="AdamW learning rate (peak, with a schedule)"
    )
    weight_decay: float = Field(default=1e-4, ge=0.0, description="AdamW decoupled weight decay")
    scheduler: Literal["none", "cosine", "linear"] = Field(
        default="cosine", description="learning-rate schedule over the run's steps"
    )
    warmup: float = Field(default=0.0, ge=0.0, lt=1.0, description="fraction of steps")
    grad_clip: float | None = Field(
        default=1.0, gt=0.0, description="clip the global gradient norm to this (None: no clipping)"
    )
    patience: Epochs | None = Field(
        default=5,
        description="stop after this many epochs without improvement of the criterion "
        "(None: never)",
    )
    min_delta: float = Field(
        default=0.0,
        ge=0.0,
        description="smallest change of the criterion that counts as improvement",
    )
    criterion: str = Field(
        default="mean_relative",
        description="what early stopping watches: mean_relative (mean relative change of "
        "the primary metrics) or TASK.METRIC",
    )
    log_format: Literal["jsonl", "csv"] = Field(
        default="jsonl", description="format of the per-epoch metrics log in the run directory"
    )
    progress: bool = Field(
        default=True, description="print what was read, progress of long steps and a line per epoch"
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="CPU threads torch computes with (torch.set_num_threads); default: torch's",
    )
    checkpoint_every: Steps | None = Field(
        default=None,
        description="also checkpoint every N steps, so a resume continues mid-epoch",
    )
    tensorboard: bool = Field(
        default=False,
        description="also write the per-epoch log as TensorBoard scalars to "
        "<run dir>/tensorboard/ (needs the tensorboard extra and a run directory)",
    )
    nonfinite: Literal["stop", "skip"] = Field(
        default="stop",
        description="a step whose loss or gradient is NaN/inf: stop (an error naming the step "
        "and the tasks) or skip it (no optimiser step; counted as skipped_steps in the log)",
    )
    max_skipped: Steps | None = Field(
        default=10,
        description="nonfinite = 'skip': stop anyway once more steps than this were skipped "
        "in the run (None: no bound)",
    )
    device: str = Field(
        default="auto",
        pattern=DEVICE_PATTERN,
        description="auto (a GPU when one is present, else the CPU), cpu, cuda, cuda:N or mps",
    )
    precision: Precision = Field(
        default="32",
        description="32, or mixed precision through torch.autocast: bf16-mixed, or 16-mixed "
        "with dynamic loss scaling (balancers always see unscaled losses and gradients)",
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the model's forward pass (rejected, naming the "
        "combination, with a balancer that runs the forward pass itself)",
    )
    diagnostics: bool = Field(
        default=True,
        description="loss-level balancers: measure the tasks' gradients on each epoch's first "
        "step (K extra backward passes) for the log's norms, cosines and conflicts",
    )
    nonfinite_check_every: Steps | None = Field(
        default=None,
        description="nonfinite = 'stop': test the steps' losses and gradient norms for NaN/inf "
        "every N steps (one host synchronisation each time; always before a checkpoint and "
        "the epoch's end, and the error still names the first bad step); default: every step "
        "on the CPU, where the test costs no wait, every 32 on an accelerator; 'skip' tests "
        "every step",
    )


class FinetuneConfig(Schema):
    """``[finetune]``: how ``polytask finetune BASE CONFIG`` continues from a trained model (and
    how a run freezes a pretrained encoder): what is frozen, learning rates per group, gradual
    unfreezing (:mod:`polytask.studies.finetune`)."""

    freeze: Literal["encoder", "layers", "none"] = Field(
        default="encoder",
        description="encoder: every shared parameter; layers: the first `layers` shared layers; "
        "none: everything trains",
    )
    layers: int = Field(
        default=0, ge=0, le=MAX_LAYERS, description="with freeze = 'layers': how many"
    )
    shared_lr_scale: float = Field(
        default=1.0, gt=0.0, description="learning rate of the shared parameters, x train.lr"
    )
    head_lr_scale: float = Field(
        default=1.0, gt=0.0, description="learning rate of the task-specific parts, x train.lr"
    )
    layer_lr_decay: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="discriminative fine-tuning (Howard & Ruder, ULMFiT, 2018): the top shared "
        "layer learns at shared_lr_scale, each layer below at layer_lr_decay x the one above "
        "(ULMFiT: 1/2.6 = 0.38); 1: one rate for the whole encoder",
    )
    unfreeze: Literal["none", "gradual"] = Field(
        default="none",
        description="gradual: unfreeze one frozen layer every `unfreeze_every` epochs, from the "
        "top down (Howard & Ruder, ULMFiT, 2018)",
    )
    unfreeze_every: Epochs = Field(
        default=1, description="gradual: epochs between unfreezing one more layer"
    )
    keep_tasks: bool = Field(
        default=True,
        description="keep the base model's tasks that this run does not train (heads frozen)",
    )
    reference_data: str | None = Field(
        default=None,
        description="a table labelled for the base model's tasks, on which they are re-measured "
        "before and after fine-tuning (default: the run's own test split, if it has the labels)",
    )


def check_criterion(criterion: str, tasks: list[Task]) -> None:
    if criterion in ("mean_relative", "val_loss"):
        return
    task_name, _, metric = criterion.partition(".")
    by_name = {t.name: t for t in tasks}
    if task_name in by_name and metric in by_name[task_name].metric_names:
        return
    choices = ["mean_relative", "val_loss"] + [
        f"{t.name}.{m}" for t in tasks for m in t.metric_names
    ]
    raise ConfigError(
        f"config error: train.criterion: {criterion!r} is not valid; "
        f"valid choices: {', '.join(choices)}"
    )
