"""``multilabel``: several 0/1 label columns, each may be missing on its own; a logit per
label."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.errors import ConfigError
from polytask.tasks.kinds.base import (
    LoadArrays,
    LossState,
    MetricFactory,
    Sigmoid,
    TaskLike,
    labelled_where,
    probabilities,
    torchmetric,
)
from polytask.tasks.kinds.columns import binary_column

# Missing entries get this target value in the metrics; torchmetrics skips it.
_IGNORE = -1


class Multilabel(Sigmoid):
    """``L`` independent 0/1 labels; ``[B, L]`` logits with a per-entry mask."""

    name = "multilabel"
    losses = ("bce",)
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "auroc": lambda n: torchmetric("classification", "MultilabelAUROC")(
            num_labels=n, average="macro", ignore_index=_IGNORE
        ),
        "f1": lambda n: torchmetric("classification", "MultilabelF1Score")(
            num_labels=n, average="macro", ignore_index=_IGNORE
        ),
        "accuracy": lambda n: torchmetric("classification", "MultilabelAccuracy")(
            num_labels=n, average="micro", ignore_index=_IGNORE
        ),
    }
    accepts_pos_weight = True

    def check_target(self, task: TaskLike, where: str) -> None:
        if isinstance(task.target, str) or len(task.target) < 1:
            raise ConfigError(f"{where}: a multilabel target is a list of 0/1 columns")
        if len(task.target) < 2:
            # The multilabel metrics need 2 labels or more; one 0/1 column is a binary task.
            raise ConfigError(
                f"{where}: a multilabel target lists at least 2 columns; for the one column "
                f"{task.target[0]!r} use kind 'binary'"
            )

    def n_outputs(self, task: TaskLike) -> int:
        return len(task.targets)

    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        for col in task.targets:
            binary_column(table[col], source)
        return {}

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        cols = [binary_column(table[c], source) for c in task.targets]
        y = np.stack([c[0] for c in cols], axis=1)
        m = np.stack([c[1] for c in cols], axis=1)
        return torch.from_numpy(y), torch.from_numpy(m)

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        table = {}
        for j, col in enumerate(("red", "round")):
            values = (rng.random(n) < 0.5).astype(float)
            values[rng.random(n) < 0.2] = np.nan
            values[j], values[j + 2] = 0.0, 1.0
            table[col] = values
        return {"target": ["red", "round"]}, pd.DataFrame(table)

    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        # Per-entry mask: each label of each example may be missing on its own.
        pw = state.pos_weight
        if pw is not None:
            pw = pw.expand_as(output)[mask]
        return F.binary_cross_entropy_with_logits(output[mask], target[mask], pos_weight=pw)

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        preds = torch.sigmoid(output)
        tgt = torch.where(mask, target, torch.full_like(target, _IGNORE)).long()
        valid_rows = mask.any(dim=1)
        return preds[valid_rows], tgt[valid_rows]

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        proba = probabilities(output, torch.sigmoid)
        cols: dict[str, np.ndarray] = {}
        for j, label in enumerate(task.targets):
            decided = (proba[:, j] >= 0.5).astype(np.int64)
            cols[f"{task.name}.{label}"] = labelled_where(decided, np.isfinite(proba[:, j]))
            cols[f"{task.name}.{label}_proba"] = proba[:, j]
        return cols

    def teacher_mismatch(self, student: TaskLike, teacher: TaskLike) -> str | None:
        if teacher.targets != student.targets:
            return f"has labels {teacher.targets} there, {student.targets} here"
        return None
