"""The training loop: one step of joint multi-task training can be read top to bottom here.

    batch -> model -> masked per-task losses -> balancer.backward -> clip -> AdamW step

around which the trainer adds the learning-rate schedule, validation, the early-stopping
criterion, best/last checkpoints (safetensors + JSON, resumable to identical weights), a rich
progress bar and a per-epoch metrics log. It never looks at a balancer's or architecture's name;
callbacks extend it without subclassing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from polytask.balance.base import Balancer
from polytask.balance.diagnostics import TaskGramian, pair_key, task_gradient_gramian
from polytask.data.sources import SourceSet, TrainingData
from polytask.data.tensors import Batch, TensorData
from polytask.evaluate.evaluation import evaluate_data
from polytask.losses import BatchLoss, LabelLoss
from polytask.state_io import (
    atomic_directory,
    atomic_write_text,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
    to_json,
)
from polytask.tasks import Task
from polytask.train.config import TrainConfig
from polytask.train.criterion import Criterion
from polytask.train.schedule import lr_factor
from polytask.train.task_schedule import ScheduleConfig, TaskScheduler

if TYPE_CHECKING:
    from polytask.models.model import MultiTaskModel


@dataclass
class EpochRecord:
    """What one epoch did, as written to the metrics log."""

    epoch: int
    lr: float
    train_loss: dict[str, float]
    val_loss: dict[str, float]
    val_metrics: dict[str, dict[str, float]]
    criterion: float
    weights: dict[str, float]
    examples: dict[str, int]
    seconds: float
    best: bool = False
    #: Mean norm of each task's gradient of the shared parameters (or of the shared
    #: representation in that engine mode) over the steps that measured it.
    grad_norms: dict[str, float] = field(default_factory=dict)
    #: From the same measured gradients (see :mod:`polytask.balance.diagnostics`): the mean
    #: cosine of each task pair's gradients ("a|b", a before b in task order), the fraction of
    #: measured steps on which that cosine was negative, and each task's mean share of the
    #: combined update ``w_k (G w)_k / (wᵀ G w)`` (0 on measured steps where the task took no
    #: part; the shares sum to 1 and a negative one means the task's gradient opposed the
    #: update). GradDrop's shares are of the unweighted sum before its sign dropout.
    grad_cosines: dict[str, float] = field(default_factory=dict)
    conflicts: dict[str, float] = field(default_factory=dict)
    dominance: dict[str, float] = field(default_factory=dict)
    #: Examples drawn from each data source, and each source's sampling probability.
    sources: dict[str, int] = field(default_factory=dict)
    sampling: dict[str, float] = field(default_factory=dict)
    #: Task scheduling: each task's probability of being drawn this epoch and the number of
    #: steps it was scheduled (empty when every step trains every task).
    schedule: dict[str, float] = field(default_factory=dict)
    scheduled_steps: dict[str, int] = field(default_factory=dict)


class _EpochStats:
    """Running sums of one epoch, checkpointed with a mid-epoch resume point."""

    def __init__(self, tasks: list[str], sources: list[str]) -> None:
        self.loss_sum = {t: torch.zeros(()) for t in tasks}
        self.weight_sum = {t: 0.0 for t in tasks}
        self.steps_with = {t: 0 for t in tasks}
        self.seen = {t: 0 for t in tasks}
        self.norm_sum = {t: 0.0 for t in tasks}
        self.norm_count = {t: 0 for t in tasks}
        pairs = [pair_key(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]
        self.cos_sum = {p: 0.0 for p in pairs}
        self.cos_count = {p: 0 for p in pairs}
        self.conflict_count = {p: 0 for p in pairs}
        self.dominance_sum = {t: 0.0 for t in tasks}
        self.dominance_count = {t: 0 for t in tasks}
        self.source_rows = {s: 0 for s in sources}
        self.scheduled = {t: 0 for t in tasks}

    def state(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in vars(self).items()}

    def load_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, dict(value))

    def summary(self) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """Mean loss, mean weight and mean gradient norm of each task over its steps."""
        n = self.steps_with
        loss = {k: float(v) / n[k] if n[k] else math.nan for k, v in self.loss_sum.items()}
        weight = {k: v / n[k] if n[k] else math.nan for k, v in self.weight_sum.items()}
        norms = {k: v / self.norm_count[k] for k, v in self.norm_sum.items() if self.norm_count[k]}
        return loss, weight, norms

    def add_gradients(self, gramian: TaskGramian, weights: dict[str, float]) -> None:
        """Accumulate one measured step's cosines, conflicts and dominance shares."""
        for (a, b), cos in gramian.cosines().items():
            key = pair_key(a, b)
            if key not in self.cos_sum:  # the Gramian lists tasks in task order; be safe
                key = pair_key(b, a)
            self.cos_sum[key] += cos
            self.cos_count[key] += 1
            self.conflict_count[key] += int(cos < 0.0)
        shares = gramian.dominance(weights)
        if shares is not None:
            for task in self.dominance_sum:
                # A task absent from the step contributed nothing to its update.
                self.dominance_sum[task] += shares.get(task, 0.0)
                self.dominance_count[task] += 1

    def gradient_summary(self) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """Mean cosine and conflict fraction per measured pair, mean share per task."""
        n = self.cos_count
        cosines = {k: v / n[k] for k, v in self.cos_sum.items() if n[k]}
        conflicts = {k: v / n[k] for k, v in self.conflict_count.items() if n[k]}
        m = self.dominance_count
        dominance = {k: v / m[k] for k, v in self.dominance_sum.items() if m[k]}
        return cosines, conflicts, dominance


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
        callbacks: Sequence[Callback] = (),
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
        self._step_hooks = [c for c in self.callbacks if isinstance(c, StepHook)]
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
        self.best_criterion = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.reference: dict[str, dict[str, float]] | None = None
        self.history: list[EpochRecord] = []
        self._best_weights: dict[str, Tensor] | None = None
        self.stop_requested = False
        self.scheduler = TaskScheduler([t.name for t in tasks], schedule or ScheduleConfig())
        #: Where an interrupted epoch stopped (set by load_checkpoint, consumed by the epoch).
        self._resume_point: dict[str, Any] | None = None
        #: The epoch in progress, for mid-epoch checkpoints.
        self._epoch_start: dict[str, Any] | None = None
        self._stats: _EpochStats | None = None
        self._step_in_epoch = 0

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
        if resume:
            if run_dir is None:
                raise ValueError("resume needs the run directory holding the checkpoints")
            self.load_checkpoint(run_dir)
        else:
            torch.manual_seed(self.seed)  # dropout draws from the global RNG
        total_steps = sum(sources.steps(cfg.batch_size, e, cfg.epochs) for e in range(cfg.epochs))
        stopped_early = self._patience_exhausted()
        while self.epoch < cfg.epochs and not stopped_early and not self.stop_requested:
            started = time.perf_counter()
            stats, probs = self._train_epoch(sources, total_steps, run_dir)
            train_loss, weights, grad_norms = stats.summary()
            grad_cosines, conflicts, dominance = stats.gradient_summary()
            self.balancer.end_epoch(train_loss)
            val_loss, val_metrics = evaluate_data(self.model, self.tasks, val, cfg.eval_batch_size)
            schedule = self.scheduler.probabilities() if self.scheduler.active else {}
            self.scheduler.end_epoch(val_loss)
            self.epoch += 1
            if self.reference is None:
                self.reference = val_metrics
            score = self.criterion(val_loss, val_metrics, self.reference)
            improved = score < self.best_criterion - cfg.min_delta or self._best_weights is None
            if improved:
                self.best_criterion, self.best_epoch, self.bad_epochs = score, self.epoch, 0
                self._best_weights = {
                    k: v.detach().clone() for k, v in self.model.state_dict().items()
                }
            else:
                self.bad_epochs += 1
            record = EpochRecord(
                epoch=self.epoch,
                lr=self.optimizer.param_groups[0]["lr"],
                train_loss=train_loss,
                val_loss=val_loss,
                val_metrics=val_metrics,
                criterion=score,
                weights=weights,
                examples=stats.seen,
                seconds=round(time.perf_counter() - started, 3),
                best=improved,
                grad_norms=grad_norms,
                grad_cosines=grad_cosines,
                conflicts=conflicts,
                dominance=dominance,
                sources=stats.source_rows,
                sampling=dict(zip(sources.names, probs, strict=True)),
                schedule=schedule,
                scheduled_steps=stats.scheduled if schedule else {},
            )
            self.history.append(record)
            if run_dir is not None:
                self.save_checkpoint(run_dir, best=improved)
                self._write_log(run_dir)
            self._report(record)
            for callback in self.callbacks:
                callback(self, record)
            stopped_early = self._patience_exhausted()
        if self._best_weights is not None:
            self.model.load_state_dict(self._best_weights)
        return FitResult(self.best_epoch, self.best_criterion, list(self.history), stopped_early)

    def _patience_exhausted(self) -> bool:
        patience = self.config.patience
        return patience is not None and self.bad_epochs >= patience

    def _train_epoch(
        self, sources: TrainingData, total_steps: int, run_dir: Path | None
    ) -> tuple[_EpochStats, list[float]]:
        cfg = self.config
        self.model.train()
        stats = _EpochStats([t.name for t in self.tasks], sources.names)
        skip = 0
        if self._resume_point is not None:
            # Rewind the shuffling generator, sampler and scheduler to the epoch's start and
            # replay its draws up to where the checkpoint was written: the rest of the epoch
            # then draws exactly what the uninterrupted run drew.
            point, self._resume_point = self._resume_point, None
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
        self._stats = stats
        n_steps = sources.steps(cfg.batch_size, self.epoch, cfg.epochs)
        plan = self.scheduler.plan(n_steps, self.generator)
        allowed = [sources.sources_for(p) for p in plan] if plan is not None else None
        draws = sources.epoch_batches(
            cfg.batch_size, self.epoch, cfg.epochs, self.generator, allowed
        )
        probs = sources.probabilities(self.epoch, cfg.epochs)
        # Clipping bounds the network's step; a balancer's own parameters (log-variances,
        # GradNorm weights) follow their own objective and are not clipped with it.
        # (Parameters frozen now may be unfrozen by a callback later: clipping skips any
        # parameter without a gradient.)
        own = {id(p) for p in self.balancer.parameters()}
        model_params = [
            p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in own
        ]
        with self._progress(n_steps) as progress:
            for i, drawn in enumerate(draws):
                if i < skip:
                    continue
                batch = drawn.batch
                for src, count in drawn.counts.items():
                    stats.source_rows[src] += count
                factor = lr_factor(self.step, total_steps, cfg.scheduler, cfg.warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = cfg.lr * factor * group.get("lr_scale", 1.0)
                self.progress = self.step / max(total_steps, 1)
                for hook in self._step_hooks:
                    hook.before_step(self, batch)
                outputs = self.balancer.forward(self.model, batch.inputs)
                losses = self.loss_fn(outputs, batch, self.progress)
                if plan is not None:
                    chosen = plan[drawn.step]
                    for name in chosen:
                        stats.scheduled[name] += 1
                    losses = {k: v for k, v in losses.items() if k in chosen}
                self.optimizer.zero_grad(set_to_none=True)
                if losses:
                    self._optimise(losses, i == 0, model_params, stats, batch.masks)
                self.step += 1
                self._step_in_epoch = i + 1
                progress.advance(i, stats.loss_sum, stats.steps_with)
                every = cfg.checkpoint_every
                if run_dir is not None and every and (i + 1) % every == 0 and i + 1 < n_steps:
                    self.save_checkpoint(run_dir, best=False)
        self._epoch_start, self._stats, self._step_in_epoch = None, None, 0
        return stats, probs

    def _optimise(
        self,
        losses: dict[str, Tensor],
        first: bool,
        model_params: list[nn.Parameter],
        stats: _EpochStats,
        masks: dict[str, Tensor],
    ) -> None:
        """Backward through the balancer, the architecture's penalty, clipping, AdamW step."""
        self.balancer.step_grad_norms = {}
        self.balancer.step_gramian = None
        # Loss-level methods never see gradients; measure them once per epoch (K extra
        # backward passes on one batch) so every run logs them. An architecture sharing no
        # parameters (soft sharing) has none to log, nor has a fine-tuning run whose shared
        # encoder is frozen (autograd cannot differentiate with respect to nothing).
        if (
            first
            and not self.balancer.needs_gradients
            and (shared := [p for p in self.model.shared_parameters() if p.requires_grad])
        ):
            measured = task_gradient_gramian(losses, shared)
            self.balancer.step_gramian = measured
            self.balancer.step_grad_norms = measured.norms()
        weights = self.balancer.backward(losses, self.model)
        if self.balancer.step_gramian is not None:
            # Gradient-level methods published the Gramian they weighted: no extra pass.
            stats.add_gradients(self.balancer.step_gramian, weights)
        penalty = self.model.regularizer()
        if penalty is not None:
            # A penalty on the parameters (soft sharing's coupling) is no task's loss: it
            # joins the gradient unweighted, outside the balancer.
            penalty.backward()  # type: ignore[no-untyped-call]
        for name, norm in self.balancer.step_grad_norms.items():
            stats.norm_sum[name] += norm
            stats.norm_count[name] += 1
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model_params, self.config.grad_clip)
        self.optimizer.step()
        for name, value in losses.items():
            stats.loss_sum[name] += value.detach()
            stats.weight_sum[name] += weights[name]
            stats.steps_with[name] += 1
            stats.seen[name] += _labelled_rows(masks[name])

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, run_dir: Path, *, best: bool) -> None:
        """Write ``checkpoints/last`` (full state) and, if ``best``, ``checkpoints/best``."""
        ckpt = run_dir / "checkpoints"
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balancer": self.balancer.state_dict(),
            "rng": rng_state(self.generator),
            "scheduler": self.scheduler.state(),
            "trainer": {
                "epoch": self.epoch,
                "step": self.step,
                "best_criterion": self.best_criterion,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "reference": self.reference,
                "history": [asdict(r) for r in self.history],
            },
        }
        if self._epoch_start is not None and self._stats is not None:
            # Written mid-epoch: where the epoch started and how far it got.
            state["partial"] = {
                "start": self._epoch_start,
                "step_in_epoch": self._step_in_epoch,
                "stats": self._stats.state(),
            }
        with atomic_directory(ckpt / "last") as staging:
            save_state(staging, state)
        if best:
            with atomic_directory(ckpt / "best") as staging:
                save_state(staging, {"model": self.model.state_dict(), "epoch": self.epoch})

    def load_checkpoint(self, run_dir: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote, so training continues exactly."""
        last = run_dir / "checkpoints" / "last"
        if not (last / "state.json").is_file():
            from polytask.errors import PolytaskError

            raise PolytaskError(f"cannot resume: no checkpoint in '{last}'")
        state = load_state(last)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        set_rng_state(state["rng"], self.generator)
        t = state["trainer"]
        self.epoch, self.step = int(t["epoch"]), int(t["step"])
        self.best_criterion, self.best_epoch = float(t["best_criterion"]), int(t["best_epoch"])
        self.bad_epochs, self.reference = int(t["bad_epochs"]), t["reference"]
        self.history = [EpochRecord(**r) for r in t["history"]]
        self.scheduler.load_state(state["scheduler"])
        self._resume_point = state.get("partial")
        best = run_dir / "checkpoints" / "best"
        if (best / "state.json").is_file():
            self._best_weights = load_state(best)["model"]

    # -- reporting -------------------------------------------------------------------------
    def _write_log(self, run_dir: Path) -> None:
        rows = [asdict(r) for r in self.history]
        if self.config.log_format == "jsonl":
            text = "".join(to_json(r, indent=None) + "\n" for r in rows)
            atomic_write_text(run_dir / "metrics.jsonl", text)
        else:
            flat = [_flatten_row(r) for r in rows]
            header = list(dict.fromkeys(k for row in flat for k in row))
            lines = [",".join(header)] + [
                ",".join(_csv_cell(row.get(k)) for k in header) for row in flat
            ]
            atomic_write_text(run_dir / "metrics.csv", "\n".join(lines) + "\n")

    def _report(self, r: EpochRecord) -> None:
        if self.quiet:
            return
        losses = " ".join(f"{k}={v:.4f}" for k, v in r.train_loss.items())
        metrics = " ".join(
            f"{k}.{t.primary}={r.val_metrics[k][t.primary]:.4f}"
            for t in self.tasks
            for k in [t.name]
        )
        mark = " *" if r.best else ""
        self.console.print(
            f"[{self.label}] epoch {r.epoch}/{self.config.epochs}  loss {losses}  "
            f"val {metrics}  criterion {r.criterion:+.4f}{mark}  ({r.seconds:.1f}s)",
            highlight=False,
            markup=False,
        )

    def _progress(self, total: int) -> _EpochProgress:
        enabled = self.config.progress and not self.quiet and self.console.is_terminal
        return _EpochProgress(self.console, total, enabled, f"{self.label} {self.epoch + 1}")


class _EpochProgress:
    """A rich progress bar over an epoch's steps showing running per-task losses."""

    _EVERY = 10  # refresh the loss text every N steps: formatting costs more than a step's math

    def __init__(self, console: Console, total: int, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.total = total
        self.label = label
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )
        self.task_id = self.progress.add_task(label, total=total)

    def __enter__(self) -> _EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def advance(self, i: int, loss_sum: dict[str, Tensor], steps: dict[str, int]) -> None:
        if not self.enabled:
            return
        if i % self._EVERY == 0 or i + 1 == self.total:
            text = " ".join(
                f"{k}={float(v) / steps[k]:.3f}" for k, v in loss_sum.items() if steps[k]
            )
            self.progress.update(self.task_id, completed=i + 1, description=f"{self.label} {text}")
        else:
            self.progress.update(self.task_id, completed=i + 1)


def _labelled_rows(mask: Tensor) -> int:
    """Examples with at least one valid label (multilabel masks have one column per label,
    per-pixel masks one entry per pixel)."""
    return int(mask.reshape(mask.shape[0], -1).any(dim=1).sum())


def _flatten_row(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten_row(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _csv_cell(value: Any) -> str:
    return "" if value is None else str(value)
