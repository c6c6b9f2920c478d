"""Sampling across sources, task scheduling, multi-source runs and mid-epoch resume."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from polytask.balance import BALANCERS, build_balancer
from polytask.config import config_from_dict
from polytask.data.sampling import (
    SamplingConfig,
    SourceSampler,
    sampling_exponent,
    source_probabilities,
)
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.losses import TaskLoss, task_losses
from polytask.models.config import ModelConfig
from polytask.models.model import build_model
from polytask.run.pipeline import fit, run
from polytask.state_io import load_state
from polytask.tasks import Task
from polytask.train.task_schedule import ScheduleConfig, TaskScheduler
from polytask.train.trainer import Trainer

SIZES = [4000, 400, 40]


@pytest.fixture(autouse=True)
def _one_thread(torch_single_thread: None) -> Iterator[None]:
    yield


def _source_counts(cfg: SamplingConfig, steps: int, seed: int = 0) -> np.ndarray:
    sampler = SourceSampler(SIZES, cfg)
    gen = torch.Generator().manual_seed(seed)
    counts = np.zeros(len(SIZES))
    for draw in sampler.epoch(8, 0, 1, gen):
        for src, n in draw.counts().items():
            counts[src] += n
    assert sum(counts) == steps * 8
    return counts


@pytest.mark.parametrize(
    ("strategy", "alpha"),
    [("proportional", 1.0), ("uniform", 0.0), ("temperature", 0.5)],
)
@pytest.mark.parametrize("batches", ["homogeneous", "mixed"])
def test_empirical_source_frequencies_follow_n_to_the_alpha(
    strategy: str, alpha: float, batches: str
) -> None:
    steps = 3000
    cfg = SamplingConfig.model_validate(
        {
            "strategy": strategy,
            "temperature": 2.0,
            "batches": batches,
            "epoch": "steps",
            "steps": steps,
        }
    )
    expected = np.array(SIZES, dtype=float) ** alpha
    expected /= expected.sum()
    np.testing.assert_allclose(source_probabilities(SIZES, cfg, 0, 1), expected)
    observed = _source_counts(cfg, steps) / (steps * 8)
    # Homogeneous batches draw 3000 sources; mixed ones 24000 examples: 5 standard errors.
    draws = steps if batches == "homogeneous" else steps * 8
    tolerance = 5 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(observed - expected) <= tolerance), (observed, expected)


def test_annealing_moves_from_proportional_to_the_end_exponent() -> None:
    cfg = SamplingConfig(strategy="annealed", anneal_end=0.2)
    assert sampling_exponent(cfg, 0, 5) == 1.0
    assert sampling_exponent(cfg, 2, 5) == pytest.approx(0.6)
    assert sampling_exponent(cfg, 4, 5) == pytest.approx(0.2)
    first, last = source_probabilities(SIZES, cfg, 0, 5), source_probabilities(SIZES, cfg, 4, 5)
    assert first[0] == pytest.approx(4000 / 4440)
    assert last[2] == pytest.approx(40**0.2 / sum(n**0.2 for n in SIZES))


def test_round_robin_cycles_the_sources_in_order() -> None:
    cfg = SamplingConfig(strategy="round_robin", epoch="steps", steps=7)
    sampler = SourceSampler(SIZES, cfg)
    order = [next(iter(d.rows)) for d in sampler.epoch(4, 0, 1, torch.Generator())]
    assert order == [0, 1, 2, 0, 1, 2, 0]


def test_epoch_lengths() -> None:
    def steps(**kw: Any) -> int:
        return SourceSampler(SIZES, SamplingConfig(**kw)).steps(10, 0, 1)

    assert steps(epoch="sum") == 444
    # One pass over the largest source in expectation: 4000 / (p_max * 10).
    assert steps(epoch="largest", strategy="uniform") == 1200
    assert steps(epoch="smallest", strategy="uniform") == 12
    assert steps(epoch="smallest", strategy="proportional") == 444
    assert steps(epoch="steps", steps=5) == 5


def test_a_source_is_read_in_passes_every_row_once_per_pass() -> None:
    cfg = SamplingConfig(strategy="uniform", epoch="steps", steps=300)
    sampler = SourceSampler([37, 5], cfg)
    rows: list[int] = []
    for draw in sampler.epoch(4, 0, 1, torch.Generator().manual_seed(1)):
        rows += draw.rows.get(0, torch.empty(0, dtype=torch.int64)).tolist()
    passes = len(rows) // 37
    assert passes >= 3
    for p in range(passes):
        assert sorted(rows[p * 37 : (p + 1) * 37]) == list(range(37))


def test_same_seed_same_sequence_and_state_round_trip() -> None:
    cfg = SamplingConfig(strategy="temperature", batches="mixed", epoch="steps", steps=20)

    def sequence(sampler: SourceSampler, seed: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(seed)
        return [torch.cat(list(d.rows.values())).tolist() for d in sampler.epoch(6, 0, 1, gen)]

    a, b = SourceSampler(SIZES, cfg), SourceSampler(SIZES, cfg)
    assert sequence(a, 3) == sequence(b, 3)
    saved = a.state()
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    first = [d.rows for d in a.epoch(6, 1, 2, gen_a)]
    b.load_state(saved)
    second = [d.rows for d in b.epoch(6, 1, 2, gen_b)]
    assert all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        for x, y in zip(first, second, strict=True)
    )


def test_round_robin_with_mixed_batches_is_rejected() -> None:
    raw = {
        "data": {"path": "x.csv"},
        "tasks": [{"name": "y", "kind": "binary", "target": "y"}],
        "sampling": {"strategy": "round_robin", "batches": "mixed"},
    }
    with pytest.raises(ConfigError, match="round_robin draws whole batches"):
        config_from_dict(raw)


# -- task scheduling -----------------------------------------------------------------------------


def test_round_robin_schedule_order() -> None:
    sched = TaskScheduler(["a", "b", "c"], ScheduleConfig(name="round_robin", tasks_per_step=2))
    assert sched.plan(4, torch.Generator()) == [["a", "b"], ["c", "a"], ["b", "c"], ["a", "b"]]


def test_random_schedule_is_uniform() -> None:
    sched = TaskScheduler(["a", "b", "c", "d"], ScheduleConfig(name="random"))
    plan = sched.plan(4000, torch.Generator().manual_seed(0))
    assert plan is not None
    counts = pd.Series([p[0] for p in plan]).value_counts()
    assert set(counts.index) == {"a", "b", "c", "d"}
    assert counts.max() - counts.min() < 5 * math.sqrt(4000 * 0.25 * 0.75)


def test_progress_scheduler_picks_the_lagging_task() -> None:
    sched = TaskScheduler(["fast", "slow"], ScheduleConfig(name="progress", temperature=0.1))
    assert sched.probabilities() == {"fast": 0.5, "slow": 0.5}  # nothing measured yet
    sched.end_epoch({"fast": 1.0, "slow": 1.0})
    sched.end_epoch({"fast": 0.5, "slow": 0.98})  # fast improved 50%, slow 2%
    probs = sched.probabilities()
    expected_slow = 1.0 / (1.0 + math.exp(-(0.5 - 0.02) / 0.1))
    assert probs["slow"] == pytest.approx(expected_slow)
    plan = sched.plan(1000, torch.Generator().manual_seed(0))
    assert plan is not None
    share = sum(p == ["slow"] for p in plan) / 1000
    assert abs(share - expected_slow) < 0.05


# -- multi-source runs ---------------------------------------------------------------------------


def _two_sources(tmp_path: Path, n_big: int = 1500, n_small: int = 150) -> dict[str, Any]:
    """Two tables sharing the features: a large one labelling ``a``, a small one ``b``."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=6)
    for name, n, target in (("big", n_big, "a"), ("small", n_small, "b")):
        x = rng.normal(size=(n, 6))
        logit = x @ w if target == "a" else x @ w + 0.3 * x[:, 0]
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
        frame[target] = (logit + rng.normal(0, 0.5, n) > 0).astype(int)
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    return {
        "seed": 0,
        "baselines": True,
        "data": {
            "sources": [
                {"name": "big", "path": "big.csv", "tasks": ["a"]},
                {"name": "small", "path": "small.csv", "tasks": ["b"]},
            ],
            "split": {"method": "random", "val": 0.2, "test": 0.2},
        },
        "tasks": [
            {"name": "a", "kind": "binary", "target": "a"},
            {"name": "b", "kind": "binary", "target": "b"},
        ],
        "model": {"encoder": {"widths": [32], "dropout": 0.0}, "head": {"widths": [16]}},
        "sampling": {"strategy": "temperature", "temperature": 2.0, "epoch": "sum"},
        "train": {"epochs": 6, "batch_size": 32, "progress": False, "patience": None},
    }


def test_multi_source_run_trains_each_task_on_its_own_source(tmp_path: Path) -> None:
    raw = _two_sources(tmp_path)
    result = run(config_from_dict(raw, base_dir=tmp_path), out=tmp_path / "out", quiet=True)
    assert result.metrics["a"]["auroc"] > 0.9 and result.metrics["b"]["auroc"] > 0.8
    first = result.fit.history[0]
    # Temperature 2 over 900 and 90 training rows: p = 30 / (30 + 9.49).
    p_big = math.sqrt(900) / (math.sqrt(900) + math.sqrt(90))
    assert first.sampling["big"] == pytest.approx(p_big)
    # Homogeneous batches: every example of a step comes from one source and labels its task.
    assert (
        first.examples["a"] == first.sources["big"]
        and first.examples["b"] == first.sources["small"]
    )
    steps = math.ceil(990 / 32)
    assert first.sources["big"] + first.sources["small"] == steps * 32
    # Baselines train on their own source: the single-task net of b never saw big's rows.
    assert set(result.baseline_metrics) == {"a", "b"}
    log = (tmp_path / "out" / "baselines" / "b" / "metrics.jsonl").read_text()
    assert '"sources": {"small":' in log and '"big"' not in log


def test_sources_must_cover_every_task(tmp_path: Path) -> None:
    raw = _two_sources(tmp_path)
    raw["data"]["sources"][1]["tasks"] = ["a"]
    with pytest.raises(ConfigError, match="no source labels task 'b'"):
        config_from_dict(raw, base_dir=tmp_path)
    raw["data"]["sources"][1]["tasks"] = ["c"]
    with pytest.raises(ConfigError, match=r"data\.sources\.1\.tasks: unknown task 'c'"):
        config_from_dict(raw, base_dir=tmp_path)


class _Cut(Exception):
    pass


@pytest.mark.parametrize("schedule", ["all", "progress"])
def test_mid_epoch_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: str
) -> None:
    raw = _two_sources(tmp_path, 400, 80)
    raw["baselines"] = False
    raw["sampling"] = {"strategy": "annealed", "batches": "mixed", "epoch": "sum"}
    raw["schedule"] = {"name": schedule, "tasks_per_step": 1}
    raw["model"]["encoder"]["dropout"] = 0.2  # the global RNG must resume too
    raw["train"].update(epochs=3, checkpoint_every=4)
    cfg = config_from_dict(raw, base_dir=tmp_path)
    full = run(cfg, out=tmp_path / "full", quiet=True)

    original = Trainer._step
    calls = {"n": 0}

    def cut_after_13_steps(self: Trainer, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 13:  # 9 steps per epoch: inside the second epoch
            raise _Cut
        original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_step", cut_after_13_steps)
    with pytest.raises(_Cut):
        run(cfg, out=tmp_path / "cut", quiet=True)
    monkeypatch.setattr(Trainer, "_step", original)
    point = load_state(tmp_path / "cut" / "checkpoints" / "last")
    assert point["trainer"]["epoch"] == 1 and point["partial"]["step_in_epoch"] in (4, 8)
    resumed = run(cfg, out=tmp_path / "cut", resume=True, quiet=True)
    a, b = full.predictor.model.state_dict(), resumed.predictor.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.sources for r in full.fit.history] == [r.sources for r in resumed.fit.history]
    if schedule == "progress":
        assert full.fit.history[-1].schedule and full.fit.history[-1].scheduled_steps


# -- balancers on homogeneous batches ------------------------------------------------------------


#: Per-task buffers that are functions of every task's state (DWA's weights are a softmax over
#: all tasks' loss ratios), so they move when any present task's state does.
_DERIVED = {"current"}


def _per_task_state(balancer: torch.nn.Module, k: int, index: int) -> dict[str, Tensor]:
    """Every state entry of task ``index``: per-task parameters named by task, and column
    ``index`` of buffers whose last dimension is the number of tasks."""
    state = {}
    for key, value in balancer.state_dict().items():
        if not isinstance(value, Tensor):
            continue
        if key.endswith(f".t{index}") or key.endswith(f"t{index}"):
            state[key] = value.clone()
        elif value.dim() >= 1 and value.shape[-1] == k and key not in _DERIVED:
            state[key] = value[..., index].clone()
    return state


@pytest.mark.parametrize("name", BALANCERS.names())
def test_every_balancer_leaves_a_task_absent_from_the_batch_alone(name: str) -> None:
    tasks = [Task(f"t{i}", "regression", f"y{i}") for i in range(3)]
    # COSMOS trains a preference-conditioned model; EPO needs its preference.
    conditioning = "film" if name == "cosmos" else "none"
    cfg = ModelConfig.model_validate(
        {
            "encoder": {"widths": [8, 6], "dropout": 0.0},
            "head": {"widths": [4]},
            "preference_conditioning": conditioning,
        }
    )
    model = build_model(tasks, InputSpec(n_numeric=4), cfg, seed=0)
    needs = {"graddrop": {"mode": "representation"}, "epo": {"preference": [0.2, 0.3, 0.5]}}
    balancer = build_balancer(name, needs.get(name, {}), tasks)
    balancer.check_model(model)
    g = torch.Generator().manual_seed(0)
    inputs = {"numeric": torch.randn(16, 4, generator=g)}
    targets = {f"t{i}": torch.randn(16, generator=g) for i in range(3)}
    losses_fn = {t.name: TaskLoss(t) for t in tasks}
    opt = torch.optim.AdamW(list(model.parameters()) + list(balancer.parameters()), lr=1e-2)
    # Two full steps, then homogeneous steps of t0 alone: t2 must stay as it was.
    for present in (["t0", "t1", "t2"], ["t0", "t1", "t2"], ["t0"], ["t0"], ["t0", "t1"]):
        before = _per_task_state(balancer, 3, 2)
        head_before = [p.detach().clone() for p in model.task_parameters("t2")]
        opt.zero_grad(set_to_none=True)
        outputs = balancer.forward(model, inputs)
        masks = {k: torch.full((16,), k in present) for k in targets}
        losses = task_losses(losses_fn, outputs, targets, masks)
        weights = balancer.backward(losses, model).weights
        assert set(weights) == set(present), name
        assert all(math.isfinite(w) for w in weights.values()), (name, weights)
        if "t2" not in present:
            assert all(p.grad is None or not p.grad.any() for p in model.task_parameters("t2"))
        opt.step()
        balancer.end_epoch({k: float(v.detach()) for k, v in losses.items()})
        if "t2" not in present:
            after = _per_task_state(balancer, 3, 2)
            for key, value in before.items():
                assert torch.equal(value, after[key]) or (
                    value.is_floating_point()
                    and torch.isnan(value).all()
                    and torch.isnan(after[key]).all()
                ), (name, key)
            assert all(
                torch.equal(a, b)
                for a, b in zip(head_before, model.task_parameters("t2"), strict=True)
            ), name


def test_python_api_takes_one_frame_per_source(tmp_path: Path) -> None:
    raw = _two_sources(tmp_path, 600, 120)
    big, small = pd.read_csv(tmp_path / "big.csv"), pd.read_csv(tmp_path / "small.csv")
    result = fit(
        None,
        [Task("a", "binary", "a"), Task("b", "binary", "b")],
        sources={"big": (big, ["a"]), "small": (tmp_path / "small.csv", ["b"])},
        sampling={"strategy": "uniform", "epoch": "smallest"},
        model=raw["model"],
        train={"epochs": 3, "batch_size": 16, "progress": False},
        baselines=False,
        quiet=True,
    )
    first = result.fit.history[0]
    assert first.sampling == {"big": 0.5, "small": 0.5}
    # One pass over the smallest source (84 of 120 rows train with the default 15/15 split)
    # in expectation: ceil(84 / (0.5 * 16)) = 11 steps.
    assert first.sources["big"] + first.sources["small"] == 11 * 16
    assert len(small) == 120 and set(result.metrics) == {"a", "b"}
    with pytest.raises(ConfigError, match="give either data"):
        fit(big, [Task("a", "binary", "a")], sources={"big": (big, ["a"])})
