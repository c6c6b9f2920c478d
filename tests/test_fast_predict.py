"""The fast prediction path (a few rows, no per-column pandas work) gives exactly what the
pandas path gives: markers, conversion, category lookup (unseen slot included),
standardisation, missing indicators and decoding."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import polytask
from conftest import clinical_frame
from polytask.data.preprocess import (
    TablePreprocessor,
    as_float,
    as_text,
    cells_as_float,
    cells_as_text,
)
from polytask.errors import DataError
from polytask.run.predictor import Predictor, mark_missing, mark_missing_cells
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Clinical rows plus an integer-coded categorical column and a multiclass target."""
    frame = clinical_frame(n, seed)
    rng = np.random.default_rng(seed)
    frame["code"] = rng.integers(1, 30, n)  # many codes: an embedded column
    frame["grade"] = rng.choice(["a", "b", "c"], n)
    return frame


def _fit(root: Path, **options: Any) -> Predictor:
    data = root / "train.csv"
    _frame(200, 0).to_csv(data, index=False)
    polytask.fit(
        data,
        [
            Task("risk", "binary", target="readmitted"),
            Task("stay", "regression", target="days"),
            Task("grade", "multiclass", target="grade"),
        ],
        out=root / "run",
        baselines=False,
        data_options={
            "id": "patient",
            "na_values": ["?", "-999"],
            "categorical": ["code"],
            "onehot_max_categories": 5,
            **options,
        },
        model={"encoder": {"widths": [8]}, "head": {"widths": [4]}},
        train={"epochs": 1, "batch_size": 64, "progress": False},
        quiet=True,
    )
    return polytask.load(root / "run" / "model")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> Predictor:
    return _fit(tmp_path_factory.mktemp("fast"))


def _awkward() -> pd.DataFrame:
    """Rows with every case the conversion must agree on: markers as text and as numbers,
    blanks, unseen categories, padded text, an infinite number, a huge number."""
    rows = _frame(12, 1).drop(columns=["readmitted", "days", "grade"]).astype(object)
    rows.loc[0, "age"] = "?"
    rows.loc[1, "age"] = -999
    rows.loc[2, "ward"] = " ? "
    rows.loc[3, "ward"] = "paediatrics"  # unseen: the unknown slot
    rows.loc[4, "ward"] = "  icu "
    rows.loc[5, "sex"] = ""
    rows.loc[6, "bmi"] = float("inf")
    rows.loc[7, "bmi"] = 1e308
    rows.loc[8, "code"] = 999  # unseen code
    rows.loc[9, "code"] = None
    rows.loc[10, "age"] = " 61.5 "
    return rows


def _pandas(predictor: Predictor, df: pd.DataFrame, **kw: Any) -> pd.DataFrame:
    """The pandas path (``TablePreprocessor.transform``): the definition of a prediction."""
    predictor.fast_frames = False
    try:
        return predictor.predict(df, **kw)
    finally:
        predictor.fast_frames = True


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "object"])
def test_fast_frame_equals_pandas_path(predictor: Predictor, typed: bool) -> None:
    rows = _frame(60, 2)
    if not typed:
        rows = _awkward()
    fast = predictor.predict(rows)
    pd.testing.assert_frame_equal(fast, _pandas(predictor, rows))
    # One row at a time, as a server sees them.
    for i in range(len(rows)):
        one = rows.iloc[[i]]
        pd.testing.assert_frame_equal(predictor.predict(one), _pandas(predictor, one))


def test_records_equal_pandas_path(predictor: Predictor) -> None:
    rows = _awkward()
    records = [{k: v for k, v in r.items() if not _is_missing(v)} for r in rows.to_dict("records")]
    records[3]["unused"] = "ignored"
    expected = _pandas(predictor, pd.DataFrame(records), tasks=["grade", "risk"])
    got = predictor.predict_records(records, tasks=["grade", "risk"])
    assert list(got[0]) == list(expected.columns)
    for row, (_, want) in zip(got, expected.iterrows(), strict=True):
        for key, value in want.items():
            if _is_missing(value):
                assert row[key] is None, key
            else:
                assert row[key] == value, key
                assert type(row[key]) in (str, float, int), key


def test_records_of_json_numbers_and_text(predictor: Predictor) -> None:
    """Numbers sent as JSON (ints among floats), codes as numbers or text: the batch and each
    row alone equal the pandas path. (A row alone may differ from the same row in a batch, as
    in pandas: 4.0 alone is a float column, written "4"; among text it is written "4.0".)"""
    records: list[dict[str, Any]] = [
        {"patient": "p1", "age": 61, "bmi": 27.5, "ward": "icu", "sex": "F", "code": 3},
        {"patient": "p2", "age": 50.5, "bmi": None, "ward": "surgery", "sex": None, "code": "3"},
        {"patient": "p3", "age": "?", "bmi": -999, "ward": "medicine", "sex": "M", "code": 4.0},
        {"patient": "p4", "age": 70, "bmi": 30, "ward": "x", "sex": "F", "code": 2.5},
    ]
    for rows in [records, *([r] for r in records)]:
        got = predictor.predict_records(rows)
        frame = _pandas(predictor, pd.DataFrame(rows))
        assert [r["risk_proba"] for r in got] == frame["risk_proba"].tolist()
        assert [r["stay"] for r in got] == frame["stay"].tolist()
        assert [r["grade"] for r in got] == frame["grade"].tolist()
        assert [r["patient"] for r in got] == frame["patient"].tolist()


def test_nan_output_gives_no_label_in_records(predictor: Predictor, tmp_path: Path) -> None:
    import torch

    broken = polytask.load(predictor.save(tmp_path / "m"))
    first = next(p for p in broken.model.parameters() if p.ndim == 2)
    with torch.no_grad():
        first.fill_(float("nan"))
    out = broken.predict_records([{"age": 60, "bmi": 25, "ward": "icu", "sex": "F", "code": 3}])
    assert out[0]["risk"] is None and out[0]["risk_proba"] is None
    assert out[0]["grade"] is None and out[0]["stay"] is None


def test_missing_feature_and_bad_number_name_the_column(predictor: Predictor) -> None:
    with pytest.raises(DataError, match=r"feature column\(s\) \['bmi'\] not found"):
        predictor.predict_records([{"age": 60, "ward": "icu", "sex": "F", "code": 3}])
    bad = [{"age": "old", "bmi": 25, "ward": "icu", "sex": "F", "code": 3}]
    with pytest.raises(DataError) as fast:
        predictor.predict_records(bad)
    with pytest.raises(DataError) as slow:
        _pandas(predictor, pd.DataFrame(bad))
    assert str(fast.value).replace("request", "data frame") == str(slow.value)
    assert "column 'age' should hold numbers but row 0 has 'old'" in str(fast.value)


def test_unseen_error_policy_matches(predictor: Predictor, tmp_path: Path) -> None:
    strict = polytask.load(predictor.save(tmp_path / "m"))
    assert isinstance(strict.preprocessor, TablePreprocessor)
    strict.preprocessor.options.unseen = "error"
    row = [{"age": 60, "bmi": 25, "ward": "nowhere", "sex": "F", "code": 3}]
    with pytest.raises(DataError, match="column 'ward' has category 'nowhere' not seen"):
        strict.predict_records(row)
    with pytest.raises(DataError, match="column 'ward' has category 'nowhere' not seen"):
        _pandas(strict, pd.DataFrame(row))


PLAIN: list[dict[str, Any]] = [
    {"patient": "p1", "age": 61, "bmi": 27.5, "ward": "icu", "sex": "F", "code": 3},
    {"patient": "p2", "age": None, "bmi": 1e308, "ward": "  surgery ", "sex": "", "code": "3"},
    {
        "patient": None,
        "age": 50.5,
        "bmi": float("inf"),
        "ward": "nowhere",
        "sex": None,
        "code": 999,
    },
    {"patient": "p4", "age": float("nan"), "bmi": -3, "ward": None, "sex": "M", "code": None},
    {"age": 70, "bmi": 30, "ward": "medicine", "sex": "F", "code": float("nan"), "extra": [1]},
]


def test_plain_records_take_the_one_pass_encoding(predictor: Predictor) -> None:
    """Plain JSON cells are encoded by FastTable exactly as transform_cells and the pandas
    transform encode them, alone and together, and predict_records equals the pandas path."""
    import torch

    fast = predictor._fast_table()
    assert fast is not None and isinstance(predictor.preprocessor, TablePreprocessor)
    for rows in [PLAIN, *([r] for r in PLAIN)]:
        got = fast.records(rows)
        assert got is not None
        frame = pd.DataFrame(rows)
        columns = {k: frame[k].tolist() for k in predictor.preprocessor.columns}
        for want in (
            predictor.preprocessor.transform(frame, "t"),
            predictor.preprocessor.transform_cells(
                {k: [r.get(k) for r in rows] for k in columns}, len(rows), "t"
            ),
        ):
            assert got.keys() == want.keys()
            for key in want:
                assert got[key].dtype == want[key].dtype
                assert torch.equal(got[key], want[key]), key
        predicted = predictor.predict_records(rows)
        expected = _pandas(predictor, frame.drop(columns="extra", errors="ignore"))
        assert list(predicted[0]) == list(expected.columns)
        for row, (_, want_row) in zip(predicted, expected.iterrows(), strict=True):
            for key, value in want_row.items():
                assert row[key] is None if _is_missing(value) else row[key] == value, key


@pytest.mark.parametrize(
    "change",
    [
        {"age": np.float64(61.0)},  # a NumPy scalar: the general path converts it
        {"age": "61"},  # a number as text
        {"age": True},
        {"age": -999},  # a marker as a number
        {"ward": " ? "},  # a marker as text
        {"code": 2.5},  # a fraction in a category column
        {"code": np.int64(3)},
        {"code": 2**60},  # past float64's exact integers
    ],
    ids=str,
)
def test_other_cells_take_the_general_path(predictor: Predictor, change: dict[str, Any]) -> None:
    fast = predictor._fast_table()
    assert fast is not None
    row = {**PLAIN[0], **change}
    assert fast.records([PLAIN[1], row]) is None
    predicted = predictor.predict_records([row])
    expected = _pandas(predictor, pd.DataFrame([row]))
    assert predicted[0]["risk_proba"] == expected["risk_proba"].iloc[0]
    assert predicted[0]["grade"] == expected["grade"].iloc[0]


def test_absent_column_and_strict_unseen_take_the_general_path(
    predictor: Predictor, tmp_path: Path
) -> None:
    fast = predictor._fast_table()
    assert fast is not None
    partial = {k: v for k, v in PLAIN[0].items() if k != "bmi"}
    assert fast.records([PLAIN[0], partial]) is None
    got = predictor.predict_records([PLAIN[0], partial])
    assert got[1]["stay"] == _pandas(predictor, pd.DataFrame([PLAIN[0], partial]))["stay"].iloc[1]
    strict = polytask.load(predictor.save(tmp_path / "m"))
    assert isinstance(strict.preprocessor, TablePreprocessor)
    strict.preprocessor.options.unseen = "error"
    strict_fast = strict._fast_table()
    assert strict_fast is not None and strict_fast.records([PLAIN[0]]) is not None
    assert strict_fast.records([PLAIN[2]]) is None  # 'nowhere': the general path refuses it


def test_fast_table_follows_changed_markers(predictor: Predictor, tmp_path: Path) -> None:
    other = polytask.load(predictor.save(tmp_path / "m"))
    first = other._fast_table()
    assert other._fast_table() is first  # built once
    other.na_values = [*other.na_values, "icu"]
    assert other._fast_table() is not first
    assert (
        other.predict_records([PLAIN[0]])[0]["risk_proba"]
        == (_pandas(other, pd.DataFrame([{**PLAIN[0], "ward": None}]))["risk_proba"].iloc[0])
    )


CELLS: list[list[Any]] = [
    [1, 2, None],
    [1.0, 2.5, None, float("nan")],
    [" a ", "", None, "b"],
    ["x", 3, 4.0, None],
    [True, False],
    [True, None],
    [2**60, None],
    [2**60, 1],
    [np.int64(7), np.float64(2.0)],
    [None, None],
    ["3", 3, " 3 "],
    [np.int64(-7), np.int64(2**62)],
    [3.0, float("nan"), -2.0, 1e15],
    [3.0, 2.5],
    [float("inf"), 1.0],
]


@pytest.mark.parametrize("cells", CELLS)
def test_cells_as_text_equals_as_text(cells: list[Any]) -> None:
    assert cells_as_text(cells, "c") == as_text(pd.Series(cells, name="c")).tolist()
    array = pd.Series(cells, name="c").to_numpy()
    assert cells_as_text(array, "c") == as_text(pd.Series(array, name="c")).tolist()
    for dtype in ("int64", "uint8", "float32") if array.dtype.kind in "iu" else ():
        typed = array.astype(dtype)
        assert cells_as_text(typed, "c") == as_text(pd.Series(typed, name="c")).tolist()


@pytest.mark.parametrize("cells", [c for c in CELLS if not any(isinstance(v, str) for v in c)])
def test_cells_as_float_equals_as_float(cells: list[Any]) -> None:
    want = as_float(pd.Series(cells, name="c"), "s")
    np.testing.assert_array_equal(cells_as_float(cells, "c", "s"), want)


@pytest.mark.parametrize("cells", [*CELLS, [-999, 1.5], ["-999", "?", 2]])
def test_mark_missing_cells_equals_mark_missing(cells: list[Any]) -> None:
    markers = ["?", "-999"]
    frame = mark_missing(pd.DataFrame({"c": cells}), markers)
    marked = mark_missing_cells(cells, "c", markers)
    expected = frame["c"]
    got = pd.Series(marked, name="c")
    pd.testing.assert_series_equal(got, expected)
    assert as_text(got).tolist() == as_text(expected).tolist()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_frame_cells_equal_series_to_numpy() -> None:
    from polytask.run.predictor import _frame_cells

    frame = pd.DataFrame(
        {
            "n": [1, 2],
            "x": [0.5, np.nan],
            "s": pd.Series(["a", None], dtype="string"),
            "t": ["u", "v"],
            "o": pd.Series([1, "b"], dtype=object),
            "y": [0, 1],
        }
    )
    cells = _frame_cells(frame, ["x", "n", "s", "t", "o", "absent"])
    assert list(cells) == ["x", "n", "s", "t", "o"]
    for name, values in cells.items():
        want = frame[name].to_numpy()
        assert isinstance(values, np.ndarray) and values.dtype == want.dtype, name
        pd.testing.assert_series_equal(pd.Series(values), pd.Series(want), check_names=False)


def _frames_for_encoding() -> list[pd.DataFrame]:
    """Frames of every column type the vectorised encoding reads itself or hands on."""
    typed = _frame(300, 5).drop(columns=["readmitted", "days", "grade"])
    text = typed.astype({"ward": "string", "sex": "str"})
    text.loc[[3, 7], "ward"] = pd.NA
    text.loc[[4], "sex"] = None
    floats = typed.astype({"code": "float64"})
    floats.loc[[0, 9], "code"] = np.nan  # a float column of codes: 3.0 is the category "3"
    objects = _awkward()  # numbers in an object column of codes: the general path
    with_bool = typed.assign(sex=typed["sex"] == "F")  # booleans in a category column
    mixed = typed.astype({"code": object})
    mixed.loc[1, "code"] = "3"  # 3 and "3" in one object column: the general path
    nullable = typed.astype({"code": "Int64"})  # an extension type: the general path
    return [typed, text, floats, objects, with_bool, mixed, nullable]


@pytest.mark.parametrize("index", range(7))
def test_frame_encoding_equals_transform(predictor: Predictor, index: int) -> None:
    """FastTable.prepare/encode (any row range) give TablePreprocessor.transform's tensors
    bit for bit, or None for the general path; the distinct values remembered from one frame
    do not change the next's."""
    import torch

    fast = predictor._fast_table()
    pre = predictor.preprocessor
    assert fast is not None and isinstance(pre, TablePreprocessor)
    frame = mark_missing(_frames_for_encoding()[index], predictor.na_values)
    want = pre.transform(frame, "t")
    for rows in (frame, frame.iloc[::-1], frame.iloc[:1]):
        prepared = fast.prepare(rows, "t")
        if index in (3, 5, 6):  # object codes of numbers (1 and 1.0 hash alike), Int64
            assert prepared is None
            continue
        assert prepared is not None
        expected = pre.transform(rows, "t")
        got = fast.encode(prepared, 0, len(rows))
        for key in expected:
            assert got[key].dtype == expected[key].dtype
            assert torch.equal(got[key], expected[key]), key
        part = fast.encode(prepared, 1, 4)
        assert all(torch.equal(part[k], expected[k][1:4]) for k in expected)
    assert want["numeric"].shape[0] == len(frame)


def test_frame_encoding_of_unseen_under_error_policy(predictor: Predictor, tmp_path: Path) -> None:
    strict = polytask.load(predictor.save(tmp_path / "m"))
    assert isinstance(strict.preprocessor, TablePreprocessor)
    strict.preprocessor.options.unseen = "error"
    fast = strict._fast_table()
    assert fast is not None
    rows = _frame(300, 5).drop(columns=["readmitted", "days", "grade"])
    assert fast.prepare(rows, "t") is not None
    rows.loc[250, "ward"] = "nowhere"
    assert fast.prepare(rows, "t") is None  # the general path refuses it, naming it
    with pytest.raises(DataError, match="column 'ward' has category 'nowhere' not seen"):
        strict.predict(rows)


def test_large_frames_equal_pandas_path(predictor: Predictor) -> None:
    """predict of more rows than fast_rows (the vectorised encoding, encoded batch by batch)
    equals the pandas path exactly, markers included, across several forward batches."""
    predictor.batch_size = 64
    try:
        for frame in _frames_for_encoding():
            copies = -(-600 // len(frame))
            rows = pd.concat([frame] * copies, ignore_index=True).astype(frame.dtypes.to_dict())
            if rows["age"].dtype == object:
                rows.loc[[5, 500], "age"] = "?"
            assert len(rows) > predictor.fast_rows
            pd.testing.assert_frame_equal(predictor.predict(rows), _pandas(predictor, rows))
    finally:
        predictor.batch_size = 8192


@pytest.mark.parametrize(
    "values",
    [
        [" ? ", "a", None, "?", "b"],
        ["a", "b"],
        [1, "?", 2.5, None],
        [["?"], "?", "a"],  # unhashable cells: one by one
    ],
    ids=str,
)
def test_text_hits_equal_the_cell_rule(values: list[Any]) -> None:
    from polytask.run.predictor import _text_hits

    texts = {"?"}
    for series in (pd.Series(values, dtype=object), pd.Series(values)):
        want = series.map(lambda v: isinstance(v, str) and v.strip() in texts).astype(bool)
        assert _text_hits(series, texts).tolist() == want.tolist()


@pytest.mark.parametrize(
    "columns",
    [
        {"risk": np.array(["yes"], dtype=object), "risk_proba": np.array([0.25])},
        {"id": np.array([7]), "grade": np.array(["a", "b"], dtype=object)[:1]},
        {"risk": np.array([np.nan], dtype=object), "p": np.array([np.nan])},  # no label
        {"risk": np.array(["a", np.nan], dtype=object), "p": np.array([1.0, 2.0])},
        {"ok": np.array([True, False]), "n": np.array([1, 2], dtype=np.int32)},
        {"map": np.array([None, None], dtype=object)},
    ],
    ids=str,
)
def test_output_frame_equals_the_constructor(columns: dict[str, np.ndarray]) -> None:
    from polytask.run.predictor import _output_frame

    n = len(next(iter(columns.values())))
    index = pd.RangeIndex(3, 3 + n)
    got = _output_frame(columns, index)
    want = pd.DataFrame(columns, index=index)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got.dtypes.tolist() == want.dtypes.tolist()
    assert got.columns.dtype == want.columns.dtype


def test_frame_values_equal_each_column_as_python_values() -> None:
    """The few-row path's cells, read block by block, are each column's values as
    ``Series.tolist`` gives them (text missing as None); an extension type other than text
    (dates included) is None: the general path."""
    from polytask.run.predictor import _frame_values

    frame = pd.DataFrame(
        {
            "n": [1, 2],
            "x": [0.5, np.nan],
            "s": pd.Series(["a", None], dtype="str"),
            "m": [3, 4],
            "o": pd.Series([1, "b"], dtype=object),
            "i": pd.Series([1, None], dtype="Int64"),
            "d": pd.to_datetime(["2020-01-01", "2020-01-02"]),
            "y": [0.25, 1.5],
        }
    )
    values = _frame_values(frame)
    assert list(values) == list(frame.columns)
    assert values["n"] == [1, 2] and values["m"] == [3, 4] and values["y"] == [0.25, 1.5]
    assert values["x"] is not None and values["x"][0] == 0.5 and math.isnan(values["x"][1])
    assert values["s"] == ["a", None] and values["o"] == [1, "b"]
    assert values["i"] is None and values["d"] is None
