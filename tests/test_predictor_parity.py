"""``Predictor.predict(df)`` / ``.evaluate(df)`` agree with ``polytask predict`` / ``evaluate``
on the same rows (missing-value markers included); no class is attached to a NaN
probability; nothing non-finite is ever saved."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from conftest import clinical_frame, run_cli
from polytask.errors import DataError, PolytaskError
from polytask.run.predictor import mark_missing
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _with_markers(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with "?" (the marker) in a numeric, a categorical and a label column."""
    marked: pd.DataFrame = frame.astype({"age": object, "ward": object, "days": object})
    marked.loc[[1, 4, 7], "age"] = "?"
    marked.loc[[2, 4], "ward"] = "?"
    marked.loc[[3], "days"] = "?"
    return marked


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> SimpleNamespace:
    """A tiny model trained from a CSV whose missing values are written "?"."""
    root = tmp_path_factory.mktemp("parity")
    frame = _with_markers(clinical_frame(150))
    data = root / "data.csv"
    frame.to_csv(data, index=False)
    polytask.fit(
        data,
        [Task("risk", "binary", target="readmitted"), Task("stay", "regression", target="days")],
        out=root / "run",
        baselines=False,
        data_options={"id": "patient", "na_values": ["?"]},
        model={"encoder": {"widths": [8]}, "head": {"widths": [4]}},
        train={"epochs": 1, "batch_size": 32, "progress": False},
        quiet=True,
    )
    # The rows as a user holds them in Python: read without the markers, "?" as text.
    rows = pd.read_csv(data)
    assert (rows["age"] == "?").sum() == 3 and (rows["ward"] == "?").sum() == 2
    return SimpleNamespace(root=root, data=data, model=root / "run" / "model", rows=rows)


def test_predict_frame_matches_cli_with_markers(trained: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "cli.csv"
    res = run_cli("predict", trained.model, trained.data, "-o", out)
    assert res.code == 0, res.err
    predictor = polytask.load(trained.model)
    python = predictor.predict(trained.rows)
    assert python.to_csv(index=False) == out.read_text(encoding="utf-8")
    # "?" means missing, exactly as an empty cell does.
    blank = trained.rows.replace("?", np.nan)
    pd.testing.assert_frame_equal(python, predictor.predict(blank))


def test_evaluate_frame_matches_cli_with_markers(trained: SimpleNamespace) -> None:
    res = run_cli("evaluate", trained.model, trained.data, "--json")
    assert res.code == 0, res.err
    python = polytask.load(trained.model).evaluate(trained.rows)
    cli = json.loads(res.out)
    assert python.keys() == cli.keys()
    for task, metrics in python.items():
        for name, value in metrics.items():
            assert value == pytest.approx(cli[task][name], rel=1e-6, nan_ok=True), (task, name)


def test_evaluate_names_a_missing_label_column(trained: SimpleNamespace) -> None:
    predictor = polytask.load(trained.model)
    rows = trained.rows.drop(columns=["days"])
    with pytest.raises(DataError) as info:
        predictor.evaluate(rows)
    message = str(info.value)
    assert "task 'stay' reads label column 'days', which is missing" in message
    assert "tasks=['risk']" in message and "\n" not in message
    # Asking for the tasks the table holds scores exactly those.
    assert list(predictor.evaluate(rows, ["risk"])) == ["risk"]


def test_evaluate_cli_names_a_missing_label_column(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    table = tmp_path / "no_days.csv"
    trained.rows.drop(columns=["days"]).to_csv(table, index=False)
    res = run_cli("evaluate", trained.model, table, "--json")
    assert res.code == 2 and res.out == ""
    assert "task 'stay' reads label column 'days'" in res.err
    assert res.err.count("\n") == 1


def test_mark_missing_leaves_the_frame_and_other_values_alone() -> None:
    frame = pd.DataFrame(
        {"x": [1.0, -999.0, 3.0], "c": [" ? ", "a", None], "b": [True, False, True]}
    )
    marked = mark_missing(frame, ["?", "-999"])
    assert marked["x"].isna().tolist() == [False, True, False]
    assert marked["c"].isna().tolist() == [True, False, True]
    assert marked["b"].tolist() == [True, False, True]
    assert frame.loc[1, "x"] == -999.0 and frame.loc[0, "c"] == " ? "  # the input is untouched
    assert mark_missing(frame, []) is frame


# -- a NaN probability never gets a class ---------------------------------------------------
def test_nan_outputs_get_no_label(trained: SimpleNamespace) -> None:
    predictor = polytask.load(trained.model)
    first = next(p for p in predictor.model.parameters() if p.ndim == 2)
    with torch.no_grad():
        first.fill_(float("nan"))  # every output NaN, as an overflowed model gives
    out = predictor.predict(trained.rows.head(5))
    assert out["risk_proba"].isna().all()
    assert out["risk"].isna().all()
    assert out["stay"].isna().all()


@pytest.mark.parametrize(
    ("task", "output", "labels"),
    [
        (
            Task("b", "binary", target="y", classes=["no", "yes"]),
            torch.tensor([2.0, float("nan"), float("inf"), -3.0]),
            {"b": ["yes", None, None, "no"]},
        ),
        (
            Task("m", "multiclass", target="y", classes=["a", "b", "c"]),
            torch.tensor([[0.0, 5.0, 1.0], [0.0, float("nan"), 1.0], [float("inf"), 0.0, 0.0]]),
            {"m": ["b", None, None]},
        ),
        (
            Task("l", "multilabel", target=["u", "v"]),
            torch.tensor([[3.0, -3.0], [float("nan"), 4.0]]),
            {"l.u": [1, None], "l.v": [0, 1]},
        ),
    ],
)
def test_decode_never_labels_a_non_finite_output(
    task: Task, output: torch.Tensor, labels: dict[str, list[object]]
) -> None:
    columns = task.spec.decode(task, output)
    for name, expected in labels.items():
        assert columns[name].tolist() == expected, name
        # Where there is no label, the probability beside it is NaN, not a number.
        proba = [c for c in columns if c.startswith(name) and "proba" in c]
        empty = [i for i, v in enumerate(expected) if v is None]
        assert proba and all(np.isnan(columns[c][empty]).all() for c in proba), name


def test_segmentation_map_of_non_finite_logits_is_empty() -> None:
    task = Task("s", "segmentation", target="mask", classes=["0", "1"])
    logits = torch.zeros(2, 2, 3, 3)
    logits[0, 1] = 1.0
    logits[1, 0, 1, 1] = float("nan")
    maps = task.spec.decode(task, logits)["s"]
    assert (maps[0] == 1).all() and maps[1] is None


def test_regression_overflow_is_no_value() -> None:
    task = Task("r", "regression", target="y", target_mean=0.0, target_std=1e300)
    values = task.spec.decode(task, torch.tensor([1.0, 1e30, float("inf")]))["r"]
    assert values[0] == pytest.approx(1e300) and np.isnan(values[1:]).all()


# -- nothing non-finite is saved ------------------------------------------------------------
def test_save_refuses_non_finite_weights(trained: SimpleNamespace, tmp_path: Path) -> None:
    predictor = polytask.load(trained.model)
    name, weight = next((n, p) for n, p in predictor.model.named_parameters() if p.ndim == 2)
    with torch.no_grad():
        weight[0, 0] = float("inf")
    target = tmp_path / "saved"
    with pytest.raises(PolytaskError) as info:
        predictor.save(target)
    assert str(info.value) == (
        f"cannot save the model to '{target}': weight '{name}' holds non-finite values (NaN or inf)"
    )
    assert list(tmp_path.iterdir()) == []  # no directory, no staging leftover


def test_save_refuses_non_finite_statistics(trained: SimpleNamespace, tmp_path: Path) -> None:
    predictor = polytask.load(trained.model)
    predictor.preprocessor.numeric[0].mean = float("nan")  # type: ignore[union-attr]
    with pytest.raises(PolytaskError) as info:
        predictor.save(tmp_path / "saved")
    message = str(info.value)
    assert message.startswith(f"cannot save the model to '{tmp_path / 'saved'}': ")
    assert "preprocessing.json: numeric.0.mean: Input should be a finite number" in message
    assert list(tmp_path.iterdir()) == []


def test_save_then_load_round_trips(trained: SimpleNamespace, tmp_path: Path) -> None:
    predictor = polytask.load(trained.model)
    again = polytask.load(predictor.save(tmp_path / "copy"))
    pd.testing.assert_frame_equal(predictor.predict(trained.rows), again.predict(trained.rows))
    assert again.na_values == ["?"] and again.id_column == "patient"
