"""Non-finite training: a NaN or infinite loss, gradient or weight stops the run (or, with
``train.nonfinite = "skip"``, the step is skipped) instead of training on to a NaN model.

The check costs one host synchronisation per step (under the stop policy, optionally one
every ``train.nonfinite_check_every`` steps: the steps' values wait on the device and are tested
together, always before a checkpoint, a weight scan and the epoch's end, and the error names the
first bad step; the weights a bad step made non-finite are then never saved): the step's
per-task losses and its gradient norm (the one gradient clipping computes anyway) are summed
into one number whose finiteness is tested (NaN or inf in any term makes the sum non-finite).
Weights are not scanned every step: a non-finite weight makes the next forward pass, hence a
loss, non-finite, and the failure path then scans the weights to name the culprit. The trainer
also scans them after each epoch's last step and before every checkpoint, so nothing
non-finite is ever evaluated as a result or saved.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from polytask.errors import PolytaskError

#: What a message suggests for a diverged run.
ADVICE = (
    "lower train.lr, check the data and the tasks' pos_weight/class_weights for extreme "
    "values, or set train.nonfinite = 'skip' to skip such steps"
)


class TrainingDiverged(PolytaskError):
    """Training met a non-finite loss, gradient or weight."""


def total(tensors: Iterable[Tensor]) -> Tensor:
    """The sum of every entry of ``tensors``, as a float32 scalar: non-finite when any entry
    is (or, a false alarm the failure path sorts out, when finite values near 1e38 overflow).
    Per-tensor sums: unlike a foreach norm, cheap on the CPU, and no concatenated copy."""
    sums = [t.detach().sum().float() for t in tensors]
    return torch.stack(sums).sum() if sums else torch.zeros(())


def _stacked(scalars: list[Tensor]) -> Tensor | None:
    """The single-element ``scalars`` as one float32 vector, detached (None: none); stacked
    before the cast, not per element: a step with 100 tasks has 100 losses."""
    if not scalars:
        return None
    with torch.no_grad():
        return torch.stack([v.reshape(()) for v in scalars]).float()


def describe(value: float) -> str:
    """``nan``, ``inf`` or ``-inf``, as a message names a value."""
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def nonfinite_losses(losses: dict[str, Tensor]) -> str | None:
    """The tasks whose loss is not finite (``task 'a' loss is nan, ...``), or None. Syncs:
    only called when a step already failed."""
    bad = [(k, float(v.detach())) for k, v in losses.items()]
    bad = [(k, v) for k, v in bad if not math.isfinite(v)]
    if not bad:
        return None
    return ", ".join(f"task '{k}' loss is {describe(v)}" for k, v in bad)


def nonfinite_tensor(named: Iterable[tuple[str, Tensor]]) -> str | None:
    """The first of ``named`` holding a non-finite value, or None (floating tensors only)."""
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


class StepSnapshot:
    """The model's buffers (batch-norm statistics, moved by the forward pass) and the
    balancer's state (an EMA, a weight history, advanced by its backward) at the start of a
    step that may be skipped: a skipped step leaves no trace."""

    def __init__(self, model: nn.Module, balancer: nn.Module) -> None:
        self.buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
        self.balancer = {
            k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
            for k, v in balancer.state_dict().items()
        }

    def restore(self, model: nn.Module, balancer: nn.Module) -> None:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(self.buffers[name])
        balancer.load_state_dict(self.balancer)


class NonFiniteGuard:
    """Decides, once per step, whether the step may update the weights (module docstring).

    ``skipped`` counts the run's skipped steps (checkpointed with the trainer's counters);
    ``policy`` is ``train.nonfinite`` and ``max_skipped`` its bound."""

    def __init__(self, policy: str, max_skipped: int | None, every: int = 1) -> None:
        self.policy = policy
        self.max_skipped = max_skipped
        self.skipped = 0
        #: Stop policy: steps between tests; the skip policy must decide every step.
        self.every = 1 if policy == "skip" else every
        #: Deferred steps not tested yet: their loss and norm values (one tensor, on the
        #: device), where they were taken and the tasks they trained.
        self._pending: list[tuple[Tensor, Any, list[str]]] = []

    @property
    def skips(self) -> bool:
        return self.policy == "skip"

    def snapshot(self, model: nn.Module, balancer: nn.Module) -> StepSnapshot | None:
        """What a skipped step must put back (skip policy only; None otherwise)."""
        return StepSnapshot(model, balancer) if self.skips else None

    @staticmethod
    def all_finite(losses: dict[str, Tensor], norms: list[Tensor]) -> bool:
        """The step's single synchronisation: is the sum of the losses and the gradient norms
        finite? (False may be a false alarm of an overflowing sum: the caller re-checks.)"""
        values = _stacked([*losses.values(), *norms])
        return values is None or math.isfinite(values.sum().item())

    @property
    def deferred(self) -> bool:
        """Steps are recorded and tested together (stop policy, ``every`` > 1)."""
        return self.every > 1

    def defer(
        self, losses: dict[str, Tensor], norms: list[Tensor], where: Any, tasks: list[str]
    ) -> bool:
        """Record a step's losses and gradient norms without synchronising; True when
        ``every`` steps are waiting and :meth:`first_failure` is due."""
        values = _stacked([*losses.values(), *norms])
        if values is not None:
            self._pending.append((values, where, tasks))
        return len(self._pending) >= self.every

    def first_failure(self) -> tuple[Any, str] | None:
        """Test the deferred steps at once (one synchronisation): None when all were finite,
        else where the first non-finite one was taken and what was not finite."""
        pending, self._pending = self._pending, []
        if not pending:
            return None
        sums = torch.stack([values.sum() for values, _, _ in pending])
        if bool(torch.isfinite(sums).all()):
            return None
        for values, where, tasks in pending:
            if math.isfinite(float(values.sum())):
                continue
            found = values.tolist()
            bad = [(t, v) for t, v in zip(tasks, found, strict=False) if not math.isfinite(v)]
            if bad:
                return where, ", ".join(f"task '{t}' loss is {describe(v)}" for t, v in bad)
            if not all(math.isfinite(v) for v in found[len(tasks) :]):
                names = ", ".join(f"'{t}'" for t in tasks)
                return where, f"the gradient of tasks {names} is not finite"
        return None  # the sums overflowed on finite values: a false alarm

    def count_skip(self, message: str) -> None:
        """Count a skipped step; raise once more than ``max_skipped`` were skipped."""
        self.skipped += 1
        if self.max_skipped is not None and self.skipped > self.max_skipped:
            raise TrainingDiverged(
                f"{message}; {self.skipped} steps skipped as non-finite, more than "
                f"train.max_skipped = {self.max_skipped}; lower train.lr or check the data"
            )
