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
from polytask.models.heads import stacked_outputs
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
        #: Tasks with equal keys compute their losses stacked (None: always on its own): the
        #: kind's loss is a plain mean of unit losses and the weight tensors are equal.
        self.stack_key: tuple[object, ...] | None = None
        if self.spec.mean_of_units and self.class_weights is None:
            pw = None if self.pos_weight is None else tuple(self.pos_weight.flatten().tolist())
            self.stack_key = (self.spec.name, self.name, pw)

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
    """Losses of the tasks that have at least one valid label in this batch, in ``losses``'
    order.

    Tasks whose losses can be stacked (same kind, loss and weights, same shapes: see
    :attr:`TaskLoss.stack_key`) are computed in one vectorised pass, with one host
    synchronisation for the group instead of one per task; the others one by one. The stacked
    value is the masked sum of the unit losses over the count of valid units, the mean the
    per-task path takes (equal up to float summation order)."""
    groups: dict[tuple[object, ...], list[str]] = {}
    for name, loss_fn in losses.items():
        if loss_fn.stack_key is None:
            key: tuple[object, ...] = (name,)
        else:
            out, tgt, mask = outputs[name], targets[name], masks[name]
            key = (loss_fn.stack_key, out.shape, out.dtype, tgt.shape, tgt.dtype, mask.shape)
        groups.setdefault(key, []).append(name)
    found: dict[str, Tensor] = {}
    for names in groups.values():
        if len(names) == 1:
            value = losses[names[0]](outputs[names[0]], targets[names[0]], masks[names[0]])
            if value is not None:
                found[names[0]] = value
            continue
        stacked = _stacked_losses(losses[names[0]], names, outputs, targets, masks)
        found.update(stacked)
    return {name: found[name] for name in losses if name in found}


def _stacked_losses(
    loss: TaskLoss,
    names: list[str],
    outputs: dict[str, Tensor],
    targets: dict[str, Tensor],
    masks: dict[str, Tensor],
) -> dict[str, Tensor]:
    """The losses of ``names`` (tasks with ``loss``'s stack key) from one ``[K, ...]`` pass.

    When the outputs are rows of one batched head pass (:func:`stacked_outputs`), that
    ``[K, ...]`` tensor is used as it is and the K losses come out of one autograd node which
    tells the heads whose loss received a gradient; otherwise the outputs are stacked and the
    losses unbound. Both compute the same numbers."""
    mask = torch.stack([masks[n] for n in names])
    counts = mask.flatten(1).sum(dim=1)
    present = counts.tolist()  # the group's one host synchronisation
    if not all(present):
        # A task without a label stays out of the graph altogether, as on the per-task path:
        # its head must get no gradient (None, not zeros), or weight decay would move it.
        keep = [i for i, c in enumerate(present) if c > 0]
        names, mask, counts = [names[i] for i in keep], mask[keep], counts[keep]
        if not names:
            return {}
    # A missing label's placeholder may be anything (NaN included): replace it before the loss,
    # so neither the value nor the gradient of a masked unit can be NaN.
    target = torch.stack([targets[n] for n in names])
    target = torch.where(mask, target, torch.zeros((), dtype=target.dtype))
    rows = stacked_outputs([outputs[n] for n in names])
    output = rows.value if rows is not None else torch.stack([outputs[n] for n in names])
    units = loss.spec.unit_losses(loss, output, target)
    units = torch.where(mask, units, torch.zeros((), dtype=units.dtype))
    values = units.flatten(1).sum(dim=1) / counts
    per_task = rows.split(values) if rows is not None else values.unbind()
    return dict(zip(names, per_task, strict=True))


def loss_denominator(loss: TaskLoss, target: Tensor, mask: Tensor) -> Tensor:
    """What ``loss``'s mean over a batch divides by: the number of valid units, or with class
    weights the sum of the valid units' weights (``nn.CrossEntropyLoss``'s weighted mean).
    Data parallelism rescales each rank's mean by its share of the global denominator, so the
    ranks' losses add up to the global batch's mean (:mod:`polytask.distributed`)."""
    if loss.class_weights is None:
        return mask.sum().to(torch.float64)
    weights = loss.class_weights.to(target.device, torch.float64)
    safe = torch.where(mask, target, torch.zeros((), dtype=target.dtype, device=target.device))
    return torch.where(mask, weights[safe.long()], torch.zeros((), dtype=torch.float64)).sum()


class BatchLoss(Protocol):
    """What the trainer calls for a training step's per-task losses: the model's ``outputs``
    on ``batch`` and the fraction of training done (``progress`` in [0, 1], for schedules such
    as teacher annealing). Tasks without a loss in this batch are left out.

    :meth:`denominators` gives, per task, what that mean divides by (0 for a task without a
    loss), so that a data-parallel run can turn each rank's mean into its share of the global
    batch's mean."""

    def __call__(
        self, outputs: dict[str, Tensor], batch: Batch, progress: float
    ) -> dict[str, Tensor]: ...

    def denominators(self, outputs: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]: ...


class LabelLoss:
    """The ordinary :class:`BatchLoss`: each task's loss against its labels."""

    def __init__(self, tasks: list[Task]) -> None:
        self.losses = {t.name: TaskLoss(t) for t in tasks}

    def __call__(
        self, outputs: dict[str, Tensor], batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        return task_losses(self.losses, outputs, batch.targets, batch.masks)

    def denominators(self, outputs: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        return {
            name: loss_denominator(loss, batch.targets[name], batch.masks[name])
            for name, loss in self.losses.items()
        }
