"""The ``poisson`` task kind: counts (0, 1, 2, ...) with a Poisson likelihood.

The head outputs ``log μ``, the log of the expected count. The loss is the Poisson negative
log-likelihood ``μ - y log μ`` (``torch.nn.functional.poisson_nll_loss`` with ``log_input``);
predictions are ``μ = exp(output)``. Metrics: the mean absolute error of ``μ`` and the mean
Poisson deviance ``2 (y log(y/μ) - (y - μ))``, lower is better for both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, Metric
from torchmetrics.regression import MeanAbsoluteError

from polytask.errors import DataError
from polytask.tasks.kinds import KINDS, Kind, LoadArrays, LossState, TaskLike
from polytask.tasks.kinds.base import MetricFactory
from polytask.tasks.kinds.columns import numeric


class MeanPoissonDeviance(Metric):
    """``mean 2 (y log(y/μ) - (y - μ))`` over (μ, y) pairs; 0 for a perfect prediction."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.mean = MeanMetric()

    def update(self, preds: Tensor, target: Tensor) -> None:
        mu = preds.clamp_min(1e-8)
        y_log = torch.xlogy(target, target / mu)
        self.mean.update(2 * (y_log - (target - mu)))

    def compute(self) -> Tensor:
        return self.mean.compute()

    def reset(self) -> None:
        super().reset()
        self.mean.reset()


class Poisson(Kind):
    """A count per row (``[B]``); the head predicts its log expected value."""

    name = "poisson"
    losses = ("poisson_nll",)
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "deviance": lambda n: MeanPoissonDeviance(),
        "mae": lambda n: MeanAbsoluteError(),
    }
    squeeze_dim = -1

    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        y = self._counts(task, table, source)[train_rows]
        if not np.isfinite(y).any():
            raise DataError(f"{source}: task '{task.name}': no count in the training rows")
        return {}

    def _counts(self, task: TaskLike, table: pd.DataFrame, source: str) -> np.ndarray:
        column = task.targets[0]
        y = numeric(table[column], source)
        valid = np.isfinite(y)
        if bool((y[valid] < 0).any() or (y[valid] != np.round(y[valid])).any()):
            raise DataError(f"{source}: column '{column}' holds values that are not counts")
        return y

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        y = self._counts(task, table, source)
        valid = np.isfinite(y)
        return torch.tensor(np.where(valid, y, 0.0), dtype=torch.float32), torch.tensor(valid)

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        counts = rng.poisson(3.0, n).astype(float)
        counts[rng.random(n) < 0.2] = np.nan
        counts[0] = np.nan
        return {"target": "visits"}, pd.DataFrame({"visits": counts})

    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return F.poisson_nll_loss(output[mask], target[mask], log_input=True, full=False)

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        return F.poisson_nll_loss(output, target, log_input=True, full=False, reduction="none")

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        return torch.log(target.clamp_min(1e-3))

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        return torch.exp(output[mask]), target[mask]

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        return {task.name: torch.exp(output).double().numpy()}

    def teacher_units(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        # The Poisson KL between the teacher's and the student's rates, per row.
        mu_t = torch.exp(teacher)
        return mu_t * (teacher - student) - mu_t + torch.exp(student)


def register() -> None:
    """Entry point ``poisson``: register the kind (a callable entry point, called once)."""
    KINDS.register(Poisson())
