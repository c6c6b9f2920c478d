"""Per-task losses with missing labels masked out.

A label is missing when its mask entry is False. The task's loss is the mean over its valid
labels only, following PyTorch's own conventions for weights (``pos_weight`` scales positive
terms; multiclass ``class_weights`` make it the weighted mean, as ``nn.CrossEntropyLoss`` does).
A batch in which the task has no valid label yields ``None``: no loss and no gradient, rather
than a zero that would still enter a balancer's statistics.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from polytask.data.tensors import Batch
from polytask.tasks import Task


class TaskLoss:
    """The loss of one task, holding its weight tensors so the hot loop allocates nothing.
    The computation is the task kind's (:meth:`polytask.tasks.Kind.loss`)."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.kind = task.kind
        self.spec = task.spec
        self.name = task.loss_name
        self.pos_weight: Tensor | None = self.spec.pos_weight_tensor(task)
        self.class_weights: Tensor | None = (
            torch.tensor(task.class_weights, dtype=torch.float32)
            if task.class_weights is not None
            else None
        )

    def __call__(self, output: Tensor, target: Tensor, mask: Tensor) -> Tensor | None:
        """Mean loss over the valid labels of a batch, or ``None`` if there are none."""
        return self.spec.loss(self, output, target, mask)


def unit_losses(loss: TaskLoss, output: Tensor, target: Tensor) -> Tensor:
    """``loss``'s value for every unit of a batch, unreduced and unmasked: one per row
    (binary, multiclass, regression), per row and label (multilabel) or per pixel
    (segmentation ``[B, H, W]``, dense regression). The caller masks and averages; a class
    weight multiplies its unit's value (so a mean of units is not the weighted mean
    :class:`TaskLoss` takes)."""
    return loss.spec.unit_losses(loss, output, target)


def task_losses(
    losses: dict[str, TaskLoss],
    outputs: dict[str, Tensor],
    targets: dict[str, Tensor],
    masks: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Losses of the tasks that have at least one valid label in this batch."""
    result: dict[str, Tensor] = {}
    for name, loss_fn in losses.items():
        value = loss_fn(outputs[name], targets[name], masks[name])
        if value is not None:
            result[name] = value
    return result


class BatchLoss(Protocol):
    """What the trainer calls for a training step's per-task losses: the model's ``outputs``
    on ``batch`` and the fraction of training done (``progress`` in [0, 1], for schedules such
    as teacher annealing). Tasks without a loss in this batch are left out."""

    def __call__(
        self, outputs: dict[str, Tensor], batch: Batch, progress: float
    ) -> dict[str, Tensor]: ...


class LabelLoss:
    """The ordinary :class:`BatchLoss`: each task's loss against its labels."""

    def __init__(self, tasks: list[Task]) -> None:
        self.losses = {t.name: TaskLoss(t) for t in tasks}

    def __call__(
        self, outputs: dict[str, Tensor], batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        return task_losses(self.losses, outputs, batch.targets, batch.masks)
