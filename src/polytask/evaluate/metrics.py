"""Per-task metrics from torchmetrics, computed over valid labels only.

Each metric is a torchmetrics class; its ``higher_is_better`` attribute gives the direction used
by early stopping and Δm. Regression metrics are computed in the target's original unit (days,
dollars), not on the standardised scale the network learns.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from polytask.tasks import Task

if TYPE_CHECKING:  # torchmetrics is imported when a metric is built (seconds of CPU)
    from torchmetrics import Metric


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


def metric_range(task: Task, name: str) -> tuple[float, float]:
    """The values metric ``name`` of ``task`` can take (AUROC: [0, 1], MAE: [0, inf), R²:
    (-inf, 1]), read from the torchmetrics class's plot bounds; unbounded sides are infinite.
    Confidence intervals are clipped to it."""
    metric = task.spec.metric_for_direction(task, name)
    low = getattr(metric, "plot_lower_bound", None)
    high = getattr(metric, "plot_upper_bound", None)
    return (
        -math.inf if low is None else float(low),
        math.inf if high is None else float(high),
    )


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
        metric = _reusable_metric(task, name, preds.device)
        metric.update(preds, tgt)
        result[name] = float(metric.compute())
    return result


#: Metric objects kept for reuse, per thread (a metric holds the state of one computation).
_CACHE = threading.local()


def _reusable_metric(task: Task, name: str, device: torch.device) -> Metric:
    """``task``'s metric ``name``, reset: building a torchmetrics object (an ``nn.Module``
    with deep-copied defaults) costs more than computing it on a validation split, and the
    trainer computes every metric after every epoch. Objects are shared by tasks of the same
    kind and output count (what a metric is built from)."""
    cache: dict[tuple[str, str, int], Metric] = getattr(_CACHE, "metrics", None) or {}
    _CACHE.metrics = cache
    spec = task.spec
    key = (type(spec).__qualname__, name, spec.n_outputs(task))
    metric = cache.get(key)
    if metric is None:
        metric = cache[key] = spec.make_metric(task, name)
    metric.reset()
    return metric.to(device)
