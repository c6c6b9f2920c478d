"""Build one run's model, balancer and trainer, once, and check that they fit together.

Everything that can fail for a reason no schema sees (an engine mode the architecture cannot
serve, a ``[finetune]`` policy the model cannot take, a balancer's weights naming an unknown
task) fails here, when the run is built from its prepared data and before its directory is
written: the "nothing half-written" promise lives in this order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from polytask.balance.base import Balancer, build_balancer
from polytask.config import RunConfig, register_check
from polytask.data.prepare import PreparedData
from polytask.data.spec import InputSpec
from polytask.losses import BatchLoss
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task
from polytask.train.callbacks.tensorboard import TensorBoardLogger
from polytask.train.trainer import Callback, FitResult, Trainer, check_trainable
from polytask.train.tuning import Tuning, tune, tune_training_run


@register_check
def check_balancer(cfg: RunConfig) -> None:
    """What only the balancer knows of the declared tasks (weights naming an unknown task,
    a preference of the wrong length): its factory checks that; the balancer is discarded."""
    build_balancer(cfg.balancer.name, cfg.balancer.params(), cfg.task_objects())


@dataclass
class BuiltRun:
    """A model and its balancer, checked against each other, with the optimiser groups and
    callbacks its ``[finetune]`` policy asks for (none for a plain run)."""

    model: MultiTaskModel
    balancer: Balancer
    tasks: list[Task]
    tuning: Tuning | None = None
    param_groups: list[dict[str, Any]] | None = None
    callbacks: list[Callback] = field(default_factory=list)


def build_run(
    cfg: RunConfig,
    spec: InputSpec,
    tasks: list[Task],
    *,
    model: MultiTaskModel | None = None,
    architecture: str | None = None,
    fixed_tasks: Iterable[str] = (),
) -> BuiltRun:
    """Build the balancer for ``tasks`` and the model (or take ``model``, a fine-tuned one,
    whose ``architecture`` is named) and check them; the ``[finetune]`` policy is applied to a
    given model always, to a new one when the run sets it (a pretrained encoder)."""
    balancer = build_balancer(cfg.balancer.name, cfg.balancer.params(), tasks)
    tuning: Tuning | None
    if model is None:
        model = build_model(tasks, spec, cfg.model, seed=cfg.seed)
        arch = cfg.model.architecture.name
        tuning = tune_training_run(cfg.finetune, model, tasks, arch, balancer)
    else:
        arch = architecture or cfg.model.architecture.name
        tuning = tune(cfg.finetune, model, tasks, arch, balancer, fixed_tasks)
    balancer.check_model(model)
    # Here, not only in the trainer: before the run directory is written.
    check_trainable(model, cfg.train)
    if tuning is None:
        return BuiltRun(model, balancer, tasks)
    return BuiltRun(model, balancer, tasks, tuning, tuning.param_groups, list(tuning.callbacks))


def train_built(
    cfg: RunConfig,
    built: BuiltRun,
    data: PreparedData,
    run_dir: Path | None,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    label: str = "multi-task",
    loss_fn: BatchLoss | None = None,
) -> FitResult:
    """Train a built run on its tasks' training sources, validating on their validation rows.

    With ``train.tensorboard`` and a ``run_dir``, the epochs are also logged to
    ``run_dir/tensorboard/`` (without a run directory there is nowhere to write)."""
    names = [t.name for t in built.tasks]
    logger = None
    every = [*callbacks, *built.callbacks]
    if cfg.train.tensorboard and run_dir is not None:
        # First, so an epoch is logged even if a later callback stops the run.
        logger = TensorBoardLogger(run_dir / "tensorboard")
        every = [logger, *every]
    trainer = Trainer(
        built.model,
        built.tasks,
        built.balancer,
        cfg.train,
        seed=cfg.seed,
        callbacks=every,
        console=console,
        label=label,
        quiet=quiet,
        schedule=cfg.schedule,
        loss_fn=loss_fn,
        param_groups=built.param_groups,
    )
    # Decoded batches land in page-locked memory when they go to a GPU (an asynchronous copy).
    pinned = trainer.device.type == "cuda"
    train = data.training_for(names, cfg.sampling, pin_memory=pinned)
    try:
        return trainer.fit(train, data.val.subset_tasks(names), run_dir, resume=resume)
    finally:
        if logger is not None:
            logger.close()


def train_model(
    cfg: RunConfig,
    data: PreparedData,
    tasks: list[Task],
    run_dir: Path | None,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    label: str = "multi-task",
    loss_fn: BatchLoss | None = None,
) -> tuple[MultiTaskModel, FitResult]:
    """Build and train one new model on ``tasks`` (all of them, or one for a baseline)."""
    built = build_run(cfg, data.input_spec, tasks)
    fit = train_built(
        cfg,
        built,
        data,
        run_dir,
        resume=resume,
        quiet=quiet,
        console=console,
        callbacks=callbacks,
        label=label,
        loss_fn=loss_fn,
    )
    return built.model, fit
