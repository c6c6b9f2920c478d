"""Task relationships: lookahead affinity (Fifty et al. 2021), the grouping search, the K-task
synthetic generator and the ``affinity`` command, checked against hand computations, brute
force and ground truth (known task correlations; actually training every pair)."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from conftest import run_cli, synthetic_raw, toml_text
from polytask import config_from_dict, run
from polytask.data.synthetic import (
    correlated_task_weights,
    make_correlated_tasks,
    make_mmoe_synthetic,
)
from polytask.errors import ConfigError
from polytask.studies.affinity.grouping import grouping_score, search_groups
from polytask.studies.affinity.study import AffinityProbe, affinity, pair_search, step_affinity

pytestmark = pytest.mark.usefixtures("torch_single_thread")


# -- the TAG formula ---------------------------------------------------------------------------


class _Linear(nn.Module):
    """z = W x (shared), task k's prediction v_kᵀ z (its own head)."""

    def __init__(self, w: np.ndarray, v: np.ndarray) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.v = nn.Parameter(torch.tensor(v))
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1  # a buffer the measurement must restore
        return (x @ self.w.T) @ self.v.T  # [N, K]


def test_lookahead_affinity_matches_a_hand_computation() -> None:
    rng = np.random.default_rng(3)
    n, d, h, k, lr = 10, 3, 2, 3, 0.05
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, k))
    w, v = rng.normal(size=(h, d)), rng.normal(size=(k, h))

    # By hand (float64 numpy): L_k(W) = mean_n (v_k W x_n − y_nk)², whose gradient in W is
    # (2/N) Σ_n r_nk v_k x_nᵀ; the lookahead takes W − lr ∇_W L_i and keeps every head.
    def loss(wm: np.ndarray, task: int) -> float:
        r = x @ wm.T @ v[task] - y[:, task]
        return float(np.mean(r**2))

    def grad(task: int) -> np.ndarray:
        r = x @ w.T @ v[task] - y[:, task]
        return 2.0 / n * np.outer(v[task], r @ x)

    hand = np.array(
        [[1.0 - loss(w - lr * grad(i), j) / loss(w, j) for j in range(k)] for i in range(k)]
    )
    grads = np.stack([grad(i).ravel() for i in range(k)])

    model = _Linear(w, v)
    xt, yt = torch.tensor(x), torch.tensor(y)

    def loss_of() -> dict[str, Tensor]:
        out = model(xt)
        return {f"t{i}": ((out[:, i] - yt[:, i]) ** 2).mean() for i in range(k)}

    before = torch.get_rng_state()
    measured = step_affinity(model, loss_of, [model.w], lr)
    np.testing.assert_allclose(measured.z, hand, rtol=1e-10, atol=1e-13)
    assert measured.names == ["t0", "t1", "t2"]
    np.testing.assert_allclose(measured.gramian.gramian.numpy(), grads @ grads.T, rtol=1e-10)
    # Everything restored: parameters bit for bit, buffers, RNG, and .grad untouched.
    assert torch.equal(model.w, torch.tensor(w)) and torch.equal(model.v, torch.tensor(v))
    assert float(model.calls) == 0.0
    assert torch.equal(torch.get_rng_state(), before)
    assert model.w.grad is None and model.v.grad is None
    # The sign convention: a task's own step lowers its own loss (positive self-affinity).
    assert np.all(np.diag(hand) > 0)


def test_measuring_leaves_the_training_unchanged(tmp_path: Path) -> None:
    # Dropout (global RNG) and batch norm (running statistics): both must be restored.
    frame = make_mmoe_synthetic(400, 0.8, n_features=6, seed=0)
    raw = synthetic_raw(widths=(8,), dropout=0.2, epochs=2, batch_size=64, threads=1)
    plain = run(config_from_dict(raw), frame=frame, quiet=True)
    meter = AffinityProbe(["value", "label"], every=2)
    measured = run(config_from_dict(raw), frame=frame, quiet=True, callbacks=[meter])
    a, b = plain.predictor.model.state_dict(), measured.predictor.model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    # 280 training rows in batches of 64: 5 steps per epoch; steps 0, 2, 4, 6 and 8 measured.
    assert meter.steps_measured == 5
    assert [e["epoch"] for e in meter.over_training] == [1, 2]
    assert np.all(np.isfinite(meter.affinity()))


# -- the synthetic generator -------------------------------------------------------------------

#: Four tasks whose six pairs have distinct correlations (PSD: smallest eigenvalue 0.064).
#: Pairs {0,1} and {2,3} are each other's strongest partners.
RANKED = {(0, 1): 0.9, (2, 3): 0.7, (0, 2): 0.5, (1, 2): 0.3, (0, 3): 0.1, (1, 3): 0.0}


def _correlations(pairs: dict[tuple[int, int], float], k: int = 4) -> np.ndarray:
    c = np.eye(k)
    for (i, j), value in pairs.items():
        c[i, j] = c[j, i] = value
    return c


def test_task_weights_have_exactly_the_prescribed_cosines() -> None:
    c = _correlations(RANKED)
    w = correlated_task_weights(c, 16, scale=2.0, rng=np.random.default_rng(0))
    norms = np.linalg.norm(w, axis=1)
    np.testing.assert_allclose(norms, 2.0, rtol=1e-12)
    np.testing.assert_allclose(w @ w.T / np.outer(norms, norms), c, atol=1e-12)
    # Semi-definite: two identical tasks (eigendecomposition path).
    same = correlated_task_weights(np.ones((2, 2)), 4, rng=np.random.default_rng(0))
    np.testing.assert_allclose(same[0], same[1], atol=1e-12)
    with pytest.raises(ValueError, match="positive semi-definite"):
        correlated_task_weights(
            _correlations({(0, 1): 0.9, (0, 2): 0.9, (1, 2): -0.9}, 3),
            4,
            rng=np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="unit diagonal"):
        correlated_task_weights(2 * np.eye(2), 4, rng=np.random.default_rng(0))


def test_two_task_case_is_the_mmoe_generator() -> None:
    # The K-task construction (Cholesky factor) reduces to Ma et al.'s w1, w2 and draws in the
    # same order, so for two tasks it reproduces make_mmoe_synthetic.
    ours = make_correlated_tasks(300, [[1.0, 0.6], [0.6, 1.0]], n_features=8, seed=5)
    theirs = make_mmoe_synthetic(300, 0.6, n_features=8, seed=5)
    pd.testing.assert_frame_equal(ours.filter(like="x"), theirs.filter(like="x"))
    np.testing.assert_allclose(ours["y0"], theirs["y_regression"], rtol=1e-12)
    np.testing.assert_allclose(ours["y1"], theirs["y2_raw"], rtol=1e-12)


# -- ground truth: known correlations ----------------------------------------------------------


def _four_task_raw(seed: int, **train: Any) -> dict[str, Any]:
    return {
        "seed": seed,
        "baselines": False,
        "data": {"split": {"method": "random", "val": 0.2, "test": 0.0}},
        "tasks": [{"name": f"t{k}", "kind": "regression", "target": f"y{k}"} for k in range(4)],
        "model": {"encoder": {"widths": [32], "dropout": 0.0}, "head": {"widths": [32]}},
        "train": {"lr": 3e-3, "progress": False, "patience": None, "threads": 1, **train},
    }


def test_affinity_ranks_task_pairs_by_their_true_correlation() -> None:
    # Measured (seeds 0-5): per-seed Spearman 0.94, 1, 0.71, 1, 1, 0.94; the strong pairs are
    # always separated, the weak ones (0.3, 0.1, 0.0) sit near zero affinity and can swap.
    # A matrix of noise passes one seed's ρ ≥ 0.7 with probability ~0.1, and the mean ranking
    # must be exact.
    c = _correlations(RANKED)
    keys = sorted(RANKED, key=lambda pair: -RANKED[pair])
    truth = [RANKED[pair] for pair in keys]
    per_seed = []
    for seed in range(4):
        frame = make_correlated_tasks(3000, c, n_features=16, seed=seed)
        cfg = config_from_dict(_four_task_raw(seed, epochs=6, batch_size=256))
        result = affinity(cfg, frame=frame, every=1, quiet=True)
        scores = result.pair_scores()
        measured = [scores[(f"t{i}", f"t{j}")] for i, j in keys]
        rho = spearmanr(measured, truth).statistic
        print(f"seed {seed}: Spearman {rho:.3f}", np.round(np.array(measured) * 1e4, 2))
        assert rho >= 0.7, seed
        per_seed.append(measured)
    mean = np.mean(per_seed, axis=0)
    assert spearmanr(mean, truth).statistic == pytest.approx(1.0)


def test_suggested_grouping_matches_the_exhaustive_pair_search() -> None:
    # Two blocks of identical tasks (noisy labels: noise sd 2), unrelated across blocks. The
    # pair search trains 4 single-task and 6 pair models and measures validation-loss gains.
    # Measured on seeds 0-7: the affinity grouping was {t0,t1},{t2,t3} on all 8 and the pair
    # search agreed on 7 (seed 7 added t1 to the second group).
    c = _correlations({(0, 1): 1.0, (2, 3): 1.0})
    frame = make_correlated_tasks(1500, c, n_features=16, noise=2.0, seed=0)
    raw = _four_task_raw(0, epochs=10, batch_size=64)
    raw["data"]["split"]["val"] = 0.3
    raw["model"]["head"]["widths"] = [16]
    cfg = config_from_dict(raw)
    truth = pair_search(cfg, frame=frame, max_groups=2)
    print("pair gains (%):", np.round(100 * truth.gains, 1).tolist())
    measured = affinity(cfg, frame=frame, max_groups=2, every=1, quiet=True)
    assert truth.grouping.groups == [["t0", "t1"], ["t2", "t3"]]
    assert measured.grouping.groups == truth.grouping.groups
    assert truth.runs == 10 and set(truth.pairs) == {
        f"t{i}|t{j}" for i, j in itertools.combinations(range(4), 2)
    }
    # Gains are relative validation-loss reductions against the task trained alone.
    together = truth.pairs["t0|t1"]["t1"]
    assert truth.gains[0, 1] == pytest.approx((truth.alone["t1"] - together) / truth.alone["t1"])


# -- the grouping search -----------------------------------------------------------------------


def _brute_force(z: np.ndarray, g: int, alone: float | None) -> float:
    """Best objective over every choice of at most g distinct groups, written independently of
    the module: for each task the best mean affinity onto it within a chosen group."""
    k = z.shape[0]
    min_size = 1 if alone is not None else 2
    groups = [
        members
        for size in range(min_size, k + 1)
        for members in itertools.combinations(range(k), size)
    ]

    def onto(members: tuple[int, ...], j: int) -> float:
        if len(members) == 1:
            assert alone is not None
            return alone
        return sum(z[i, j] for i in members if i != j) / (len(members) - 1)

    best = -math.inf
    for count in range(1, g + 1):
        for choice in itertools.combinations(groups, count):
            per_task = [
                max((onto(m, j) for m in choice if j in m), default=-math.inf) for j in range(k)
            ]
            best = max(best, sum(per_task) / k)
    return best


@pytest.mark.parametrize("method", ["exhaustive", "dynamic-programming"])
def test_grouping_search_is_optimal_against_brute_force(method: str) -> None:
    rng = np.random.default_rng(11)
    for trial in range(24):
        k, g = int(rng.integers(2, 6)), int(rng.integers(1, 4))
        z = rng.normal(size=(k, k))
        alone = None if trial % 3 else 0.0
        found = search_groups(z, g, alone_score=alone, method=method)
        assert found.search == method and len(found.groups) <= g
        assert found.score == pytest.approx(_brute_force(z, g, alone), abs=1e-12), (trial, found)
        indices = [[int(t) for t in group] for group in found.groups]
        assert found.score == pytest.approx(grouping_score(z, indices, alone_score=alone))


def test_grouping_follows_the_paper_objective_on_a_hand_case() -> None:
    # Z[i, j]: i's step onto j's loss. Tasks 0,1 help each other, 2,3 help each other; task 2
    # also helps 0 a little, which never beats 1's help.
    z = np.array(
        [
            [0.0, 0.8, -0.2, -0.1],
            [0.9, 0.0, -0.3, -0.2],
            [0.3, -0.1, 0.0, 0.6],
            [-0.4, -0.2, 0.5, 0.0],
        ]
    )
    two = search_groups(z, 2, ["a", "b", "c", "d"])
    assert two.groups == [["a", "b"], ["c", "d"]]
    assert two.score == pytest.approx((0.9 + 0.8 + 0.5 + 0.6) / 4)
    assert two.served_by == {"a": 0, "b": 0, "c": 1, "d": 1}
    one = search_groups(z, 1, ["a", "b", "c", "d"])
    assert one.groups == [["a", "b", "c", "d"]]
    # Without the paper's rule, a task whose every partner hurts it is trained alone.
    hurt = np.array([[0.0, 0.5, -0.5], [0.5, 0.0, -0.5], [-0.5, -0.5, 0.0]])
    assert search_groups(hurt, 2, alone_score=0.0).groups == [["0", "1"], ["2"]]
    assert ["2"] not in search_groups(hurt, 2).groups


def test_twelve_tasks_three_groups_is_exact_and_fast() -> None:
    z = np.random.default_rng(0).normal(size=(12, 12))
    started = time.perf_counter()
    found = search_groups(z, 3)
    elapsed = time.perf_counter() - started
    print(f"12 tasks, 3 groups: {elapsed:.2f} s")
    assert found.search == "dynamic-programming" and elapsed < 10.0
    # No choice reachable by one move (toggle a task in a group, drop a group, add a pair) is
    # better, and the heuristic beam search does not beat it.
    groups = [[int(t) for t in g] for g in found.groups]
    for index, members in enumerate(groups):
        for t in range(12):
            moved = set(members) ^ {t}
            if len(moved) >= 2:
                other = [*groups[:index], sorted(moved), *groups[index + 1 :]]
                assert grouping_score(z, other) <= found.score + 1e-12
    assert search_groups(z, 3, method="beam").score <= found.score + 1e-12


def test_grouping_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least two tasks"):
        search_groups(np.zeros((1, 1)), 1)
    with pytest.raises(ValueError, match="square"):
        search_groups(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="max_groups"):
        search_groups(np.zeros((2, 2)), 0)


# -- the command -------------------------------------------------------------------------------


def test_affinity_command_writes_the_documented_file(tmp_path: Path) -> None:
    frame = make_correlated_tasks(600, _correlations({(0, 1): 0.9}, 3), n_features=6, seed=0)
    frame.to_csv(tmp_path / "data.csv", index=False)
    raw = _four_task_raw(0, epochs=3, batch_size=64)
    raw["tasks"] = raw["tasks"][:3]
    raw["data"]["path"] = "data.csv"
    del raw["train"]["patience"]  # None has no TOML spelling
    (tmp_path / "run.toml").write_text(toml_text(raw))
    out = tmp_path / "aff"
    result = run_cli("affinity", tmp_path / "run.toml", "--out", out, "--probe", "--quiet")
    assert result.code == 0, result.err
    assert "suggested groups" in result.out
    doc = json.loads((out / "affinity.json").read_text())
    assert doc["kind"] == "polytask-affinity" and doc["tasks"] == ["t0", "t1", "t2"]
    assert doc["probe"] is True and doc["epochs"] == 1
    # 480 training rows in batches of 64: 8 steps, each measured in a probe.
    assert doc["steps_measured"] == 8
    for key in ("affinity", "gradient_cosine"):
        assert np.array(doc[key]).shape == (3, 3)
    assert np.diag(doc["gradient_cosine"]).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert [e["epoch"] for e in doc["over_training"]] == [1]
    assert set(doc["grouping"]) == {"groups", "score", "search", "max_groups"}
    assert doc["grouping"]["max_groups"] == 3 and "Fifty" in doc["method"]
    assert (out / "run" / "metrics.jsonl").is_file() and (out / "run" / "results.json").is_file()
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(rows[0]["grad_cosines"]) == {"t0|t1", "t0|t2", "t1|t2"}


def test_affinity_needs_two_tasks_and_shared_parameters() -> None:
    frame = make_correlated_tasks(200, np.eye(2), n_features=4, seed=0)
    raw = _four_task_raw(0, epochs=1, batch_size=64)
    raw["tasks"] = raw["tasks"][:1]
    with pytest.raises(ConfigError, match="at least two tasks"):
        affinity(config_from_dict(raw), frame=frame, quiet=True)
    raw = _four_task_raw(0, epochs=1, batch_size=64)
    raw["tasks"] = raw["tasks"][:2]
    raw["model"]["architecture"] = {"name": "soft"}
    with pytest.raises(ConfigError, match="shares no parameters"):
        affinity(config_from_dict(raw), frame=frame, quiet=True)


# -- the [affinity] section --------------------------------------------------------------------


def test_affinity_section_of_the_run_config_is_honoured() -> None:
    # 280 training rows in batches of 64: 5 steps per epoch, 10 in 2 epochs (steps 0-9).
    frame = make_mmoe_synthetic(400, 0.8, n_features=6, seed=0)

    def measure(section: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        raw = synthetic_raw(widths=(8,), epochs=2, batch_size=64, threads=1, scheduler="none")
        if section is not None:
            raw["affinity"] = section
        return affinity(config_from_dict(raw), frame=frame, quiet=True, **kwargs)

    # every: unset -> 5 (steps 0, 5); 2 -> steps 0, 2, 4, 6, 8; an argument overrides the key.
    assert measure().steps_measured == 2
    assert measure({"every": 2}).steps_measured == 5
    assert measure({"every": 2}, every=3).steps_measured == 4  # steps 0, 3, 6, 9
    # probe_epochs: a probe of 2 epochs, measured at every step unless `every` is set.
    probe = measure({"probe_epochs": 2}, probe=True)
    assert (probe.epochs, probe.steps_measured) == (2, 10)
    assert measure({"probe_epochs": 2, "every": 4}, probe=True).steps_measured == 3
    # max_groups and search reach the grouping; alone_score lets a task be trained alone
    # (here it beats any measured affinity, of order 1e-3, so each task gets its own model).
    grouped = measure({"max_groups": 1, "search": "exhaustive", "every": 2})
    assert grouped.grouping.max_groups == 1 and grouped.grouping.search == "exhaustive"
    assert grouped.grouping.groups == [["value", "label"]]
    assert measure({"max_groups": 2}).grouping.groups == [["value", "label"]]
    alone = measure({"max_groups": 2, "alone_score": 1.0})
    assert alone.grouping.groups == [["value"], ["label"]] and alone.grouping.score == 1.0
    # lr fixes the lookahead step: to first order Z is proportional to it, so doubling it
    # doubles the affinity (measured: ratios 1.993-2.002; the optimiser's lr would give 1);
    # the file's method says it was fixed. Much smaller steps change the float32 losses by
    # too few ulps for the ratio to be this exact.
    small, large = measure({"lr": 0.01}), measure({"lr": 0.02})
    ratio = large.affinity / small.affinity
    print("Z(2 lr) / Z(lr):", np.round(ratio, 4).tolist())
    np.testing.assert_allclose(ratio, 2.0, rtol=0.02)
    assert "lookahead learning rate fixed at 0.01" in small.to_dict()["method"]
    assert "fixed" not in measure().to_dict()["method"]


def test_affinity_section_rejects_unknown_keys_and_bad_values() -> None:
    raw = synthetic_raw()
    raw["affinity"] = {"evry": 2}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw)
    assert str(caught.value) == (
        "config error: affinity.evry: unknown key; valid keys: every, lr, max_groups, "
        "probe_epochs, search, alone_score"
    )
    for override, key in [
        ("affinity.search=greedy", "affinity.search"),
        ("affinity.every=0", "affinity.every"),
        ("affinity.lr=-1.0", "affinity.lr"),
        ("affinity.alone_score=nan", "affinity.alone_score"),
    ]:
        with pytest.raises(ConfigError, match=rf"^config error: {key}: "):
            config_from_dict(synthetic_raw(), [override])
    with pytest.raises(ConfigError, match="unknown search 'greedy'"):
        affinity(config_from_dict(synthetic_raw()), search="greedy")  # type: ignore[arg-type]


def test_affinity_command_options_override_the_section(tmp_path: Path) -> None:
    frame = make_correlated_tasks(600, _correlations({(0, 1): 0.9}, 3), n_features=6, seed=0)
    frame.to_csv(tmp_path / "data.csv", index=False)
    raw = _four_task_raw(0, epochs=3, batch_size=64)
    raw["tasks"] = raw["tasks"][:3]
    raw["data"]["path"] = "data.csv"
    del raw["train"]["patience"]
    raw["affinity"] = {"every": 4, "max_groups": 1, "probe_epochs": 1}
    (tmp_path / "run.toml").write_text(toml_text(raw))
    # 480 training rows in batches of 64: 8 steps in the 1-epoch probe.
    result = run_cli("affinity", tmp_path / "run.toml", "-o", tmp_path / "a", "--probe", "-q")
    assert result.code == 0, result.err
    doc = json.loads((tmp_path / "a" / "affinity.json").read_text())
    assert doc["steps_measured"] == 2 and doc["grouping"]["max_groups"] == 1  # steps 0, 4
    options = ["--every", "3", "--max-groups", "2", "--search", "exhaustive", "--lr", "0.01"]
    result = run_cli("affinity", tmp_path / "run.toml", "-o", tmp_path / "b", "--probe", *options)
    assert result.code == 0, result.err
    doc = json.loads((tmp_path / "b" / "affinity.json").read_text())
    assert doc["steps_measured"] == 3  # steps 0, 3, 6
    assert doc["grouping"]["max_groups"] == 2 and doc["grouping"]["search"] == "exhaustive"
    assert "fixed at 0.01" in doc["method"]
    bad = run_cli("affinity", tmp_path / "run.toml", "-o", tmp_path / "c", "--search", "greedy")
    assert bad.code == 2 and "config error: affinity.search:" in bad.err
