"""Task templates: task-indexed tables (``[data] task_column``) and wide tables (``targets``).

The example ``examples/school.toml`` trains here on its generated table (20 related regression
tasks, 25-100 rows each): the expansion, the pooled metrics, one prediction column per row,
a baseline per task, and a saved model that loads and predicts the same. Measured on 2 shared
CPU cores with 12 epochs: pooled test R² ~0.75 (multi-task) and ~0.40 (single-task nets of
20-60 training rows, 1-2 steps an epoch), ~15 s; with the example's 30 epochs 0.75 and 0.72.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import polytask
from polytask.config import config_from_dict, load_config
from polytask.data.prepare import prepare_data
from polytask.data.synthetic import make_task_indexed
from polytask.errors import ConfigError, DataError
from polytask.run.pipeline import run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "school.toml"


def test_school_example_trains_pools_and_predicts_one_column(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE, ["train.epochs=12"])
    out = tmp_path / "school"
    result = run(cfg, out=out, quiet=True)
    names = [t.name for t in result.predictor.tasks]
    assert names == [f"score_{k}" for k in range(1, 21)]

    summary = json.loads((out / "results.json").read_text())
    assert summary["templates"][0]["tasks"] == names
    assert summary["templates"][0]["column"] == "task"
    pooled = summary["pooled"]
    assert pooled["multi_task"]["score"]["r2"] > 0.65  # a shared linear fit gets ~0.54
    assert pooled["single_task"]["score"]["r2"] > 0.0  # 12 epochs of 1-2 steps: ~0.4
    rows = summary["comparison"]["pooled"]
    assert rows[0]["task"] == "score (pooled, 20 tasks)" and rows[0]["metric"] == "mae"
    assert sorted(summary["single_task"]) == sorted(names)  # a baseline per task
    assert sorted(p.name for p in (out / "baselines").iterdir()) == sorted(names)

    table = make_task_indexed(20).sample(200, random_state=0)
    predicted = result.predictor.predict(table)
    assert list(predicted.columns) == ["task", "score"]  # each row's own task, one column
    assert predicted.index.equals(table.index) and predicted["score"].notna().all()
    every = result.predictor.predict(table, per_task=True)
    own = [every.loc[i, f"score_{k}"] for i, k in zip(table.index, table["task"], strict=True)]
    np.testing.assert_allclose(predicted["score"].to_numpy(float), own, rtol=1e-6)

    loaded = polytask.load(out)
    assert [g.tasks for g in loaded.groups] == [tuple(names)]
    pd.testing.assert_frame_equal(loaded.predict(table), predicted)
    unknown = table.assign(task=99).head(3)  # no such task: an empty cell, not an error
    assert loaded.predict(unknown)["score"].isna().all()


def _raw(**data: Any) -> dict[str, Any]:
    tasks = data.pop("tasks", [{"kind": "regression", "target": "score"}])
    return {
        "data": {"task_column": "task", **data},
        "tasks": tasks,
        "train": {"epochs": 1, "progress": False},
    }


def _prepare(raw: dict[str, Any], frame: pd.DataFrame) -> Any:
    return prepare_data(config_from_dict(raw), frame)


def test_values_listed_excluded_named_by_pattern_and_made_safe() -> None:
    frame = make_task_indexed(4, rows=(30, 30))
    frame["task"] = frame["task"].map({1: "north side", 2: "east/1", 3: "west", 4: "x"})
    raw = _raw(
        exclude_task_values=["x"],
        tasks=[{"name": "school_{value}", "kind": "regression", "target": "score"}],
    )
    data = _prepare(raw, frame)
    assert [t.name for t in data.tasks] == ["school_east_1", "school_north_side", "school_west"]
    assert data.groups[0].name == "score" and data.groups[0].values == (
        "east/1",
        "north side",
        "west",
    )
    labelled = sum(int(data.train.masks[t.name].sum()) for t in data.tasks)
    assert labelled == len(data.train)  # one task per row, the "x" rows dropped
    listed = _prepare(_raw(task_values=["west", "east/1"]), frame)
    assert [t.name for t in listed.tasks] == ["task_west", "task_east_1"]


def test_wide_template_lists_or_globs_targets() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "y_a": rng.normal(size=60)})
    frame["y_b"], frame["y_c"] = rng.normal(size=60), rng.normal(size=60)
    base = {"data": {}, "train": {"epochs": 1}}
    globbed = _prepare({**base, "tasks": [{"kind": "regression", "targets": "y_*"}]}, frame)
    assert [t.name for t in globbed.tasks] == ["y_a", "y_b", "y_c"]
    assert globbed.groups[0].name == "y" and globbed.groups[0].column is None
    named = {"names": ["a", "b"], "targets": ["y_a", "y_b"], "kind": "regression"}
    listed = _prepare({**base, "tasks": [named]}, frame)
    assert [(t.name, t.target) for t in listed.tasks] == [("a", "y_a"), ("b", "y_b")]


def test_binary_template_shares_its_classes() -> None:
    frame = make_task_indexed(3, rows=(40, 40))
    frame["passed"] = np.where(frame["score"] > 0, "pass", "fail")
    raw = _raw(tasks=[{"kind": "binary", "target": "passed", "positive": "pass"}])
    data = _prepare(raw, frame)
    assert {tuple(t.classes or ()) for t in data.tasks} == {("fail", "pass")}


CONFIG_ERRORS = [
    (
        {"data": {}, "tasks": [{"name": "s_{value}", "kind": "regression", "target": "y"}]},
        "tasks.0.name: 's_{value}' is a name pattern, which only a template has",
    ),
    (
        _raw(tasks=[{"name": "s_{school}", "kind": "regression", "target": "score"}]),
        "tasks.0.name: unknown placeholder {school}",
    ),
    (
        {
            "data": {"task_values": [1]},
            "tasks": [{"name": "a", "kind": "regression", "target": "y"}],
        },
        "data.task_values: chooses values of data.task_column, which is not set",
    ),
    (
        {"data": {}, "tasks": [{"kind": "regression", "target": "y"}]},
        "tasks.0.name: missing; every task needs a name",
    ),
    (
        _raw(tasks=[{"kind": "regression", "target": "score", "names": ["a"]}]),
        "tasks.0.names: only a template listing targets takes names",
    ),
    (
        {"data": {}, "tasks": [{"kind": "regression", "targets": ["a", "b"], "names": ["a"]}]},
        "tasks.0.names: 1 names for 2 targets",
    ),
    (
        {"data": {}, "tasks": [{"kind": "regression", "target": "a", "targets": ["a", "b"]}]},
        "tasks.0: give target (one task) or targets (a template), not both",
    ),
    (
        _raw(tasks=[{"kind": "regression", "targets": "y_*"}]),
        "data.task_column: no [[tasks]] template to expand over column 'task'",
    ),
    (
        _raw(group="task", split={"method": "group"}),
        "data.task_column: 'task' is also the group, id or split column",
    ),
    (
        _raw(task_values=[1, 2], exclude_task_values=[2]),
        "data.exclude_task_values: '2' is also in data.task_values",
    ),
]


@pytest.mark.parametrize(("raw", "message"), CONFIG_ERRORS)
def test_config_errors_are_one_line(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_data_errors_name_the_table_and_column() -> None:
    frame = make_task_indexed(3, rows=(30, 30))
    cases = [
        (
            _raw(task_column="school"),
            "data frame: task (data.task_column) column 'school' not found",
        ),
        (
            _raw(task_values=[1, 7]),
            "data frame: data.task_values: value '7' not found in task column",
        ),
        (
            _raw(exclude_task_values=[1, 2, 3]),
            "data frame: no row left with a task value in column",
        ),
        (
            _raw(tasks=[{"kind": "regression", "target": "task"}]),
            "data.task_column: 'task' is also the target of task 'task'",
        ),
        (
            {"data": {}, "tasks": [{"kind": "regression", "targets": "y_*"}]},
            "data frame: targets 'y_*' of task template 'y' match no column",
        ),
    ]
    for raw, message in cases:
        with pytest.raises((ConfigError, DataError)) as info:
            _prepare(raw, frame)
        assert message in str(info.value) and "\n" not in str(info.value), raw
