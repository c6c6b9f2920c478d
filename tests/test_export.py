"""``polytask export`` / :func:`polytask.export.export_onnx`: one ONNX graph from raw columns to
every task's outputs in user units, equal to ``Predictor.predict`` under onnxruntime
(probabilities within 1e-5, labels identical, regression within 1e-5 relative), for every task
kind, the sharing architectures, a preference-conditioned model and an image model."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]  # (ships no type information)
import pandas as pd
import pytest

import polytask
from conftest import clinical_frame, run_cli
from polytask.errors import PolytaskError
from polytask.export import OnnxPredictor, export_onnx
from polytask.export.verify import ColumnDiff, compare_predictions
from polytask.tasks import Task
from test_text import _sentiment_frame
from test_text import _tasks as _text_tasks
from test_vision import _shapes_frame

pytestmark = pytest.mark.usefixtures("torch_single_thread")

#: Probabilities and values: absolute 1e-5, or 1e-5 relative to the torch value (regression
#: in a large unit).
ABS_TOL = REL_TOL = 1e-5

TABLE_TASKS = [
    Task("risk", "binary", target="readmitted"),
    Task("stay", "regression", target="days"),
    Task("grp", "multiclass", target="grp"),
    Task("labs", "multilabel", target=["lab1", "lab2"]),
]
IMAGE_TASKS = [
    Task("shape", "multiclass", "shape"),
    Task("bright", "binary", "bright"),
    Task("level", "regression", "level"),
    Task("mask", "segmentation", "mask"),
    Task("depth", "dense_regression", "depth"),
]
SMALL = {"encoder": {"widths": [8]}, "head": {"widths": [4]}}
ONE_EPOCH = {"epochs": 1, "batch_size": 32, "progress": False}


def _table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """The clinical table with a multiclass label ``grp`` and two 0/1 labels ``lab1, lab2``."""
    frame = clinical_frame(n, seed)
    age = frame["age"].fillna(60.0)
    frame["grp"] = np.where(frame["days"] > 3, np.where(age > 60, "hi", "mid"), "lo")
    frame["lab1"] = (frame["bmi"] > 27).astype(float)
    frame["lab2"] = (age > 55).astype(float)
    return frame


def _test_rows() -> pd.DataFrame:
    """Fresh rows with every awkward input: missing and infinite numbers, a number far outside
    the training range, unseen and missing categories, a category with spaces around it."""
    rows = _table(40, seed=1)
    rows = rows.astype({"ward": object, "sex": object})
    rows.loc[0, "ward"] = "never_seen"
    rows.loc[1, "sex"] = None
    rows.loc[2, "age"] = np.nan
    rows.loc[3, "bmi"] = 1e308
    rows.loc[4, "age"] = -np.inf
    rows.loc[5, "ward"] = " icu "
    rows.loc[6, "sex"] = ""
    return rows


@pytest.fixture(scope="module")
def table_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The four-kind table model of an architecture, trained once per module (1 epoch)."""
    root = tmp_path_factory.mktemp("export_tables")
    data = root / "data.csv"
    _table().to_csv(data, index=False)
    trained: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in trained:
            out = root / architecture
            polytask.fit(
                data,
                TABLE_TASKS,
                out=out,
                baselines=False,
                data_options={"id": "patient"},
                model={**SMALL, "architecture": {"name": architecture}},
                train=ONE_EPOCH,
                quiet=True,
            )
            trained[architecture] = out / "model"
        return trained[architecture]

    return get


def _assert_equal(diffs: list[ColumnDiff]) -> None:
    bad = [d for d in diffs if not d.within(ABS_TOL, REL_TOL)]
    assert not bad, bad


def _export_and_compare(
    model: Path,
    rows: pd.DataFrame,
    path: Path,
    preference: Any = None,
    **export: Any,
) -> tuple[OnnxPredictor, list[ColumnDiff]]:
    export_onnx(model, path, **export)
    runtime = OnnxPredictor(path)
    expected = polytask.load(model).predict(rows, preference=preference)
    return runtime, compare_predictions(expected, runtime.predict(rows, preference=preference))


# -- equality ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("architecture", "exporter"),
    [
        ("hard", "dynamo"),
        ("mmoe", "torchscript"),
        ("ple", "torchscript"),
        ("cross_stitch", "torchscript"),
        ("soft", "torchscript"),
    ],
)
def test_table_model_equals_the_predictor(
    table_model: Callable[[str], Path], tmp_path: Path, architecture: str, exporter: str
) -> None:
    runtime, diffs = _export_and_compare(
        table_model(architecture), _test_rows(), tmp_path / "m.onnx", exporter=exporter
    )
    _assert_equal(diffs)
    assert {d.column for d in diffs} >= {"risk", "risk_proba", "stay", "grp", "labs.lab1"}
    # The unseen and missing categories went through the graph, not around it.
    out = runtime.predict(_test_rows().iloc[[0, 1, 6]])
    assert out["risk"].notna().all()


def test_raw_graph_with_plain_onnxruntime(
    table_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """A client without polytask packs the columns in the metadata's order, feeds NaN / "" for
    missing cells and gets the same numbers."""
    model = table_model("hard")
    path = export_onnx(model, tmp_path / "m.onnx", exporter="torchscript")
    rows = _table(30, seed=2).astype({"ward": object, "sex": object})
    rows.loc[0, "ward"], rows.loc[1, "sex"], rows.loc[2, "age"] = "unseen", None, np.nan
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    inputs = {i["name"]: i for i in json.loads(meta["polytask.inputs"])}
    numbers, categories = inputs["numbers"]["columns"], inputs["categories"]["columns"]
    assert sorted(numbers) == ["age", "bmi"] and sorted(categories) == ["sex", "ward"]
    feeds = {
        "numbers": rows[numbers].to_numpy(dtype=np.float64),
        "categories": rows[categories].fillna("").to_numpy(dtype=object).astype(str),
    }
    assert sorted(i.name for i in session.get_inputs()) == sorted(feeds)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feeds), strict=True))
    expected = polytask.load(model).predict(rows)
    np.testing.assert_allclose(got["risk_proba"], expected["risk_proba"], rtol=0, atol=ABS_TOL)
    np.testing.assert_allclose(got["stay"], expected["stay"], rtol=REL_TOL, atol=0)
    assert got["risk"].tolist() == expected["risk"].tolist()
    assert got["grp"].tolist() == expected["grp"].tolist()
    classes = ["hi", "lo", "mid"]
    probs = np.stack([expected[f"grp_proba_{c}"] for c in classes], axis=1)
    np.testing.assert_allclose(got["grp_proba"], probs, rtol=0, atol=ABS_TOL)
    labs = np.stack([expected["labs.lab1"], expected["labs.lab2"]], axis=1)
    assert (got["labs_label"] == labs).all()


def test_one_row_and_a_dict_of_columns(table_model: Callable[[str], Path], tmp_path: Path) -> None:
    model = table_model("hard")
    runtime = OnnxPredictor(export_onnx(model, tmp_path / "m.onnx", exporter="torchscript"))
    row = {"age": [61.0], "bmi": [30.5], "ward": ["icu"], "sex": [None]}
    expected = polytask.load(model).predict(pd.DataFrame(row))
    _assert_equal(compare_predictions(expected, runtime.predict(row)))


def test_conditioned_model_takes_the_preference(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("export_cosmos")
    polytask.fit(
        _table(),
        TABLE_TASKS[:2],
        out=root / "run",
        baselines=False,
        model={
            "encoder": {"widths": [8], "norm": "batch"},
            "head": {"widths": [4]},
            "preference_conditioning": "film",
        },
        balancer={"name": "cosmos"},
        train={**ONE_EPOCH, "epochs": 2},
        quiet=True,
    )
    model, rows = root / "run" / "model", _test_rows()
    path = root / "m.onnx"
    runtime, diffs = _export_and_compare(model, rows, path, preference=[0.9, 0.1])
    _assert_equal(diffs)
    assert "preference" in [i.name for i in onnx.load(path).graph.input]
    # Another preference: still equal, and the graph reads it (different outputs).
    expected = polytask.load(model).predict(rows, preference="1,3")
    _assert_equal(compare_predictions(expected, runtime.predict(rows, preference="1,3")))
    first = runtime.predict(rows, preference=[0.9, 0.1])["stay"]
    assert not np.allclose(first, expected["stay"])
    _assert_equal(compare_predictions(polytask.load(model).predict(rows), runtime.predict(rows)))


@pytest.mark.parametrize("architecture", ["hard", "mtan"])
def test_image_model_every_kind(
    tmp_path_factory: pytest.TempPathFactory, architecture: str
) -> None:
    root = tmp_path_factory.mktemp(f"export_{architecture}")
    polytask.fit(
        _shapes_frame(60, seed=0),
        IMAGE_TASKS,
        out=root / "run",
        baselines=False,
        data_options={"input": {"name": "image"}},
        model={
            "encoder": {"name": "cnn", "widths": [4, 8]},
            "head": {"decoder_channels": [4]},
            "architecture": {"name": architecture},
        },
        train={**ONE_EPOCH, "batch_size": 16},
        quiet=True,
    )
    path = root / "m.onnx"
    _, diffs = _export_and_compare(
        root / "run" / "model", _shapes_frame(7, seed=1), path, exporter="torchscript"
    )
    _assert_equal(diffs)
    assert {"mask", "depth", "shape", "bright", "level"} <= {d.column for d in diffs}
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    steps = " ".join(json.loads(meta["polytask.preprocessing_steps"]))
    assert "standardised per channel" in steps
    assert json.loads(meta["polytask.inputs"])[0]["shape"] == ["batch", 1, 12, 12]


def test_text_model_from_token_ids(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A text model exports from the token ids its processor produces (words and bigrams)."""
    root = tmp_path_factory.mktemp("export_text")
    polytask.fit(
        _sentiment_frame(200, seed=0),
        _text_tasks(),
        out=root / "run",
        baselines=False,
        data_options={"input": {"name": "text", "max_tokens": 16, "ngrams": 2}},
        model={"encoder": {"name": "embedding_bag", "dim": 16, "widths": [16]}},
        train=ONE_EPOCH,
        quiet=True,
    )
    path = root / "m.onnx"
    # Dynamo: the TorchScript exporter has no embedding_bag with a padding index.
    _, diffs = _export_and_compare(
        root / "run" / "model", _sentiment_frame(30, seed=1), path, exporter="dynamo"
    )
    _assert_equal(diffs)
    assert sorted(i.name for i in onnx.load(path).graph.input) == ["ngrams", "tokens"]


# -- the file ------------------------------------------------------------------------------
def test_metadata_and_input_schema(table_model: Callable[[str], Path], tmp_path: Path) -> None:
    path = export_onnx(table_model("hard"), tmp_path / "m.onnx", exporter="torchscript")
    graph = onnx.load(path)
    onnx.checker.check_model(graph, full_check=True)
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["polytask.version"] == polytask.__version__
    assert json.loads(meta["polytask.kinds"]) == {
        "risk": "binary",
        "stay": "regression",
        "grp": "multiclass",
        "labs": "multilabel",
    }
    assert json.loads(meta["polytask.classes"])["grp"] == ["hi", "lo", "mid"]
    assert meta["polytask.format"] == "polytask.onnx/2"
    inputs = {i["name"]: i for i in json.loads(meta["polytask.inputs"])}
    assert inputs["numbers"]["dtype"] == "double" and inputs["categories"]["dtype"] == "string"
    assert inputs["numbers"]["columns"] == ["age", "bmi"]
    assert inputs["categories"]["columns"] == ["ward", "sex"]
    assert inputs["numbers"]["shape"] == ["batch", 2] == inputs["categories"]["shape"]
    assert inputs["categories"]["categories"]["sex"] == ["F", "M"]
    assert json.loads(meta["polytask.preprocessing_steps"])
    types = {i.name: i.type.tensor_type for i in graph.graph.input}
    assert types["numbers"].elem_type == onnx.TensorProto.DOUBLE
    assert types["categories"].elem_type == onnx.TensorProto.STRING
    assert all(t.shape.dim[0].dim_param == "batch" for t in types.values())
    assert all(t.shape.dim[1].dim_value == 2 for t in types.values())
    # One node chain per input, not per column: the table's preprocessing is a fixed number
    # of nodes plus a LabelEncoder per categorical column.
    pre = [n for n in graph.graph.node if n.name.startswith("polytask/") and "/out/" not in n.name]
    assert len([n for n in pre if n.op_type == "LabelEncoder"]) == 2
    assert len(pre) <= 30, [n.op_type for n in pre]


def test_task_subset_and_opset(table_model: Callable[[str], Path], tmp_path: Path) -> None:
    model = table_model("hard")
    path = tmp_path / "m.onnx"
    res = run_cli("export", model, "-o", path, "--tasks", "stay,risk", "--opset", "20")
    assert res.code == 0, res.err
    graph = onnx.load(path)
    assert sorted(o.name for o in graph.graph.output) == ["risk", "risk_proba", "stay"]
    assert {o.domain: o.version for o in graph.opset_import}[""] == 20
    runtime = OnnxPredictor(path)
    assert runtime.task_names == ["risk", "stay"]
    rows = _test_rows()
    expected = polytask.load(model).predict(rows, ["risk", "stay"])
    _assert_equal(compare_predictions(expected, runtime.predict(rows)))


def test_output_is_written_atomically(
    table_model: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        export_onnx(table_model("hard"), path, exporter="torchscript")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary left


# -- one-line errors -----------------------------------------------------------------------
def _one_line_error(*args: Any) -> str:
    res = run_cli("export", *args)
    assert res.code == 2 and res.out == ""
    assert res.err.startswith("error: ") and res.err.count("\n") == 1, res.err
    return res.err


def test_errors_are_one_line(table_model: Callable[[str], Path], tmp_path: Path) -> None:
    model, out = table_model("hard"), tmp_path / "m.onnx"
    assert "model directory" in _one_line_error(tmp_path / "nothing", "-o", out)
    assert "unknown task 'nope'" in _one_line_error(model, "-o", out, "--tasks", "risk,nope")
    assert "--opset 9: unsupported" in _one_line_error(model, "-o", out, "--opset", "9")
    assert "is a directory" in _one_line_error(model, "-o", tmp_path)
    assert not out.exists()
    with pytest.raises(PolytaskError, match="not found"):
        OnnxPredictor(tmp_path / "missing.onnx")


# -- the per-request feeds -------------------------------------------------------------------
def _awkward_rows() -> pd.DataFrame:
    """Rows whose dtypes and cells leave the request frame's shape: an integer number column,
    numbers written as text, missing-value markers (numeric and text), categories as pandas
    strings with gaps, whole numbers in a float category column, a non-default index."""
    rows = _test_rows().iloc[:12].copy()
    rows.index = range(100, 112)
    rows["bmi"] = rows["bmi"].round().clip(-1e6, 1e6).astype("int64")
    rows.loc[101, "bmi"] = -999
    rows["age"] = rows["age"].astype(object)
    rows.loc[102, "age"] = " 42.5 "
    rows.loc[103, "age"] = "NA"
    rows.loc[104, "ward"] = "NA"
    rows["sex"] = rows["sex"].astype("string")
    return rows


def test_fast_feeds_equal_the_pandas_conversion(
    table_model: Callable[[str], Path], tmp_path: Path
) -> None:
    """The packed feeds of any frame equal the per-column pandas conversion (markers applied
    by mark_missing), cell for cell, and the predictions equal the torch predictor's."""
    model = table_model("hard")
    runtime = OnnxPredictor(export_onnx(model, tmp_path / "m.onnx", exporter="torchscript"))
    runtime.na_values = ["NA", "-999"]
    runtime._marker_numbers = np.array([-999.0])
    predictor = polytask.load(model)
    predictor.na_values = ["NA", "-999"]
    from polytask.run.predictor import mark_missing

    shuffled = _awkward_rows()[["sex", "days", "age", "patient", "ward", "bmi"]]
    for rows in (_test_rows(), _awkward_rows(), _awkward_rows().iloc[[3]], shuffled):
        fast = runtime.feeds(rows, "rows")
        slow = runtime._table_feeds_pandas(mark_missing(rows, runtime.na_values), "rows")
        assert fast.keys() == slow.keys() == {"numbers", "categories"}
        np.testing.assert_array_equal(fast["numbers"], slow["numbers"])
        assert fast["categories"].tolist() == slow["categories"].tolist()
        _assert_equal(compare_predictions(predictor.predict(rows), runtime.predict(rows)))
    feeds = runtime.feeds(_awkward_rows(), "rows")
    assert np.isnan(feeds["numbers"][[1, 3], [1, 0]]).all()  # -999 and "NA": missing
    assert feeds["numbers"][2, 0] == 42.5
    assert feeds["categories"][4, 0] == "__missing__"


def test_a_table_of_numbers_only(tmp_path: Path) -> None:
    """A frame of numbers only (a fingerprint table) is read as one float64 matrix, integer
    columns and numeric markers included."""
    frame = _table(120)[["age", "bmi", "days", "readmitted"]]
    frame["bits"] = (frame["bmi"] > 27).astype("int64")
    polytask.fit(
        frame,
        [Task("risk", "binary", target="readmitted"), Task("stay", "regression", target="days")],
        out=tmp_path / "run",
        baselines=False,
        data_options={"na_values": ["-1"]},
        model=SMALL,
        train=ONE_EPOCH,
        quiet=True,
    )
    model = tmp_path / "run" / "model"
    runtime = OnnxPredictor(export_onnx(model, tmp_path / "m.onnx", exporter="torchscript"))
    rows = _table(20, seed=3)[["age", "bmi"]]
    rows["bits"] = np.arange(20) % 3 - 1  # -1 is a marker: missing
    assert list(runtime.feeds(rows)) == ["numbers"]
    assert np.isnan(runtime.feeds(rows)["numbers"][0, 2])
    expected = polytask.load(model).predict(rows)
    _assert_equal(compare_predictions(expected, runtime.predict(rows)))
    _assert_equal(compare_predictions(expected.iloc[[0]], runtime.predict(rows.iloc[[0]])))


def test_bad_cell_is_named_by_its_row_label(
    table_model: Callable[[str], Path], tmp_path: Path
) -> None:
    runtime = OnnxPredictor(
        export_onnx(table_model("hard"), tmp_path / "m.onnx", exporter="torchscript")
    )
    rows = _awkward_rows().drop(index=103)  # "NA": not a marker of this model, an error
    rows.loc[107, "age"] = "old"
    with pytest.raises(
        PolytaskError, match=r"column 'age' should hold numbers but row 107 has 'old'"
    ):
        runtime.predict(rows)
    twice = pd.concat([rows[["age"]], rows], axis=1)
    with pytest.raises(PolytaskError, match=r"column\(s\) \['age'\] appear more than once"):
        runtime.predict(twice)


def test_a_file_of_the_old_format_is_refused(
    table_model: Callable[[str], Path], tmp_path: Path
) -> None:
    path = export_onnx(table_model("hard"), tmp_path / "m.onnx", exporter="torchscript")
    graph = onnx.load(path)
    for prop in graph.metadata_props:
        if prop.key == "polytask.format":
            prop.value = "polytask.onnx/1"
    onnx.save(graph, tmp_path / "old.onnx")
    with pytest.raises(PolytaskError, match=r"format 'polytask.onnx/1' .* export it again"):
        OnnxPredictor(tmp_path / "old.onnx")
