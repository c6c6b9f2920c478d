"""``polytask compare``: Δm, confidence intervals and verdicts against hand computations, grid
points chosen on validation only, ``data.train_fraction``, resumability and the CLI end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import polytask
from conftest import run_cli, synthetic_raw, toml_text
from polytask import ConfigError, PolytaskError, config_from_dict
from polytask.data.prepare import prepare_data, train_subset
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.evaluate.delta import delta_m, delta_m_all_metrics
from polytask.evaluate.statistics import mean_ci, paired_p_value, paired_verdict
from polytask.studies.compare.plan import build_plan
from polytask.studies.compare.runner import Outcome
from polytask.studies.compare.summary import summarise

pytestmark = pytest.mark.usefixtures("torch_single_thread")

#: Student-t 97.5% quantiles (tables; e.g. Abramowitz & Stegun 26.10) for 2 and 4 degrees of
#: freedom: the 95% interval of 3 and 5 seeds.
T975 = {2: 4.302652729911275, 4: 2.7764451051977934}


# -- Δm ----------------------------------------------------------------------------------
def test_delta_m_by_hand_with_higher_and_lower_is_better() -> None:
    # auroc (higher better) 0.80 -> 0.90: -(0.10 / 0.80) = -0.125 (an improvement, negative);
    # mae (lower better) 2.0 -> 2.2: +(0.2 / 2.0) = +0.10 (worse, positive).
    values = {"a": 0.90, "b": 2.2}
    refs = {"a": 0.80, "b": 2.0}
    hib = {"a": True, "b": False}
    assert delta_m(values, refs, hib) == pytest.approx(100 * (-0.125 + 0.10) / 2)  # -1.25 %

    # All metrics: a has auroc and accuracy, b has mae, rmse and r2 -> five terms, each once.
    multi = {"a": {"auroc": 0.90, "accuracy": 0.70}, "b": {"mae": 2.2, "rmse": 3.0, "r2": 0.5}}
    single = {"a": {"auroc": 0.80, "accuracy": 0.75}, "b": {"mae": 2.0, "rmse": 3.0, "r2": 0.4}}
    directions = {
        "a": {"auroc": True, "accuracy": True},
        "b": {"mae": False, "rmse": False, "r2": True},
    }
    terms = [-0.10 / 0.80, +0.05 / 0.75, +0.2 / 2.0, 0.0, -0.1 / 0.4]
    assert delta_m_all_metrics(multi, single, directions) == pytest.approx(100 * sum(terms) / 5)
    # An undefined metric (NaN) is skipped, not averaged in as 0.
    multi["b"]["r2"] = math.nan
    assert delta_m_all_metrics(multi, single, directions) == pytest.approx(100 * sum(terms[:4]) / 4)


# -- confidence intervals ---------------------------------------------------------------
def test_mean_ci_by_hand_and_degenerate_cases() -> None:
    ci = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3
    half = T975[2] * 1.0 / math.sqrt(3)
    assert (ci.mean, ci.low, ci.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    # Undefined values (a NaN metric, a seed not finished: None) are left out, but kept in
    # ``values`` so the list stays aligned with the seeds.
    gaps = mean_ci([1.0, None, 2.0, math.nan, 3.0])
    assert (gaps.mean, gaps.low, gaps.high, gaps.n) == (ci.mean, ci.low, ci.high, 3)
    assert len(gaps.values) == 5
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)
    assert math.isnan(mean_ci([None, math.nan]).mean)
    flat = mean_ci([0.5, 0.5, 0.5, 0.5])  # zero variance: a zero-width interval, no error
    assert (flat.mean, flat.low, flat.high) == (0.5, 0.5, 0.5)


def test_ci_width_shrinks_with_more_seeds_and_covers_the_mean() -> None:
    """Seeds drawn from a fixed N(0.8, 0.05²): the interval narrows like t·σ/√n and holds the
    true mean about 95% of the time."""
    rng = np.random.default_rng(0)
    widths, coverage = {}, {}
    for n in (3, 5, 10, 30):
        draws = rng.normal(0.8, 0.05, size=(2000, n))
        cis = [mean_ci(list(row)) for row in draws]
        widths[n] = float(np.mean([c.high - c.low for c in cis]))
        coverage[n] = float(np.mean([c.low <= 0.8 <= c.high for c in cis]))
    assert widths[3] > widths[5] > widths[10] > widths[30]
    # E[width] = 2 t σ c4(n) / √n; at n = 30, c4 ≈ 0.9914 and t ≈ 2.045: ≈ 0.0370.
    assert widths[30] == pytest.approx(2 * 2.045 * 0.05 * 0.9914 / math.sqrt(30), rel=0.03)
    assert all(0.93 <= c <= 0.97 for c in coverage.values()), coverage


# -- verdicts --------------------------------------------------------------------------------
def test_paired_p_value_by_hand() -> None:
    # d = 0.1, 0.2, 0.3: t = 0.2 / (0.1 / √3) = 2√3; with 2 degrees of freedom the two-sided
    # p-value has the closed form 1 - t / √(2 + t²).
    t = 2 * math.sqrt(3)
    assert paired_p_value([0.1, 0.2, 0.3]) == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert paired_p_value([0.0, 0.0, 0.0]) == 1.0  # no difference at all
    assert paired_p_value([0.2, 0.2]) == 0.0  # a constant non-zero difference (|t| -> inf)
    assert math.isnan(paired_p_value([0.2]))


def test_verdicts_on_constructed_cases() -> None:
    single = [0.80, 0.82, 0.78, 0.81, 0.79]
    # Clearly gains: +0.05 ± 0.005 of AUROC (higher is better).
    gains = [s + 0.05 + e for s, e in zip(single, [0.004, -0.003, 0.0, 0.005, -0.004], strict=True)]
    v = paired_verdict(gains, single, higher_is_better=True)
    assert v.verdict == "helps" and v.p_value < 1e-4 and v.n_pairs == 5
    expected = 100 * np.mean([-(g - s) / s for g, s in zip(gains, single, strict=True)])
    assert v.change_pct == pytest.approx(expected) and v.change_pct < 0  # Δm sign: < 0 = better
    # The same numbers as an error (lower is better): the metric went up, multi-task hurts.
    v = paired_verdict(gains, single, higher_is_better=False)
    assert v.verdict == "hurts" and v.change_pct == pytest.approx(-expected)
    # MAE (lower is better) that drops: helps.
    mae = [2.0, 2.1, 1.9]
    assert paired_verdict([m - 0.3 for m in mae], mae, False).verdict == "helps"
    # Unchanged up to zero-mean noise: no significant difference.
    noise = [0.02, -0.01, -0.02, 0.015, -0.005]
    v = paired_verdict([s + e for s, e in zip(single, noise, strict=True)], single, True)
    assert v.verdict == "no significant difference" and v.p_value > 0.5
    # Identical runs (zero variance) do not crash: p = 1, no difference.
    v = paired_verdict(single, single, True)
    assert (v.verdict, v.p_value, v.change_pct) == ("no significant difference", 1.0, 0.0)
    # Below two paired seeds: no test. A seed missing on either side does not pair.
    v = paired_verdict([0.9, None, 0.7], [0.8, 0.8, math.nan], True)
    assert v.verdict == "too few seeds" and v.n_pairs == 1 and math.isnan(v.p_value)
    assert v.change_pct == pytest.approx(-100 * 0.1 / 0.8)
    # α is the caller's: d = 0.1, 0.2, 0.3 gives p ≈ 0.074.
    up = [0.1, 0.2, 0.3]
    assert paired_verdict(up, [0, 0, 0], True, alpha=0.05).verdict == "no significant difference"
    assert paired_verdict(up, [0, 0, 0], True, alpha=0.10).verdict == "helps"


# -- the compare.json document from constructed runs ------------------------------------------
def _three_task_config(**compare: Any) -> polytask.RunConfig:
    raw = {
        "data": {"path": "unused.csv", "split": {"val": 0.2, "test": 0.2}},
        "tasks": [
            {"name": "gain", "kind": "binary", "target": "a"},
            {"name": "loss", "kind": "regression", "target": "b"},
            {"name": "same", "kind": "regression", "target": "c"},
        ],
        "compare": compare,
    }
    return config_from_dict(raw)


def _outcome(test: dict[str, float], val: dict[str, float] | None = None) -> Outcome:
    primary = {"gain": "auroc", "loss": "mae", "same": "mae"}
    return Outcome(
        {t: {primary[t]: v} for t, v in test.items()},
        {t: {primary[t]: v} for t, v in (val or test).items()},
    )


SINGLE = {"gain": [0.80, 0.82, 0.78], "loss": [1.0, 1.1, 0.9], "same": [2.0, 2.0, 2.0]}
MULTI = {"gain": [0.85, 0.88, 0.82], "loss": [1.2, 1.35, 1.05], "same": [2.1, 1.9, 2.0]}


def test_summary_delta_m_worst_task_and_verdicts_by_hand() -> None:
    plan = build_plan(_three_task_config(seeds=3))
    assert plan.configurations == {"multi-task": []}  # default: the config as written
    outcomes: dict[str, Outcome] = {}
    for spec in plan.runs:
        i = plan.seeds.index(spec.seed)
        if spec.task is not None:
            outcomes[spec.path] = _outcome({spec.task: SINGLE[spec.task][i]})
        else:
            outcomes[spec.path] = _outcome({t: MULTI[t][i] for t in MULTI})
    doc = summarise(plan, outcomes)
    assert doc["kind"] == "polytask-compare" and doc["seeds"] == [0, 1, 2]
    assert doc["tasks"]["loss"] == {"metric": "mae", "higher_is_better": False}
    base, multi = doc["results"]
    assert base["configuration"] == "single-task" and base["n_seeds"] == 3
    assert base["per_task"]["gain"]["values"] == SINGLE["gain"]
    # Δm per seed by hand: mean of -(Δauroc)/auroc, +(Δmae)/mae, +(Δmae)/mae.
    hand = [
        100
        * (
            -(MULTI["gain"][i] - SINGLE["gain"][i]) / SINGLE["gain"][i]
            + (MULTI["loss"][i] - SINGLE["loss"][i]) / SINGLE["loss"][i]
            + (MULTI["same"][i] - SINGLE["same"][i]) / SINGLE["same"][i]
        )
        / 3
        for i in range(3)
    ]
    assert multi["delta_m"]["values"] == pytest.approx(hand)
    half = T975[2] * float(np.std(hand, ddof=1)) / math.sqrt(3)
    assert multi["delta_m"]["mean"] == pytest.approx(np.mean(hand))
    assert multi["delta_m"]["ci_high"] - multi["delta_m"]["mean"] == pytest.approx(half)
    # One metric per task here, so the all-metrics variant is the same number.
    assert multi["delta_m_all_metrics"]["values"] == pytest.approx(hand)
    verdicts = multi["verdicts"]
    assert verdicts["gain"]["verdict"] == "helps"
    assert verdicts["loss"]["verdict"] == "hurts"  # d = .2, .25, .15: p ≈ 0.020
    assert verdicts["same"]["verdict"] == "no significant difference"
    t = 0.2 / (0.05 / math.sqrt(3))
    assert verdicts["loss"]["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    loss_change = 100 * np.mean(
        [(m - s) / s for m, s in zip(MULTI["loss"], SINGLE["loss"], strict=True)]
    )
    assert multi["worst_task"] == {"task": "loss", "change_pct": pytest.approx(loss_change)}


def test_summary_of_a_partial_comparison_keeps_seeds_aligned() -> None:
    plan = build_plan(_three_task_config(seeds=3))
    outcomes: dict[str, Outcome] = {}
    for spec in plan.runs:
        i = plan.seeds.index(spec.seed)
        if spec.task is not None:
            outcomes[spec.path] = _outcome({spec.task: SINGLE[spec.task][i]})
        elif spec.seed == 0:  # only seed 0 of the multi-task runs finished
            outcomes[spec.path] = _outcome({t: MULTI[t][i] for t in MULTI})
    # Seed 2's baseline for "same" is also missing: seed 2 has no Δm.
    del outcomes["fraction-1/single-task/same/seed2"]
    _, multi = summarise(plan, outcomes)["results"]
    assert multi["n_seeds"] == 1
    assert multi["per_task"]["gain"]["values"] == [0.85, None, None]
    assert multi["delta_m"]["values"][1:] == [None, None]
    assert math.isnan(multi["delta_m"]["ci_low"])  # one seed: no interval
    assert multi["verdicts"]["gain"]["verdict"] == "too few seeds"


def test_grid_points_are_chosen_on_validation_never_on_test() -> None:
    """Each lr's run is better on validation at one lr and on test at the other: the
    comparison must keep the validation winner, for baselines and multi-task runs alike."""
    plan = build_plan(_three_task_config(seeds=2, grid={"train.lr": [0.001, 0.01]}))
    assert len(plan.runs) == 2 * 2 * (3 + 1)
    outcomes: dict[str, Outcome] = {}
    for spec in plan.runs:
        i = plan.seeds.index(spec.seed)
        good_val = dict(spec.point)["train.lr"] == 0.001
        names = [spec.task] if spec.task is not None else list(MULTI)
        table = SINGLE if spec.task is not None else MULTI
        # Validation: lr 0.001 is better (higher auroc, lower mae); test: lr 0.01 is better.
        val = {t: table[t][i] * (1.1 if (t == "gain") == good_val else 0.9) for t in names}
        test = {
            t: table[t][i] * (1.0 if good_val else 1.05 if t == "gain" else 0.95) for t in names
        }
        outcomes[spec.path] = _outcome(test, val)
    base, multi = summarise(plan, outcomes)["results"]
    assert multi["chosen"] == [{"train.lr": 0.001}, {"train.lr": 0.001}]
    assert base["chosen"]["loss"] == [{"train.lr": 0.001}, {"train.lr": 0.001}]
    assert base["per_task"]["gain"]["values"] == SINGLE["gain"][:2]  # the lr 0.001 test values
    assert multi["per_task"]["loss"]["values"] == MULTI["loss"][:2]


def test_compare_section_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"compare\.configurations.*names the baselines"):
        _three_task_config(configurations=[{"name": "single-task"}])
    with pytest.raises(ConfigError, match=r"compare\.fractions.*\(0, 1\]"):
        _three_task_config(fractions=[0.5, 1.5])
    with pytest.raises(ConfigError, match=r"compare\.grid.*set by the comparison"):
        _three_task_config(grid={"data.train_fraction": [0.5]})
    with pytest.raises(ConfigError, match=r"compare\.configurations.*fixes"):
        _three_task_config(configurations=[{"name": "x", "set": ["seed=3"]}])
    with pytest.raises(ConfigError, match=r"compare\.seeds"):
        _three_task_config(seeds=[1, 1])
    with pytest.raises(ConfigError, match=r"compare\.configurations\.0\.name"):
        _three_task_config(configurations=[{"name": "a/b"}])
    # A configuration's overrides are validated before anything trains.
    bad = _three_task_config(configurations=[{"name": "x", "set": ["model.architecture.name=no"]}])
    with pytest.raises(ConfigError, match=r"configuration 'x'.*unknown architecture 'no'"):
        build_plan(bad)
    clash = _three_task_config(
        configurations=[{"name": "x", "set": ["train.lr=0.1"]}], grid={"train.lr": [0.01]}
    )
    with pytest.raises(ConfigError, match=r"compare\.grid tunes"):
        build_plan(clash)
    no_test = config_from_dict(
        {
            **_three_task_config().model_dump(exclude={"base_dir", "compare"}),
            "data": {"path": "x.csv", "split": {"val": 0.2, "test": 0.0}},
        }
    )
    with pytest.raises(ConfigError, match="needs a test split"):
        build_plan(no_test)


# -- data.train_fraction ------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_mmoe_synthetic(300, 0.9, n_features=6, seed=0)


def _rows(prepared: Any, split: str) -> set[tuple[float, ...]]:
    """The rows of a split in the table's own units (the standardisation fitted on the
    training rows is undone), rounded: a set of row identities."""
    x = getattr(prepared, split).inputs["numeric"].numpy()
    stats = prepared.preprocessor.numeric
    raw = x * np.array([c.std for c in stats]) + np.array([c.mean for c in stats])
    return {tuple(np.round(row, 4)) for row in raw}


def test_train_fraction_keeps_a_seeded_subset_of_training_rows(frame: pd.DataFrame) -> None:
    def prepared(fraction: float, seed: int) -> Any:
        raw = synthetic_raw(seed=seed)
        raw["data"]["split"]["seed"] = 0  # the split stays put while the run seed varies
        raw["data"]["train_fraction"] = fraction
        return prepare_data(config_from_dict(raw), frame)

    full = prepared(1.0, 0)
    n_train = len(full.train)
    assert n_train == 300 - 45 - 45
    quarter = prepared(0.25, 0)
    assert len(quarter.train) == round(0.25 * n_train)
    assert _rows(quarter, "train") < _rows(full, "train")
    for split in ("val", "test"):  # untouched
        assert _rows(quarter, split) == _rows(full, split)
    assert _rows(prepared(0.25, 0), "train") == _rows(quarter, "train")  # reproducible
    assert _rows(prepared(0.25, 1), "train") != _rows(quarter, "train")  # drawn with the seed
    assert _rows(quarter, "train") < _rows(prepared(0.5, 0), "train")  # nested across fractions
    # The index helper: order kept, at least one row.
    idx = np.arange(100, 200)
    kept = train_subset(idx, 0.1, seed=3)
    assert len(kept) == 10 and np.all(np.diff(kept) > 0) and set(kept) <= set(idx)
    assert len(train_subset(idx, 0.001, seed=3)) == 1


def test_train_fraction_applies_to_each_source_and_not_to_streams(frame: pd.DataFrame) -> None:
    raw = synthetic_raw()
    raw["data"] = {
        "ignore": ["y2_raw"],
        "train_fraction": 0.5,
        "split": {"val": 0.2, "test": 0.2},
        "sources": [
            {"name": "big", "tasks": ["value"]},
            {"name": "small", "tasks": ["label"]},
        ],
    }
    frames = {"big": frame.iloc[:200], "small": frame.iloc[200:]}
    data = prepare_data(config_from_dict(raw), frames=frames)
    assert data.sources is not None
    sizes = {s.name: len(s.data) for s in data.sources}
    assert sizes == {"big": round(0.5 * (200 - 40 - 40)), "small": round(0.5 * (100 - 20 - 20))}
    assert len(data.val) == 40 + 20 and data.test is not None and len(data.test) == 60

    stream = synthetic_raw()
    stream["data"].update({"path": "x.parquet", "stream": True, "train_fraction": 0.5})
    with pytest.raises(ConfigError, match=r"data\.train_fraction: a streamed table"):
        config_from_dict(stream)
    bad = synthetic_raw()
    bad["data"]["train_fraction"] = 0.0
    with pytest.raises(ConfigError, match=r"data\.train_fraction"):
        config_from_dict(bad)


# -- end to end ----------------------------------------------------------------------------
def _mtimes(root: Path) -> dict[str, int]:
    return {
        str(p.parent.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.glob("runs/**/results.json"))
    }


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory: pytest.TempPathFactory, frame: pd.DataFrame) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("compare")
    frame.to_csv(root / "data.csv", index=False)
    raw = synthetic_raw(widths=(8,), head=(8,), epochs=2, batch_size=64)
    raw["data"]["path"] = "data.csv"
    raw["compare"] = {
        "seeds": 2,
        "configurations": [{"name": "mmoe", "set": ["model.architecture.name=mmoe"]}],
    }
    (root / "run.toml").write_text(toml_text(raw), encoding="utf-8")
    out = root / "cmp"
    first = run_cli("compare", root / "run.toml", "--out", out)
    return {
        "root": root,
        "out": out,
        "first": first,
        "doc": json.loads((out / "compare.json").read_text()),
    }


def test_cli_compare_writes_compare_json_md_and_run_dirs(cli_setup: dict[str, Any]) -> None:
    res, out, doc = cli_setup["first"], cli_setup["out"], cli_setup["doc"]
    assert res.code == 0, res.err
    assert "6 runs trained, 0 already finished" in res.out
    assert "polytask compare" in res.out and "single-task" in res.out and "mmoe" in res.out
    assert set(doc) >= {
        "kind",
        "seeds",
        "fractions",
        "tasks",
        "delta_m_definition",
        "test",
        "configurations",
        "results",
    }
    assert doc["seeds"] == [0, 1] and doc["fractions"] == [1.0]
    assert set(doc["configurations"]) == {"single-task", "mmoe"}
    assert doc["configurations"]["mmoe"]["overrides"] == ["model.architecture.name=mmoe"]
    assert "paired t-test" in doc["test"] and "0.05" in doc["test"]
    base, mmoe = doc["results"]
    assert (base["configuration"], mmoe["configuration"]) == ("single-task", "mmoe")
    for task in ("value", "label"):
        stats = mmoe["per_task"][task]
        assert len(stats["values"]) == 2 and stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
        assert mmoe["verdicts"][task]["verdict"] in ("helps", "no significant difference", "hurts")
    assert set(mmoe) >= {"n_seeds", "delta_m", "delta_m_all_metrics", "worst_task", "verdicts"}
    assert mmoe["worst_task"]["task"] in ("value", "label")
    # The reported test values are those in each run's own results.json.
    run = json.loads((out / "runs/fraction-1/mmoe/seed1/results.json").read_text())
    assert mmoe["per_task"]["label"]["values"][1] == pytest.approx(
        run["multi_task"]["label"]["auroc"]
    )
    single = json.loads((out / "runs/fraction-1/single-task/value/seed0/results.json").read_text())
    assert list(single["multi_task"]) == ["value"]
    assert base["per_task"]["value"]["values"][0] == pytest.approx(
        single["multi_task"]["value"]["mae"]
    )
    # Every run is a normal run directory.
    runs = sorted(p.parent for p in out.glob("runs/**/results.json"))
    assert len(runs) == 6
    for r in runs:
        assert (r / "metrics.jsonl").is_file() and (r / "model" / "model.safetensors").is_file()
    md = (out / "compare.md").read_text()
    assert "## Training fraction 1" in md and "| mmoe |" in md


def test_compare_is_resumable(cli_setup: dict[str, Any]) -> None:
    out, root = cli_setup["out"], cli_setup["root"]
    before = _mtimes(out)
    again = run_cli("compare", root / "run.toml", "--out", out)
    assert again.code == 0, again.err
    assert "0 runs trained, 6 already finished" in again.out
    assert _mtimes(out) == before
    # Delete one run: only that one trains again, to the same numbers (runs are seeded).
    victim = "runs/fraction-1/single-task/label/seed1"
    shutil.rmtree(out / victim)
    third = run_cli("compare", root / "run.toml", "--out", out, "-q")
    assert "1 runs trained, 5 already finished" in third.out
    after = _mtimes(out)
    assert {k for k in after if after[k] != before[k]} == {victim}
    assert json.loads((out / "compare.json").read_text()) == cli_setup["doc"]
    # More seeds reuse every finished run.
    more = run_cli("compare", root / "run.toml", "--out", out, "--seeds", "3", "-q")
    assert "3 runs trained, 6 already finished" in more.out
    doc = json.loads((out / "compare.json").read_text())
    assert doc["seeds"] == [0, 1, 2] and doc["results"][1]["n_seeds"] == 3
    # A finished run is never reused for a different set-up.
    changed = run_cli("compare", root / "run.toml", "--out", out, "--set", "train.epochs=3")
    assert changed.code == 2 and "finished with another configuration (train.epochs)" in changed.err


def test_python_api_with_fractions_and_a_grid(tmp_path: Path, frame: pd.DataFrame) -> None:
    raw = synthetic_raw(widths=(8,), head=(8,), epochs=1, batch_size=64)
    raw["compare"] = {"seeds": 2, "fractions": [0.5, 1.0], "grid": {"train.lr": [0.001, 0.01]}}
    result = polytask.compare(config_from_dict(raw), out=tmp_path, frame=frame, quiet=True)
    assert len(result.trained) == 2 * 2 * (2 * 2 + 2) and not result.reused
    doc = result.summary
    assert [(r["fraction"], r["configuration"]) for r in doc["results"]] == [
        (0.5, "single-task"),
        (0.5, "multi-task"),
        (1.0, "single-task"),
        (1.0, "multi-task"),
    ]
    # The chosen lr of each run is the one with the better validation score in its log.
    for r in doc["results"]:
        if r["configuration"] == "single-task":
            for i, point in enumerate(r["chosen"]["label"]):
                vals = {}
                for lr in (0.001, 0.01):
                    run = (
                        tmp_path
                        / f"runs/fraction-{r['fraction']:g}/single-task/label/seed{i}/train.lr={lr}"
                    )
                    best = json.loads((run / "results.json").read_text())["best_epoch"]
                    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                    vals[lr] = next(x for x in log if x["epoch"] == best)["val_metrics"]["label"][
                        "auroc"
                    ]
                assert point == {"train.lr": max(vals, key=lambda k: (vals[k], -k))}
    # Training fraction 0.5 trained on half the rows: its single-task runs saw fewer examples.
    half = tmp_path / "runs/fraction-0.5/single-task/value/seed0/train.lr=0.001/metrics.jsonl"
    full = tmp_path / "runs/fraction-1/single-task/value/seed0/train.lr=0.001/metrics.jsonl"
    seen = [json.loads(p.read_text().splitlines()[0])["examples"]["value"] for p in (half, full)]
    assert seen == [round(0.5 * 210), 210]


def test_compare_rejects_a_config_without_enough_tasks() -> None:
    raw = synthetic_raw()
    raw["tasks"] = raw["tasks"][:1]
    with pytest.raises(ConfigError, match="at least two tasks"):
        build_plan(config_from_dict(raw))
    assert issubclass(ConfigError, PolytaskError)
