"""The training loop: one step of joint multi-task training reads top to bottom in
:meth:`Trainer._step`::

    lr -> outputs = model(inputs) -> masked per-task losses -> balancer.backward -> clip
       -> finite? (losses and gradient norm: one check) -> step

Around it the trainer runs the epochs (task scheduling, source sampling, validation, the
criterion) and calls named callbacks (:mod:`polytask.train.callbacks`) for everything else:
gradient diagnostics, early stopping, checkpoints (resumable to identical weights), the metrics
log, the progress display, and the user's callbacks. It reads only a balancer's declared
capabilities (``changes_forward``), never writes into a balancer (but for putting its own
state back when a step is skipped) and never looks at a component's name.

A non-finite loss, gradient or weight stops training with one line naming the epoch, the step
and the tasks (``train.nonfinite = "skip"`` skips such steps instead, up to
``train.max_skipped``); an epoch that takes no optimiser step is an error; a checkpoint that
does not fit the run is rejected, naming the first difference, before anything is restored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from rich.console import Console
from torch import Tensor, nn

from polytask.balance.base import BackwardResult, Balancer
from polytask.console import make_console
from polytask.data.sources import SourceSet, TrainingData
from polytask.data.tensors import Batch, TensorData
from polytask.devices import (
    autocast,
    check_precision,
    compiled,
    grad_scaler,
    resolve_device,
    to_cpu,
    to_device,
)
from polytask.distributed import collective, global_batchnorm
from polytask.errors import ConfigError, PolytaskError
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
from polytask.train.nonfinite import (
    ADVICE,
    NonFiniteGuard,
    StepSnapshot,
    TrainingDiverged,
    nonfinite_losses,
    nonfinite_tensor,
    total,
)
from polytask.train.optimizer import StepFusedAdamW
from polytask.train.parallel import (
    average_batchnorm_statistics,
    global_losses,
    share_batch,
    sum_gradients,
)
from polytask.train.record import EpochRecord, EpochStats
from polytask.train.schedule import lr_factor
from polytask.train.state_check import (
    CheckpointMismatch,
    check_counters,
    check_extra_state,
    check_optimizer,
    check_scaler,
    check_tensors,
    match,
)
from polytask.train.task_schedule import ScheduleConfig, TaskScheduler

__all__ = [
    "Callback",
    "EpochRecord",
    "FitResult",
    "StepHook",
    "Trainer",
    "TrainerCallback",
    "TrainingDiverged",
    "_flatten_row",
    "check_trainable",
]


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`; the model holds the best epoch's weights."""

    best_epoch: int
    best_criterion: float
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False
    #: Steps skipped for a non-finite loss or gradient over the run (``train.nonfinite``).
    skipped_steps: int = 0


def check_trainable(model: nn.Module, config: TrainConfig) -> None:
    """Reject, before anything trains, settings that cannot train ``model``: a learning rate
    that is not a finite positive number, and one row per batch under batch normalisation
    (which cannot normalise a single row and would fail in the first forward pass)."""
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ConfigError(
            f"config error: train.lr: expected a finite number > 0, found {config.lr}"
        )
    if config.batch_size == 1 and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise ConfigError(
            "config error: train.batch_size: 1 row per batch cannot train the model's batch "
            "normalisation (it needs 2 or more); use train.batch_size >= 2, or an encoder "
            "without batch norm (model.encoder.norm = 'layer' or 'none')"
        )


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
        self.tasks = tasks
        self.balancer = balancer
        #: The ranks of a data-parallel run (``torchrun``); one process otherwise.
        self.group = collective()
        balancer.collective = self.group
        balancer.check_model(model)
        check_trainable(model, config)
        #: Where the model, the batches and the balancer's state live (``train.device``).
        self.device = resolve_device(config.device)
        check_precision(config.precision, self.device)
        check_compile(config, balancer)
        # Before the optimiser is built: its state follows its parameters' device.
        self.model = model.to(self.device)
        balancer.to(self.device)
        if self.group.active:
            self._join_ranks(config)
        #: The model's forward pass as the step calls it (compiled with ``train.compile``).
        self.forward: Callable[..., Any] = compiled(model) if config.compile else model
        #: float16 only: the dynamic loss scale; balancers see unscaled losses (``_backward``).
        self.scaler = grad_scaler(self.device, config.precision)
        self._one = torch.ones((), device=self.device)
        self.config = config
        self.seed = seed
        self.callbacks = list(callbacks)
        self.console = console or make_console(stderr=True)
        self.label = label
        self.quiet = quiet or not self.group.writes  # rank 0 speaks for the run
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
        # The fused kernel updates every parameter in one call (on the CPU 5x faster than the
        # per-tensor loop on the demo model) and computes the same numbers.
        fused = self.device.type in ("cpu", "cuda") and all(
            p.is_floating_point() for g in groups for p in g["params"]
        )
        # StepFusedAdamW: the same kernel and numbers, its per-parameter bookkeeping done once
        # (at K = 100 heads that bookkeeping cost more than the update).
        self.optimizer: torch.optim.AdamW = (
            StepFusedAdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
            if fused
            else torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        #: Fraction of the training steps done before the current step (schedules read it).
        self.progress = 0.0
        self.epoch = 0
        self.reference: dict[str, dict[str, float]] | None = None
        self.history: list[EpochRecord] = []
        self.stop_requested = False
        self.scheduler = TaskScheduler([t.name for t in tasks], schedule or ScheduleConfig())
        self.diagnostics = GradientDiagnostics([t.name for t in tasks], config.diagnostics)
        self.early_stopping = EarlyStopping(config.patience, config.min_delta)
        every = config.nonfinite_check_every
        if every is None:  # a test waits for the device: on the CPU there is nothing to wait for
            every = 1 if self.device.type == "cpu" else DEVICE_CHECK_EVERY
        self.guard = NonFiniteGuard(config.nonfinite, config.max_skipped, every)
        #: Where the last optimiser step was taken and the tasks it trained (messages about
        #: weights that it made non-finite, found by the next step's check or the epoch's end).
        self._last_update: tuple[tuple[int, int, int, int], list[str]] | None = None
        #: The training data of a resume in progress (a mid-epoch point is checked against it).
        self._resuming: TrainingData | None = None
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

    def _join_ranks(self, config: TrainConfig) -> None:
        """Data parallelism: start every rank from rank 0's weights and balancer state, with
        batch norm over the global batch (``distributed.sync_batchnorm``)."""
        group = self.group
        if config.batch_size < group.world_size:
            raise ConfigError(
                f"config error: train.batch_size: {config.batch_size} rows cannot be shared by "
                f"{group.world_size} processes; use train.batch_size >= {group.world_size}"
            )
        if group.settings.sync_batchnorm:
            global_batchnorm(self.model)
        group.broadcast_([*self.model.state_dict().values(), *self.balancer.state_dict().values()])

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
        if run_dir is not None and self.group.writes:  # rank 0 writes the run's files
            checkpoints = Checkpointing(run_dir, cfg.checkpoint_every, self.early_stopping)
            self.hooks = self._hooks(checkpoints, MetricsLog(run_dir, cfg.log_format))
        if resume:
            if checkpoints is None and self.group.writes:
                raise ValueError("resume needs the run directory holding the checkpoints")
            self._resuming = sources  # check_state checks a mid-epoch point against them
            try:
                self._restore(checkpoints)
            finally:
                self._resuming = None
            best = self.early_stopping.best_weights
            if best is not None:
                try:
                    check_tensors(
                        "model", self.model.state_dict(), best, finite=True, owner="model"
                    )
                except CheckpointMismatch as exc:
                    raise _mismatch_in(Path(run_dir or ".") / "checkpoints" / "best", exc) from None
        else:
            torch.manual_seed(self.seed)  # dropout draws from the global RNG
        steps = [sources.steps(cfg.batch_size, e, cfg.epochs) for e in range(cfg.epochs)]
        if min(steps) < 1:
            raise PolytaskError(
                f"epoch {steps.index(min(steps)) + 1} would take no optimiser step with "
                f"train.batch_size = {cfg.batch_size}{_rows_note(sources)}; lower "
                "train.batch_size"
            )
        total_steps = sum(steps)
        while (
            self.epoch < cfg.epochs
            and not self.early_stopping.exhausted
            and not self.stop_requested
        ):
            started = time.perf_counter()
            stats, probs = self._train_epoch(sources, total_steps)
            # Before validation, early stopping's copy of the weights and the checkpoints.
            self._check_epoch(stats, sources)
            self.check_weights()
            if self.group.active and not self.group.settings.sync_batchnorm:
                average_batchnorm_statistics(self.model, self.group)
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
                skipped_steps=stats.steps["skipped"],
            )
            if record.skipped_steps and not self.quiet:
                self.console.print(
                    f"[{self.label}] epoch {record.epoch}: skipped {record.skipped_steps} "
                    f"step(s) with a non-finite loss or gradient (train.nonfinite = 'skip')",
                    soft_wrap=True,
                    markup=False,
                )
            self.history.append(record)
            for hook in self.hooks:  # diagnostics and early stopping complete the record first
                hook.on_epoch_end(self, record)
        for hook in self.hooks:
            hook.on_fit_end(self)  # early stopping loads the best weights
        stopping = self.early_stopping
        return FitResult(
            stopping.best_epoch,
            stopping.best_criterion,
            list(self.history),
            stopping.exhausted,
            self.guard.skipped,
        )

    def _restore(self, checkpoints: Checkpointing | None) -> None:
        """Load the last checkpoint (and the best weights): read by rank 0 and sent to the
        other ranks, which need no access to the run directory; a checkpoint that cannot be
        resumed stops every rank with the same line."""
        if not self.group.active:
            assert checkpoints is not None
            try:
                checkpoints.restore(self)
            except CheckpointMismatch as exc:
                raise _mismatch_in(checkpoints.dir / "last", exc) from None
            return
        found: tuple[str, Any] = ("error", "")
        if checkpoints is not None:
            try:
                found = ("ok", checkpoints.read())
            except PolytaskError as exc:
                found = ("error", str(exc))
        found = self.group.broadcast_object(found)
        if found[0] == "error":
            raise PolytaskError(found[1])
        state, best = found[1]
        try:
            self.load_state(state)
        except CheckpointMismatch as exc:
            raise _mismatch_in(Path("checkpoints") / "last", exc) from None
        if best is not None:
            self.early_stopping.best_weights = best

    def _check_epoch(self, stats: EpochStats, sources: TrainingData) -> None:
        """An epoch that took no optimiser step learned nothing: never a silent success."""
        counts = stats.steps
        if counts["taken"]:
            return
        epoch = self.epoch + 1
        if counts["drawn"] == 0:
            reason = (
                f"no batch was drawn with train.batch_size = {self.config.batch_size}"
                f"{_rows_note(sources)}; lower train.batch_size"
            )
        elif counts["skipped"]:
            reason = (
                f"all {counts['drawn']} steps were skipped as non-finite (train.nonfinite = "
                "'skip'); lower train.lr or check the data"
            )
        else:
            reason = (
                f"none of its {counts['drawn']} batches of train.batch_size = "
                f"{self.config.batch_size}{_rows_note(sources)} had a label for a trained task"
            )
        raise PolytaskError(f"epoch {epoch} took no optimiser step: {reason}")

    def check_weights(self, *, parameters_only: bool = False) -> None:
        """Raise unless every model tensor and learned balancer parameter is finite (before
        anything is validated as a result or saved). ``parameters_only``: leave out buffers
        (batch-norm statistics), which the forward pass changes: non-finite inputs make them
        non-finite in the same step as the losses, and the losses then name the cause."""
        self.check_deferred()  # a deferred step that was not finite is the cause: name it
        model = (
            self.model.named_parameters() if parameters_only else self.model.state_dict().items()
        )
        named = [*model, *((f"balancer.{k}", p) for k, p in self.balancer.named_parameters())]
        bad = nonfinite_tensor(named)
        if bad is None:
            return
        if self._last_update is not None:
            position, tasks = self._last_update
            where = _where(*position)
        else:
            where, tasks = f"epoch {self.epoch + 1}", []
        trained = f" (tasks trained: {_names(tasks)})" if tasks else ""
        raise TrainingDiverged(
            f"training diverged at {where}: weight '{bad}' is not finite after the update"
            f"{trained}; lower train.lr or check the data for extreme values"
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
                stats.steps["drawn"] += 1
                for src, count in drawn.counts.items():
                    stats.source_rows[src] += count
                chosen = plan[drawn.step] if plan is not None else None
                for name in chosen or ():
                    stats.scheduled[name] += 1
                batch = drawn.batch
                if self.group.active:  # every rank drew the global batch: keep this rank's share
                    batch = share_batch(batch, self.group)
                self._step(batch, chosen, stats, model_params, total_steps, drawn.batch)
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
        whole: Batch | None = None,
    ) -> None:
        """One optimiser step on ``batch``, training the tasks in ``chosen`` (None: all).
        ``whole``: the global batch of which ``batch`` is this rank's share (its label counts
        weigh the epoch's mean losses)."""
        cfg = self.config
        factor = lr_factor(self.step, total_steps, cfg.scheduler, cfg.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * factor * group.get("lr_scale", 1.0)
        self.progress = self.step / max(total_steps, 1)
        for hook in self.hooks:
            hook.before_step(self, batch)
        # Skip policy only: the forward pass moves batch-norm statistics and the backward a
        # balancer's state; a skipped step puts both back as they were here.
        snapshot = self.guard.snapshot(self.model, self.balancer)
        batch = self._on_device(batch)
        with autocast(self.device, cfg.precision):
            if self.balancer.changes_forward:  # e.g. per-task gradient hooks, preference draws
                outputs = self.balancer.forward(self.model, batch.inputs)
            else:
                outputs = self.forward(batch.inputs)
            # Per-task losses over the rows labelled for each task; a task without one is
            # absent. Balancers weigh float32 losses whatever the forward pass computed in.
            losses = {k: v.float() for k, v in self.loss_fn(outputs, batch, self.progress).items()}
            if self.group.active:  # the global batch's means (train.parallel)
                denominators = self.loss_fn.denominators(outputs, batch)
                names = [t.name for t in self.tasks]
                losses = global_losses(losses, denominators, outputs, names, self.group)
        if chosen is not None:  # task scheduling: only the step's tasks train
            losses = {k: v for k, v in losses.items() if k in chosen}
        self.optimizer.zero_grad(set_to_none=True)
        result: BackwardResult | None = None
        if losses:
            for hook in self.hooks:
                hook.before_backward(self, losses)
            result = self._backward(losses, model_params, snapshot)
            if result is not None:
                if self.scaler is not None:  # skips a step whose scaled gradients overflowed
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                stats.add_step(losses, result.weights, (whole or batch).masks)
                stats.steps["taken"] += 1
                position = (self.epoch, self.step_in_epoch, self.steps_in_epoch, self.step)
                self._last_update = (position, list(losses))  # formatted only for a message
            else:
                stats.steps["skipped"] += 1
        self.step += 1
        self.step_in_epoch += 1
        for hook in self.hooks:
            hook.after_step(self, losses, result)

    def _backward(
        self,
        losses: dict[str, Tensor],
        model_params: list[nn.Parameter],
        snapshot: StepSnapshot | None,
    ) -> BackwardResult | None:
        """The balancer's backward pass, the regulariser's and clipping, then the step's one
        finiteness check; None: the step is skipped (``train.nonfinite = "skip"``: gradients
        zeroed, the balancer's state as it was). A divergence that may not be skipped raises."""
        cfg = self.config
        scaler = self.scaler
        # float16: the scale multiplies only the backward passes that form the update; the
        # losses, gradients and Gramians a balancer measures stay unscaled (Balancer.scaled).
        self.balancer.grad_scale = scaler.scale(self._one) if scaler is not None else None
        try:
            result = self.balancer.backward(losses, self.model)
        except Exception:
            # A balancer's solver may fail on NaN losses before any check could see them:
            # report the weights or losses, the cause; any other failure is the balancer's own.
            self.check_weights(parameters_only=True)
            problem = nonfinite_losses(losses)
            if problem is None:
                raise
            self._skip(problem, snapshot)
            return None
        penalty = self.model.regularizer()
        group = self.group
        if penalty is not None:
            # A penalty on the parameters (soft sharing's coupling) is no task's loss: it
            # joins the gradient unweighted, outside the balancer. (Every rank computes all of
            # it: each adds its 1/W so the ranks' sum counts it once.)
            if group.active:
                penalty = penalty / group.world_size
            self.balancer.scaled(penalty).backward()  # type: ignore[no-untyped-call]
        if group.active:
            done = (
                {id(p) for p in self.model.shared_parameters()} if result.shared_reduced else set()
            )
            params = [p for p in model_params if id(p) not in done]
            sum_gradients(params, group, group.settings.bucket_bytes)
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # clipping and the check see true gradients
        norms: list[Tensor] = []
        if cfg.grad_clip is not None:
            # Clipping computes the total norm anyway: checking it costs nothing more.
            norms.append(nn.utils.clip_grad_norm_(model_params, cfg.grad_clip))
        else:
            norms.append(total(p.grad for p in model_params if p.grad is not None))
        learned = [p.grad for p in self.balancer.parameters() if p.grad is not None]
        if learned:
            norms.append(total(learned))
        if scaler is not None:
            # An overflowing float16 gradient is the scaler's to handle (the step is skipped
            # and the scale halved); a non-finite loss is a divergence.
            norms = []
        if self.guard.deferred:
            position = (self.epoch, self.step_in_epoch, self.steps_in_epoch, self.step)
            if self.guard.defer(losses, norms, position, list(losses)):
                self.check_deferred()
            return result
        if self.guard.all_finite(losses, norms):
            return result
        # The failure path may synchronise freely. Non-finite weights (from the last update)
        # make every later loss non-finite: name them first, and never skip them.
        self.check_weights(parameters_only=True)
        problem = nonfinite_losses(losses)
        if problem is None and not all(math.isfinite(float(n)) for n in norms):
            problem = f"the gradient of tasks {_names(list(losses))} is not finite"
        if problem is None:
            return result  # the check's sum overflowed on finite values: a false alarm
        self._skip(problem, snapshot)
        return None

    def _skip(self, problem: str, snapshot: StepSnapshot | None) -> None:
        """Skip the step (no optimiser step, gradients zeroed, the batch-norm statistics and the
        balancer's state restored) or, under the stop policy or past ``train.max_skipped``,
        raise."""
        message = f"training diverged at {self._where()}: {problem}"
        if not self.guard.skips:
            raise TrainingDiverged(f"{message}; {ADVICE}")
        self.optimizer.zero_grad(set_to_none=True)
        if snapshot is not None:
            snapshot.restore(self.model, self.balancer)
        self.guard.count_skip(message)

    def check_deferred(self) -> None:
        """Test the steps whose finiteness check was deferred (``train.nonfinite_check_every``);
        raise naming the first that was not finite."""
        failure = self.guard.first_failure()
        if failure is not None:
            position, problem = failure
            raise TrainingDiverged(f"training diverged at {_where(*position)}: {problem}; {ADVICE}")

    def _on_device(self, batch: Batch) -> Batch:
        """``batch`` on the training device (the same batch on the CPU)."""
        if self.device.type == "cpu":
            return batch
        return Batch(
            to_device(batch.inputs, self.device),
            to_device(batch.targets, self.device),
            to_device(batch.masks, self.device),
            to_device(batch.soft, self.device),
        )

    def _where(self) -> str:
        """The step in progress, as messages name it."""
        return _where(self.epoch, self.step_in_epoch, self.steps_in_epoch, self.step)

    # -- checkpointed state ----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (``checkpoints/last``): with a position in the epoch
        (``partial``) when written mid-epoch. Non-finite weights are never checkpointed: they
        raise here, before anything is written."""
        self.check_weights()
        counters: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "skipped": self.guard.skipped,
        }
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
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self._epoch_start is not None and self.epoch_stats is not None:
            sums = self.epoch_stats.state()
            for hook in self.hooks:
                sums.update(hook.epoch_state())
            state["partial"] = {
                "start": self._epoch_start,
                "step_in_epoch": self.step_in_epoch,
                "stats": sums,
            }
        saved: dict[str, Any] = to_cpu(state)  # on the host: loadable on any device
        return saved

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned, so training continues exactly. A state that
        does not fit this run raises :class:`CheckpointMismatch` before anything changes."""
        self.check_state(state)
        self.model.load_state_dict(state["model"])
        kernels = [(g.get("fused"), g.get("foreach")) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, (fused, foreach) in zip(self.optimizer.param_groups, kernels, strict=True):
            group["fused"], group["foreach"] = fused, foreach  # this machine's, not the writer's
        self.balancer.load_state_dict(state["balancer"])
        set_rng_state(state["rng"], self.generator)
        t = state["trainer"]
        self.epoch, self.step = int(t["epoch"]), int(t["step"])
        self.guard.skipped = int(t.get("skipped", 0))
        self._last_update = None
        self.reference = t["reference"]
        self.history = [EpochRecord(**r) for r in t["history"]]
        for hook in self.hooks:
            hook.load_state(t)
        self.scheduler.load_state(state["scheduler"])
        # A checkpoint of another precision has no (or an unused) scaler state: a float16 run
        # resumed from it starts the scale afresh.
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._resume_point = state.get("partial")

    def check_state(self, state: Any) -> None:
        """Raise :class:`CheckpointMismatch` unless ``state`` (what :meth:`state` wrote, read
        back) fits this trainer: its model, optimiser groups, balancer, scheduler, counters
        and, during a resume, the training data of a mid-epoch point (``state_check``)."""
        if not isinstance(state, dict):
            raise CheckpointMismatch(f"state: expected a table, found {type(state).__name__}")
        for key in ("model", "optimizer", "balancer", "rng", "scheduler", "trainer"):
            if key not in state:
                raise CheckpointMismatch(f"{key}: expected the {key} state, found nothing")
        check_tensors("model", self.model.state_dict(), state["model"], finite=True, owner="model")
        owner = f"balancer '{self.balancer.name}'"
        # A balancer's buffers may hold NaN by design (DWA: an epoch not seen yet).
        check_tensors(
            "balancer", self.balancer.state_dict(), state["balancer"], finite=False, owner=owner
        )
        check_extra_state("balancer", self.balancer, state["balancer"])
        # After the balancer: another balancer's learned parameters change the groups.
        check_optimizer(self.optimizer, state["optimizer"])
        match("rng", rng_state(self.generator), state["rng"])
        match("scheduler", self.scheduler.state(), state["scheduler"])
        _check_loss_tables("scheduler.history", state["scheduler"]["history"])
        counters: dict[str, Any] = {"epoch": 0, "step": 0, "history": []}
        for hook in self.hooks:
            counters.update(hook.state())
        found = state["trainer"]
        check_counters("trainer", counters, found)
        if "skipped" in found:  # absent from checkpoints written before it was counted
            check_counters("trainer", {"skipped": 0, "history": []}, found)
        reference = found.get("reference")
        if reference is not None:
            if not isinstance(reference, dict):
                raise CheckpointMismatch(
                    f"trainer.reference: expected metrics by task, found {reference!r:.80}"
                )
            for task, metrics in reference.items():
                _check_loss_tables(f"trainer.reference.{task}", [metrics])
        if self.scaler is not None and state.get("scaler"):
            check_scaler(self.scaler.state_dict(), state["scaler"])
        if state.get("partial") is not None:
            self._check_partial(state["partial"])

    def _check_partial(self, partial: Any) -> None:
        """A mid-epoch resume point: its epoch start (generators, sampler, scheduler), its
        position and the running sums of the trainer and its callbacks."""
        start = {"generator": self.generator.get_state(), "scheduler": self.scheduler.state()}
        if self._resuming is not None:
            start["sampler"] = self._resuming.state()
        found = partial.get("start") if isinstance(partial, dict) else None
        if not isinstance(found, dict) or "sampler" not in found:
            raise CheckpointMismatch("partial.start: expected the epoch's start, found none")
        if self._resuming is None:
            found = {k: v for k, v in found.items() if k != "sampler"}
        # Row orders are as long as their source was when drawn: compare kinds, not sizes.
        match("partial.start", start, found, shapes=False)
        match("partial.start.generator", start["generator"], found["generator"])
        position = partial.get("step_in_epoch")
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise CheckpointMismatch(
                f"partial.step_in_epoch: expected a step number, found {position!r}"
            )
        names = self._resuming.names if self._resuming is not None else None
        sums = EpochStats([t.name for t in self.tasks], names or []).state()
        if names is None:
            sums.pop("source_rows")
        for hook in self.hooks:
            sums.update(hook.epoch_state())
        stats = partial.get("stats")
        if not isinstance(stats, dict):
            raise CheckpointMismatch("partial.stats: expected the epoch's running sums, found none")
        for key, want in sums.items():
            if key == "steps" and key not in stats:
                continue  # written before the epoch's step counts were kept
            if key not in stats:
                raise CheckpointMismatch(f"partial.stats.{key}: expected a table, found nothing")
            match(f"partial.stats.{key}", want, stats[key])


#: Steps between non-finite tests on an accelerator (``train.nonfinite_check_every`` unset).
DEVICE_CHECK_EVERY = 32


def check_compile(config: TrainConfig, balancer: Balancer) -> None:
    """``train.compile`` compiles the model's forward pass; a balancer that runs the forward
    pass itself (gradient hooks, a split at the shared representation, preference draws)
    would bypass or break the compiled graph, so the combination is refused up front."""
    if config.compile and balancer.changes_forward:
        raise ConfigError(
            f"config error: train.compile: cannot compile the forward pass for balancer "
            f"'{balancer.name}', which runs the forward pass itself (per-task gradients or "
            "preference draws); set train.compile = false or use a loss-level balancer"
        )


def _check_loss_tables(key: str, rows: Any) -> None:
    """``rows``: a list of tables of numbers (validation losses by task, metrics by name)."""
    ok = isinstance(rows, list | tuple) and all(
        isinstance(r, dict)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in r.values())
        for r in rows
    )
    if not ok:
        raise CheckpointMismatch(f"{key}: expected tables of numbers by name, found {rows!r:.80}")


def _mismatch_in(directory: Path, exc: CheckpointMismatch) -> PolytaskError:
    return PolytaskError(f"checkpoint '{directory}' does not match the config: {exc.detail}")


def _where(epoch: int, step_in_epoch: int, steps_in_epoch: int, step: int) -> str:
    """A step as messages name it (1-based; the counters are 0-based)."""
    return (
        f"epoch {epoch + 1}, step {step_in_epoch + 1} of {steps_in_epoch} "
        f"(step {step + 1} of the run)"
    )


def _names(tasks: list[str]) -> str:
    return ", ".join(f"'{t}'" for t in tasks)


def _rows_note(sources: TrainingData) -> str:
    """`` (N training rows)`` where the training data knows its size."""
    rows = len(sources) if isinstance(sources, SourceSet) else getattr(sources, "n_train", None)
    return f" ({rows} training rows)" if isinstance(rows, int) else ""


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
