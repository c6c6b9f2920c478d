"""Fuzz campaign, tables and settings (issue 17): random tables (numbers, strings, gaps,
infinities, the largest doubles, constant and empty columns, one to 48 rows), random task kinds
and random training settings, through the Python API and through the CLI. Every case either
trains a finite model or is refused with one line (tests/fuzz_support.py)."""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli, toml_text
from fuzz_support import (
    FUZZ,
    TALLY,
    assert_finite_model_dir,
    assert_no_label_without_probability,
    assert_no_partial_run,
    examples,
    one_line,
    refused,
    run_settings,
    tables,
)
from polytask import config_from_dict, load, run
from polytask.errors import PolytaskError

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _raw(tasks: list[dict[str, Any]], knobs: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {"split": {"method": "random", "val": 0.25, "test": 0.25}},
        "tasks": tasks,
        **knobs,
    }


def _check_trained(out: Path, frame: pd.DataFrame) -> None:
    assert_finite_model_dir(out / "model")
    try:
        predictions = load(out / "model").predict(frame)
    except PolytaskError as exc:  # e.g. a column the model needs holds only strings now
        one_line(str(exc))
        return
    assert len(predictions) == len(frame)
    assert_no_label_without_probability(predictions)


@settings(FUZZ, max_examples=examples(120))
@given(case=tables(), knobs=run_settings())
def test_api_trains_or_refuses_in_one_line(
    case: tuple[pd.DataFrame, list[dict[str, Any]]], knobs: dict[str, Any]
) -> None:
    frame, tasks = case
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        try:
            run(config_from_dict(_raw(tasks, knobs)), frame=frame, out=out, quiet=True)
        except Exception as exc:
            refused(exc)
            assert_no_partial_run(out)
            TALLY["api:refused"] += 1
            return
        _check_trained(out, frame)
        TALLY["api:ok"] += 1


# Values a careless or hostile config holds where a number is expected.
HOSTILE = st.sampled_from(
    ["5", True, 1e3, -1, 0, 2**70, float("nan"), float("inf"), [], "", 3.5, 10**9]
)
SETTINGS_KEYS = [
    ("train", "epochs"),
    ("train", "batch_size"),
    ("train", "lr"),
    ("train", "weight_decay"),
    ("train", "grad_clip"),
    ("train", "patience"),
    ("seed",),
    ("model", "encoder", "widths"),
    ("model", "encoder", "dropout"),
    ("tasks", 0, "pos_weight"),
    ("tasks", 0, "weight"),
    ("data", "split", "val"),
]


def _set(raw: dict[str, Any], key: tuple[Any, ...], value: Any) -> None:
    node: Any = raw
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value


@settings(FUZZ, max_examples=examples(100))
@given(
    case=tables(),
    knobs=run_settings(),
    hostile=st.lists(st.tuples(st.sampled_from(SETTINGS_KEYS), HOSTILE), max_size=2),
    storage=st.sampled_from(["csv", "parquet", "csv.gz", "truncated.csv.gz"]),
)
def test_cli_trains_or_refuses_in_one_line(
    case: tuple[pd.DataFrame, list[dict[str, Any]]],
    knobs: dict[str, Any],
    hostile: list[tuple[tuple[Any, ...], Any]],
    storage: str,
) -> None:
    frame, tasks = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / f"table.{storage}"
        _write_table(frame, data)
        raw = _raw(tasks, knobs)
        raw["data"]["path"] = data.name
        for key, value in hostile:
            if key[0] == "tasks" and "pos_weight" in key and tasks[0]["kind"] != "binary":
                continue
            _set(raw, key, value)
        config = root / "run.toml"
        config.write_text(toml_text(_without_nulls(raw)), encoding="utf-8")
        out = root / "run"
        res = run_cli("train", config, "--out", out, "--quiet")
        if res.code == 0:
            _check_trained(out, frame)
            TALLY["cli:ok"] += 1
            return
        assert res.code == 2, (res.code, res.err[-2000:])
        assert res.err.startswith("error: "), res.err[-2000:]
        one_line(res.err)
        assert_no_partial_run(out)
        TALLY["cli:refused"] += 1


def _without_nulls(value: Any) -> Any:
    """TOML has no null: a key set to None is left out (its default applies)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    if path.name.endswith(".parquet"):
        # Parquet keeps one type per column: mixed object columns are written as strings.
        typed = frame.copy()
        for column in typed.select_dtypes(include="object").columns:
            typed[column] = typed[column].astype("string")
        typed.to_parquet(path)
        return
    frame.to_csv(path, index=False)
    if path.name.endswith(".gz"):
        plain = path.with_suffix("")
        shutil.move(path, plain)
        with plain.open("rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()
        if path.name.startswith("table.truncated"):
            blob = path.read_bytes()
            path.write_bytes(blob[: max(1, len(blob) // 2)])
