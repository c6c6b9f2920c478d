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
from typing import TYPE_CHECKING, Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from polytask.balance.base import Balancer
from polytask.balance.diagnostics import task_gradient_norms
from polytask.config import TrainConfig
from polytask.data.tensors import TensorData
from polytask.evaluate.evaluation import evaluate_data
from polytask.losses import TaskLoss, task_losses
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
from polytask.train.criterion import Criterion
from polytask.train.schedule import lr_factor

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
    ) -> None:
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
        self.losses = {t.name: TaskLoss(t) for t in tasks}
        self.criterion = Criterion(config.criterion, tasks)
        groups: list[dict[str, Any]] = [
            {"params": [p for p in model.parameters() if p.requires_grad]}
        ]
        learned = [p for p in balancer.parameters() if p.requires_grad]
        if learned:
            # A balancer's own parameters (e.g. log-variances) are not weights to shrink.
            groups.append({"params": learned, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.epoch = 0
        self.best_criterion = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.reference: dict[str, dict[str, float]] | None = None
        self.history: list[EpochRecord] = []
        self._best_weights: dict[str, Tensor] | None = None
        self.stop_requested = False

    # -- the loop --------------------------------------------------------------------------
    def fit(
        self,
        train: TensorData,
        val: TensorData,
        run_dir: Path | None = None,
        *,
        resume: bool = False,
    ) -> FitResult:
        """Train until the epoch budget or early stopping; leave the best weights in the model.

        With ``run_dir``, checkpoints go to ``run_dir/checkpoints/{last,best}`` and the metrics
        log to ``run_dir/metrics.{jsonl,csv}``; ``resume`` continues from the last checkpoint.
        """
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if resume:
            if run_dir is None:
                raise ValueError("resume needs the run directory holding the checkpoints")
            self.load_checkpoint(run_dir)
        else:
            torch.manual_seed(self.seed)  # dropout draws from the global RNG
        total_steps = cfg.epochs * train.steps_per_epoch(cfg.batch_size)
        stopped_early = self._patience_exhausted()
        while self.epoch < cfg.epochs and not stopped_early and not self.stop_requested:
            started = time.perf_counter()
            train_loss, weights, seen, grad_norms = self._train_epoch(train, total_steps)
            self.balancer.end_epoch(train_loss)
            val_loss, val_metrics = evaluate_data(self.model, self.tasks, val, cfg.eval_batch_size)
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
                examples=seen,
                seconds=round(time.perf_counter() - started, 3),
                best=improved,
                grad_norms=grad_norms,
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
        self, data: TensorData, total_steps: int
    ) -> tuple[dict[str, float], dict[str, float], dict[str, int], dict[str, float]]:
        cfg = self.config
        self.model.train()
        loss_sum = {t.name: torch.zeros(()) for t in self.tasks}
        weight_sum = {t.name: 0.0 for t in self.tasks}
        steps_with = {t.name: 0 for t in self.tasks}
        seen = {t.name: 0 for t in self.tasks}
        norm_sum = {t.name: 0.0 for t in self.tasks}
        norm_count = {t.name: 0 for t in self.tasks}
        # Clipping bounds the network's step; a balancer's own parameters (log-variances,
        # GradNorm weights) follow their own objective and are not clipped with it.
        model_params = [p for p in self.model.parameters() if p.requires_grad]
        with self._progress(data.steps_per_epoch(cfg.batch_size)) as progress:
            for i, batch in enumerate(data.batches(cfg.batch_size, generator=self.generator)):
                factor = lr_factor(self.step, total_steps, cfg.scheduler, cfg.warmup)
                for group in self.optimizer.param_groups:
                    group["lr"] = cfg.lr * factor
                outputs = self.balancer.forward(self.model, batch.inputs)
                losses = task_losses(self.losses, outputs, batch.targets, batch.masks)
                self.optimizer.zero_grad(set_to_none=True)
                if losses:
                    self.balancer.step_grad_norms = {}
                    # Loss-level methods never see gradients; measure them once per epoch (K
                    # extra backward passes on one batch) so every run logs them. An
                    # architecture sharing no parameters (soft sharing) has none to log.
                    if (
                        i == 0
                        and not self.balancer.needs_gradients
                        and (shared := self.model.shared_parameters())
                    ):
                        self.balancer.step_grad_norms = task_gradient_norms(losses, shared)
                    weights = self.balancer.backward(losses, self.model)
                    penalty = self.model.regularizer()
                    if penalty is not None:
                        # A penalty on the parameters (soft sharing's coupling) is no task's
                        # loss: it joins the gradient unweighted, outside the balancer.
                        penalty.backward()  # type: ignore[no-untyped-call]
                    for name, norm in self.balancer.step_grad_norms.items():
                        norm_sum[name] += norm
                        norm_count[name] += 1
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model_params, cfg.grad_clip)
                    self.optimizer.step()
                    for name, value in losses.items():
                        loss_sum[name] += value.detach()
                        weight_sum[name] += weights[name]
                        steps_with[name] += 1
                        seen[name] += _labelled_rows(batch.masks[name])
                self.step += 1
                progress.advance(i, loss_sum, steps_with)
        mean_loss = {
            k: float(loss_sum[k]) / steps_with[k] if steps_with[k] else math.nan for k in loss_sum
        }
        mean_weight = {
            k: weight_sum[k] / steps_with[k] if steps_with[k] else math.nan for k in weight_sum
        }
        grad_norms = {k: norm_sum[k] / norm_count[k] for k in norm_sum if norm_count[k]}
        return mean_loss, mean_weight, seen, grad_norms

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, run_dir: Path, *, best: bool) -> None:
        """Write ``checkpoints/last`` (full state) and, if ``best``, ``checkpoints/best``."""
        ckpt = run_dir / "checkpoints"
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "balancer": self.balancer.state_dict(),
            "rng": rng_state(self.generator),
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
