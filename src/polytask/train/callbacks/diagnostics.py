"""Gradient diagnostics: each task's gradient norm, the cosines and conflicts of task pairs and
each task's share of the update (:mod:`polytask.balance.diagnostics`), averaged over an epoch.

Gradient-level balancers return the Gramian they weighted with every weight update
(:class:`~polytask.balance.base.BackwardResult`). Loss-level methods never see gradients, so
this callback measures them itself on the first step of each epoch (``K`` extra backward
passes on that batch, before the balancer's backward, leaving ``.grad`` untouched) so every run
logs them. An architecture sharing no parameters (soft sharing) has none to log, nor has a
fine-tuning run whose shared encoder is frozen (autograd cannot differentiate with respect to
nothing).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from polytask.balance.base import BackwardResult
from polytask.balance.diagnostics import TaskGramian, pair_key, task_gradient_gramian
from polytask.train.callbacks.base import TrainerCallback, TrainerView
from polytask.train.record import EpochRecord


class GradientSums:
    """Running sums of one epoch's measured gradients (checkpointed mid-epoch)."""

    def __init__(self, tasks: list[str]) -> None:
        self.norm_sum = {t: 0.0 for t in tasks}
        self.norm_count = {t: 0 for t in tasks}
        pairs = [pair_key(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]
        self.cos_sum = {p: 0.0 for p in pairs}
        self.cos_count = {p: 0 for p in pairs}
        self.conflict_count = {p: 0 for p in pairs}
        self.dominance_sum = {t: 0.0 for t in tasks}
        self.dominance_count = {t: 0 for t in tasks}

    def state(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in vars(self).items()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from ``state``, which may hold other keys (the trainer's running sums)."""
        for key in list(vars(self)):
            setattr(self, key, dict(state[key]))

    def add_norms(self, norms: dict[str, float]) -> None:
        for name, norm in norms.items():
            self.norm_sum[name] += norm
            self.norm_count[name] += 1

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

    def fill(self, record: EpochRecord) -> None:
        """Mean norm per task, mean cosine and conflict fraction per measured pair, mean share
        per task, into ``record``."""
        record.grad_norms = {
            k: v / self.norm_count[k] for k, v in self.norm_sum.items() if self.norm_count[k]
        }
        n = self.cos_count
        record.grad_cosines = {k: v / n[k] for k, v in self.cos_sum.items() if n[k]}
        record.conflicts = {k: v / n[k] for k, v in self.conflict_count.items() if n[k]}
        m = self.dominance_count
        record.dominance = {k: v / m[k] for k, v in self.dominance_sum.items() if m[k]}


class GradientDiagnostics(TrainerCallback):
    """Accumulates the measured gradients of each epoch into its record (module docstring)."""

    def __init__(self, tasks: list[str], measure: bool = True) -> None:
        self.tasks = tasks
        #: Measure loss-level balancers' gradients on each epoch's first step
        #: (``train.diagnostics``); gradient-level balancers' Gramians are logged regardless.
        self.measure = measure
        self.sums = GradientSums(tasks)
        self._measured: TaskGramian | None = None

    def on_epoch_start(self, trainer: TrainerView) -> None:
        self.sums = GradientSums(self.tasks)

    def before_backward(self, trainer: TrainerView, losses: dict[str, Tensor]) -> None:
        self._measured = None
        if (
            self.measure
            and trainer.step_in_epoch == 0
            and not trainer.balancer.needs_gradients
            and (shared := [p for p in trainer.model.shared_parameters() if p.requires_grad])
        ):
            self._measured = task_gradient_gramian(losses, shared)

    def after_step(
        self, trainer: TrainerView, losses: dict[str, Tensor], result: BackwardResult | None
    ) -> None:
        measured, self._measured = self._measured, None
        if result is None:
            return
        gramian, norms = result.gramian, result.grad_norms
        if gramian is None and measured is not None:
            gramian, norms = measured, measured.norms()
        if gramian is not None:
            self.sums.add_gradients(gramian, result.weights)
        self.sums.add_norms(norms)

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        self.sums.fill(record)

    def epoch_state(self) -> dict[str, Any]:
        return self.sums.state()

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        self.sums.load_state(state)
