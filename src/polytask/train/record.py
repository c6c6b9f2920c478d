"""What an epoch of training records: the running sums the step adds to (:class:`EpochStats`,
checkpointed with a mid-epoch resume point) and the finished epoch's :class:`EpochRecord`, one
row of the metrics log."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


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
    #: Set by the early-stopping callback: the epoch improved the criterion.
    best: bool = False
    #: Mean norm of each task's gradient of the shared parameters (or of the shared
    #: representation in that engine mode) over the steps that measured it.
    grad_norms: dict[str, float] = field(default_factory=dict)
    #: From the same measured gradients (see :mod:`polytask.balance.diagnostics`): the mean
    #: cosine of each task pair's gradients ("a|b", a before b in task order), the fraction of
    #: measured steps on which that cosine was negative, and each task's mean share of the
    #: combined update ``w_k (G w)_k / (wᵀ G w)`` (0 on measured steps where the task took no
    #: part; the shares sum to 1 and a negative one means the task's gradient opposed the
    #: update). GradDrop's shares are of the unweighted sum before its sign dropout. Filled by
    #: the gradient-diagnostics callback (:mod:`polytask.train.callbacks.diagnostics`).
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
    #: Steps skipped for a non-finite loss or gradient (``train.nonfinite = "skip"``).
    skipped_steps: int = 0


class EpochStats:
    """Running sums of one epoch's steps, checkpointed with a mid-epoch resume point."""

    def __init__(self, tasks: list[str], sources: list[str]) -> None:
        self.loss_sum = {t: torch.zeros(()) for t in tasks}
        self.weight_sum = {t: 0.0 for t in tasks}
        self.steps_with = {t: 0 for t in tasks}
        self.seen = {t: 0 for t in tasks}
        self.source_rows = {s: 0 for s in sources}
        self.scheduled = {t: 0 for t in tasks}
        #: Batches drawn, optimiser steps taken and steps skipped as non-finite (a batch
        #: without a label for a trained task takes no step): an epoch must take one.
        self.steps = {"drawn": 0, "taken": 0, "skipped": 0}

    def state(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in vars(self).items()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from ``state``, which may hold other keys (the callbacks' running sums)."""
        for key in list(vars(self)):
            if key == "steps" and key not in state:
                continue  # a checkpoint written before the step counts: they start at 0
            setattr(self, key, dict(state[key]))

    def add_step(
        self, losses: dict[str, Tensor], weights: dict[str, float], masks: dict[str, Tensor]
    ) -> None:
        """Accumulate one optimiser step's losses, weights and labelled examples."""
        if not losses:
            return
        names = list(losses)
        # One stacked add and one count for all tasks, not a few tensor ops per task (with 100
        # tasks those cost more than the step's arithmetic); the same float32 sums. Out of
        # place: the sums move to the losses' device (no copy back per step).
        with torch.no_grad():
            values = torch.stack(list(losses.values()))
            before = torch.stack([self.loss_sum[n].to(values.device) for n in names])
            self.loss_sum.update(zip(names, (before + values).unbind(), strict=True))
        rows = labelled_counts([masks[n] for n in names])
        for name, count in zip(names, rows, strict=True):
            self.weight_sum[name] += weights[name]
            self.steps_with[name] += 1
            self.seen[name] += count

    def summary(self) -> tuple[dict[str, float], dict[str, float]]:
        """Mean loss and mean weight of each task over its steps (NaN: no step)."""
        n = self.steps_with
        loss = {k: float(v) / n[k] if n[k] else math.nan for k, v in self.loss_sum.items()}
        weight = {k: v / n[k] if n[k] else math.nan for k, v in self.weight_sum.items()}
        return loss, weight


def labelled_counts(masks: list[Tensor]) -> list[int]:
    """:func:`labelled_rows` of each mask, the one-label-per-row masks of a batch counted in
    one reduction and one transfer."""
    flat = [m for m in masks if m.dim() == 1]
    if len(flat) < 2 or len(flat) < len(masks) or len({m.shape for m in flat}) > 1:
        return [labelled_rows(m) for m in masks]
    counts: list[int] = torch.stack(flat).sum(dim=1).tolist()
    return counts


def labelled_rows(mask: Tensor) -> int:
    """Examples with at least one valid label (multilabel masks have one column per label,
    per-pixel masks one entry per pixel)."""
    if mask.dim() == 1:  # one label per row: a single reduction (this runs every step)
        return int(mask.sum())
    return int(mask.reshape(mask.shape[0], -1).any(dim=1).sum())
