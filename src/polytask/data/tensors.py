"""In-memory tensor datasets and batching by index.

A whole split lives in a few tensors (inputs, per-task targets and masks). A batch is a set of
``index_select`` calls on those tensors: no per-row Python and no DataLoader workers, which on a
CPU is what keeps the training loop close to a hand-written one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Batch:
    """Inputs and, per task, labels and validity masks (and soft targets, if any)."""

    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]
    masks: dict[str, Tensor]
    #: Per task, a second target for every row besides the label: a teacher's raw outputs in
    #: distillation (:mod:`polytask.studies.distill`). Empty for ordinary training.
    soft: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory, for an asynchronous copy to a GPU (what the
        ``DataLoader`` calls with ``pin_memory``)."""
        return Batch(
            {k: v.pin_memory() for k, v in self.inputs.items()},
            {k: v.pin_memory() for k, v in self.targets.items()},
            {k: v.pin_memory() for k, v in self.masks.items()},
            {k: v.pin_memory() for k, v in self.soft.items()},
        )


@dataclass
class TensorData:
    """A split held as tensors; every tensor shares the first dimension."""

    inputs: dict[str, Tensor]
    targets: dict[str, Tensor]
    masks: dict[str, Tensor]
    #: Per task, soft targets for every row (see :attr:`Batch.soft`).
    soft: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = {t.shape[0] for t in self._all()}
        if len(sizes) != 1:
            raise ValueError(f"tensors disagree on the number of rows: {sorted(sizes)}")

    def _all(self) -> list[Tensor]:
        return [
            *self.inputs.values(),
            *self.targets.values(),
            *self.masks.values(),
            *self.soft.values(),
        ]

    def __len__(self) -> int:
        return self._all()[0].shape[0]

    def take(self, index: Tensor) -> Batch:
        """The rows at ``index`` as a :class:`Batch`."""
        return Batch(
            {k: v.index_select(0, index) for k, v in self.inputs.items()},
            {k: v.index_select(0, index) for k, v in self.targets.items()},
            {k: v.index_select(0, index) for k, v in self.masks.items()},
            {k: v.index_select(0, index) for k, v in self.soft.items()},
        )

    def rows(self, index: Tensor) -> TensorData:
        """The rows at ``index`` as a new :class:`TensorData`."""
        batch = self.take(index)
        return TensorData(batch.inputs, batch.targets, batch.masks, batch.soft)

    def slice(self, start: int, stop: int) -> TensorData:
        """Rows ``start`` to ``stop`` as views of these tensors (no copy)."""
        return TensorData(
            {k: v[start:stop] for k, v in self.inputs.items()},
            {k: v[start:stop] for k, v in self.targets.items()},
            {k: v[start:stop] for k, v in self.masks.items()},
            {k: v[start:stop] for k, v in self.soft.items()},
        )

    def subset_tasks(self, names: list[str]) -> TensorData:
        """The same rows with only the tasks in ``names`` (for single-task baselines)."""
        return TensorData(
            self.inputs,
            {k: self.targets[k] for k in names},
            {k: self.masks[k] for k in names},
            {k: v for k, v in self.soft.items() if k in names},
        )

    def batches(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Batches in a random order when ``generator`` is given, in row order otherwise.

        A final batch of a single row is dropped when shuffling (unless every batch is one
        row): batch normalisation cannot train on it, and the next epoch's permutation covers
        that row again.
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if order is not None and stop - start == 1 and batch_size > 1:
                break
            index = order[start:stop] if order is not None else torch.arange(start, stop)
            yield self.take(index)

    def steps_per_epoch(self, batch_size: int) -> int:
        n = len(self)
        steps = -(-n // batch_size)
        return steps - 1 if batch_size > 1 and n % batch_size == 1 else steps
