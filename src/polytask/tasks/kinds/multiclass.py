"""``multiclass``: one label column with any number of classes; a logit per class."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.tasks.kinds.base import (
    ClassIndexed,
    LoadArrays,
    LossState,
    MetricFactory,
    TaskLike,
    labelled_where,
    probabilities,
    torchmetric,
)
from polytask.tasks.kinds.columns import fit_label_classes, label_codes


class Multiclass(ClassIndexed):
    """One class out of ``C``; ``[B, C]`` logits."""

    name = "multiclass"
    losses = ("cross_entropy",)
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "accuracy": lambda n: torchmetric("classification", "MulticlassAccuracy")(
            num_classes=n, average="micro"
        ),
        "f1": lambda n: torchmetric("classification", "MulticlassF1Score")(
            num_classes=n, average="macro"
        ),
        "auroc": lambda n: torchmetric("classification", "MulticlassAUROC")(
            num_classes=n, average="macro"
        ),
    }
    accepts_classes = True
    accepts_class_weights = True

    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        def order(classes: list[str], where: str, column: str) -> list[str]:
            return classes

        return {"classes": fit_label_classes(task, table, train_rows, source, order)}

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        codes, valid = label_codes(task, table, source)
        return torch.from_numpy(codes.astype(np.int64)), torch.from_numpy(valid)

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        labels = rng.choice(np.array(["cat", "dog", "fox"], dtype=object), n)
        labels[rng.random(n) < 0.2] = None
        labels[:4] = ["cat", "dog", "fox", None]
        return {"target": "animal"}, pd.DataFrame({"animal": labels})

    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        out, tgt = output[mask], target[mask]
        return F.cross_entropy(out, tgt, weight=state.class_weights)

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        # Masked-out entries may hold any placeholder; clamp so the gather stays in range.
        safe = target.clamp(0, output.shape[1] - 1)
        return F.cross_entropy(output, safe, weight=state.class_weights, reduction="none")

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        onehot = F.one_hot(target.long(), self.n_outputs(task)).float()
        return onehot * 60.0 - 30.0

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        out, tgt = output[mask], target[mask]
        return torch.softmax(out, dim=-1), tgt

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        assert task.classes is not None
        classes = np.array(task.classes, dtype=object)
        probs = probabilities(output, lambda o: torch.softmax(o, dim=-1))
        # One non-finite logit makes the whole row's softmax meaningless.
        known = np.isfinite(probs).all(axis=1)
        probs[~known] = np.nan
        cols = {task.name: labelled_where(classes[np.nan_to_num(probs).argmax(axis=1)], known)}
        for j, label in enumerate(task.classes):
            cols[f"{task.name}_proba_{label}"] = probs[:, j]
        return cols
