"""Progress on the console: a rich bar over each epoch's steps showing the running per-task
losses (on a terminal, unless ``train.progress`` is off), and one line per epoch with the
training losses, the primary validation metrics and the criterion (unless the trainer is
quiet)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from polytask.balance.base import BackwardResult
from polytask.train.callbacks.base import TrainerCallback, TrainerView
from polytask.train.record import EpochRecord


class ProgressDisplay(TrainerCallback):
    """The progress bar of each epoch and the per-epoch console line (module docstring)."""

    def __init__(self) -> None:
        self._bar: _EpochBar | None = None

    def on_epoch_start(self, trainer: TrainerView) -> None:
        enabled = trainer.config.progress and not trainer.quiet and trainer.console.is_terminal
        label = f"{trainer.label} {trainer.epoch + 1}"
        self._bar = _EpochBar(trainer.console, trainer.steps_in_epoch, enabled, label)

    def after_step(
        self, trainer: TrainerView, losses: dict[str, Tensor], result: BackwardResult | None
    ) -> None:
        stats = trainer.epoch_stats
        if self._bar is not None and stats is not None:
            self._bar.advance(trainer.step_in_epoch - 1, stats.loss_sum, stats.steps_with)

    def on_steps_end(self, trainer: TrainerView) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        if trainer.quiet:
            return
        r = record
        losses = " ".join(f"{k}={v:.4f}" for k, v in r.train_loss.items())
        metrics = " ".join(
            f"{t.name}.{t.primary}={r.val_metrics[t.name][t.primary]:.4f}" for t in trainer.tasks
        )
        mark = " *" if r.best else ""
        trainer.console.print(
            f"[{trainer.label}] epoch {r.epoch}/{trainer.config.epochs}  loss {losses}  "
            f"val {metrics}  criterion {r.criterion:+.4f}{mark}  ({r.seconds:.1f}s)",
            highlight=False,
            markup=False,
        )


class _EpochBar:
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
        self.progress.__enter__()

    def close(self) -> None:
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
