"""Per-task metrics from torchmetrics, computed over valid labels only.

Each metric is a torchmetrics class; its ``higher_is_better`` attribute gives the direction used
by early stopping and Δm. Regression metrics are computed in the target's original unit (days,
dollars), not on the standardised scale the network learns.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassJaccardIndex,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelF1Score,
)
from torchmetrics.regression import (
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredError,
    R2Score,
)

from polytask.tasks import Task

# Multilabel targets use this value for missing entries; torchmetrics skips it.
_IGNORE = -1

MetricFactory = Callable[[Task], Metric]

_FACTORIES: dict[str, dict[str, MetricFactory]] = {
    "binary": {
        "auroc": lambda t: BinaryAUROC(),
        "accuracy": lambda t: BinaryAccuracy(),
        "f1": lambda t: BinaryF1Score(),
        "average_precision": lambda t: BinaryAveragePrecision(),
    },
    "multiclass": {
        "accuracy": lambda t: MulticlassAccuracy(num_classes=t.n_outputs, average="micro"),
        "f1": lambda t: MulticlassF1Score(num_classes=t.n_outputs, average="macro"),
        "auroc": lambda t: MulticlassAUROC(num_classes=t.n_outputs, average="macro"),
    },
    "multilabel": {
        "auroc": lambda t: MultilabelAUROC(
            num_labels=t.n_outputs, average="macro", ignore_index=_IGNORE
        ),
        "f1": lambda t: MultilabelF1Score(
            num_labels=t.n_outputs, average="macro", ignore_index=_IGNORE
        ),
        "accuracy": lambda t: MultilabelAccuracy(
            num_labels=t.n_outputs, average="micro", ignore_index=_IGNORE
        ),
    },
    "regression": {
        "mae": lambda t: MeanAbsoluteError(),
        "rmse": lambda t: MeanSquaredError(squared=False),
        "r2": lambda t: R2Score(),
    },
    # Per-pixel kinds are scored over every valid pixel of the split pooled together, the
    # convention of segmentation and depth benchmarks (mIoU from the pooled confusion matrix;
    # abs_rel = mean |pred - true| / |true|, Eigen, Puhrsch & Fergus, NeurIPS 2014).
    "segmentation": {
        "miou": lambda t: MulticlassJaccardIndex(num_classes=t.n_outputs, average="macro"),
        "pixel_accuracy": lambda t: MulticlassAccuracy(num_classes=t.n_outputs, average="micro"),
    },
    "dense_regression": {
        "abs_rel": lambda t: MeanAbsolutePercentageError(),
        "mae": lambda t: MeanAbsoluteError(),
        "rmse": lambda t: MeanSquaredError(squared=False),
    },
}


def make_metric(task: Task, name: str) -> Metric:
    """The torchmetrics object computing metric ``name`` for ``task``."""
    return _FACTORIES[task.kind][name](task)


def higher_is_better(task: Task, name: str) -> bool:
    """Direction of metric ``name`` for ``task``, read from the torchmetrics class.

    Works before the data is read: a class-count metric is built with two placeholder
    classes when the task's classes are not known yet (the direction does not depend on them).
    """
    if task.kind in ("multiclass", "segmentation") and not task.classes:
        task = dataclasses.replace(task, classes=["0", "1"])
    flag = make_metric(task, name).higher_is_better
    if flag is None:  # pragma: no cover - every metric we register declares it
        raise ValueError(f"metric {name!r} declares no direction")
    return bool(flag)


def to_original_units(task: Task, values: Tensor) -> Tensor:
    """Undo the standardisation of a regression target (identity for other kinds)."""
    if task.kind not in ("regression", "dense_regression"):
        return values
    mean = task.target_mean if task.target_mean is not None else 0.0
    std = task.target_std if task.target_std is not None else 1.0
    return values * std + mean


def _degenerate(task: Task, name: str, target: Tensor) -> bool:
    """AUROC is undefined when the valid labels hold a single class."""
    if name not in ("auroc", "average_precision") or target.numel() == 0:
        return target.numel() == 0
    if task.kind == "binary":
        return bool(target.min() == target.max())
    return False


def compute_metrics(task: Task, output: Tensor, target: Tensor, mask: Tensor) -> dict[str, float]:
    """All of ``task``'s metrics over the valid labels (NaN where a metric is undefined)."""
    result: dict[str, float] = {}
    if task.kind == "segmentation":
        # [N, C, H, W] logits -> one row of C logits per valid pixel.
        pixels = output.movedim(1, -1)[mask]
        preds, tgt = pixels.argmax(dim=-1), target[mask]
    elif task.kind == "dense_regression":
        preds, tgt = to_original_units(task, output[mask]), to_original_units(task, target[mask])
    elif task.kind == "multilabel":
        preds = torch.sigmoid(output)
        tgt = torch.where(mask, target, torch.full_like(target, _IGNORE)).long()
        valid_rows = mask.any(dim=1)
        preds, tgt = preds[valid_rows], tgt[valid_rows]
    else:
        out, tgt = output[mask], target[mask]
        if task.kind == "binary":
            preds, tgt = torch.sigmoid(out), tgt.long()
        elif task.kind == "multiclass":
            preds = torch.softmax(out, dim=-1)
        else:
            preds, tgt = to_original_units(task, out), to_original_units(task, tgt)
    for name in task.metric_names:
        if tgt.shape[0] == 0 or _degenerate(task, name, tgt):
            result[name] = math.nan
            continue
        metric = make_metric(task, name)
        metric.update(preds, tgt)
        result[name] = float(metric.compute())
    return result
