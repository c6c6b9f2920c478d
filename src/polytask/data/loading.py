"""Training batches of file-backed inputs decoded in ``DataLoader`` worker processes.

Tables are indexed in memory (:mod:`polytask.data.tensors`); images and recordings named by
file can instead stay on disk and be decoded batch by batch: the sampler still draws every
step's rows in the main process (so the draws, resume and task schedules are unchanged), a
``DataLoader`` with ``data.workers`` processes decodes them (pinned memory for a GPU,
``data.prefetch`` batches ahead per worker), and the input processor's augmentation (random
flips and crops of images) runs there too.

Reproducibility does not depend on the number of workers: a batch's augmentation draws from
a generator seeded by (run seed, epoch, step), never from a worker's own stream, so 0, 1 or 8
workers give the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from polytask.data.inputs.base import InputProcessor
from polytask.data.sampling import Draw, SamplingConfig
from polytask.data.sources import SourceSet, StepBatch
from polytask.data.tensors import Batch, TensorData
from polytask.errors import PolytaskError


@dataclass
class FileRows:
    """The training rows' input cells (file paths or arrays), not yet decoded, and what
    decodes them: the fitted processor, the folder relative paths start from, the run seed."""

    cells: pd.DataFrame
    processor: InputProcessor
    source: str
    files_root: Path | None
    seed: int


@dataclass(frozen=True)
class LoaderOptions:
    """How batches are fed: worker processes, batches prefetched per worker, pinned memory."""

    workers: int = 0
    prefetch: int = 2
    pin_memory: bool = False


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The augmentation stream of one batch: a function of the run seed and the batch's
    place, so that it is the same whichever worker (or the main process) decodes it."""
    state = np.random.SeedSequence([seed, epoch, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


#: What a worker is sent for one batch: the epoch, the step and the rows (a NumPy copy).
_Item = tuple[int, int, np.ndarray]


def _items(epoch: int, draws: Iterator[Draw]) -> Iterator[_Item]:
    for draw in draws:
        (rows,) = draw.rows.values()
        # A copy, as an array: a tensor is pickled for the workers by moving its storage to
        # shared memory in the queue's feeder thread, and the rows are a view of the epoch's
        # permutation, which the sampler is still slicing in this thread.
        yield epoch, draw.step, rows.numpy().copy()


class _Feed(Sampler[_Item]):
    """The current epoch's draws, handed to the ``DataLoader`` one by one: the sampler runs
    in the main process, so the draws are the trainer's, and workers only decode."""

    def __init__(self) -> None:
        self.draws: Iterator[_Item] = iter(())

    def __iter__(self) -> Iterator[_Item]:
        # The DataLoader may ask more than once per epoch (its iterator's set-up and reset):
        # every call hands on the same, not yet consumed, draws.
        return self.draws


class _Decode(Dataset[StepBatch | PolytaskError]):
    """Decodes one draw's rows (in a worker when there are workers)."""

    def __init__(self, files: FileRows, data: TensorData, name: str) -> None:
        self.files = files
        self.data = data
        self.name = name

    def __len__(self) -> int:  # pragma: no cover - the sampler, not the length, drives it
        return len(self.data)

    def __getitem__(self, item: _Item) -> StepBatch | PolytaskError:
        epoch, step, rows = item
        try:
            return StepBatch(step, self.decode(rows, epoch, step), {self.name: len(rows)})
        except PolytaskError as exc:
            # Handed back as a value: raised in a worker, the DataLoader would wrap it in a
            # many-line report; the main process raises it as it is.
            return exc

    def decode(self, rows: np.ndarray, epoch: int, step: int) -> Batch:
        files = self.files
        cells = files.cells.iloc[rows]
        inputs = files.processor.transform(cells, files.source, files.files_root)
        inputs = files.processor.augment(inputs, batch_generator(files.seed, epoch, step))
        # Row-major strides, as index_select gives the in-memory path: a grey image batch
        # permuted from N x H x W x 1 counts as contiguous with other strides, and CPU
        # convolution kernels corrupted memory on such a batch.
        inputs = {k: _row_major(v) for k, v in inputs.items()}
        labels = self.data.take(torch.from_numpy(rows))
        return Batch(inputs, labels.targets, labels.masks, labels.soft)


def _row_major(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with the strides of a fresh tensor of its shape (copied only if needed)."""
    if tensor.stride() == torch.empty(tensor.shape, device="meta").stride():
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def _worker_init(worker: int) -> None:
    # Workers decode side by side: one thread each keeps them from oversubscribing the cores.
    torch.set_num_threads(1)


class LoadedSet:
    """Training data whose inputs are decoded per batch (the :class:`TrainingData` of a run
    with file-backed inputs and ``data.workers`` or augmentation); one table, one source."""

    def __init__(
        self,
        files: FileRows,
        data: TensorData,
        sampling: SamplingConfig | None,
        options: LoaderOptions,
    ) -> None:
        self.files = files
        self.data = data
        self.options = options
        self.sampling = sampling
        self.sources = SourceSet.single(data, sampling)
        self._feed = _Feed()
        self._loader: DataLoader[StepBatch | PolytaskError] | None = None

    @property
    def names(self) -> list[str]:
        return self.sources.names

    def steps(self, batch_size: int, epoch: int, epochs: int) -> int:
        return self.sources.steps(batch_size, epoch, epochs)

    def probabilities(self, epoch: int, epochs: int) -> list[float]:
        return self.sources.probabilities(epoch, epochs)

    def sources_for(self, tasks: list[str]) -> list[int]:
        return self.sources.sources_for(tasks)

    def state(self) -> dict[str, Any]:
        return self.sources.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.sources.load_state(state)

    def subset_tasks(self, names: list[str]) -> LoadedSet:
        return LoadedSet(self.files, self.data.subset_tasks(names), self.sampling, self.options)

    def _make_loader(self) -> DataLoader[StepBatch | PolytaskError]:
        workers = self.options.workers
        return DataLoader(
            _Decode(self.files, self.data, self.names[0]),
            batch_size=None,
            sampler=self._feed,
            num_workers=workers,
            pin_memory=self.options.pin_memory,
            prefetch_factor=self.options.prefetch if workers else None,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers else None,
            # Its own generator: the DataLoader draws a base seed when iterated, which would
            # otherwise move the global stream that dropout and initialisation use.
            generator=torch.Generator().manual_seed(self.files.seed),
        )

    def epoch_batches(
        self,
        batch_size: int,
        epoch: int,
        epochs: int,
        generator: torch.Generator,
        allowed: list[list[int]] | None,
    ) -> Iterator[StepBatch]:
        draws = self.sources.sampler.epoch(batch_size, epoch, epochs, generator, allowed)
        self._feed.draws = _items(epoch, draws)
        if self._loader is None:
            self._loader = self._make_loader()
        for item in self._loader:
            if isinstance(item, PolytaskError):
                raise item
            yield item
