"""Turning target columns into label tensors and masks, and completing a task from data.

Missing labels (NaN, None, empty or blank strings, and the table's ``na_values``) are masked,
never imputed. Class labels are compared as strings so that ``1``, ``1.0`` and ``"1"`` in a CSV
all mean the same class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polytask.data.arrays import stack_column
from polytask.errors import DataError
from polytask.tasks import Task

# Pairs whose positive member is obvious; any other two labels need an explicit ``positive``.
_OBVIOUS_POSITIVE = {
    ("0", "1"): "1",
    ("false", "true"): "true",
    ("no", "yes"): "yes",
    ("n", "y"): "y",
    ("negative", "positive"): "positive",
}


def _label_text(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def label_strings(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Labels as strings (object array) and a boolean array marking the valid ones."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    texts = np.array([_label_text(u) for u in uniques] + [""], dtype=object)
    labels = texts[codes]  # code -1 (missing) picks the trailing ""
    valid = (codes >= 0) & (labels != "")
    return labels, valid


def _numeric(series: pd.Series, source: str) -> np.ndarray:
    """A float array of a numeric target; text values are an error naming the first one."""
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() & series.notna()
    if series.dtype == object or pd.api.types.is_string_dtype(series):
        bad &= series.astype("string").str.strip().fillna("") != ""
    if bool(bad.any()):
        position = int(np.argmax(bad.to_numpy()))
        raise DataError(
            f"{source}: column '{series.name}' should hold numbers but row "
            f"{series.index[position]} has {series.iloc[position]!r}"
        )
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def fit_task(
    task: Task,
    table: pd.DataFrame,
    train_rows: np.ndarray,
    source: str,
    base_dir: Path | None = None,
) -> Task:
    """Complete ``task`` from data: class labels from the whole table, scale from train rows."""
    where = f"{source}: task '{task.name}'"
    if task.dense:
        return _fit_dense(task, table.iloc[train_rows], source, base_dir)
    if task.kind == "regression":
        y = _numeric(table[task.targets[0]], source)[train_rows]
        y = y[np.isfinite(y)]
        if y.size == 0:
            raise DataError(f"{where}: column '{task.targets[0]}' has no valid value in train")
        std = float(y.std())
        return dataclasses.replace(task, target_mean=float(y.mean()), target_std=std or 1.0)
    if task.kind == "multilabel":
        for col in task.targets:
            _binary_column(table[col], source)
        return task
    labels, valid = label_strings(table[task.targets[0]])
    seen = sorted(set(labels[valid].tolist()))
    column = task.targets[0]
    if task.classes is not None:
        outside = sorted(set(seen) - set(task.classes))
        if outside:
            raise DataError(
                f"{where}: column '{column}' has labels outside the declared classes "
                f"{task.classes}: {outside[:5]}"
            )
        classes = list(task.classes)
    else:
        classes = seen
    train_labels = set(labels[train_rows][valid[train_rows]].tolist())
    if len(train_labels) < 2:
        raise DataError(
            f"{where}: column '{column}' has {len(train_labels)} class(es) "
            f"{sorted(train_labels)} in the training rows; a {task.kind} task needs at least 2"
        )
    if task.kind == "binary":
        classes = _binary_classes(task, classes, where, column)
    if task.class_weights is not None and len(task.class_weights) != len(classes):
        raise DataError(
            f"{where}: class_weights has {len(task.class_weights)} values for "
            f"{len(classes)} classes {classes}"
        )
    return dataclasses.replace(task, classes=classes)


def _binary_classes(task: Task, classes: list[str], where: str, column: str) -> list[str]:
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


def _binary_column(series: pd.Series, source: str) -> tuple[np.ndarray, np.ndarray]:
    labels, valid = label_strings(series)
    lowered = np.char.lower(labels.astype(str))
    pos = np.isin(lowered, ("1", "true", "yes"))
    neg = np.isin(lowered, ("0", "false", "no"))
    bad = valid & ~(pos | neg)
    if bool(bad.any()):
        row = series.index[int(np.argmax(bad))]
        raise DataError(
            f"{source}: label column '{series.name}' should hold 0/1 but row {row} has "
            f"{series.loc[row]!r}"
        )
    return pos.astype(np.float32), valid


def _fit_dense(task: Task, train: pd.DataFrame, source: str, base_dir: Path | None) -> Task:
    """Segmentation: the pixel classes seen in the training maps (unless declared);
    dense regression: mean and standard deviation over the valid training pixels."""
    where = f"{source}: task '{task.name}'"
    column = task.targets[0]
    maps, present = stack_column(train[column], source, base_dir, allow_missing=True)
    maps = maps[present]
    if task.kind == "dense_regression":
        values = maps.astype(np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise DataError(f"{where}: column '{column}' has no valid pixel in train")
        std = float(values.std())
        return dataclasses.replace(task, target_mean=float(values.mean()), target_std=std or 1.0)
    _require_integers(maps, where, column)
    seen = np.unique(maps)
    if task.ignore_index is not None:
        seen = seen[seen != task.ignore_index]
    if task.classes is not None:
        return task
    if seen.size < 2:
        raise DataError(
            f"{where}: column '{column}' has {seen.size} pixel class(es) in the training "
            "rows; a segmentation task needs at least 2"
        )
    # Class k is the pixel value k: declared values must cover 0 .. max so the head's
    # channels line up with the values users see in their masks.
    classes = [str(v) for v in range(int(seen.max()) + 1)]
    return dataclasses.replace(task, classes=classes)


def _require_integers(maps: np.ndarray, where: str, column: str) -> None:
    integral = np.issubdtype(maps.dtype, np.integer) or (
        bool(np.all(np.isfinite(maps))) and bool(np.all(maps == np.round(maps)))
    )
    if not integral:
        raise DataError(f"{where}: column '{column}': segmentation masks hold integer codes")
    if maps.size and maps.min() < 0:
        raise DataError(
            f"{where}: column '{column}': negative pixel value {int(maps.min())}; use "
            "ignore_index for unlabelled pixels"
        )


def _encode_dense(
    task: Task, table: pd.DataFrame, source: str, base_dir: Path | None
) -> tuple[Tensor, Tensor]:
    column = task.targets[0]
    maps, present = stack_column(table[column], source, base_dir, allow_missing=True)
    rows = present.reshape((-1,) + (1,) * (maps.ndim - 1))
    if task.kind == "dense_regression":
        values = maps.astype(np.float64)
        valid = np.isfinite(values) & rows
        mean = task.target_mean or 0.0
        std = task.target_std or 1.0
        scaled = np.where(valid, (values - mean) / std, 0.0).astype(np.float32)
        return torch.from_numpy(scaled), torch.from_numpy(valid)
    where = f"{source}: task '{task.name}'"
    if task.classes is None:
        raise ValueError(f"task {task.name!r} was not fitted: classes unknown")
    _require_integers(maps, where, column)
    codes = maps.astype(np.int64)
    valid = np.broadcast_to(rows, codes.shape).copy()
    if task.ignore_index is not None:
        valid &= codes != task.ignore_index
    n_classes = len(task.classes)
    outside = valid & (codes >= n_classes)
    if bool(outside.any()):
        raise DataError(
            f"{where}: column '{column}' has pixel value {int(codes[outside].max())} outside "
            f"the classes 0..{n_classes - 1}"
        )
    return torch.from_numpy(np.where(valid, codes, 0)), torch.from_numpy(valid)


def encode_targets(
    task: Task, table: pd.DataFrame, source: str, base_dir: Path | None = None
) -> tuple[Tensor, Tensor]:
    """Label tensor and validity mask of ``task`` for every row of ``table``; array-valued
    targets of dense tasks may name files relative to ``base_dir``."""
    if task.dense:
        return _encode_dense(task, table, source, base_dir)
    if task.kind == "multilabel":
        cols = [_binary_column(table[c], source) for c in task.targets]
        y = np.stack([c[0] for c in cols], axis=1)
        m = np.stack([c[1] for c in cols], axis=1)
        return torch.from_numpy(y), torch.from_numpy(m)
    column = task.targets[0]
    if task.kind == "regression":
        values = _numeric(table[column], source)
        valid = np.isfinite(values)
        mean = task.target_mean or 0.0
        std = task.target_std or 1.0
        scaled = np.where(valid, (values - mean) / std, 0.0).astype(np.float32)
        return torch.from_numpy(scaled), torch.from_numpy(valid)
    if task.classes is None:
        raise ValueError(f"task {task.name!r} was not fitted: classes unknown")
    labels, valid = label_strings(table[column])
    index = pd.Index(task.classes)
    codes = index.get_indexer(labels)
    unknown = valid & (codes < 0)
    if bool(unknown.any()):
        bad = sorted(set(labels[unknown].tolist()))
        raise DataError(
            f"{source}: task '{task.name}': column '{column}' has labels outside the "
            f"classes {task.classes}: {bad[:5]}"
        )
    codes = np.where(valid, codes, 0)
    if task.kind == "binary":
        return torch.from_numpy(codes.astype(np.float32)), torch.from_numpy(valid)
    return torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(valid)
