"""``segmentation``: a class per pixel of an image input; ``[B, C, H, W]`` logits."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.errors import ConfigError, DataError
from polytask.tasks.kinds.base import (
    ClassIndexed,
    LoadArrays,
    LossState,
    MetricFactory,
    TaskLike,
    labelled_where,
    per_row_column,
    torchmetric,
)


class Segmentation(ClassIndexed):
    """Class ``k`` is the pixel value ``k`` of the masks; ``ignore_index`` marks unlabelled
    pixels. Scored over every valid pixel of the split pooled together (mIoU from the pooled
    confusion matrix), the convention of segmentation benchmarks."""

    name = "segmentation"
    losses = ("cross_entropy",)
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "miou": lambda n: torchmetric("classification", "MulticlassJaccardIndex")(
            num_classes=n, average="macro"
        ),
        "pixel_accuracy": lambda n: torchmetric("classification", "MulticlassAccuracy")(
            num_classes=n, average="micro"
        ),
    }
    dense = True
    accepts_classes = True
    accepts_class_weights = True
    accepts_ignore_index = True

    def check_classes(self, task: TaskLike, classes: list[str], where: str) -> None:
        if not all(_is_int(c) for c in classes):
            raise ConfigError(
                f"{where}: segmentation classes are the integer pixel values of the masks "
                f"(got {classes[:3]})"
            )

    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        """The pixel classes seen in the training maps (unless declared)."""
        where = f"{source}: task '{task.name}'"
        column = task.targets[0]
        maps, present = load_arrays(table.iloc[train_rows][column])
        maps = maps[present]
        _require_integers(maps, where, column)
        seen = np.unique(maps)
        if task.ignore_index is not None:
            seen = seen[seen != task.ignore_index]
        if task.classes is not None:
            return {}
        if seen.size < 2:
            raise DataError(
                f"{where}: column '{column}' has {seen.size} pixel class(es) in the training "
                "rows; a segmentation task needs at least 2"
            )
        # Class k is the pixel value k: declared values must cover 0 .. max so the head's
        # channels line up with the values users see in their masks.
        return {"classes": [str(v) for v in range(int(seen.max()) + 1)]}

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        column = task.targets[0]
        maps, present = load_arrays(table[column])
        rows = present.reshape((-1,) + (1,) * (maps.ndim - 1))
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

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        maps = []
        for i in range(n):
            mask = rng.integers(0, 3, (4, 5))
            mask[rng.random((4, 5)) < 0.2] = 255
            mask[0, :3] = [0, 1, 2]
            maps.append(None if i == 1 else mask)
        column = np.empty(n, dtype=object)
        column[:] = maps
        return {"target": "mask", "ignore_index": 255}, pd.DataFrame({"mask": column})

    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        # Per-pixel cross-entropy, averaged over the labelled pixels (class-weighted like
        # nn.CrossEntropyLoss when class weights are given).
        pixels, labels = output.movedim(1, -1)[mask], target[mask]
        return F.cross_entropy(pixels, labels, weight=state.class_weights)

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        # Masked-out entries may hold any placeholder; clamp so the gather stays in range.
        safe = target.clamp(0, output.shape[1] - 1)
        return F.cross_entropy(output, safe, weight=state.class_weights, reduction="none")

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        onehot = F.one_hot(target.long(), self.n_outputs(task)).float().movedim(-1, 1)
        return onehot * 60.0 - 30.0

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        # [N, C, H, W] logits -> one row of C logits per valid pixel.
        pixels = output.movedim(1, -1)[mask]
        return pixels.argmax(dim=-1), target[mask]

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        # One class-index map per row; none for a row whose logits are not all finite.
        known = torch.isfinite(output).flatten(1).all(dim=1).numpy()
        maps = per_row_column(output.nan_to_num().argmax(dim=1).numpy())
        return {task.name: labelled_where(maps, known)}


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


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
