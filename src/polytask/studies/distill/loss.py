"""The distillation loss: each task's labels mixed with a teacher's outputs.

For a task with a teacher, every *unit* of a batch (a row; a row and label for multilabel
tasks; a pixel for per-pixel kinds) has a label loss ``l`` (the task's own loss, see
:func:`polytask.losses.unit_losses`) where it is labelled, and a teacher loss ``d``:

* classification kinds: ``T² · KL(p_teacher^T ‖ p_student^T)``, the divergence between the
  teacher's and the student's distributions softened by the temperature ``T`` (softmax of
  ``logits / T``; a Bernoulli per output for binary and multilabel tasks), scaled by ``T²``
  so that its gradients keep their size as ``T`` changes (Hinton, Vinyals & Dean, 2015,
  "Distilling the Knowledge in a Neural Network");
* regression kinds: the squared difference to the teacher's prediction, in the student's
  standardised units.

A labelled unit costs ``λ l + (1 - λ) d``; an unlabelled one ``d`` (when the teacher fills in
missing labels) or nothing. The task's loss is the mean over the units that cost something.
With teacher annealing ``λ`` rises linearly from 0 (teacher only) at the first step to 1
(labels only) at the last (Clark, Luong, Khandelwal, Manning & Le, ACL 2019, "BAM!
Born-Again Multi-Task Networks for Natural Language Understanding"); otherwise ``λ`` is the
configured label weight. Tasks without a teacher keep their ordinary label loss.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from polytask.data.tensors import Batch
from polytask.losses import TaskLoss, loss_denominator, unit_losses
from polytask.tasks import KINDS, Task
from polytask.tasks.kinds.tokens import fit_length


def label_weight(progress: float, anneal: bool, constant: float) -> float:
    """The labels' weight ``λ`` at ``progress`` (fraction of training done, 0 to 1)."""
    if anneal:
        return min(max(progress, 0.0), 1.0)
    return constant


def teacher_units(kind: str, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """The teacher loss ``d`` of every unit (unreduced; see the module docstring), as the
    task kind computes it (:meth:`polytask.tasks.Kind.teacher_units`)."""
    return KINDS.get(kind).teacher_units(student, teacher, temperature)


class DistillationLoss:
    """A :class:`polytask.losses.BatchLoss` mixing labels and teacher outputs per task."""

    def __init__(
        self,
        tasks: list[Task],
        taught: Collection[str],
        *,
        temperature: float,
        anneal: bool,
        label_weight: float,
        fill_missing: bool,
    ) -> None:
        self.losses = {t.name: TaskLoss(t) for t in tasks}
        self.taught = set(taught)
        self.temperature = temperature
        self.anneal = anneal
        self.constant = label_weight
        self.fill_missing = fill_missing

    def __call__(
        self, outputs: dict[str, Tensor], batch: Batch, progress: float
    ) -> dict[str, Tensor]:
        lam = label_weight(progress, self.anneal, self.constant)
        result: dict[str, Tensor] = {}
        for name, loss in self.losses.items():
            out, tgt, mask = outputs[name], batch.targets[name], batch.masks[name]
            if name not in self.taught:
                value = loss(out, tgt, mask)
            else:
                value = self.task_loss(loss, out, tgt, mask, batch.soft[name], lam)
            if value is not None:
                result[name] = value
        return result

    def denominators(self, outputs: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        """Per task, the count of units its mixed mean is taken over (the label loss's
        denominator for an untaught task)."""
        found: dict[str, Tensor] = {}
        for name, loss in self.losses.items():
            out, tgt, mask = outputs[name], batch.targets[name], batch.masks[name]
            if name not in self.taught:
                found[name] = loss_denominator(loss, tgt, mask)
                continue
            with torch.no_grad():
                d = _teacher_units(loss, out, batch.soft[name], self.temperature, mask)
            labelled = _unit_mask(mask, d)
            counted = labelled if not self.fill_missing else _all_units(loss, out, labelled)
            found[name] = counted.sum().to(torch.float64)
        return found

    def task_loss(
        self, loss: TaskLoss, out: Tensor, tgt: Tensor, mask: Tensor, teacher: Tensor, lam: float
    ) -> Tensor | None:
        """One task's mixed loss over a batch, or ``None`` when no unit costs anything."""
        d = _teacher_units(loss, out, teacher, self.temperature, mask)
        labelled = _unit_mask(mask, d)
        # Unlabelled units' label losses are computed but unused; a placeholder target that is
        # not finite would still poison the gradient through torch.where, so it is zeroed.
        safe = torch.where(mask, tgt, torch.zeros_like(tgt))
        mixed = torch.where(labelled, lam * unit_losses(loss, out, safe) + (1.0 - lam) * d, d)
        counted = labelled if not self.fill_missing else _all_units(loss, out, labelled)
        if not bool(counted.any()):
            return None
        return mixed[counted].mean()


def _teacher_units(
    loss: TaskLoss, out: Tensor, teacher: Tensor, temperature: float, mask: Tensor
) -> Tensor:
    """The kind's teacher units, laid out like the label mask when the kind gives one per row
    (:attr:`polytask.tasks.Kind.teacher_per_row`): the row's teacher loss on its first unit,
    0 on the others, so a labelled row costs ``λ Σ l + (1 - λ) d`` over its label units."""
    d = loss.spec.teacher_units(out, teacher, temperature)
    if not loss.spec.teacher_per_row:
        return d
    rest = d.new_zeros(d.shape[0], mask.shape[1] - 1)
    return torch.cat([d.reshape(-1, 1), rest], dim=1)


def _unit_mask(mask: Tensor, units: Tensor) -> Tensor:
    """The label mask broadcast to the units' shape (a row mask for per-row kinds; per-pixel
    and per-label kinds' units already have the mask's shape)."""
    if mask.shape == units.shape:
        return mask
    if mask.dim() == units.dim() == 2 and mask.shape[1] not in (1, units.shape[1]):
        # Token-level: [B, T] label masks, [B, T'] units of a batch trimmed to its longest
        # sentence (polytask.tasks.kinds.tokens): past T' there are no words.
        return fit_length(mask, units.shape[1], False)
    if mask.dim() == units.dim():
        return mask.expand_as(units)
    return mask.reshape(mask.shape + (1,) * (units.dim() - mask.dim())).expand_as(units)


def _all_units(loss: TaskLoss, out: Tensor, units: Tensor) -> Tensor:
    """Every unit of the batch (``fill_missing``: the teacher teaches unlabelled units too),
    as a bool tensor of the shape of ``units`` (the labelled units' mask); for a token-level
    kind, every word, not the padding past each sentence's end (its outputs are exact zeros
    there)."""
    if loss.spec.token_level:
        return (out != 0).flatten(2).any(dim=-1)[:, : units.shape[1]]
    if loss.spec.teacher_per_row:
        # ``units`` is the labelled units' mask: those, and every row's first unit (its
        # teacher loss); not the padding slots of the labels (an image's absent boxes).
        every = units.clone()
        every[:, 0] = True
        return every
    return torch.ones(units.shape, dtype=torch.bool, device=units.device)
