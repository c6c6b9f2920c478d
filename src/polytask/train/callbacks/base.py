"""The trainer's callback protocol: named hooks around the step and the epoch.

A :class:`TrainerCallback` overrides the hooks it needs; the others do nothing. The trainer
calls every callback's hook in order (its own callbacks first: gradient diagnostics, early
stopping, checkpointing, metrics log, progress; then the user's):

``on_epoch_start(trainer)``
    before the epoch's first step (after a mid-epoch resume point was restored);
``before_step(trainer, batch)``
    after the step's learning rate is set, before the forward pass;
``before_backward(trainer, losses)``
    with the step's masked per-task losses, before ``balancer.backward`` (the graph is intact);
``after_step(trainer, losses, result)``
    after ``optimizer.step()`` (``result`` is None on a step with no label to learn from, and
    on a step skipped for a non-finite loss or gradient under ``train.nonfinite = "skip"``);
``on_steps_end(trainer)``
    after the epoch's last step, before validation;
``on_epoch_end(trainer, record)``
    after validation, with the epoch's record (already in ``trainer.history``); hooks run in
    order, and the diagnostics and early-stopping callbacks, first, complete the record;
``on_fit_end(trainer)``
    when training ends.

Checkpointed state: ``state()`` adds entries to the trainer's counters (the ``trainer``
section of ``checkpoints/last/state.json``) and ``load_state`` reads them back from that
section; ``epoch_state()`` adds running sums of the epoch in progress to a mid-epoch
checkpoint (``partial.stats``), ``load_epoch_state`` restores them.

Callbacks see the trainer through :class:`TrainerView`, the part of it they may read.
"""

from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from torch import Tensor

from polytask.balance.base import BackwardResult, Balancer
from polytask.data.tensors import Batch
from polytask.models.model import MultiTaskModel
from polytask.tasks import Task
from polytask.train.config import TrainConfig
from polytask.train.record import EpochRecord, EpochStats


class TrainerView(Protocol):
    """What a callback reads of the trainer (:class:`polytask.train.trainer.Trainer`)."""

    @property
    def model(self) -> MultiTaskModel: ...
    @property
    def tasks(self) -> list[Task]: ...
    @property
    def balancer(self) -> Balancer: ...
    @property
    def config(self) -> TrainConfig: ...
    @property
    def console(self) -> Console: ...
    @property
    def label(self) -> str: ...
    @property
    def quiet(self) -> bool: ...
    @property
    def epoch(self) -> int: ...
    @property
    def history(self) -> list[EpochRecord]: ...
    #: Steps of the current epoch done (during a step: those before it).
    @property
    def step_in_epoch(self) -> int: ...
    @property
    def steps_in_epoch(self) -> int: ...
    #: The running sums of the epoch in progress (None between epochs).
    @property
    def epoch_stats(self) -> EpochStats | None: ...

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds, in the layout of ``checkpoints/last``."""
        ...

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        ...


class TrainerCallback:
    """Base of the trainer's named callbacks: every hook does nothing (module docstring)."""

    def on_epoch_start(self, trainer: TrainerView) -> None:
        pass

    def before_step(self, trainer: TrainerView, batch: Batch) -> None:
        pass

    def before_backward(self, trainer: TrainerView, losses: dict[str, Tensor]) -> None:
        pass

    def after_step(
        self, trainer: TrainerView, losses: dict[str, Tensor], result: BackwardResult | None
    ) -> None:
        pass

    def on_steps_end(self, trainer: TrainerView) -> None:
        pass

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        pass

    def on_fit_end(self, trainer: TrainerView) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def epoch_state(self) -> dict[str, Any]:
        return {}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        pass
