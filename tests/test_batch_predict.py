"""``polytask predict`` in chunks: the same predictions as the whole table at once, for CSV and
Parquet in and out; the id column carried through; a failure part-way leaves no output."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

import polytask
from conftest import clinical_frame, run_cli
from polytask.errors import DataError
from polytask.run.batch import iter_table, predict_file
from polytask.run.predictor import Predictor
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> Path:
    root = tmp_path_factory.mktemp("batch")
    data = root / "train.csv"
    clinical_frame(200, 0).to_csv(data, index=False)
    polytask.fit(
        data,
        [Task("risk", "binary", target="readmitted"), Task("stay", "regression", target="days")],
        out=root / "run",
        baselines=False,
        data_options={"id": "patient", "na_values": ["?"]},
        model={"encoder": {"widths": [8]}, "head": {"widths": [4]}},
        train={"epochs": 1, "batch_size": 64, "progress": False},
        quiet=True,
    )
    return root / "run" / "model"


def _table(tmp_path: Path, suffix: str, n: int = 300) -> Path:
    frame = clinical_frame(n, 3).drop(columns=["readmitted", "days"]).astype({"age": object})
    frame.loc[[i for i in (5, 150, 290) if i < n], "age"] = "?"  # markers in three chunks
    path = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.astype({"age": str}).to_parquet(path, index=False)
    return path


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@pytest.mark.parametrize("source", [".csv", ".parquet"])
@pytest.mark.parametrize("target", [".csv", ".parquet"])
def test_chunked_equals_whole_table(model: Path, tmp_path: Path, source: str, target: str) -> None:
    data = _table(tmp_path, source)
    predictor = polytask.load(model)
    whole = predictor.predict(predictor.read(data))
    assert "patient" in whole.columns  # the id column is carried through
    out = tmp_path / f"out{target}"
    res = run_cli("predict", model, data, "-o", out, "--chunk-rows", "37")
    assert res.code == 0, res.err
    assert res.err.strip() == f"wrote 300 rows to {out}"
    got = _read(out)
    want = whole.reset_index(drop=True)
    if target == ".csv":
        want = pd.read_csv(io.StringIO(whole.to_csv(index=False)))
    # Ids and labels are identical; a float32 network output may differ in its last bit
    # between a batch of 37 rows and one of 300 (the BLAS kernel depends on the batch
    # size), so probabilities and values agree to float32 precision.
    for column in ["patient", "risk"]:
        assert got[column].tolist() == want[column].tolist()
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6, atol=0)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_chunks_are_numbered_from_the_file_start(tmp_path: Path) -> None:
    data = _table(tmp_path, ".parquet", 50)
    chunks = list(iter_table(data, 20))
    assert [len(c) for c in chunks] == [20, 20, 10]
    assert chunks[2].index[0] == 40


@pytest.mark.parametrize("target", [".csv", ".parquet"])
def test_a_bad_chunk_leaves_no_output(model: Path, tmp_path: Path, target: str) -> None:
    data = tmp_path / "in.csv"
    rows = clinical_frame(300, 4).astype({"age": object})
    rows.loc[250, "age"] = "old"  # not a number: the sixth chunk of 50 fails
    rows.to_csv(data, index=False)
    out = tmp_path / f"out{target}"
    seen: list[int] = []
    with pytest.raises(DataError, match="column 'age' should hold numbers but row 250 has 'old'"):
        predict_file(polytask.load(model), data, out, chunk_rows=50, on_chunk=seen.append)
    assert seen == [50] * 5  # five chunks were predicted and written before the failure
    assert list(tmp_path.iterdir()) == [data]
    res = run_cli("predict", model, data, "-o", out, "--chunk-rows", "50")
    assert res.code == 2 and "row 250 has 'old'" in res.err
    assert list(tmp_path.iterdir()) == [data]


def test_existing_output_survives_a_failure(model: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text("patient,age,bmi,ward,sex\np1,old,27,icu,F\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    out.write_text("previous\n", encoding="utf-8")
    with pytest.raises(DataError):
        predict_file(polytask.load(model), data, out)
    assert out.read_text(encoding="utf-8") == "previous\n"


def test_empty_and_unwritable(model: Path, tmp_path: Path) -> None:
    predictor: Predictor = polytask.load(model)
    empty = tmp_path / "empty.csv"
    empty.write_text("patient,age,bmi,ward,sex\n", encoding="utf-8")
    with pytest.raises(DataError, match="has no rows"):
        predict_file(predictor, empty, tmp_path / "o.csv")
    assert not (tmp_path / "o.csv").exists()
    with pytest.raises(DataError, match="cannot tell the format"):
        predict_file(predictor, empty, tmp_path / "o.json")
