"""The Arrow path of ``prepare_data`` (CSV and Parquet features read into Arrow columns and
written straight into the tensors) against the pandas path it replaces: the same tensors, bit
for bit, the same fitted preprocessing and tasks, the same split record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

import polytask.data.prepare as prepare_module
from polytask.config import config_from_dict
from polytask.data.prepare import PreparedData, prepare_data
from polytask.data.preprocess import MISSING_TOKEN, TablePreprocessor, _ArrowRows
from polytask.data.split import random_split
from polytask.data.tables import read_arrow, table_names
from polytask.errors import DataError


def _table(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Floats with gaps, whole numbers with and without gaps, an all-missing column, text
    with quotes, commas, trailing blanks and gaps, values that only the last rows hold
    (unseen in training for most splits), an integer code declared categorical, an id and a
    group, two targets with missing labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) * 1e3
    x[rng.random(n) < 0.1] = np.nan
    count = rng.integers(-5, 50, n).astype(np.float64)
    count[rng.random(n) < 0.05] = np.nan
    colour = rng.choice(
        np.array(['red "dark"', "blue, light", "green ", "", None], dtype=object), n
    )
    city = np.array([f"c{v}" for v in rng.zipf(1.6, n) % 40], dtype=object)
    city[-7:] = "only_in_the_last_rows"
    y = np.nan_to_num(x) / 1e3 + rng.normal(size=n)
    y[rng.random(n) < 0.1] = np.nan
    label = np.where(rng.random(n) < 0.5, "yes", "no").astype(object)
    label[rng.random(n) < 0.1] = None
    return pd.DataFrame(
        {
            "id": np.arange(n) * 7 + 3,
            "x": x,
            "ints": rng.integers(0, 1000, n),
            "count": count,
            "empty": np.full(n, np.nan),
            "colour": colour,
            "city": city,
            "code": rng.integers(0, 4, n),
            "site": rng.choice(np.array(["s1", "s2", "s3", "s4", "s5"]), n),
            "y": y,
            "label": label,
        }
    )


def _write(frame: pd.DataFrame, tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.drop(columns=["empty"]).to_parquet(path, index=False)
    return path


def _config(path: Path, **data: Any) -> Any:
    raw = {
        "seed": 3,
        "data": {"path": path.name, "id": "id", "ignore": ["empty"], **data},
        "tasks": [
            {"name": "y", "kind": "regression", "target": "y"},
            {"name": "label", "kind": "binary", "target": "label", "positive": "yes"},
        ],
    }
    return config_from_dict(raw, base_dir=path.parent)


def _both(cfg: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[PreparedData, PreparedData]:
    """``prepare_data`` through Arrow (checked to be taken) and through pandas."""
    taken: list[bool] = []
    real = prepare_module._read_arrow

    def spy(job: Any) -> Any:
        out = real(job)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(prepare_module, "_read_arrow", spy)
    fast = prepare_data(cfg)
    assert taken == [True]
    monkeypatch.setattr(prepare_module, "_read_arrow", lambda job: None)
    slow = prepare_data(cfg)
    return fast, slow


def _assert_same(fast: PreparedData, slow: PreparedData) -> None:
    assert isinstance(fast.preprocessor, TablePreprocessor)
    assert isinstance(slow.preprocessor, TablePreprocessor)
    assert fast.preprocessor.to_dict() == slow.preprocessor.to_dict()
    assert fast.tasks == slow.tasks
    assert fast.source == slow.source
    assert fast.split_rows is not None and slow.split_rows is not None
    pd.testing.assert_frame_equal(fast.split_rows, slow.split_rows)
    pairs = [(fast.train, slow.train), (fast.val, slow.val)]
    assert (fast.test is None) == (slow.test is None)
    if fast.test is not None and slow.test is not None:
        pairs.append((fast.test, slow.test))
    for a, b in pairs:
        assert len(a) == len(b) > 0
        for key in ("numeric", "categorical"):
            assert a.inputs[key].dtype == b.inputs[key].dtype
            assert torch.equal(a.inputs[key], b.inputs[key]), key
        for name in a.targets:
            assert torch.equal(a.targets[name], b.targets[name]), name
            assert torch.equal(a.masks[name], b.masks[name]), name


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(
    "options",
    [
        {"split": {"val": 0.2, "test": 0.1}, "categorical": ["code"]},
        {"group": "site", "split": {"method": "group", "val": 0.2, "test": 0.2}},
        {
            "train_fraction": 0.6,
            "max_categories": 5,
            "min_frequency": 3,
            "missing_numeric": "mean",
            "onehot_max_categories": 3,
        },
        {"features": ["city", "x", "count"], "missing_indicator": False, "scale_binary": False},
        # No unseen value, and "site" has no missing cell (its missing token is no category).
        {"features": ["site", "x"], "unseen": "error"},
    ],
)
def test_arrow_path_gives_the_pandas_tensors_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, options: dict[str, Any]
) -> None:
    if fmt == "parquet" and "code" in options.get("categorical", []):
        options = {**options, "categorical": []}  # a Parquet number declared text: pandas'
    path = _write(_table(), tmp_path, fmt)
    fast, slow = _both(_config(path, **options), monkeypatch)
    _assert_same(fast, slow)
    pre = fast.preprocessor
    assert isinstance(pre, TablePreprocessor)
    colour = next((c for c in pre.categorical if c.name == "colour"), None)
    if colour is not None and not options.get("max_categories"):
        # Quotes and commas survive the CSV; "" and a missing cell are one category.
        assert colour.categories == sorted([MISSING_TOKEN, "blue, light", "green", 'red "dark"'])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"unseen": "error", "split": {"val": 0.3, "test": 0.2}},
            "column 'city' has category 'only_in_val' not seen in training",
        ),
        ({"ignore": []}, "numeric column 'empty' has no finite value in train"),
    ],
)
def test_errors_are_the_pandas_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], expected: str
) -> None:
    frame = _table()
    # A value in one validation row only: unseen in training.
    frame.loc[int(random_split(len(frame), 0.3, 0.2, 3)[1][5]), "city"] = "only_in_val"
    path = _write(frame, tmp_path, "csv")
    cfg = _config(path, **options)
    messages = []
    for read in (prepare_module._read_arrow, lambda job: None):
        monkeypatch.setattr(prepare_module, "_read_arrow", read)
        with pytest.raises(DataError) as info:
            prepare_data(cfg)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert expected in messages[0]


@pytest.mark.parametrize(
    ("text", "fast"),
    [
        ("a,b,y\n1.5,x,1\n,y,2\n2.5,z,3\n", True),
        ("a,b,y\n1, x,1\n2,y,2\n", False),  # a blank-led cell: pandas' skipinitialspace
        ("a,a,y\n1,2,3\n", False),  # a repeated name: pandas renames it
        ("a,b,y\n1,True,1\n2,False,2\n", False),  # booleans
        ("a,b,y\n1,x,1\n2,y\n", False),  # a short row
    ],
)
def test_only_files_read_alike_take_the_arrow_path(tmp_path: Path, text: str, fast: bool) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    names = table_names(path)
    read = None if names is None else read_arrow(path, "auto", ["y"], ["a", "b"])
    assert (read is not None) == fast
    if read is not None:
        frame, columns = read
        assert list(frame.columns) == ["y"] and frame["y"].tolist() == [1, 2, 3]
        assert columns["a"].type == pa.float64() and columns["b"].type == pa.string()


def test_a_type_change_after_the_first_block_is_read_as_pandas_reads_it(tmp_path: Path) -> None:
    """pyarrow's streaming reader types a column from the first block (1 MB): a float after
    it sends the file through the whole-file reader, which widens the column as pandas does."""
    n = 200_000
    values = [str(i % 100) for i in range(n)]
    values[-1] = "2.5"
    path = tmp_path / "t.csv"
    path.write_text("a,y\n" + "".join(f"{v},{i % 3}\n" for i, v in enumerate(values)))
    read = read_arrow(path, "auto", ["y"], ["a"])
    assert read is not None
    column = read[1]["a"]
    assert column.type == pa.float64()
    assert column[n - 1].as_py() == 2.5 and column[0].as_py() == 0.0


def test_arrow_rows_are_read_in_blocks_across_chunks_and_freed() -> None:
    chunks = [pa.array([1.0, None, 3.0]), pa.array([], pa.float64()), pa.array([4, 5, 6, 7])]
    column = pa.chunked_array([pa.array(c, pa.float64()) for c in chunks])
    rows = _ArrowRows(column)
    got = [rows.take(0, 2), rows.take(2, 5), rows.take(5, 7)]
    np.testing.assert_array_equal(np.concatenate(got), [1.0, np.nan, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert rows._chunks == [None, None, None]  # every chunk passed is dropped


@pytest.mark.parametrize("bad", ["2,y\n", "2,y,2,9\n"])
def test_rows_of_uneven_length_go_to_pandas_even_outside_the_columns_read(
    tmp_path: Path, bad: str
) -> None:
    """pandas refuses the file (or pads the short row); pyarrow must not read column a alone,
    even with the row past the block the header is read from."""
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n" + "1,x,1\n" * 20_000 + bad + "3,z,3\n")
    assert table_names(path) == ["a", "b", "y"]
    assert read_arrow(path, "auto", ["y"], ["a"]) is None
