"""Parquet tables streamed in chunks: the hashed split, one-pass statistics against the
in-memory fit, every training row once per epoch, and an end-to-end run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from polytask.config import config_from_dict
from polytask.data.prepare import prepare_data
from polytask.data.preprocess import PreprocessOptions, TablePreprocessor
from polytask.data.streaming import (
    ParquetStream,
    StreamingSet,
    fit_stream,
    hashed_split,
    stream_preprocessor,
)
from polytask.errors import ConfigError
from polytask.run.pipeline import run


@pytest.fixture(autouse=True)
def _one_thread(torch_single_thread: None) -> Iterator[None]:
    yield


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame.loc[rng.random(n) < 0.1, "b"] = np.nan
    frame["colour"] = rng.choice(["red", "green", "blue", "teal"], n, p=[0.5, 0.3, 0.15, 0.05])
    logit = x[:, 0] - x[:, 2] + (frame["colour"] == "red").to_numpy() * 1.0
    frame["y"] = (logit + rng.normal(0, 0.5, n) > 0).astype(int)
    frame["row"] = np.arange(n)
    return frame


def _write(frame: pd.DataFrame, path: Path, group_rows: int) -> Path:
    pq.write_table(
        pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=group_rows
    )
    return path


def test_hashed_split_is_deterministic_and_has_the_fractions() -> None:
    rows = np.arange(200_000)
    codes = hashed_split(rows, 0.1, 0.2, seed=3)
    assert np.array_equal(codes, hashed_split(rows, 0.1, 0.2, seed=3))
    assert not np.array_equal(codes, hashed_split(rows, 0.1, 0.2, seed=4))
    shares = np.bincount(codes, minlength=3) / rows.size
    np.testing.assert_allclose(shares, [0.7, 0.1, 0.2], atol=0.005)
    # A row's split does not depend on which chunk it is read in.
    assert np.array_equal(hashed_split(rows[500:900], 0.1, 0.2, seed=3), codes[500:900])


def test_one_pass_statistics_match_the_in_memory_fit(tmp_path: Path) -> None:
    frame = _table(3000)
    stream = ParquetStream(_write(frame, tmp_path / "t.parquet", 700), chunk_rows=256)
    opts = PreprocessOptions(missing_numeric="median")
    fit = fit_stream(
        stream, ["a", "b"], ["colour"], val=0.1, test=0.1, seed=0, sample_rows=5000, source="t"
    )
    pre = stream_preprocessor(fit, ["a", "b"], ["colour"], opts, "t")
    train = frame[hashed_split(np.arange(3000), 0.1, 0.1, 0) == 0]
    assert fit.n_train == len(train)
    ref = TablePreprocessor.fit(train, ["a", "b"], ["colour"], opts, "t")
    for got, want in zip(pre.numeric, ref.numeric, strict=True):
        assert got.fill == want.fill  # the sample holds every training row here
        assert got.mean == pytest.approx(want.mean, rel=1e-12, abs=1e-12)
        assert got.std == pytest.approx(want.std, rel=1e-12)
        assert got.indicator == want.indicator
    assert pre.categorical == ref.categorical
    val = pd.concat(fit.val_parts)
    assert sorted(val["row"]) == sorted(
        frame["row"][hashed_split(np.arange(3000), 0.1, 0.1, 0) == 1]
    )


def test_every_training_row_once_per_epoch(tmp_path: Path) -> None:
    frame = _table(2500)
    cfg = _raw(tmp_path, frame, chunk=100, buffer=300)
    data = prepare_data(config_from_dict(cfg, base_dir=tmp_path))
    assert isinstance(data.stream, StreamingSet)
    expected = sorted(frame["row"][hashed_split(np.arange(2500), 0.15, 0.15, 0) == 0])
    # The row id is a numeric feature: undo its standardisation to read it back.
    numeric = data.preprocessor.numeric
    pos = [c.name for c in numeric].index("row")
    col = numeric[pos]
    index = sum(2 if c.indicator else 1 for c in numeric[:pos])  # indicators follow a column
    gen = torch.Generator().manual_seed(0)
    epochs = []
    for epoch in range(2):
        seen: list[int] = []
        steps = 0
        for drawn in data.stream.epoch_batches(64, epoch, 2, gen, None):
            x = drawn.batch.inputs["numeric"][:, index].double() * col.std + col.mean
            seen += [round(v) for v in x.tolist()]
            steps += 1
            assert len(drawn.batch) <= 64
        assert sorted(seen) == expected
        assert steps == data.stream.steps(64, epoch, 2)
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled across epochs


def _raw(tmp_path: Path, frame: pd.DataFrame, chunk: int, buffer: int) -> dict[str, Any]:
    _write(frame, tmp_path / "big.parquet", 400)
    return {
        "seed": 0,
        "baselines": False,
        "data": {
            "path": "big.parquet",
            "stream": True,
            "stream_chunk": chunk,
            "stream_buffer": buffer,
            "numeric": ["row"],
        },
        "tasks": [{"name": "y", "kind": "binary", "target": "y"}],
        "model": {"encoder": {"widths": [32], "dropout": 0.0}},
        "train": {"epochs": 4, "batch_size": 64, "progress": False},
    }


def test_streamed_run_learns_and_is_reproducible(tmp_path: Path) -> None:
    frame = _table(4000)
    raw = _raw(tmp_path, frame, chunk=250, buffer=1000)
    raw["data"]["ignore"] = ["row"]
    raw["data"]["numeric"] = []
    first = run(config_from_dict(raw, base_dir=tmp_path), quiet=True)
    again = run(config_from_dict(raw, base_dir=tmp_path), quiet=True)
    assert first.metrics["y"]["auroc"] > 0.9
    assert first.metrics == again.metrics
    n_train = int((hashed_split(np.arange(4000), 0.15, 0.15, 0) == 0).sum())
    assert first.fit.history[0].examples["y"] == n_train


def test_stream_config_errors(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "data": {"path": "x.parquet", "stream": True},
        "tasks": [{"name": "y", "kind": "binary", "target": "y"}],
    }
    bad = {**base, "data": {**base["data"], "split": {"method": "group"}, "group": "g"}}
    with pytest.raises(ConfigError, match="streamed table is split at random"):
        config_from_dict(bad)
    bad = {**base, "data": {**base["data"], "format": "csv"}}
    with pytest.raises(ConfigError, match="streaming reads Parquet"):
        config_from_dict(bad)
