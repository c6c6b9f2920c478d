"""Parquet tables larger than memory, streamed in chunks (``data.stream = true``).

* **Split.** Row ``r`` goes to test, validation or training by a hash of ``(r, seed)``
  (SplitMix64, Steele, Lea & Flood, OOPSLA 2014) compared with the split fractions: the same
  split on every pass and every machine, without holding the table. Validation and test rows
  are kept in memory (keep their fractions small for huge tables); training rows never are.
* **Fitting, one pass.** Numeric features: exact count, sum and sum of squares of the observed
  values and of missing values, so the standardisation is that of the whole training split;
  categorical features: exact value counts. What one pass cannot give exactly (the median
  fill, the task classes and regression scales, the inferred column types) comes from a
  uniform sample of ``stream_sample`` training rows drawn in the same pass (the rows with the
  smallest hash keys, so also deterministic).
* **Training.** Each epoch visits the row groups in a new random order, reads ``stream_chunk``
  rows at a time and shuffles them in a buffer of ``stream_buffer`` rows before cutting
  batches: every training row exactly once per epoch, memory bounded by the buffer and one
  row group.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from polytask.data.preprocess import (
    PreprocessOptions,
    TablePreprocessor,
    as_float,
    as_text,
    categorical_column,
    numeric_column,
)
from polytask.data.sources import StepBatch, TrainingData
from polytask.data.targets import encode_targets
from polytask.data.tensors import TensorData
from polytask.errors import DataError
from polytask.tasks import Task

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        result: np.ndarray = z ^ (z >> np.uint64(31))
        return result


def row_keys(rows: np.ndarray, seed: int, salt: int = 0) -> np.ndarray:
    """A uniform number in [0, 1) per global row index, fixed by ``seed`` and ``salt``."""
    with np.errstate(over="ignore"):
        mixed = rows.astype(np.uint64) ^ (np.uint64(seed) * _GOLDEN + np.uint64(salt))
    result: np.ndarray = (_splitmix64(mixed) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return result


def hashed_split(rows: np.ndarray, val: float, test: float, seed: int) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for each global row index."""
    u = row_keys(rows, seed)
    return np.where(u < test, 2, np.where(u < test + val, 1, 0)).astype(np.int8)


class ParquetStream:
    """Chunks of a Parquet file with the global index of each row."""

    def __init__(self, path: Path, chunk_rows: int) -> None:
        import pyarrow.parquet as pq

        if not path.is_file():
            raise DataError(f"data file '{path}' not found")
        try:
            self.file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise DataError(f"data file '{path}': cannot read it as parquet: {exc}") from None
        self.path = path
        self.chunk_rows = chunk_rows
        meta = self.file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.columns = [str(c) for c in self.file.schema_arrow.names]

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_groups(self) -> int:
        return len(self.offsets) - 1

    def chunks(
        self, groups: list[int] | None = None, columns: list[str] | None = None
    ) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
        """``(global row indices, rows)`` for the row groups in ``groups`` (file order by
        default), ``chunk_rows`` rows at a time."""
        for g in groups if groups is not None else range(self.n_groups):
            table = self.file.read_row_group(g, columns=columns)
            start = int(self.offsets[g])
            for lo in range(0, table.num_rows, self.chunk_rows):
                part = table.slice(lo, self.chunk_rows).to_pandas()
                part.columns = [str(c) for c in part.columns]
                rows = np.arange(start + lo, start + lo + len(part), dtype=np.int64)
                yield rows, part


@dataclass
class _NumericSums:
    """Running sums of one numeric column over the training rows."""

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    missing: int = 0
    binary: bool = True

    def update(self, x: np.ndarray) -> None:
        observed = x[np.isfinite(x)]
        self.count += observed.size
        self.total += float(observed.sum())
        self.total_sq += float(np.square(observed).sum())
        self.missing += x.size - observed.size
        self.binary = self.binary and bool(np.isin(observed, (0.0, 1.0)).all())


@dataclass
class StreamFit:
    """What one pass over the table gathered."""

    n_train: int = 0
    numeric: dict[str, _NumericSums] = field(default_factory=dict)
    counts: dict[str, pd.Series] = field(default_factory=dict)
    sample: pd.DataFrame | None = None
    sample_keys: np.ndarray | None = None
    val_parts: list[pd.DataFrame] = field(default_factory=list)
    test_parts: list[pd.DataFrame] = field(default_factory=list)

    def keep_sample(self, rows: np.ndarray, part: pd.DataFrame, seed: int, size: int) -> None:
        """Keep the ``size`` training rows with the smallest keys seen so far: a uniform
        sample without replacement, independent of the chunking."""
        keys = row_keys(rows, seed, salt=1)
        if self.sample is not None and self.sample_keys is not None:
            part = pd.concat([self.sample, part], ignore_index=True)
            keys = np.concatenate([self.sample_keys, keys])
        if len(keys) > size:
            keep = np.sort(np.argpartition(keys, size)[:size])
            part, keys = part.iloc[keep].reset_index(drop=True), keys[keep]
        self.sample, self.sample_keys = part, keys


def fit_stream(
    stream: ParquetStream,
    numeric: list[str],
    categorical: list[str],
    *,
    val: float,
    test: float,
    seed: int,
    sample_rows: int,
    source: str,
) -> StreamFit:
    """One pass: exact statistics of the training rows' features, a sample of them, and the
    validation and test rows."""
    fit = StreamFit(numeric={c: _NumericSums() for c in numeric})
    counts: dict[str, list[pd.Series]] = {c: [] for c in categorical}
    for rows, part in stream.chunks():
        split = hashed_split(rows, val, test, seed)
        if (split == 1).any():
            fit.val_parts.append(part[split == 1])
        if (split == 2).any():
            fit.test_parts.append(part[split == 2])
        train = part[split == 0]
        if len(train) == 0:
            continue
        fit.n_train += len(train)
        for col, sums in fit.numeric.items():
            sums.update(as_float(train[col], source))
        for col in categorical:
            counts[col].append(as_text(train[col]).value_counts())
            if len(counts[col]) > 64:  # fold as we go: memory grows with distinct values only
                counts[col] = [pd.concat(counts[col]).groupby(level=0).sum()]
        fit.keep_sample(rows[split == 0], train.reset_index(drop=True), seed, sample_rows)
    for col, parts in counts.items():
        total = pd.concat(parts).groupby(level=0).sum() if parts else pd.Series(dtype="int64")
        # Most frequent first, ties by label, as value_counts would order a whole column.
        fit.counts[col] = total.sort_index().sort_values(ascending=False, kind="stable")
    if fit.n_train == 0:
        raise DataError(f"{source}: the split left no training row")
    return fit


def stream_preprocessor(
    fit: StreamFit,
    numeric: list[str],
    categorical: list[str],
    options: PreprocessOptions,
    source: str,
) -> TablePreprocessor:
    """The feature encoding from the pass's exact sums (and the sample's medians)."""
    assert fit.sample is not None
    num_cols = []
    for col in numeric:
        sums = fit.numeric[col]
        if sums.count == 0:
            raise DataError(f"{source}: numeric column '{col}' has no value in train")
        mean_obs = sums.total / sums.count
        if options.missing_numeric == "median":
            observed = as_float(fit.sample[col], source)
            observed = observed[np.isfinite(observed)]
            fill = float(np.median(observed)) if observed.size else mean_obs
        else:
            fill = mean_obs if options.missing_numeric == "mean" else 0.0
        n = sums.count + sums.missing
        mean = (sums.total + sums.missing * fill) / n
        var = (sums.total_sq + sums.missing * fill * fill) / n - mean * mean
        num_cols.append(
            numeric_column(
                col,
                mean,
                float(np.sqrt(max(var, 0.0))),
                fill,
                binary=sums.binary,
                has_missing=sums.missing > 0,
                opts=options,
            )
        )
    cat_cols = [categorical_column(col, fit.counts[col], options) for col in categorical]
    return TablePreprocessor(num_cols, cat_cols, options)


class StreamingSet(TrainingData):
    """The training rows of a streamed Parquet table, as the trainer draws them."""

    def __init__(
        self,
        stream: ParquetStream,
        preprocessor: TablePreprocessor,
        tasks: list[Task],
        *,
        n_train: int,
        val: float,
        test: float,
        seed: int,
        buffer_rows: int,
    ) -> None:
        self.stream = stream
        self.preprocessor = preprocessor
        self.tasks = tasks
        self.n_train = n_train
        self.val, self.test, self.seed = val, test, seed
        self.buffer_rows = buffer_rows
        self.columns = list(
            dict.fromkeys(preprocessor.columns + [c for t in tasks for c in t.targets])
        )
        self.source = f"data file '{stream.path}'"

    @property
    def names(self) -> list[str]:
        return ["data"]

    def steps(self, batch_size: int, epoch: int, epochs: int) -> int:
        steps = -(-self.n_train // batch_size)
        return steps - 1 if self.n_train > 1 and self.n_train % batch_size == 1 else steps

    def probabilities(self, epoch: int, epochs: int) -> list[float]:
        return [1.0]

    def sources_for(self, tasks: list[str]) -> list[int]:
        return [0]

    def _encode(self, part: pd.DataFrame) -> TensorData:
        encoded = {t.name: encode_targets(t, part, self.source) for t in self.tasks}
        return TensorData(
            self.preprocessor.transform(part, self.source),
            {k: v[0] for k, v in encoded.items()},
            {k: v[1] for k, v in encoded.items()},
        )

    def epoch_batches(
        self,
        batch_size: int,
        epoch: int,
        epochs: int,
        generator: torch.Generator,
        allowed: list[list[int]] | None,
    ) -> Iterator[StepBatch]:
        order = torch.randperm(self.stream.n_groups, generator=generator).tolist()
        buffer: list[TensorData] = []
        buffered = 0
        step = 0

        def drain(final: bool) -> Iterator[StepBatch]:
            nonlocal buffer, buffered, step
            pool = _concat(buffer)
            pool = pool.rows(torch.randperm(len(pool), generator=generator))
            n = len(pool)
            start = 0
            while n - start >= batch_size or (final and n - start > 1):
                stop = min(start + batch_size, n)
                batch = pool.take(torch.arange(start, stop))
                yield StepBatch(step, batch, {"data": stop - start})
                step += 1
                start = stop
            # Rows that do not fill a batch wait for the next chunk (a final single row is
            # dropped, as in memory: batch norm cannot train on one row).
            rest = pool.rows(torch.arange(start, n))
            buffer, buffered = ([rest], len(rest)) if len(rest) and not final else ([], 0)

        for rows, part in self.stream.chunks(order, self.columns):
            train = part[hashed_split(rows, self.val, self.test, self.seed) == 0]
            if len(train) == 0:
                continue
            buffer.append(self._encode(train.reset_index(drop=True)))
            buffered += len(train)
            if buffered >= self.buffer_rows:
                yield from drain(final=False)
        if buffered:
            yield from drain(final=True)

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None

    def subset_tasks(self, names: list[str]) -> StreamingSet:
        kept = [t for t in self.tasks if t.name in names]
        return StreamingSet(
            self.stream,
            self.preprocessor,
            kept,
            n_train=self.n_train,
            val=self.val,
            test=self.test,
            seed=self.seed,
            buffer_rows=self.buffer_rows,
        )


def _concat(parts: list[TensorData]) -> TensorData:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return TensorData(
        {k: torch.cat([p.inputs[k] for p in parts]) for k in first.inputs},
        {k: torch.cat([p.targets[k] for p in parts]) for k in first.targets},
        {k: torch.cat([p.masks[k] for p in parts]) for k in first.masks},
    )
