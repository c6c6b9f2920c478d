"""``polytask init TABLE``: a starting configuration profiled from a table, which loads and
trains as written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from polytask.config import load_config
from polytask.errors import ConfigError
from polytask.scaffold import infer_kind, profile_columns, write_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.usefixtures("torch_single_thread")

N = 240


def _table(n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    stay = pd.Series((3 + x + rng.normal(0, 0.3, n)).round(2))
    stay[::10] = np.nan  # 10% unlabelled
    return pd.DataFrame(
        {
            "row_id": np.arange(n),
            "age": rng.normal(50, 10, n).round(1),
            "ward": rng.choice(["icu", "ward", "er"], n),
            "note": [f"seen on day {i} by the team on call that week" for i in range(n)],
            "const": 1,
            "readmit": np.where(x + rng.normal(0, 1, n) > 0.8, "<30", ">30"),
            "stay": stay,
            "grade": rng.choice(list("ABCD"), n),
        }
    )


def test_profile_infers_types_missing_fractions_and_kinds() -> None:
    profiles = {p.name: p for p in profile_columns(_table())}
    assert {n: p.type for n, p in profiles.items()} == {
        "row_id": "id",
        "age": "numeric",
        "ward": "categorical",
        "note": "text",
        "const": "constant",
        "readmit": "binary",
        "stay": "numeric",
        "grade": "categorical",
    }
    assert profiles["stay"].missing == pytest.approx(0.1)
    assert profiles["age"].missing == 0.0
    assert (profiles["ward"].distinct, profiles["grade"].distinct, profiles["row_id"].distinct) == (
        3,
        4,
        N,
    )
    kinds = {n: infer_kind(profiles[n]) for n in ("readmit", "stay", "grade", "age")}
    assert kinds == {
        "readmit": "binary",
        "stay": "regression",
        "grade": "multiclass",
        "age": "regression",
    }
    with pytest.raises(ConfigError, match="const: the column has 1 distinct"):
        infer_kind(profiles["const"])
    with pytest.raises(ConfigError, match="240 distinct text values"):
        infer_kind(profiles["note"])


def test_init_writes_a_config_that_loads_and_trains(tmp_path: Path) -> None:
    frame = _table()
    frame.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "configs" / "run.toml"  # another folder: the path is made relative
    res = run_cli(
        "init", tmp_path / "t.csv", "-t", "readmit", "-t", "stay", "--target", "grade", "-o", out
    )
    assert res.code == 0, res.err
    assert f"wrote {out}" in res.err
    raw = tomllib.loads(out.read_text(encoding="utf-8"))
    assert raw["data"]["path"] == "../t.csv"
    assert raw["data"]["id"] == "row_id"
    assert raw["data"]["ignore"] == ["note", "const"]
    tasks = [(t["name"], t["kind"], t["target"], t.get("positive")) for t in raw["tasks"]]
    assert tasks == [
        ("readmit", "binary", "readmit", "<30" if (frame.readmit == "<30").mean() < 0.5 else ">30"),
        ("stay", "regression", "stay", None),
        ("grade", "multiclass", "grade", None),
    ]
    text = out.read_text(encoding="utf-8")
    assert f"({N} rows read to profile the columns)" in text
    assert "# stay                     numeric (target)          " in text
    assert "10.0%" in text
    cfg = load_config(out)
    assert [t.kind for t in cfg.task_objects()] == ["binary", "regression", "multiclass"]
    run = tmp_path / "run"
    res = run_cli("train", out, "--out", run, "--set", "train.epochs=1", "-q")
    assert res.code == 0, res.err
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["best_epoch"] == 1
    assert set(results["single_task"]) == {"readmit", "stay", "grade"}
    log = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(log) == 1


def test_init_reads_a_sample_of_a_parquet_table_and_takes_declared_kinds(tmp_path: Path) -> None:
    _table().to_parquet(tmp_path / "t.parquet")
    out = tmp_path / "run.toml"
    res = run_cli("init", tmp_path / "t.parquet", "-t", "age=multiclass", "--rows", "50", "-o", out)
    assert res.code == 0, res.err
    text = out.read_text(encoding="utf-8")
    assert "(50 rows read to profile the columns)" in text
    raw = tomllib.loads(text)
    assert raw["tasks"] == [{"name": "age", "kind": "multiclass", "target": "age"}]
    assert raw["data"]["path"] == "t.parquet"


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "run.toml"
    out.write_text("mine\n", encoding="utf-8")
    res = run_cli("init", tmp_path / "t.csv", "-t", "stay", "-o", out)
    assert res.code == 2
    assert res.err.strip() == f"error: '{out}' exists; pass --force to replace it"
    assert out.read_text(encoding="utf-8") == "mine\n"
    res = run_cli("init", tmp_path / "t.csv", "-t", "stay", "-o", out, "--force")
    assert res.code == 0, res.err
    assert tomllib.loads(out.read_text(encoding="utf-8"))["tasks"][0]["kind"] == "regression"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml", "t.csv"]  # no temp left
    # The check and the write are one step: a file appearing meanwhile is not replaced.
    other = tmp_path / "other.toml"
    other.write_text("theirs\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="exists"):
        write_config(other, "new\n")
    assert other.read_text(encoding="utf-8") == "theirs\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("missing.csv", "-t", "y"), "error: data file '{root}/missing.csv' not found"),
        (
            ("t.csv", "-t", "stai"),
            "error: --target stai: no such column in '{root}/t.csv'; did you mean stay? "
            "(columns: row_id, age, ward, note, const, readmit, stay, grade)",
        ),
        (("t.csv",), "error: polytask init: name at least one target column: --target COLUMN"),
        (
            ("t.csv", "-t", "stay=ordinal"),
            "error: --target stay=ordinal: unknown kind 'ordinal'; valid: binary, multiclass, "
            "regression",
        ),
        (
            ("t.csv", "-t", "const"),
            "error: --target const: the column has 1 distinct value(s) in the rows read; a "
            "target needs at least 2",
        ),
        (("t.csv", "-t", "stay", "-t", "stay"), "error: polytask init: a column is named twice"),
    ],
)
def test_init_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    _table(40).to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "run.toml"
    res = run_cli(
        "init", *(str(tmp_path / a) if a.endswith(".csv") else a for a in args), "-o", out
    )
    assert res.code == 2
    assert res.err.strip().startswith(message.format(root=tmp_path))
    assert len(res.err.strip().splitlines()) == 1
    assert not out.exists()


def test_init_writes_one_vs_rest_tasks_that_train(tmp_path: Path) -> None:
    """``grade`` holds A-D: ``grade=binary`` is one-vs-rest on the rarest label unless the
    labels are named (``grade=binary:A,B``); the config trains and the binary task's classes
    are the two sides."""
    frame = _table()
    frame.to_csv(tmp_path / "t.csv", index=False)
    out = tmp_path / "run.toml"
    res = run_cli(
        "init", tmp_path / "t.csv", "-t", "grade=binary:A,B", "-t", "ward=binary", "-o", out
    )
    assert res.code == 0, res.err
    raw = tomllib.loads(out.read_text(encoding="utf-8"))
    counts = frame.ward.value_counts()
    rarest = sorted(counts.index, key=lambda v: (counts[v], v))[0]
    assert [(t["name"], t["kind"], t["positive"]) for t in raw["tasks"]] == [
        ("grade", "binary", ["A", "B"]),
        ("ward", "binary", str(rarest)),
    ]
    assert "one-vs-rest: negative = C, D" in out.read_text(encoding="utf-8")
    run = tmp_path / "run"
    res = run_cli("train", out, "--out", run, "--set", "train.epochs=1", "-q")
    assert res.code == 0, res.err
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert set(results["multi_task"]) == {"grade", "ward"}


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("grade=binary:Z", "--target grade: label 'Z' is not in the rows read (labels: 'A', "),
        ("grade=multiclass:A", "labels after ':' name the positive class of a binary task"),
        ("grade=binary:", "labels after ':' name the positive class of a binary task"),
    ],
)
def test_init_refuses_bad_one_vs_rest_targets(tmp_path: Path, target: str, message: str) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    res = run_cli("init", tmp_path / "t.csv", "-t", target, "-o", tmp_path / "run.toml")
    assert res.code != 0
    assert message in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "run.toml").exists()
