"""Multi-objective optimisation (issue 8): front helpers against brute force and hand-computed
volumes, preference vectors, EPO on a convex toy, the COSMOS-conditioned model's trade-off,
preferences at prediction time, and the resumable ``polytask pareto`` sweep."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from conftest import run_cli, run_interrupted_and_resumed, toml_text
from polytask import config_from_dict, load, run
from polytask.balance import build_balancer
from polytask.errors import ConfigError, PolytaskError
from polytask.studies.pareto import (
    closest_to_preference,
    default_reference,
    dominates,
    hypervolume,
    non_dominated,
    non_dominated_sort,
    parse_preference,
    preference_points,
    simplex_grid,
    simplex_quasi_random,
    to_minimisation,
)
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# -- dominance and sorting against brute force -------------------------------------------------


def _brute_mask(points: np.ndarray) -> list[bool]:
    return [
        not any(dominates(points[j], points[i]) for j in range(len(points)) if j != i)
        for i in range(len(points))
    ]


def _brute_fronts(points: np.ndarray) -> list[list[int]]:
    left, fronts = list(range(len(points))), []
    while left:
        front = [i for i in left if not any(dominates(points[j], points[i]) for j in left)]
        fronts.append(front)
        left = [i for i in left if i not in front]
    return fronts


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_non_dominated_and_sort_match_brute_force(dims: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Small integers: many ties in single objectives and some exact duplicates.
    points = rng.integers(0, 6, size=(40, dims)).astype(float)
    points[5] = points[7]
    assert non_dominated(points).tolist() == _brute_mask(points)
    fronts = non_dominated_sort(points)
    assert fronts == _brute_fronts(points)
    assert sorted(i for f in fronts for i in f) == list(range(40))
    assert len(fronts) > 2  # the sets are rich enough to test the ranking


def test_dominance_convention_is_minimisation() -> None:
    assert dominates([1, 2], [1, 3]) and dominates([0, 0], [1, 1])
    assert not dominates([1, 2], [1, 2])  # equal points do not dominate each other
    assert not dominates([1, 3], [2, 2]) and not dominates([2, 2], [1, 3])
    # Higher-is-better metrics enter with their sign flipped.
    objectives = to_minimisation([[0.9, 0.5], [0.8, 0.4]], [True, False])
    assert objectives.tolist() == [[-0.9, 0.5], [-0.8, 0.4]]
    assert non_dominated(objectives).tolist() == [True, True]


# -- hypervolume against hand-computed fronts --------------------------------------------------


def test_hypervolume_two_dimensions_staircase() -> None:
    front = [[1, 3], [2, 2], [3, 1]]
    # Strips left to right: (2-1)*(4-3) + (3-2)*(4-2) + (4-3)*(4-1) = 1 + 2 + 3.
    assert hypervolume(front, [4, 4]) == pytest.approx(6.0)
    # A dominated point and one outside the reference box change nothing.
    assert hypervolume([*front, [3, 3], [5, 0.5]], [4, 4]) == pytest.approx(6.0)
    assert hypervolume([[1, 3]], [4, 4]) == pytest.approx(3.0)
    assert hypervolume([], [4, 4]) == 0.0
    assert hypervolume([[4, 1]], [4, 4]) == 0.0  # on the reference's boundary: no volume


def test_hypervolume_three_dimensions() -> None:
    assert hypervolume([[1, 1, 1]], [2, 3, 4]) == pytest.approx(1 * 2 * 3)
    # Boxes 2*2*1 and 1*1*2 overlapping in [1,2]^3: 4 + 2 - 1.
    assert hypervolume([[0, 0, 1], [1, 1, 0]], [2, 2, 2]) == pytest.approx(5.0)
    # Three points, inclusion-exclusion: 3 boxes of 2*1*1, pairwise overlaps of 1*1*1... each
    # pair of (0,1,1),(1,0,1),(1,1,0) in ref (2,2,2) overlaps in the unit cube [1,2]^3, and so
    # does the triple: 3*2 - 3*1 + 1 = 4.
    assert hypervolume([[0, 1, 1], [1, 0, 1], [1, 1, 0]], [2, 2, 2]) == pytest.approx(4.0)


def test_default_reference_and_closest_to_preference() -> None:
    points = np.array([[0.0, 4.0], [1.0, 2.0], [2.0, 1.0], [4.0, 0.0]])
    # nadir (4, 4) + 0.1 * range (4, 4)
    assert default_reference(points).tolist() == pytest.approx([4.4, 4.4])
    assert default_reference([[2.0, -3.0]]).tolist() == pytest.approx([2.2, -2.7])
    # Normalised by range 4: the equal preference takes the balanced points, a heavy weight
    # on an objective takes the point best on it (Tchebycheff, ties by weighted sum).
    assert closest_to_preference(points, [0.5, 0.5]) in (1, 2)
    assert closest_to_preference(points, [0.9, 0.1]) == 0
    assert closest_to_preference(points, [0.1, 0.9]) == 3
    assert closest_to_preference(points, [1.0, 0.0]) == 0
    # r_k f_k equal (the EPO ray): (1, 2) for r = (2/3, 1/3).
    assert closest_to_preference(points, [2 / 3, 1 / 3]) == 1


# -- preferences -----------------------------------------------------------------------------


def test_preference_vectors_on_the_simplex() -> None:
    grid = simplex_grid(2, 11)
    assert grid.shape == (11, 2)
    assert grid[:, 0].tolist() == pytest.approx([1 - i / 10 for i in range(11)])
    assert simplex_grid(3, 11).shape == (10, 3)  # H = 3: C(5, 2) = 10 <= 11 < 15
    assert simplex_grid(3, 15).shape == (15, 3)
    assert {tuple(r) for r in simplex_grid(3, 6).tolist()} == {
        (1, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 1, 0), (0, 0.5, 0.5), (0, 0, 1)
    }  # fmt: skip
    quasi = simplex_quasi_random(5, 16, seed=3)
    assert quasi.shape == (16, 5) and (quasi >= 0).all()
    assert quasi.sum(axis=1) == pytest.approx(np.ones(16))
    assert np.array_equal(quasi, simplex_quasi_random(5, 16, seed=3))
    assert not np.allclose(quasi, simplex_quasi_random(5, 16, seed=4))
    shrunk = preference_points(2, 11, min_weight=0.05)
    assert shrunk.min() == pytest.approx(0.05) and shrunk.max() == pytest.approx(0.95)
    assert shrunk.sum(axis=1) == pytest.approx(np.ones(11))
    assert preference_points(4, 7, min_weight=0.1).min() >= 0.1 - 1e-12


def test_parse_preference_normalises_and_rejects() -> None:
    assert parse_preference("7,3", ["a", "b"]).tolist() == pytest.approx([0.7, 0.3])
    assert parse_preference([1, 1, 2], ["a", "b", "c"]).tolist() == pytest.approx(
        [0.25] * 2 + [0.5]
    )
    for bad, message in (
        ("0.7", "has 1 weight(s) but the model has 2 tasks (a, b)"),
        ("0.7,x", "expected numbers separated by commas"),
        ("0.7,-0.3", "must be finite and non-negative"),
        ("0,0", "at least one weight must be positive"),
    ):
        with pytest.raises(PolytaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_preference(bad, ["a", "b"])


# -- EPO on a convex toy -----------------------------------------------------------------------


class _Point(nn.Module):
    def __init__(self, x0: list[float]) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(x0))

    def forward(self) -> Tensor:
        return self.x * 1.0


class _Quadratics(nn.Module):
    """Two convex objectives of one shared 2-D parameter: ``L_a = ‖x − a‖² + c`` and
    ``L_b = ‖x − b‖² + c``; their Pareto set is the segment from ``a`` to ``b``. Exposes what
    a balancer asks of a multi-task model."""

    single_representation = False

    def __init__(self, x0: list[float]) -> None:
        super().__init__()
        self.point = _Point(x0)
        self.a, self.b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        x = self.point()
        return {"a": ((x - self.a) ** 2).sum() + 0.1, "b": ((x - self.b) ** 2).sum() + 0.1}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.point.x]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []

    def shared_modules(self) -> list[nn.Module]:
        return [self.point]


TWO = [Task(name="a", kind="regression", target="a"), Task(name="b", kind="regression", target="b")]


@pytest.mark.parametrize("preference", [[0.5, 0.5], [0.8, 0.2], [0.25, 0.75]])
def test_epo_reaches_the_preference_ray(preference: list[float]) -> None:
    model = _Quadratics([2.0, -1.0])
    balancer = build_balancer("epo", {"preference": preference}, TWO)
    balancer.check_model(model)  # type: ignore[arg-type]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(250):
        optimiser.zero_grad()
        losses = balancer.forward(model, {})  # type: ignore[arg-type]
        balancer.backward(losses, model)  # type: ignore[arg-type]
        optimiser.step()
    with torch.no_grad():
        final = model({})
    la, lb = float(final["a"]), float(final["b"])
    # On the ray: r_a L_a = r_b L_b (within 5%), and on the Pareto set x_1 + x_2 = 1.
    assert preference[0] * la / (preference[1] * lb) == pytest.approx(1.0, abs=0.05)
    assert float(model.point.x.detach().sum()) == pytest.approx(1.0, abs=0.02)
    assert float(model.point.x.detach().min()) >= -0.02


def test_epo_rejects_bad_preferences() -> None:
    with pytest.raises(ConfigError, match=r"balancer\.preference: 3 weights for 2 tasks"):
        build_balancer("epo", {"preference": [0.2, 0.3, 0.5]}, TWO)
    with pytest.raises(ConfigError, match="every one of the weights must be positive"):
        build_balancer("epo", {"preference": [1.0, 0.0]}, TWO)


# -- COSMOS: one conditioned model, its trade-off follows the preference ------------------------


def _conflict_frame(n: int, seed: int) -> pd.DataFrame:
    """Two regression targets along orthogonal directions of the inputs; the 1-unit bottleneck
    of the encoder below cannot serve both, so the tasks trade off."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return pd.DataFrame(
        {
            **{f"x{i}": x[:, i] for i in range(4)},
            "ya": x[:, 0] + x[:, 1] + 0.1 * rng.normal(size=n),
            "yb": x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=n),
        }
    )


def _conflict_raw(epochs: int = 15, **balancer: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {"split": {"method": "random", "val": 0.2, "test": 0.2}},
        "tasks": [
            {"name": "a", "kind": "regression", "target": "ya"},
            {"name": "b", "kind": "regression", "target": "yb"},
        ],
        "model": {
            "encoder": {"widths": [16, 1], "dropout": 0.0, "activation": "tanh"},
            "head": {"widths": [16]},
            "preference_conditioning": "film",
        },
        "balancer": {"name": "cosmos", "lambda": 1.0, **balancer},
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "lr": 3e-3,
            "patience": None,
            "progress": False,
        },
    }


@pytest.fixture(scope="module")
def cosmos_model(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> Path:
    out = tmp_path_factory.mktemp("cosmos") / "run"
    run(config_from_dict(_conflict_raw()), frame=_conflict_frame(2000, 0), out=out, quiet=True)
    return out


GRID = [0.1, 0.3, 0.5, 0.7, 0.9]


def test_conditioned_trade_off_moves_monotonically(cosmos_model: Path) -> None:
    predictor = load(cosmos_model)
    test = _conflict_frame(600, 1)
    rmse = [
        (m["a"]["rmse"], m["b"]["rmse"])
        for m in (predictor.evaluate(test, preference=[w, 1 - w]) for w in GRID)
    ]
    a, b = [r[0] for r in rmse], [r[1] for r in rmse]
    # More weight on a: lower error on a, higher on b, at every step of the grid.
    assert all(x > y for x, y in itertools.pairwise(a)), a
    assert all(x < y for x, y in itertools.pairwise(b)), b
    # And a real trade-off, not noise: measured 1.69 -> 0.54 (a) and 0.50 -> 1.67 (b).
    assert a[0] - a[-1] > 0.5 and b[-1] - b[0] > 0.5


def test_preference_round_trip_through_the_model_directory(
    cosmos_model: Path, tmp_path: Path
) -> None:
    predictor = load(cosmos_model)
    assert predictor.preference_conditioned
    frame = _conflict_frame(50, 2)
    before = predictor.predict(frame, preference=[0.7, 0.3])
    copy = load(predictor.save(tmp_path / "copy"))
    after = copy.predict(frame, preference="0.7,0.3")
    pd.testing.assert_frame_equal(before, after)
    # Normalised: 7,3 is 0.7,0.3; no preference is the uniform one.
    pd.testing.assert_frame_equal(copy.predict(frame, preference=[7, 3]), after)
    pd.testing.assert_frame_equal(copy.predict(frame), copy.predict(frame, preference=[0.5, 0.5]))
    assert not np.allclose(after["a"], copy.predict(frame, preference=[0.1, 0.9])["a"])
    with pytest.raises(PolytaskError, match=r"has 3 weight\(s\) but the model has 2 tasks"):
        copy.predict(frame, preference=[0.2, 0.3, 0.5])
    with pytest.raises(PolytaskError, match="non-negative"):
        copy.outputs(frame, preference=[1.0, -0.5])


def test_cli_predict_and_evaluate_with_preference(cosmos_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    _conflict_frame(80, 3).to_csv(data, index=False)
    out = tmp_path / "pred.csv"
    res = run_cli("predict", cosmos_model, data, "-o", out, "--preference", "0.9,0.1")
    assert res.code == 0, res.err
    expected = load(cosmos_model).predict(pd.read_csv(data), preference=[0.9, 0.1])
    assert pd.read_csv(out)["a"].to_numpy() == pytest.approx(expected["a"].to_numpy(), rel=1e-6)
    res = run_cli("evaluate", cosmos_model, data, "--json", "--preference", "0.9,0.1")
    assert res.code == 0, res.err
    assert (
        json.loads(res.out)["a"]["rmse"]
        < json.loads(
            run_cli("evaluate", cosmos_model, data, "--json", "--preference", "0.1,0.9").out
        )["a"]["rmse"]
    )
    bad = run_cli("predict", cosmos_model, data, "-o", out, "--preference", "1,2,3")
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1
    assert "has 3 weight(s) but the model has 2 tasks (a, b)" in bad.err


def test_cosmos_resumes_exactly(tmp_path: Path) -> None:
    """The preferences are drawn from the trainer's checkpointed generator: a run cut after
    epoch 2 and resumed ends bit-identical to the uninterrupted one."""
    raw = _conflict_raw(epochs=3)
    run_interrupted_and_resumed(raw, _conflict_frame(400, 0), tmp_path)


def test_conditioning_errors_name_the_fix() -> None:
    raw = _conflict_raw(epochs=1)
    raw["model"]["preference_conditioning"] = "none"
    with pytest.raises(ConfigError, match=r"set model\.preference_conditioning = 'film'"):
        run(config_from_dict(raw), frame=_conflict_frame(200, 0), quiet=True)
    raw["model"]["preference_conditioning"] = "film"
    raw["balancer"]["sampling"] = "batch"  # one preference per batch: batch norm would see it
    with pytest.raises(ConfigError, match=r"use balancer\.sampling = 'example'"):
        run(config_from_dict(raw), frame=_conflict_frame(200, 0), quiet=True)
    raw["balancer"]["sampling"] = "example"
    raw["model"]["preference_conditioning"] = "film"
    raw["model"]["encoder"]["norm"] = "none"  # nothing to modulate
    with pytest.raises(ConfigError, match="has none; use 'input'"):
        run(config_from_dict(raw), frame=_conflict_frame(200, 0), quiet=True)


def test_unconditioned_model_rejects_a_preference(tmp_path: Path) -> None:
    raw = _conflict_raw(epochs=1)
    raw["model"]["preference_conditioning"] = "none"
    raw["balancer"] = {"name": "static"}
    result = run(config_from_dict(raw), frame=_conflict_frame(200, 0), quiet=True)
    with pytest.raises(PolytaskError, match="not preference-conditioned"):
        result.predictor.predict(_conflict_frame(10, 1), preference=[0.5, 0.5])


# -- polytask pareto ---------------------------------------------------------------------------


def test_pareto_cli_sweep_resumes_and_measures_the_front(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    _conflict_frame(400, 0).to_csv(data, index=False)
    raw = _conflict_raw(epochs=1)
    raw["data"]["path"] = "train.csv"
    del raw["train"]["patience"]  # TOML has no null; 1 epoch needs no early stopping anyway
    raw["pareto"] = {"n_points": 3, "balancers": ["equal"]}
    config = tmp_path / "pareto.toml"
    config.write_text(toml_text(raw), encoding="utf-8")
    out = tmp_path / "front"
    first = run_cli("pareto", config, "--out", out, "-q")
    assert first.code == 0, first.err
    assert "(5 runs trained, 0 already finished)" in first.out
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["kind"] == "polytask-pareto"
    assert np.array(doc["preferences"]) == pytest.approx(
        np.array([[0.95, 0.05], [0.5, 0.5], [0.05, 0.95]])
    )
    sets = {s["name"]: s for s in doc["sets"]}
    assert set(sets) == {"static sweep", "cosmos", "equal"}
    assert [len(sets[n]["points"]) for n in ("static sweep", "cosmos", "equal")] == [3, 3, 1]
    # The hypervolume is recomputed from the stored points and reference with the helpers.
    names = list(doc["tasks"])
    hib = [doc["tasks"][k]["higher_is_better"] for k in names]
    ref = doc["reference"]["objective"]
    all_points = [[p["test"][k] for k in names] for s in doc["sets"] for p in s["points"]]
    assert ref == pytest.approx(default_reference(to_minimisation(all_points, hib)).tolist())
    for entry in doc["sets"]:
        points = to_minimisation([[p["test"][k] for k in names] for p in entry["points"]], hib)
        assert entry["hypervolume"] == pytest.approx(hypervolume(points, ref))
        assert entry["non_dominated"] == non_dominated(points).tolist()
        assert entry["hypervolume"] > 0 and entry["complete"]
    summary = {r["name"]: r for r in doc["summary"]}
    assert summary["static sweep"]["hypervolume_ratio"]["mean"] == pytest.approx(1.0)
    ratio = sets["cosmos"]["hypervolume"] / sets["static sweep"]["hypervolume"]
    assert summary["cosmos"]["hypervolume_ratio"]["mean"] == pytest.approx(ratio)
    seconds = sum(p["seconds"] for p in sets["static sweep"]["points"])
    assert sets["static sweep"]["training_seconds"] == pytest.approx(seconds, abs=1e-2)
    assert "| static sweep | sweep | 1 |" in (out / "pareto.md").read_text()
    # The conditioned model at the uniform preference is the model its run reported.
    middle = sets["cosmos"]["points"][1]
    reported = json.loads((out / "runs" / "cosmos" / "seed0" / "results.json").read_text())
    assert middle["preference"] == [0.5, 0.5]
    metric = doc["tasks"]["a"]["metric"]
    assert metric == "mae" and not doc["tasks"]["a"]["higher_is_better"]
    assert middle["test"]["a"] == pytest.approx(reported["multi_task"]["a"][metric], rel=1e-6)

    again = run_cli("pareto", config, "--out", out, "-q")
    assert again.code == 0, again.err
    assert "(0 runs trained, 5 already finished)" in again.out
    assert json.loads((out / "pareto.json").read_text())["sets"] == doc["sets"]


def test_pareto_plan_errors() -> None:
    from polytask.studies.pareto.driver import BUDGET_CONTROL, plan_sweep

    raw = _conflict_raw(epochs=1)
    raw["pareto"] = {"reference": {"a": 1.0}}
    with pytest.raises(ConfigError, match=r"pareto\.reference: no value for task 'b'"):
        plan_sweep(config_from_dict(raw))
    raw["pareto"] = {"balancers": ["no_such_method"]}
    with pytest.raises(ConfigError, match=r"pareto, balancer 'no_such_method'.*unknown balancer"):
        plan_sweep(config_from_dict(raw))
    raw["pareto"] = {}
    raw["data"]["split"]["test"] = 0.0
    with pytest.raises(ConfigError, match="pareto reports test metrics"):
        plan_sweep(config_from_dict(raw))
    raw["data"]["split"]["test"] = 0.2
    raw["pareto"] = {"method": "epo", "min_weight": 0.0}
    with pytest.raises(ConfigError, match="every one of the weights must be positive"):
        plan_sweep(config_from_dict(raw))
    # EPO sweep: one run per preference, the preference handed to the balancer; the cosmos
    # config's conditioning is switched off for the sweep's runs.
    raw["pareto"] = {"method": "epo", "n_points": 4, "min_weight": 0.1, "seeds": [3, 5]}
    raw["pareto"]["conditioned_epochs"] = 7
    plan = plan_sweep(config_from_dict(raw))
    sweep_runs = [r for r in plan.runs if r.kind == "sweep"]
    assert [r.spec.seed for r in sweep_runs] == [3] * 4 + [5] * 4
    assert sweep_runs[1].spec.path == "sweep-epo/seed3/01_r=0.6333,0.3667"
    for r in sweep_runs:
        assert r.spec.cfg.balancer.name == "epo"
        assert r.spec.cfg.balancer.params()["preference"] == list(r.preference or ())
        assert r.spec.cfg.model.preference_conditioning == "none"
    conditioned = [r for r in plan.runs if r.kind == "conditioned"]
    assert [r.spec.path for r in conditioned] == ["cosmos/seed3", "cosmos/seed5"]
    assert [r.spec.cfg.train.epochs for r in conditioned] == [7, 7]
    assert {r.spec.cfg.train.epochs for r in sweep_runs} == {1}
    # The budget control: equal weights, unconditioned, for the conditioned run's epochs.
    control = [r for r in plan.runs if r.group == BUDGET_CONTROL]
    assert [r.spec.path for r in control] == ["budget-control/seed3", "budget-control/seed5"]
    for r in control:
        assert r.kind == "balancer" and r.spec.cfg.train.epochs == 7
        assert r.spec.cfg.balancer.name == "equal"
        assert r.spec.cfg.model.preference_conditioning == "none"
    raw["pareto"]["budget_control"] = False
    assert not [r for r in plan_sweep(config_from_dict(raw)).runs if r.group == BUDGET_CONTROL]
    raw["pareto"] |= {"budget_control": True, "conditioned_epochs": 1}  # same budget: no control
    assert not [r for r in plan_sweep(config_from_dict(raw)).runs if r.group == BUDGET_CONTROL]


def test_sweep_and_cli_overrides_of_seeds_and_workers_are_honoured(tmp_path: Path) -> None:
    """``sweep(seeds=, workers=)`` and ``polytask pareto --seeds/--workers`` override the
    ``[pareto]`` keys. They were once written to a field of the config that nothing read, so
    ``--seeds 1`` trained every seed of the config (here 2: twice the runs) and ``--workers``
    kept the config's processes."""
    from polytask.studies.pareto.config import ParetoConfig
    from polytask.studies.pareto.driver import _with_overrides, plan_sweep

    raw = _conflict_raw(epochs=1)
    raw["data"]["path"] = "train.csv"
    del raw["train"]["patience"]  # TOML has no null
    raw["pareto"] = {"n_points": 2, "balancers": ["equal"], "seeds": 2, "workers": 2}
    cfg = config_from_dict(raw)
    assert plan_sweep(cfg).seeds == [0, 1]
    changed = _with_overrides(cfg, seeds=1, workers=3)
    assert plan_sweep(changed).seeds == [0]
    assert changed.section("pareto", ParetoConfig).workers == 3
    assert _with_overrides(cfg, seeds=[4, 7]).section("pareto", ParetoConfig).seeds == [4, 7]
    assert _with_overrides(cfg) is cfg  # nothing given: the config as it is

    _conflict_frame(200, 0).to_csv(tmp_path / "train.csv", index=False)
    config = tmp_path / "pareto.toml"
    config.write_text(toml_text(raw), encoding="utf-8")
    out = tmp_path / "front"
    # One seed: 2 sweep points + the conditioned model + equal weights, in this process.
    result = run_cli("pareto", config, "--out", out, "-q", "--seeds", "1", "--workers", "1")
    assert result.code == 0, result.err
    assert "(4 runs trained, 0 already finished)" in result.out
    # One seed directory per set of points (the sweep's holds its 2 points): seed 0 only.
    assert sorted(p.name for p in out.glob("runs/*/seed*")) == ["seed0"] * 3
