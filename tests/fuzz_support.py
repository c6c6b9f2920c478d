"""What every fuzz case of tests/test_fuzz_*.py must satisfy, and the generators they share.

A case either succeeds or is refused. Refused means a :class:`~polytask.errors.PolytaskError`
(the CLI: exit code 2) whose message is one non-empty line, with no model directory, no
``results.json`` and no hidden staging folder left behind. Succeeded means every saved tensor
and statistic is finite and no prediction carries a class label beside a NaN probability.

Cases are counted per outcome (:data:`TALLY`); the campaign's totals are printed at the end of
the session and checked against the floor the issue sets (at least 300 generated cases in CI).
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

from polytask.errors import PolytaskError

#: Outcomes of every fuzz case run in this session: ``"<campaign>:<ok|refused>"`` -> count.
TALLY: Counter[str] = Counter()

# Derandomised in CI so a red run can be replayed; locally every run explores new cases.
settings.register_profile(
    "fuzz",
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz")


def examples(n: int) -> int:
    """``n`` generated cases per test in CI; ``POLYTASK_FUZZ_SCALE=k`` runs k times as many
    (a longer local campaign, as quoted in docs/reliability.md)."""
    return n * int(os.environ.get("POLYTASK_FUZZ_SCALE", "1"))


# Values a hostile or careless table holds: gaps, infinities, the largest doubles, zeros.
EXTREMES = [math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, 1e-308]


def one_line(message: str) -> None:
    """A user-facing error is one non-empty line."""
    assert message.strip(), "empty error message"
    assert "\n" not in message.strip(), f"error spans lines: {message!r}"
    assert "Traceback" not in message, message


def refused(error: BaseException) -> str:
    """Assert ``error`` is a user error (not a crash) and return its message."""
    if not isinstance(error, PolytaskError):
        raise AssertionError(f"a crash, not a one-line error: {error!r}") from error
    message = str(error)
    one_line(message)
    return message


def hidden_leftovers(root: Path) -> list[str]:
    """Hidden entries left under ``root``: staging folders of interrupted saves
    (``.name.polytask-*``) or a lock file a finished run did not release."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def assert_no_partial_run(out: Path) -> None:
    """After a refused run: no model, no results, no staging folders."""
    assert not (out / "model").exists(), f"a refused run left {out / 'model'}"
    assert not (out / "results.json").exists(), f"a refused run left {out / 'results.json'}"
    assert hidden_leftovers(out) == [], hidden_leftovers(out)
    for directory in out.glob("checkpoints/*"):
        assert_finite_tensors(directory / "state.safetensors", model_only=True)


def assert_finite_tensors(path: Path, model_only: bool = False) -> None:
    """Every floating tensor of a safetensors file is finite (checkpoints: the model's)."""
    if not path.is_file():
        return
    for key, array in load_file(str(path)).items():
        if model_only and not key.startswith("/model/"):
            continue
        if np.issubdtype(array.dtype, np.floating):
            assert np.isfinite(array).all(), f"non-finite tensor {key!r} saved in {path}"


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"non-standard JSON constant {name} in a saved file")


def assert_finite_model_dir(model_dir: Path) -> None:
    """A saved model: finite weights, and its JSON files standard (no NaN/Infinity)."""
    assert_finite_tensors(model_dir / "model.safetensors")
    for path in model_dir.glob("*.json"):
        json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)


def assert_no_label_without_probability(predictions: pd.DataFrame) -> None:
    """Where a task's probability is NaN, its label column is empty."""
    for column in predictions.columns:
        label = _label_of(column, predictions.columns)
        if label is None:
            continue
        missing = predictions[column].isna().to_numpy()
        labelled = predictions[label].notna().to_numpy()
        bad = int((missing & labelled).sum())
        assert bad == 0, f"{bad} rows label {label!r} beside a NaN {column!r}"


def _label_of(column: str, columns: pd.Index) -> str | None:
    # binary: "<task>_proba" -> "<task>"; multiclass: "<task>_proba_<class>" -> "<task>";
    # multilabel: "<task>.<label>_proba" -> "<task>.<label>".
    if column.endswith("_proba"):
        label = column[: -len("_proba")]
        return label if label in columns else None
    if "_proba_" in column:
        label = column.split("_proba_", 1)[0]
        return label if label in columns else None
    return None


@contextmanager
def time_limit(seconds: int, what: str) -> Iterator[None]:
    """Turn a hang (e.g. reading from a FIFO) into a failure naming ``what``."""

    def expired(signum: int, frame: object) -> None:
        raise AssertionError(f"{what} hung for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- generated tables -----------------------------------------------------------------------


@st.composite
def numeric_column(draw: st.DrawFn, n: int) -> np.ndarray:
    """Floats with, now and then, gaps, infinities, huge values, or no variation at all."""
    shape = draw(
        st.sampled_from(["normal", "normal", "ints", "extremes", "normal", "constant", "empty"])
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if shape == "constant":
        return np.full(n, draw(st.sampled_from([0.0, 1.0, 1e308])))
    if shape == "empty":
        return np.full(n, np.nan)
    if shape == "ints":
        return rng.integers(-3, 4, n).astype(float)
    values = rng.normal(0.0, draw(st.sampled_from([1.0, 1.0, 1e3, 1e150])), n)
    if shape == "extremes" and n:
        cells = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=max(1, n // 3)))
        for cell in cells:
            values[cell] = draw(st.sampled_from(EXTREMES))
    return values


@st.composite
def category_column(draw: st.DrawFn, n: int) -> list[Any]:
    """Short strings with gaps (None), sometimes one value only."""
    levels = draw(st.lists(st.sampled_from(["a", "b", "c", "?", "", "ü", "x y"]), min_size=1))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    picks = rng.integers(0, len(levels), n)
    gaps = rng.random(n) < draw(st.sampled_from([0.0, 0.1, 1.0]))
    return [None if gap else levels[i] for i, gap in zip(picks, gaps, strict=True)]


@st.composite
def task_columns(draw: st.DrawFn, name: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One task: its declaration (as a config's ``[[tasks]]`` entry) and its label columns."""
    kind = draw(st.sampled_from(["binary", "multiclass", "regression", "multilabel"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    gaps = rng.random(n) < draw(st.sampled_from([0.0, 0.2, 0.9]))
    task: dict[str, Any] = {"name": name, "kind": kind, "target": name}
    if kind == "regression":
        values = draw(numeric_column(n))
        return task, {name: np.where(gaps, np.nan, values)}
    if kind == "multilabel":
        width = draw(st.sampled_from([2, 3, 2, 1]))
        columns = {
            f"{name}_{j}": pd.Series(rng.integers(0, 2, n), dtype="Int64").mask(gaps)
            for j in range(width)
        }
        task["target"] = list(columns)
        return task, columns
    classes = 2 if kind == "binary" else draw(st.integers(2, 4))
    labels = pd.Series(rng.integers(0, classes, n), dtype="Int64").mask(gaps)
    if kind == "binary":
        weight = draw(st.sampled_from([None, None, 3.0, 0.5, 1e30]))
        if weight is not None:
            task["pos_weight"] = weight
    return task, {name: labels}


@st.composite
def tables(draw: st.DrawFn) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """A small table (1 to 64 rows) with random features and 1-3 tasks of random kinds."""
    # Mostly enough rows to train on; now and then so few that every split is degenerate.
    tiny = draw(st.integers(0, 9)) == 0
    n = draw(st.integers(1, 6) if tiny else st.integers(24, 64))
    columns: dict[str, Any] = {}
    for j in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            columns[f"f{j}"] = draw(numeric_column(n))
        else:
            columns[f"c{j}"] = draw(category_column(n))
    tasks = []
    for t in range(draw(st.integers(1, 3))):
        task, labels = draw(task_columns(f"t{t}", n))
        tasks.append(task)
        columns.update(labels)
    return pd.DataFrame(columns), tasks


@st.composite
def run_settings(draw: st.DrawFn) -> dict[str, Any]:
    """The ``[train]``, ``[model]`` and ``[balancer]`` sections of a small run."""
    return {
        "train": {
            "epochs": draw(st.integers(1, 2)),
            "batch_size": draw(st.sampled_from([32, 7, 2, 16, 32, 1])),
            "lr": draw(st.sampled_from([1e-3, 0.05, 1e-3, 10.0, 1e6])),
            "progress": False,
            "patience": None,
        },
        "model": {"encoder": {"name": "mlp", "widths": [draw(st.integers(1, 8))]}},
        "balancer": {"name": draw(st.sampled_from(["equal", "uncertainty", "dwa", "rlw"]))},
    }
