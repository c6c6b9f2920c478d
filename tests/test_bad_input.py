"""Bad input through the CLI: each case exits with code 2, prints exactly one line on stderr that
names the culprit (file, column, key) and what was expected, and leaves no model behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from conftest import CliResult, clinical_config, clinical_frame, run_cli, toml_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")

N_ROWS = 200


def assert_user_error(res: CliResult, *needles: str) -> str:
    """Exit code 2, nothing on stdout, one ``error: ...`` line on stderr holding ``needles``."""
    assert res.code == 2, (res.code, res.out, res.err)
    assert res.out == ""
    line = res.err.rstrip("\n")
    assert line.startswith("error: ") and len(line) > len("error: ")
    assert "\n" not in line, f"stderr is not one line: {res.err!r}"
    assert "Traceback" not in line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_nothing_left(out: Path) -> None:
    """No model directory and no hidden staging leftovers under ``out``."""
    if not out.exists():
        return
    assert not (out / "model").exists()
    hidden = list(out.rglob(".*"))
    assert hidden == [], hidden


# -- training: bad data and bad configuration ----------------------------------------------
Edit = Callable[[pd.DataFrame, dict[str, Any]], "pd.DataFrame | None"]


def _text_at(column: str, row: int, text: str) -> Edit:
    def edit(frame: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = text
        return frame

    return edit


def _declare_numeric(frame: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    cfg["data"]["numeric"] = ["age"]
    return _text_at("age", 17, "n/a?")(frame, cfg)


def _one_class(frame: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    frame["readmitted"] = frame["readmitted"].where(frame["readmitted"].isna(), 1)
    return frame


def _outside_classes(frame: pd.DataFrame, cfg: dict[str, Any]) -> pd.DataFrame:
    cfg["tasks"][0]["classes"] = ["0", "1"]
    return _text_at("readmitted", 9, "maybe")(frame, cfg)


def _set(path: str, value: Any) -> Edit:
    def edit(frame: pd.DataFrame, cfg: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        node = cfg
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[key] = value

    return edit


TRAIN_CASES: dict[str, tuple[Edit, tuple[str, ...]]] = {
    "missing data file": (
        _set("data.path", "no_such.csv"),
        ("data file '", "no_such.csv' not found"),
    ),
    "misspelled target": (
        _set("tasks.0.target", "readmited"),
        ("train.csv'", "target column 'readmited' not found", "did you mean 'readmitted'?"),
    ),
    "misspelled feature": (
        _set("data.features", ["age", "bmii", "ward"]),
        ("train.csv'", "feature column 'bmii' not found", "did you mean 'bmi'?"),
    ),
    "text in declared numeric column": (
        _declare_numeric,
        (
            "train.csv'",
            "column 'age' should hold numbers but row 17 has 'n/a?'",
        ),
    ),
    "text in regression target": (
        _text_at("days", 5, "long"),
        ("train.csv'", "column 'days' should hold numbers but row 5 has 'long'"),
    ),
    "binary target with one class": (
        _one_class,
        ("train.csv'", "task 'risk'", "'readmitted'", "1 class(es) ['1']", "at least 2"),
    ),
    "label outside declared classes": (
        _outside_classes,
        ("train.csv'", "'readmitted'", "outside the declared classes ['0', '1']", "['maybe']"),
    ),
    "binary target with three labels": (
        _text_at("readmitted", 9, "2"),
        ("'readmitted'", "3 distinct labels ['0', '1', '2']", "exactly 2", "multiclass"),
    ),
    "header only": (
        lambda frame, cfg: frame.iloc[:0],
        ("train.csv'", "the table has no rows"),
    ),
    "unknown top-level key": (
        _set("epochs", 3),
        ("config error: epochs: unknown key; valid keys: seed, out, baselines, data",),
    ),
    "unknown key in train": (
        _set("train.epoch", 3),
        ("config error: train.epoch: unknown key; valid keys: epochs, batch_size",),
    ),
    "zero epochs": (
        _set("train.epochs", 0),
        ("config error: train.epochs:", "greater than or equal to 1", "(got 0)"),
    ),
    "unknown scheduler": (
        _set("train.scheduler", "bogus"),
        ("config error: train.scheduler:", "'none', 'cosine' or 'linear'", "(got 'bogus')"),
    ),
    "unknown encoder": (
        _set("model.encoder.name", "resnet50"),
        ("model.encoder.name: unknown encoder 'resnet50'; valid choices: ", "mlp"),
    ),
}


def _train_edited(tmp_path: Path, edit: Edit, *needles: str) -> str:
    frame, cfg = clinical_frame(N_ROWS), clinical_config()
    edited = edit(frame, cfg)
    (frame if edited is None else edited).to_csv(tmp_path / "train.csv", index=False)
    config = tmp_path / "run.toml"
    config.write_text(toml_text(cfg), encoding="utf-8")
    out = tmp_path / "run"
    line = assert_user_error(run_cli("train", config, "--out", out), *needles)
    assert not out.exists()  # every check runs before the run directory is created
    assert_nothing_left(tmp_path)
    return line


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_rejects_bad_input(case: str, tmp_path: Path) -> None:
    edit, needles = TRAIN_CASES[case]
    _train_edited(tmp_path, edit, *needles)


def test_unknown_key_never_suggests_internal_keys(tmp_path: Path) -> None:
    line = _train_edited(tmp_path, _set("epochs", 3), "valid keys: seed, out")
    assert "base_dir" not in line  # a config file may not set it (load_config rejects it)


def test_message_with_brackets_is_printed_verbatim(tmp_path: Path) -> None:
    # Column names are user text: "[days]" must not be eaten as rich markup.
    _train_edited(
        tmp_path,
        _set("tasks.1.target", "[days]"),
        "target column '[days]' not found; did you mean 'days'?",
    )


def test_zero_byte_data_file(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes(b"")
    config = tmp_path / "run.toml"
    config.write_text(toml_text(clinical_config()), encoding="utf-8")
    out = tmp_path / "run"
    assert_user_error(run_cli("train", config, "--out", out), "train.csv'", "the table is empty")
    assert not out.exists()


def test_missing_config_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_cli("train", tmp_path / "absent.toml", "--out", out)
    assert_user_error(res, f"config file '{tmp_path / 'absent.toml'}' not found")
    assert not out.exists()


def test_set_without_equals(tmp_path: Path) -> None:
    clinical_frame(N_ROWS).to_csv(tmp_path / "train.csv", index=False)
    config = tmp_path / "run.toml"
    config.write_text(toml_text(clinical_config()), encoding="utf-8")
    out = tmp_path / "run"
    res = run_cli("train", config, "--out", out, "--set", "train.epochs")
    assert_user_error(res, "--set 'train.epochs': expected key=value")
    assert not out.exists()


# -- predict / evaluate with a trained model -----------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad_input_model")
    clinical_frame(N_ROWS).to_csv(root / "train.csv", index=False)
    config = root / "run.toml"
    config.write_text(toml_text(clinical_config()), encoding="utf-8")
    res = run_cli("train", config, "--out", root / "run", "-q", "--set", "train.epochs=1")
    assert res.code == 0, res.err
    return SimpleNamespace(run=root / "run", frame=clinical_frame(N_ROWS, seed=1))


def _table(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def test_predict_model_dir_missing(model: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    res = run_cli("predict", tmp_path / "no_model", _table(tmp_path, model.frame), "-o", out)
    assert_user_error(res, f"model directory '{tmp_path / 'no_model'}' not found")
    assert not out.exists()
    assert_nothing_left(tmp_path)


def test_predict_missing_feature_column(model: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    table = _table(tmp_path, model.frame.drop(columns=["bmi"]))
    res = run_cli("predict", model.run, table, "-o", out)
    assert_user_error(res, f"data file '{table}'", "['bmi'] not found")
    assert not out.exists()
    assert_nothing_left(tmp_path)


def test_predict_text_in_numeric_feature(model: SimpleNamespace, tmp_path: Path) -> None:
    frame = model.frame.astype({"age": object})
    frame.loc[3, "age"] = "old"
    out = tmp_path / "pred.csv"
    table = _table(tmp_path, frame)
    res = run_cli("predict", model.run, table, "-o", out)
    assert_user_error(
        res, f"data file '{table}'", "column 'age' should hold numbers but row 3 has 'old'"
    )
    assert not out.exists()
    assert_nothing_left(tmp_path)


def test_predict_unknown_task(model: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    res = run_cli("predict", model.run, _table(tmp_path, model.frame), "-o", out, "--task", "x")
    assert_user_error(res, "unknown task 'x'; this model predicts: risk, stay")
    assert not out.exists()


def test_evaluate_without_target_columns(model: SimpleNamespace, tmp_path: Path) -> None:
    table = _table(tmp_path, model.frame.drop(columns=["readmitted", "days"]))
    res = run_cli("evaluate", model.run, table, "--json")
    assert_user_error(res, f"data file '{table}'", "target columns ['days', 'readmitted']")


def test_predict_dir_without_model(model: SimpleNamespace, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("predict", empty, _table(tmp_path, model.frame), "-o", tmp_path / "p.csv")
    assert_user_error(res, f"'{empty}' is not a polytask model directory (no model.json)")
