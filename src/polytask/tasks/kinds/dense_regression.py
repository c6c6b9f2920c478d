"""``dense_regression``: a value per pixel of an image input (e.g. depth), learnt
standardised and reported in its own unit."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import Tensor

from polytask.tasks.kinds.base import (
    LoadArrays,
    MetricFactory,
    TaskLike,
    finite_or_nan,
    fitted_scale,
    per_row_column,
    torchmetric,
)
from polytask.tasks.kinds.columns import standardised
from polytask.tasks.kinds.regression import Regression


class DenseRegression(Regression):
    """A value per pixel (``[B, H, W]``); loss, scale and distillation as :class:`Regression`.

    Scored over every valid pixel of the split pooled together, the convention of depth
    benchmarks (abs_rel = mean |pred - true| / |true|, Eigen, Puhrsch & Fergus, NeurIPS 2014).
    """

    name = "dense_regression"
    losses = ("l1", "mse", "huber")
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "abs_rel": lambda n: torchmetric("regression", "MeanAbsolutePercentageError")(),
        "mae": lambda n: torchmetric("regression", "MeanAbsoluteError")(),
        "rmse": lambda n: torchmetric("regression", "MeanSquaredError")(squared=False),
    }
    dense = True
    squeeze_dim = 1

    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        """Mean and standard deviation over the valid training pixels."""
        where = f"{source}: task '{task.name}'"
        column = task.targets[0]
        maps, present = load_arrays(table.iloc[train_rows][column])
        maps = maps[present]
        return fitted_scale(maps.astype(np.float64), where, column, "pixel")

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        maps, present = load_arrays(table[task.targets[0]])
        rows = present.reshape((-1,) + (1,) * (maps.ndim - 1))
        values = maps.astype(np.float64)
        valid = np.isfinite(values) & rows
        return standardised(task, values, valid, source)

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        maps = []
        for i in range(n):
            depth = rng.uniform(1.0, 9.0, (4, 5))
            depth[rng.random((4, 5)) < 0.2] = np.nan
            maps.append(None if i == 1 else depth)
        column = np.empty(n, dtype=object)
        column[:] = maps
        return {"target": "depth"}, pd.DataFrame({"depth": column})

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        return (
            self.to_original_units(task, output[mask]),
            self.to_original_units(task, target[mask]),
        )

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        # One array per row, in the target's own unit.
        values = self.to_original_units(task, output.double()).numpy()
        return {task.name: per_row_column(finite_or_nan(values))}
