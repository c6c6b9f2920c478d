"""Reading target columns, shared by the kinds: labels as strings, numbers, 0/1 columns.

Missing labels (NaN, None, empty or blank strings, and the table's ``na_values``) are masked,
never imputed. Class labels are compared as strings so that ``1``, ``1.0`` and ``"1"`` in a CSV
all mean the same class.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polytask.errors import DataError
from polytask.tasks.kinds.base import TaskLike, check_magnitude


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


def marked_missing(series: pd.Series, markers: list[str | int | float]) -> np.ndarray:
    """A boolean array of the cells of ``series`` holding one of ``markers`` (a task's
    ``missing`` labels), compared as text as class labels are: ``3`` matches 3, 3.0 and "3"."""
    wanted = {_label_text(m) for m in markers}
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    hit = np.array([_label_text(u) in wanted for u in uniques] + [False], dtype=bool)
    marked: np.ndarray = hit[codes]  # code -1 (already missing) picks the trailing False
    return marked


def numeric(series: pd.Series, source: str) -> np.ndarray:
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


def binary_column(series: pd.Series, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A 0/1 label column as float32 values and a validity mask."""
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


def fit_label_classes(
    task: TaskLike,
    table: pd.DataFrame,
    train_rows: np.ndarray,
    source: str,
    order: Callable[[list[str], str, str], list[str]],
) -> list[str]:
    """The class labels of a label column: declared ones (every label must be among them) or
    those seen in the table, put in the kind's ``order(classes, where, column)``."""
    where = f"{source}: task '{task.name}'"
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
    classes = order(classes, where, column)
    if task.class_weights is not None and len(task.class_weights) != len(classes):
        raise DataError(
            f"{where}: class_weights has {len(task.class_weights)} values for "
            f"{len(classes)} classes {classes}"
        )
    return classes


def label_codes(task: TaskLike, table: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Class indices of a label column (0 where missing) and the validity mask."""
    column = task.targets[0]
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
    return np.where(valid, codes, 0), valid


def standardised(
    task: TaskLike, values: np.ndarray, valid: np.ndarray, source: str
) -> tuple[Tensor, Tensor]:
    """Values on the task's standard scale (0 where invalid) and the validity mask; a
    :class:`DataError` naming the column when a valid value is too large to standardise (a
    validation row of 1e308 would otherwise become an infinite float32 target)."""
    check_magnitude(np.where(valid, values, 0.0), f"{source}: task '{task.name}'", task.targets[0])
    mean = task.target_mean or 0.0
    std = task.target_std or 1.0
    scaled = np.where(valid, (values - mean) / std, 0.0).astype(np.float32)
    return torch.from_numpy(scaled), torch.from_numpy(valid)
