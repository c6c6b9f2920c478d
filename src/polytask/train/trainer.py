"""The training loop: one step of joint multi-task training reads top to bottom in
:meth:`Trainer._step`::

    lr -> outputs = model(inputs) -> masked per-task losses -> balancer.backward -> clip -> step

Around it the trainer runs the epochs (task scheduling, source sampling, validation, the
criterion) and calls named callbacks (:mod:`polytask.train.callbacks`) for everything else:
gradient diagnostics, early stopping, checkpoints (resumable to identical weights), the metrics
log, the progress display, and the user's callbacks. It reads only a balancer's declared
capabilities (``changes_forward``), never writes into a balancer and never looks at a
component's name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from rich.console import Console
from torch import nn

from polytask.balance.base import BackwardResult, Balancer
from polytask.data.sources import SourceSet, TrainingData
from polytask.data.tensors import Batch, TensorData
from polytask.evaluate.evaluation import evaluate_data
from polytask.losses import BatchLoss, LabelLoss
from polytask.models.model import MultiTaskModel
from polytask.state_io import rng_state, set_rng_state
from polytask.tasks import Task
from polytask.train.callbacks.base import TrainerCallback
from polytask.train.callbacks.checkpoint import Checkpointing
from polytask.train.callbacks.diagnostics import GradientDiagnostics
from polytask.train.callbacks.early_stopping import EarlyStopping
from polytask.train.callbacks.metrics_log import MetricsLog
from polytask.train.callbacks.metrics_log import flatten_row as _flatten_row
from polytask.train.callbacks.progress import ProgressDisplay
from polytask.train.config import TrainConfig
from polytask.train.criterion import Criterion
from polytask.train.record import EpochRecord, EpochStats
from polytask.train.schedule import lr_factor
from polytask.train.task_schedule import ScheduleConfig, TaskScheduler

__all__ = [
    "Callback",
    "EpochRecord",
    "FitResult",
    "StepHook",
    "Trainer",
    "TrainerCallback",
    "_flatten_row",
]


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`; the model holds the best epoch's weights."""

    best_epoch: int
    best_criterion: float
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False


class Callback(Protocol):
    """Hook called after each epoch (after checkpoints are written).

    A callback may set ``trainer.stop_requested = True`` to end training after this epoch.
    (The fuller protocol, with hooks around each step, is :class:`TrainerCallback`.)
    """

    def __call__(self, trainer: Trainer, record: EpochRecord) -> None: ...


@runtime_checkable
class StepHook(Protocol):
    """A callback that also looks at each training batch before the step is taken (after the
    step's learning rate is set), e.g. to measure task affinity. It must leave the model, the
    optimiser and the random number generators as it found them, so that measuring never
    changes the run."""

    def __call__(self, trainer: Trainer, record: EpochRecord) -> None: ...

    def before_step(self, trainer: Trainer, batch: Batch) -> None: ...


class Trainer:
    """Jointly trains ``model`` on ``tasks`` with AdamW, combining losses with ``balancer``."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: list[Task],
        balancer: Balancer,
        config: TrainConfig,
        *,
        seed: int = 0,
        callbacks: Sequence[Callback | TrainerCallback] = (),
        console: Console | None = None,
        label: str = "multi-task",
        quiet: bool = False,
        schedule: ScheduleConfig | None = None,
        loss_fn: BatchLoss | None = None,
        param_groups: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """``loss_fn`` replaces the per-task label losses (distillation mixes in a teacher's
        outputs); ``param_groups`` replaces the single group of every trainable parameter:
        each a dict with ``params`` and an optional ``lr_scale`` multiplying the learning rate
        (fine-tuning's per-group rates). A parameter may sit in a group while frozen
        (``requires_grad`` false): it gets no gradient, so AdamW leaves it alone until it is
        unfrozen."""
        self.model = model
        self.tasks = tasks
        self.balancer = balancer
        balancer.check_model(model)
        self.config = config
        self.seed = seed
        self.callbacks = list(callbacks)
        self.console = console or Console(stderr=True)
        self.label = label
        self.quiet = quiet
        self.loss_fn: BatchLoss = loss_fn if loss_fn is not None else LabelLoss(tasks)
        self.criterion = Criterion(config.criterion, tasks)
        groups: list[dict[str, Any]] = (
            [dict(g) for g in param_groups]
            if param_groups is not None
            else [{"params": [p for p in model.parameters() if p.requires_grad]}]
        )
        learned = [p for p in balancer.parameters() if p.requires_grad]
        if learned:
            # A balancer's own parameters (e.g. log-variances) are not weights to shrink.
            groups.append({"params": learned, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        #: Fraction of the training steps done before the current step (schedules read it).
        self.progress = 0.0
        self.epoch = 0
        self.reference: dict[str, dict[str, float]] | None = None
        self.history: list[EpochRecord] = []
        self.stop_requested = False
        self.scheduler = TaskScheduler([t.name for t in tasks], schedule or ScheduleConfig())
        self.diagnostics = GradientDiagnostics([t.name for t in tasks])
        self.early_stopping = EarlyStopping(config.patience, config.min_delta)
        #: The callbacks in the order their hooks run (:meth:`fit` adds the run directory's).
        self.hooks = self._hooks()
        #: Steps of the current epoch done (during a step: those before it), and its length.
        self.step_in_epoch = 0
        self.steps_in_epoch = 0
        #: The running sums of the epoch in progress (None between epochs).
        self.epoch_stats: EpochStats | None = None
        #: Where an interrupted epoch stopped (set by load_state, consumed by the epoch).
        self._resume_point: dict[str, Any] | None = None
        #: How the epoch in progress started, for mid-epoch checkpoints.
        self._epoch_start: dict[str, Any] | None = None

    def _hooks(self, *run_files: TrainerCallback) -> list[TrainerCallback]:
        """The trainer's own callbacks (with ``run_files``: the run directory's writers), then
        the user's."""
        own = [self.diagnostics, self.early_stopping, *run_files, ProgressDisplay()]
        users = [c if isinstance(c, TrainerCallback) else _Epochly(c, self) for c in self.callbacks]
        return own + users

    @property
    def best_epoch(self) -> int:
        return self.early_stopping.best_epoch

    @property
    def best_criterion(self) -> float:
        return self.early_stopping.best_criterion

    # -- the loop --------------------------------------------------------------------------
    def fit(
        self,
        train: TensorData | TrainingData,
        val: TensorData,
        run_dir: Path | None = None,
        *,
        resume: bool = False,
    ) -> FitResult:
        """Train until the epoch budget or early stopping; leave the best weights in the model.

        ``train`` is one table or a :class:`SourceSet` of several sources drawn by its sampler.
        With ``run_dir``, checkpoints go to ``run_dir/checkpoints/{last,best}`` (also every
        ``checkpoint_every`` steps, with the position in the epoch) and the metrics log to
        ``run_dir/metrics.{jsonl,csv}``; ``resume`` continues from the last checkpoint, in the
        middle of an epoch if that is where it was written.
        """
        cfg = self.config
        sources = SourceSet.single(train) if isinstance(train, TensorData) else train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        checkpoints = None
        self.hooks = self._hooks()
        if run_dir is not None:
            checkpoints = Checkpointing(run_dir, cfg.checkpoint_every, self.early_stopping)
            self.hooks = self._hooks(checkpoints, MetricsLog(run_dir, cfg.log_format))
        if resume:
            if checkpoints is None:
                raise ValueError("resume needs the run directory holding the checkpoints")
            checkpoints.restore(self)
        else:
            torch.manual_seed(self.seed)  # dropout draws from the global RNG
        total_steps = sum(sources.steps(cfg.batch_size, e, cfg.epochs) for e in range(cfg.epochs))
        while (
            self.epoch < cfg.epochs
            and not self.early_stopping.exhausted
            and not self.stop_requested
        ):
            started = time.perf_counter()
            stats, probs = self._train_epoch(sources, total_steps)
            train_loss, weights = stats.summary()
            self.balancer.end_epoch(train_loss)
            val_loss, val_metrics = evaluate_data(self.model, self.tasks, val, cfg.eval_batch_size)
            schedule = self.scheduler.probabilities() if self.scheduler.active else {}
            self.scheduler.end_epoch(val_loss)
            self.epoch += 1
            if self.reference is None:
                self.reference = val_metrics
            record = EpochRecord(
                epoch=self.epoch,
                lr=self.optimizer.param_groups[0]["lr"],
                train_loss=train_loss,
                val_loss=val_loss,
                val_metrics=val_metrics,
                criterion=self.criterion(val_loss, val_metrics, self.reference),
                weights=weights,
                examples=stats.seen,
                seconds=round(time.perf_counter() - started, 3),
                sources=stats.source_rows,
                sampling=dict(zip(sources.names, probs, strict=True)),
                schedule=schedule,
                scheduled_steps=stats.scheduled if schedule else {},
            )
            self.history.append(record)
            for hook in self.hooks:  # diagnostics and early stopping complete the record first
                hook.on_epoch_end(self, record)
        for hook in self.hooks:
            hook.on_fit_end(self)  # early stopping loads the best weights
        stopping = self.early_stopping
        return FitResult(
            stopping.best_epoch, stopping.best_criterion, list(self.history), stopping.exhausted
        )

    def _train_epoch(
        self, sources: TrainingData, total_steps: int
    ) -> tuple[EpochStats, list[float]]:
        cfg = self.config
        self.model.train()
        stats = EpochStats([t.name for t in self.tasks], sources.names)
        skip, point, self._resume_point = 0, self._resume_point, None
        if point is not None:
            # Rewind the shuffling generator, sampler and scheduler to the epoch's start and
            # replay its draws up to where the checkpoint was written: the rest of the epoch
            # then draws exactly what the uninterrupted run drew.
            self.generator.set_state(point["start"]["generator"])
            sources.load_state(point["start"]["sampler"])
            self.scheduler.load_state(point["start"]["scheduler"])
            stats.load_state(point["stats"])
            skip = int(point["step_in_epoch"])
        self._epoch_start = {
            "generator": self.generator.get_state(),
            "sampler": sources.state(),
            "scheduler": self.scheduler.state(),
        }
        self.epoch_stats = stats
        self.steps_in_epoch = n_steps = sources.steps(cfg.batch_size, self.epoch, cfg.epochs)
        plan = self.scheduler.plan(n_steps, self.generator)
        allowed = [sources.sources_for(p) for p in plan] if plan is not None else None
        draws = sources.epoch_batches(
            cfg.batch_size, self.epoch, cfg.epochs, self.generator, allowed
        )
        probs = sources.probabilities(self.epoch, cfg.epochs)
        for hook in self.hooks:
            hook.on_epoch_start(self)
            if point is not None:
                hook.load_epoch_state(point["stats"])
        # Clipping bounds the network's step; a balancer's own parameters (log-variances,
        # GradNorm weights) follow their own objective and are not clipped with it.
        # (Parameters frozen now may be unfrozen by a callback later: clipping skips any
        # parameter without a gradient.)
        own = {id(p) for p in self.balancer.parameters()}
        model_params = [
            p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in own
        ]
        try:
            for i, drawn in enumerate(draws):
                if i < skip:
                    continue
                self.step_in_epoch = i
                for src, count in drawn.counts.items():
                    stats.source_rows[src] += count
                chosen = plan[drawn.step] if plan is not None else None
                for name in chosen or ():
                    stats.scheduled[name] += 1
                self._step(drawn.batch, chosen, stats, model_params, total_steps)
        finally:
            for hook in self.hooks:
                hook.on_steps_end(self)
        self._epoch_start, self.epoch_stats, self.step_in_epoch = None, None, 0
        return stats, probs

    # -- the step --------------------------------------------------------------------------
    def _step(
        self,
        batch: Batch,
        chosen: list[str] | None,
        stats: EpochStats,
        model_params: list[nn.Parameter],
        total_steps: int,
    ) -> None:
        """One optimiser step on ``batch``, training the tasks in ``chosen`` (None: all)."""
        cfg = self.config
        factor = lr_factor(self.step, total_steps, cfg.scheduler, cfg.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor * group.get("lr_scale", 1.0)
        self.progress = self.step / max(total_steps, 1)
        for hook in self.hooks:
            hook.before_step(self, batch)
        if self.balancer.changes_forward:  # e.g. per-task gradient hooks, preference sampling
            outputs = self.balancer.forward(self.model, batch.inputs)
        else:
            outputs = self.model(batch.inputs)
        # Per-task losses over the rows labelled for each task; a task without one is absent.
        losses = self.loss_fn(outputs, batch, self.progress)
        if chosen is not None:  # task scheduling: only the step's tasks train
            losses = {k: v for k, v in losses.items() if k in chosen}
        self.optimizer.zero_grad(set_to_none=True)
        result: BackwardResult | None = None
        if losses:
            for hook in self.hooks:
                hook.before_backward(self, losses)
            result = self.balancer.backward(losses, self.model)
            penalty = self.model.regularizer()
            if penalty is not None:
                # A penalty on the parameters (soft sharing's coupling) is no task's loss: it
                # joins the gradient unweighted, outside the balancer.
                penalty.backward()  # type: ignore[no-untyped-call]
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model_params, cfg.grad_clip)
            self.optimizer.step()
            stats.add_step(losses, result.weights, batch.masks)
        self.step += 1
        self.step_in_epoch += 1
        for hook in self.hooks:
            hook.after_step(self, losses, result)

    # -- checkpointed state ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (``checkpoints/last``): with a position in the epoch
        (``partial``) when written mid-epoch."""
        counters: dict[str, Any] = {"epoch": self.epoch, "step": self.step}
        for hook in self.hooks:
            counters.update(hook.state())
        counters.update(reference=self.reference, history=[asdict(r) for r in self.history])
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balancer": self.balancer.state_dict(),
            "rng": rng_state(self.generator),
            "scheduler": self.scheduler.state(),
            "trainer": counters,
        }
        if self._epoch_start is not None and self.epoch_stats is not None:
            sums = self.epoch_stats.state()
            for hook in self.hooks:
                sums.update(hook.epoch_state())
            state["partial"] = {
                "start": self._epoch_start,
                "step_in_epoch": self.step_in_epoch,
                "stats": sums,
            }
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned, so training continues exactly."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        set_rng_state(state["rng"], self.generator)
        t = state["trainer"]
        self.epoch, self.step = int(t["epoch"]), int(t["step"])
        self.reference = t["reference"]
        self.history = [EpochRecord(**r) for r in t["history"]]
        for hook in self.hooks:
            hook.load_state(t)
        self.scheduler.load_state(state["scheduler"])
        self._resume_point = state.get("partial")


class _Epochly(TrainerCallback):
    """A :class:`Callback` (and :class:`StepHook`) called through the named hooks."""

    def __init__(self, callback: Callback, trainer: Trainer) -> None:
        self.callback = callback
        self.trainer = trainer
        self.step_hook = callback if isinstance(callback, StepHook) else None

    def before_step(self, trainer: object, batch: Batch) -> None:
        if self.step_hook is not None:
            self.step_hook.before_step(self.trainer, batch)

    def on_epoch_end(self, trainer: object, record: EpochRecord) -> None:
        self.callback(self.trainer, record)
