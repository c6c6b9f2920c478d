"""``regression``: one numeric column, learnt standardised and reported in its own unit."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import Tensor

from polytask.tasks.kinds.base import (
    Kind,
    LoadArrays,
    LossState,
    MetricFactory,
    TaskLike,
    finite_or_nan,
    fitted_scale,
    from_standard,
    to_standard,
    torchmetric,
    value_loss,
    value_unit_losses,
)
from polytask.tasks.kinds.columns import numeric, standardised


class Regression(Kind):
    """A value per row (``[B]``), standardised with the training split's mean and std."""

    name = "regression"
    losses = ("mse", "l1", "huber")
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "mae": lambda n: torchmetric("regression", "MeanAbsoluteError")(),
        "rmse": lambda n: torchmetric("regression", "MeanSquaredError")(squared=False),
        "r2": lambda n: torchmetric("regression", "R2Score")(),
    }
    squeeze_dim = -1
    mean_of_units = True

    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        where = f"{source}: task '{task.name}'"
        y = numeric(table[task.targets[0]], source)[train_rows]
        return fitted_scale(y, where, task.targets[0], "value")

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        values = numeric(table[task.targets[0]], source)
        return standardised(task, values, np.isfinite(values), source)

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        values = rng.normal(40.0, 12.0, n)
        values[rng.random(n) < 0.2] = np.nan
        values[0] = np.nan
        return {"target": "days"}, pd.DataFrame({"days": values})

    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        out, tgt = output[mask], target[mask]
        return value_loss(state.name, out, tgt)

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        return value_unit_losses(state.name, output, target)

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        return target.clone()

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        out, tgt = output[mask], target[mask]
        return self.to_original_units(task, out), self.to_original_units(task, tgt)

    def degenerate(self, name: str, target: Tensor) -> bool:
        """R² compares the errors with the labels' own variance, which one label does not have
        (torchmetrics raises): NaN, as AUROC on one class."""
        return name == "r2" and target.numel() < 2

    def to_original_units(self, task: TaskLike, values: Tensor) -> Tensor:
        return from_standard(task, values)

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        # In float64: a large but finite output times the target scale may overflow float32.
        values = self.to_original_units(task, output.double()).numpy()
        return {task.name: finite_or_nan(values)}

    def to_student_units(self, student: TaskLike, teacher: TaskLike, output: Tensor) -> Tensor:
        # From the teacher's standardisation to the student's.
        return to_standard(student, self.to_original_units(teacher, output))
