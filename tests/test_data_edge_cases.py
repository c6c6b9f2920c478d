"""Degenerate and extreme data (issue 17): huge and infinite values, two sources sharing a
target column, one validation label, one label column, truncated gzip, ``~nosuchuser`` paths,
constant and empty columns, tiny tables. Each gives a one-line error naming the culprit or a
defined result; nothing non-finite reaches the model or ``preprocessing.json``."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CliResult, clinical_config, clinical_frame, run_cli, toml_text
from polytask import Task, config_from_dict, load
from polytask.data.prepare import prepare_data
from polytask.data.preprocess import (
    MAX_STANDARD_SCORE,
    PreprocessOptions,
    TablePreprocessor,
    finite_mean_std,
)
from polytask.errors import ConfigError, DataError
from polytask.evaluate.metrics import compute_metrics

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _train(tmp_path: Path, frame: pd.DataFrame | None, raw: dict[str, Any]) -> CliResult:
    if frame is not None:
        frame.to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "c.toml").write_text(toml_text(raw))
    return run_cli("train", tmp_path / "c.toml", "--out", tmp_path / "run")


def _one_line_error(result: CliResult) -> str:
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    line = result.err.strip()
    assert "\n" not in line and line.startswith("error: ")
    return line


# -- extreme values ----------------------------------------------------------------------------


def test_mean_std_cannot_overflow_and_ordinary_columns_keep_their_bits() -> None:
    ordinary = np.random.default_rng(0).normal(27, 4, 1000)
    assert finite_mean_std(ordinary) == (float(ordinary.mean()), float(ordinary.std()))
    huge = np.array([1e308, -1e308, 1e308, 5.0])
    mean, std = finite_mean_std(huge)
    assert math.isfinite(mean) and math.isfinite(std) and std > 0
    assert mean == pytest.approx(2.5e307, rel=1e-12) and std == pytest.approx(8.29e307, rel=1e-2)


def test_huge_feature_values_train_a_finite_model(tmp_path: Path) -> None:
    """1e308 and -1e308 in a feature: finite statistics in preprocessing.json, a model that
    loads, finite predictions, even for new rows far outside the training range."""
    frame = clinical_frame(200)
    frame.loc[5:8, "bmi"] = 1e308
    frame.loc[9, "bmi"] = -1e308
    raw = clinical_config(train={"epochs": 1, "batch_size": 64, "progress": False})
    raw["model"] = {"encoder": {"name": "mlp", "widths": [8]}}
    result = _train(tmp_path, frame, raw)
    assert result.code == 0, result.err
    saved = json.loads((tmp_path / "run" / "model" / "preprocessing.json").read_text())
    stats = [v for c in saved["numeric"] for v in (c["mean"], c["std"], c["fill"])]
    assert all(math.isfinite(v) for v in stats)
    predictor = load(tmp_path / "run" / "model")
    rows = frame.head(12).copy()
    rows.loc[0, "bmi"] = 1.7e308
    rows.loc[1, "age"] = -1e300
    rows.loc[2, "bmi"] = np.inf
    predictions = predictor.predict(rows)
    assert np.isfinite(predictions["risk_proba"].to_numpy(dtype=float)).all()
    assert np.isfinite(predictions["stay"].to_numpy(dtype=float)).all()


def test_standardised_features_are_clipped_not_infinite() -> None:
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    pre = TablePreprocessor.fit(train, ["x"], [], PreprocessOptions(), "t")
    out = pre.transform(pd.DataFrame({"x": [1.7e308, -1.7e308, 2.5]}), "t")["numeric"]
    assert torch.isfinite(out).all()
    assert out[0, 0].item() == pytest.approx(MAX_STANDARD_SCORE)
    assert out[1, 0].item() == pytest.approx(-MAX_STANDARD_SCORE)


def test_infinite_feature_cells_count_as_missing() -> None:
    with_inf = pd.DataFrame({"x": [1.0, np.inf, 3.0, -np.inf, 5.0]})
    with_nan = pd.DataFrame({"x": [1.0, np.nan, 3.0, np.nan, 5.0]})
    options = PreprocessOptions()
    a = TablePreprocessor.fit(with_inf, ["x"], [], options, "t")
    b = TablePreprocessor.fit(with_nan, ["x"], [], options, "t")
    assert a.to_dict() == b.to_dict() and a.numeric[0].indicator
    encoded = a.transform(with_inf, "t")["numeric"]
    assert torch.equal(encoded, b.transform(with_nan, "t")["numeric"])
    assert encoded[:, 1].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]  # the missing indicator


def test_huge_target_value_is_rejected_naming_the_column(tmp_path: Path) -> None:
    frame = clinical_frame(200)
    frame.loc[5, "days"] = 1e308
    line = _one_line_error(_train(tmp_path, frame, clinical_config()))
    assert line == (
        f"error: data file '{tmp_path / 'train.csv'}': task 'stay': column 'days' holds values "
        "too large to standardise (max |x| = 1e+308; at most 1e+15)"
    )


def test_huge_target_in_a_validation_row_is_rejected_too() -> None:
    """Fitted on train rows, the scale would be fine; encoding the validation row would put an
    infinite float32 target in the validation loss."""
    frame = clinical_frame(60)
    frame["part"] = ["train"] * 50 + ["val"] * 10
    frame.loc[55, "days"] = -1e300
    raw = clinical_config()
    raw["data"] = {"split": {"method": "column", "column": "part"}}
    with pytest.raises(DataError, match="column 'days' holds values too large to standardise"):
        prepare_data(config_from_dict(raw), frame=frame)


# -- two sources, one target column ----------------------------------------------------------


def test_sources_sharing_a_target_column_keep_each_tasks_labels() -> None:
    """One ``score`` column, one source per school: task score_a learns school a's scores,
    score_b school b's, neither erasing the other's."""
    rng = np.random.default_rng(0)

    def school(mean: float) -> pd.DataFrame:
        table: pd.DataFrame = pd.DataFrame(
            {"x": rng.normal(0, 1, 80), "score": rng.normal(mean, 1.0, 80)}
        )
        return table

    raw = {
        "seed": 0,
        "baselines": False,
        "data": {
            "split": {"method": "random", "val": 0.25, "test": 0.0},
            "sources": [
                {"name": "a", "tasks": ["score_a"]},
                {"name": "b", "tasks": ["score_b"]},
            ],
        },
        "tasks": [
            {"name": "score_a", "kind": "regression", "target": "score"},
            {"name": "score_b", "kind": "regression", "target": "score"},
        ],
    }
    frames = {"a": school(10.0), "b": school(50.0)}
    prepared = prepare_data(config_from_dict(raw), frames=frames)
    by_name = {t.name: t for t in prepared.tasks}
    assert by_name["score_a"].target_mean == pytest.approx(10.0, abs=0.5)
    assert by_name["score_b"].target_mean == pytest.approx(50.0, abs=0.5)
    assert prepared.sources is not None
    for source in prepared.sources:
        masks = source.data.masks
        own = f"score_{source.name}"
        other = "score_b" if own == "score_a" else "score_a"
        assert bool(masks[own].all()) and not bool(masks[other].any())
    val = prepared.val.masks
    assert int(val["score_a"].sum()) + int(val["score_b"].sum()) == len(prepared.val)


# -- degenerate splits and targets -----------------------------------------------------------


def test_r2_of_one_label_is_nan_not_a_crash() -> None:
    task = Task("stay", "regression", "days", target_mean=3.0, target_std=2.0)
    output, target = torch.tensor([0.1, 0.4]), torch.tensor([0.2, 0.0])
    metrics = compute_metrics(task, output, target, torch.tensor([True, False]))
    assert math.isnan(metrics["r2"])
    assert metrics["mae"] == pytest.approx(0.2, abs=1e-6)  # 2 x |0.1 - 0.2|, in days
    assert not math.isnan(compute_metrics(task, output, target, torch.tensor([True, True]))["r2"])


def test_validation_split_with_one_regression_label_trains(tmp_path: Path) -> None:
    frame = clinical_frame(40)
    frame["part"] = ["train"] * 38 + ["val"] * 2
    frame.loc[38, "days"] = np.nan  # the validation split keeps one label of 'stay'
    raw = clinical_config(train={"epochs": 1, "batch_size": 16, "progress": False})
    raw["data"] = {"path": "train.csv", "split": {"method": "column", "column": "part"}}
    raw["tasks"][1]["metrics"] = ["r2", "mae"]
    raw["train"]["criterion"] = "stay.mae"
    result = _train(tmp_path, frame, raw)
    assert result.code == 0, result.err


def test_multilabel_with_one_label_column_is_a_config_error() -> None:
    raw = clinical_config()
    raw["tasks"] = [{"name": "m", "kind": "multilabel", "target": ["readmitted"]}]
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert str(info.value) == (
        "task 'm': a multilabel target lists at least 2 columns; for the one column "
        "'readmitted' use kind 'binary'"
    )


# -- files and paths ---------------------------------------------------------------------------


def test_truncated_gzip_is_one_line_naming_the_file(tmp_path: Path) -> None:
    packed = gzip.compress(clinical_frame().to_csv(index=False).encode())
    (tmp_path / "train.csv.gz").write_bytes(packed[: len(packed) // 2])
    line = _one_line_error(_train(tmp_path, None, clinical_config("train.csv.gz")))
    assert line == f"error: file '{tmp_path / 'train.csv.gz'}' is truncated or not valid gzip"


def test_unknown_user_in_a_path_is_one_line_naming_it(tmp_path: Path) -> None:
    line = _one_line_error(_train(tmp_path, None, clinical_config("~nosuchuser/data.csv")))
    assert line == (
        "error: path '~nosuchuser/data.csv': cannot expand '~nosuchuser' "
        "(no such user or no home directory)"
    )


# -- constant, empty and tiny tables ----------------------------------------------------------


def test_constant_column_is_kept_with_unit_scale() -> None:
    frame = pd.DataFrame({"c": [3.0] * 5, "x": [1.0, 2.0, 3.0, 4.0, 5.0]})
    pre = TablePreprocessor.fit(frame, ["c", "x"], [], PreprocessOptions(), "t")
    assert (pre.numeric[0].mean, pre.numeric[0].std) == (3.0, 1.0)
    assert torch.equal(pre.transform(frame, "t")["numeric"][:, 0], torch.zeros(5))


def test_all_missing_column_is_one_line_naming_it(tmp_path: Path) -> None:
    frame = clinical_frame(100)
    frame["empty"] = np.nan
    line = _one_line_error(_train(tmp_path, frame, clinical_config()))
    assert line.endswith(
        "numeric column 'empty' has no finite value in train (list it in data.ignore)"
    )


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_tables_of_one_to_three_rows(rows: int, tmp_path: Path) -> None:
    """Too few rows to split or to hold two classes is a one-line error naming the file; three
    rows that do split train a model."""
    raw = clinical_config(train={"epochs": 1, "batch_size": 2, "progress": False})
    raw["data"] = {"path": "train.csv", "split": {"method": "random", "val": 0.34, "test": 0.0}}
    frame = clinical_frame(40).iloc[[0, 1, 3]].head(rows)
    frame["readmitted"] = [0, 1, 1][:rows]
    result = _train(tmp_path, frame, raw)
    if rows == 1:
        assert "1 rows give an empty train or validation split" in _one_line_error(result)
    else:
        assert result.code in (0, 2) and "Traceback" not in result.err
        if result.code == 2:
            assert str(tmp_path / "train.csv") in _one_line_error(result)
