"""``binary``: one label column with two classes; the head outputs one logit per row.

A column of more labels becomes a binary task one-vs-rest when ``positive`` names one of them
(or lists several): those rows are positive, every other label negative, and the classes are
:func:`one_vs_rest_classes` (``["not <30", "<30"]``), so predictions say what they mean."""

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
from polytask.tasks.kinds.columns import fit_label_classes, label_codes, label_strings

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

    def validate(self, task: TaskLike, where: str) -> None:
        super().validate(task, where)
        positive = task.positive
        if isinstance(positive, list):
            if not positive or not all(isinstance(v, str) and v.strip() for v in positive):
                raise ConfigError(f"{where}: positive must list at least one non-blank label")
            if len(set(positive)) != len(positive):
                raise ConfigError(f"{where}: positive lists a label twice")
        elif positive is not None and not positive.strip():
            raise ConfigError(f"{where}: positive must be a non-blank label")

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
        if task.positive is not None and task.classes is None:
            labels, valid = label_strings(table[task.targets[0]])
            seen = sorted(set(labels[valid].tolist()))
            if len(positive_values(task.positive)) > 1 or len(seen) > 2:
                where = f"{source}: task '{task.name}'"
                classes = _one_vs_rest(task, labels, valid, seen, train_rows, where)
                return {"classes": classes}

        def order(classes: list[str], where: str, column: str) -> list[str]:
            return _binary_classes(task, classes, where, column)

        return {"classes": fit_label_classes(task, table, train_rows, source, order)}

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        if is_one_vs_rest(task):
            assert task.positive is not None
            labels, valid = label_strings(table[task.targets[0]])
            codes = np.isin(labels, positive_values(task.positive)) & valid
            return torch.from_numpy(codes.astype(np.float32)), torch.from_numpy(valid)
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


def positive_values(positive: str | list[str]) -> list[str]:
    """The label(s) ``positive`` names, as a list."""
    return [positive] if isinstance(positive, str) else list(positive)


def positive_class(positive: str | list[str]) -> str:
    """The name of the positive class a ``positive`` declaration gives: the label itself
    (one label), or the labels joined by `` | `` (several, one-vs-rest)."""
    return " | ".join(positive_values(positive))


def one_vs_rest_classes(positive: str | list[str]) -> list[str]:
    """The ``[negative, positive]`` classes of a one-vs-rest task: ``["not <30", "<30"]``;
    for several labels ``["not (<30 | >30)", "<30 | >30"]``."""
    values = positive_values(positive)
    name = positive_class(positive)
    return [f"not {name}" if len(values) == 1 else f"not ({name})", name]


def is_one_vs_rest(task: TaskLike) -> bool:
    """Whether a fitted binary ``task`` recodes its labels one-vs-rest (its classes are
    :func:`one_vs_rest_classes` of its ``positive``): any label outside ``positive`` is then
    negative, at training and at evaluation alike."""
    return task.positive is not None and task.classes == one_vs_rest_classes(task.positive)


def _one_vs_rest(
    task: TaskLike,
    labels: np.ndarray,
    valid: np.ndarray,
    seen: list[str],
    train_rows: np.ndarray,
    where: str,
) -> list[str]:
    """The classes of a one-vs-rest task, after checking that its positive labels occur, that
    some label is negative, and that the training rows hold both."""
    assert task.positive is not None
    column = task.targets[0]
    values = positive_values(task.positive)
    absent = [v for v in values if v not in seen]
    if absent:
        raise DataError(
            f"{where}: positive label {absent[0]!r} is not in column '{column}' "
            f"(labels: {seen[:8]})"
        )
    if set(seen) <= set(values):
        raise DataError(
            f"{where}: positive = {task.positive!r} covers every label of column '{column}' "
            f"{seen[:8]}; no row is negative"
        )
    train = labels[train_rows][valid[train_rows]]
    n_positive = int(np.isin(train, values).sum())
    if n_positive == 0 or n_positive == len(train):
        missing = "positive" if n_positive == 0 else "negative"
        raise DataError(
            f"{where}: column '{column}' has no {missing} label in the training rows "
            f"(positive = {task.positive!r}); a binary task needs both"
        )
    return one_vs_rest_classes(task.positive)


def _binary_classes(task: TaskLike, classes: list[str], where: str, column: str) -> list[str]:
    if len(classes) != 2:
        raise DataError(
            f"{where}: column '{column}' has {len(classes)} distinct labels {classes[:6]}; "
            "a binary task needs exactly 2 (use kind = 'multiclass', or positive = '...' "
            "for one label against the rest)"
        )
    if task.classes is not None and task.positive is None:
        return classes  # declared as [negative, positive]
    if task.positive is not None:
        label = positive_class(task.positive)
        if label not in classes:
            raise DataError(f"{where}: positive label {label!r} not among {classes}")
        return [c for c in classes if c != label] + [label]
    key = tuple(sorted(c.lower() for c in classes))
    positive = _OBVIOUS_POSITIVE.get((key[0], key[1]))
    if positive is None:
        raise DataError(
            f"{where}: cannot tell which of {classes} is the positive label; "
            "set positive = '...' for this task"
        )
    return sorted(classes, key=lambda c: c.lower() == positive)
