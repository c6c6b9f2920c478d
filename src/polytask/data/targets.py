"""Turning target columns into label tensors and masks, and completing a task from data.

Each task kind fits and encodes its own targets (:meth:`polytask.tasks.Kind.fit`,
:meth:`polytask.tasks.Kind.encode`); this module supplies them the data layer's reader of
array-valued columns (images, ``.npy`` files) for the per-pixel kinds. Missing labels are
masked, never imputed (see :mod:`polytask.tasks.kinds.columns`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from torch import Tensor

from polytask.data.arrays import stack_column
from polytask.tasks import Task
from polytask.tasks.kinds import LoadArrays
from polytask.tasks.kinds.columns import label_strings, marked_missing

__all__ = ["encode_targets", "fit_task", "label_strings"]


def _array_reader(source: str, base_dir: Path | None) -> LoadArrays:
    def load(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        return stack_column(series, source, base_dir, allow_missing=True)

    return load


def without_missing(task: Task, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the cells of ``task``'s label columns that hold one of its ``missing``
    labels blanked (for this task only: the caller's table is not changed)."""
    if not task.missing or task.spec.token_level:
        # Token-level kinds read ``missing`` per word themselves: a cell is a list of labels.
        return table
    columns = {c: table[c] for c in task.targets if c in table.columns}
    blanked = {c: s.mask(marked_missing(s, task.missing)) for c, s in columns.items()}
    out: pd.DataFrame = table.assign(**blanked)
    return out


def fit_task(
    task: Task,
    table: pd.DataFrame,
    train_rows: np.ndarray,
    source: str,
    base_dir: Path | None = None,
) -> Task:
    """Complete ``task`` from data: class labels from the whole table, scale from train rows."""
    table = without_missing(task, table)
    fitted = task.spec.fit(task, table, train_rows, source, _array_reader(source, base_dir))
    return dataclasses.replace(task, **fitted) if fitted else task


def encode_targets(
    task: Task, table: pd.DataFrame, source: str, base_dir: Path | None = None
) -> tuple[Tensor, Tensor]:
    """Label tensor and validity mask of ``task`` for every row of ``table``; array-valued
    targets of dense tasks may name files relative to ``base_dir``."""
    table = without_missing(task, table)
    return task.spec.encode(task, table, source, _array_reader(source, base_dir))
