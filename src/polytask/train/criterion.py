"""The validation criterion that early stopping and best-checkpoint selection minimise."""

from __future__ import annotations

import math

from polytask.evaluate.delta import relative_change
from polytask.evaluate.metrics import higher_is_better
from polytask.tasks import Task


class Criterion:
    """A number to minimise from validation losses and metrics.

    ``mean_relative`` (default): the mean over tasks of the signed relative change of each
    task's primary metric against its value after the first epoch (see
    :func:`polytask.evaluate.delta.relative_change`); scale-free, so no task dominates by
    its unit. ``val_loss``: the mean of the per-task validation losses. ``task.metric``: one
    task's metric, negated when higher is better.
    """

    def __init__(self, spec: str, tasks: list[Task]) -> None:
        self.spec = spec
        self.tasks = tasks
        self.primary = {t.name: t.primary for t in tasks}
        self.direction = {
            t.name: {m: higher_is_better(t, m) for m in t.metric_names} for t in tasks
        }

    def __call__(
        self,
        losses: dict[str, float],
        metrics: dict[str, dict[str, float]],
        reference: dict[str, dict[str, float]],
    ) -> float:
        if self.spec == "val_loss":
            return _nanmean(list(losses.values()))
        if self.spec == "mean_relative":
            changes = [
                relative_change(metrics[k][m], reference[k][m], self.direction[k][m])
                for k, m in self.primary.items()
            ]
            value = _nanmean(changes)
            # All primaries undefined (e.g. one class in validation): fall back to the loss.
            return value if not math.isnan(value) else _nanmean(list(losses.values()))
        task, _, metric = self.spec.partition(".")
        value = metrics[task][metric]
        return -value if self.direction[task][metric] else value


def criterion_for_tasks(spec: str, tasks: list[str]) -> str:
    """``spec``, or ``mean_relative`` when it names the metric of a task not among ``tasks``:
    another task's metric cannot select a single-task baseline's checkpoint, while
    ``mean_relative`` over one task ranks epochs by that task's own primary metric."""
    if spec in ("mean_relative", "val_loss") or spec.partition(".")[0] in tasks:
        return spec
    return "mean_relative"


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
