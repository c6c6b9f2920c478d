"""Training data as one or more sources, each labelling some of the tasks.

Every source holds targets and masks for every task of the run, with all-False masks for the
tasks it does not label, so a batch mixing sources is a plain concatenation and a task absent
from a batch simply gets no loss (see :mod:`polytask.losses`). Which rows make each step's
batch is decided by a :class:`~polytask.data.sampling.SourceSampler`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from polytask.data.sampling import Draw, SamplingConfig, SourceSampler
from polytask.data.tensors import Batch, TensorData


@dataclass
class StepBatch:
    """One training step's batch, its step number in the epoch and rows per source."""

    step: int
    batch: Batch
    counts: dict[str, int]

    def pin_memory(self) -> StepBatch:
        return StepBatch(self.step, self.batch.pin_memory(), self.counts)


class TrainingData(Protocol):
    """What the trainer draws its batches from: in-memory sources or a streamed table."""

    @property
    def names(self) -> list[str]: ...

    def steps(self, batch_size: int, epoch: int, epochs: int) -> int: ...

    def probabilities(self, epoch: int, epochs: int) -> list[float]: ...

    def sources_for(self, tasks: list[str]) -> list[int]: ...

    def epoch_batches(
        self,
        batch_size: int,
        epoch: int,
        epochs: int,
        generator: torch.Generator,
        allowed: list[list[int]] | None,
    ) -> Iterator[StepBatch]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...

    def subset_tasks(self, names: list[str]) -> TrainingData: ...


@dataclass
class Source:
    """One dataset: its name, the tasks it labels and its rows."""

    name: str
    tasks: list[str]
    data: TensorData


class SourceSet:
    """The training sources and the sampler that draws batches from them."""

    def __init__(self, sources: list[Source], sampling: SamplingConfig | None = None) -> None:
        if not sources:
            raise ValueError("at least one source is needed")
        self.sources = sources
        self.sampling = sampling or SamplingConfig()
        self.sampler = SourceSampler([len(s.data) for s in sources], self.sampling)

    @classmethod
    def single(cls, data: TensorData, sampling: SamplingConfig | None = None) -> SourceSet:
        """One table labelling every task (the default case)."""
        return cls([Source("data", list(data.targets), data)], sampling)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def __len__(self) -> int:
        return sum(len(s.data) for s in self.sources)

    def batch(self, draw: Draw) -> Batch:
        """The rows of ``draw`` as one batch (sources concatenated in index order)."""
        parts = [self.sources[i].data.take(rows) for i, rows in sorted(draw.rows.items())]
        if len(parts) == 1:
            return parts[0]
        return Batch(
            {k: torch.cat([p.inputs[k] for p in parts]) for k in parts[0].inputs},
            {k: torch.cat([p.targets[k] for p in parts]) for k in parts[0].targets},
            {k: torch.cat([p.masks[k] for p in parts]) for k in parts[0].masks},
            {k: torch.cat([p.soft[k] for p in parts]) for k in parts[0].soft},
        )

    def steps(self, batch_size: int, epoch: int, epochs: int) -> int:
        return self.sampler.steps(batch_size, epoch, epochs)

    def probabilities(self, epoch: int, epochs: int) -> list[float]:
        probs: np.ndarray = self.sampler.probabilities(epoch, epochs)
        return [float(p) for p in probs]

    def epoch_batches(
        self,
        batch_size: int,
        epoch: int,
        epochs: int,
        generator: torch.Generator,
        allowed: list[list[int]] | None,
    ) -> Iterator[StepBatch]:
        for draw in self.sampler.epoch(batch_size, epoch, epochs, generator, allowed):
            counts = {self.sources[i].name: n for i, n in draw.counts().items()}
            yield StepBatch(draw.step, self.batch(draw), counts)

    def state(self) -> dict[str, Any]:
        return self.sampler.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.sampler.load_state(state)

    def sources_for(self, tasks: list[str]) -> list[int]:
        """Indices of the sources labelling at least one of ``tasks``."""
        wanted = set(tasks)
        return [i for i, s in enumerate(self.sources) if wanted & set(s.tasks)]

    def subset_tasks(self, names: list[str]) -> SourceSet:
        """Only the tasks in ``names``, and only the sources labelling them (for single-task
        baselines, which train on their own task's data alone)."""
        kept = [
            Source(s.name, [t for t in s.tasks if t in names], s.data.subset_tasks(names))
            for i, s in enumerate(self.sources)
            if i in self.sources_for(names)
        ]
        return SourceSet(kept, self.sampling)
