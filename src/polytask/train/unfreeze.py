"""Gradual unfreezing (Howard & Ruder, "Universal Language Model Fine-tuning for Text
Classification", ACL 2018, Section 3.3).

Fine-tuning every layer at once on a small new task can overwrite what the lower layers learned
("catastrophic forgetting"). ULMFiT starts with the pretrained layers frozen, trains the new
head alone for an epoch, then unfreezes the top-most frozen layer, trains an epoch, unfreezes
the next one down, and so on: the layers closest to the new task adapt first, the most general
ones last. Here one frozen layer group is released every ``unfreeze_every`` epochs, top-down,
until the groups the freeze policy froze are all training.
"""

from __future__ import annotations

from typing import Any

from polytask.data.tensors import Batch
from polytask.models.model import MultiTaskModel
from polytask.train.freeze import FreezePlan
from polytask.train.trainer import EpochRecord, Trainer


class GradualUnfreezing:
    """A trainer callback releasing the top-most frozen layer group every ``every`` epochs.

    The state is a function of the epochs completed (``trainer.epoch``), never of the calls
    seen: after ``e`` epochs, ``min(frozen, e // every)`` groups are released. It is applied
    after each epoch and checked before each step, so a run resumed from a checkpoint trains
    with the same layers frozen as the uninterrupted run (the check is a no-op otherwise).
    """

    def __init__(self, model: MultiTaskModel, plan: FreezePlan, every: int) -> None:
        if every < 1:
            raise ValueError("unfreeze_every must be >= 1")
        self.model = model
        self.plan = plan
        self.every = every
        #: The groups released so far: ``{"after_epoch": e, "group": name}``, top-down.
        self.released: list[dict[str, Any]] = []

    def released_after(self, epochs: int) -> int:
        """How many groups are released once ``epochs`` epochs are done."""
        return min(self.plan.frozen, epochs // self.every)

    def sync(self, epochs: int) -> None:
        """Release the groups due after ``epochs`` completed epochs."""
        target = self.released_after(epochs)
        if target == self.plan.released:
            return
        for k in range(len(self.released), target):
            group = self.plan.groups[self.plan.frozen - 1 - k]
            self.released.append({"after_epoch": (k + 1) * self.every, "group": group.name})
        self.plan.apply(self.model, target)

    def settle(self, epochs: int) -> None:
        """After training for ``epochs`` epochs: undo the releases due after the last epoch,
        which no epoch trained (the record then lists the layers that did train)."""
        trained = self.released_after(max(epochs - 1, 0))
        del self.released[trained:]
        self.plan.apply(self.model, trained)

    def __call__(self, trainer: Trainer, record: EpochRecord) -> None:
        self.sync(trainer.epoch)

    def before_step(self, trainer: Trainer, batch: Batch) -> None:
        self.sync(trainer.epoch)
