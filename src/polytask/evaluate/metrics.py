"""Per-task metrics from torchmetrics, computed over valid labels only.

Each metric is a torchmetrics class; its ``higher_is_better`` attribute gives the direction used
by early stopping and Δm. Regression metrics are computed in the target's original unit (days,
dollars), not on the standardised scale the network learns.
"""

from __future__ import annotations

import math

from torch import Tensor
from torchmetrics import Metric

from polytask.tasks import Task


def make_metric(task: Task, name: str) -> Metric:
    """The torchmetrics object computing metric ``name`` for ``task``."""
    return task.spec.make_metric(task, name)


def higher_is_better(task: Task, name: str) -> bool:
    """Direction of metric ``name`` for ``task``, read from the torchmetrics class.

    Works before the data is read: a class-count metric is built with two placeholder
    classes when the task's classes are not known yet (the direction does not depend on them).
    """
    flag = task.spec.metric_for_direction(task, name).higher_is_better
    if flag is None:  # pragma: no cover - every metric we register declares it
        raise ValueError(f"metric {name!r} declares no direction")
    return bool(flag)


def to_original_units(task: Task, values: Tensor) -> Tensor:
    """Undo the standardisation of a regression target (identity for other kinds)."""
    return task.spec.to_original_units(task, values)


def compute_metrics(task: Task, output: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
    """All of ``task``'s metrics over the valid labels (NaN where a metric is undefined, e.g.
    AUROC when the valid labels hold a single class)."""
    spec = task.spec
    result: dict[str, float] = {}
    preds, tgt = spec.metric_inputs(task, output, target, mask)
    for name in task.metric_names:
        if tgt.shape[0] == 0 or tgt.numel() == 0 or spec.degenerate(name, tgt):
            result[name] = math.nan
            continue
        metric = spec.make_metric(task, name)
        metric.update(preds, tgt)
        result[name] = float(metric.compute())
    return result
