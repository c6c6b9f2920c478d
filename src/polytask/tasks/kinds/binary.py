"""``binary``: one label column with two classes; the head outputs one logit per row."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.errors import ConfigError, DataError
from polytask.tasks.kinds.base import (
    LoadArrays,
    LossState,
    MetricFactory,
    Sigmoid,
    TaskLike,
    classes_mismatch,
    labelled_where,
    probabilities,
    torchmetric,
)
from polytask.tasks.kinds.columns import fit_label_classes, label_codes

# Pairs whose positive member is obvious; any other two labels need an explicit ``positive``.
_OBVIOUS_POSITIVE = {
    ("0", "1"): "1",
    ("false", "true"): "true",
    ("no", "yes"): "yes",
    ("n", "y"): "y",
    ("negative", "positive"): "positive",
}


class Binary(Sigmoid):
    """Two classes ``[negative, positive]``; a logit per row (squeezed to ``[B]``)."""

    name = "binary"
    losses = ("bce",)
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "auroc": lambda n: torchmetric("classification", "BinaryAUROC")(),
        "accuracy": lambda n: torchmetric("classification", "BinaryAccuracy")(),
        "f1": lambda n: torchmetric("classification", "BinaryF1Score")(),
        "average_precision": lambda n: torchmetric("classification", "BinaryAveragePrecision")(),
    }
    squeeze_dim = -1
    accepts_classes = True
    accepts_pos_weight = True
    accepts_positive = True

    def check_classes(self, task: TaskLike, classes: list[str], where: str) -> None:
        if len(classes) != 2:
            raise ConfigError(f"{where}: a binary task has exactly 2 classes")

    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        def order(classes: list[str], where: str, column: str) -> list[str]:
            return _binary_classes(task, classes, where, column)

        return {"classes": fit_label_classes(task, table, train_rows, source, order)}

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        codes, valid = label_codes(task, table, source)
        return torch.from_numpy(codes.astype(np.float32)), torch.from_numpy(valid)

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        labels = np.where(rng.random(n) < 0.5, "yes", "no").astype(object)
        labels[rng.random(n) < 0.2] = None
        labels[0], labels[1], labels[2] = "yes", "no", None
        return {"target": "y"}, pd.DataFrame({"y": labels})

    def pos_weight_tensor(self, task: TaskLike) -> Tensor | None:
        pw = super().pos_weight_tensor(task)
        return None if pw is None else pw[0]

    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        out, tgt = output[mask], target[mask]
        return F.binary_cross_entropy_with_logits(out, tgt, pos_weight=state.pos_weight)

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        out, tgt = output[mask], target[mask]
        return torch.sigmoid(out), tgt.long()

    def degenerate(self, name: str, target: Tensor) -> bool:
        """AUROC and average precision are undefined when the labels hold one class."""
        if name not in ("auroc", "average_precision"):
            return False
        return bool(target.min() == target.max())

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        assert task.classes is not None
        classes = np.array(task.classes, dtype=object)
        p = probabilities(output, torch.sigmoid)
        labels = labelled_where(classes[(p >= 0.5).astype(np.int64)], np.isfinite(p))
        return {task.name: labels, f"{task.name}_proba": p}

    def teacher_mismatch(self, student: TaskLike, teacher: TaskLike) -> str | None:
        return classes_mismatch(student, teacher)


def _binary_classes(task: TaskLike, classes: list[str], where: str, column: str) -> list[str]:
    if len(classes) != 2:
        raise DataError(
            f"{where}: column '{column}' has {len(classes)} distinct labels {classes[:6]}; "
            "a binary task needs exactly 2 (use kind = 'multiclass')"
        )
    if task.classes is not None and task.positive is None:
        return classes  # declared as [negative, positive]
    if task.positive is not None:
        if task.positive not in classes:
            raise DataError(f"{where}: positive label {task.positive!r} not among {classes}")
        return [c for c in classes if c != task.positive] + [task.positive]
    key = tuple(sorted(c.lower() for c in classes))
    positive = _OBVIOUS_POSITIVE.get((key[0], key[1]))
    if positive is None:
        raise DataError(
            f"{where}: cannot tell which of {classes} is the positive label; "
            "set positive = '...' for this task"
        )
    return sorted(classes, key=lambda c: c.lower() == positive)
