"""Loss-level balancers: formulas against hand computation, partial steps, state round trips,
and each method training the synthetic benchmark through the pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import run_interrupted_and_resumed, synthetic_raw
from polytask import config_from_dict, run
from polytask.balance import BALANCERS, build_balancer
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.tasks import Task

TASKS = [
    Task("a", "regression", target="ya"),
    Task("b", "binary", target="yb"),
    Task("c", "regression", target="yc"),
]


def _losses(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(float(v), requires_grad=True) for k, v in values.items()}


def test_uncertainty_objective_and_gradients() -> None:
    bal = build_balancer("uncertainty", {}, TASKS)
    with torch.no_grad():
        bal.scales["a"].fill_(0.5)
        bal.scales["b"].fill_(-1.0)
    losses = _losses(a=2.0, b=3.0)  # task c absent from this batch
    total, weights = bal.combine(losses)
    expected = 0.5 * math.exp(-0.5) * 2.0 + 0.25 + 0.5 * math.exp(1.0) * 3.0 - 0.5
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    # d/ds (½ e^{-s} L + ½ s) = ½ − ½ e^{-s} L
    assert float(bal.scales["a"].grad) == pytest.approx(0.5 - 0.5 * math.exp(-0.5) * 2.0)
    assert bal.scales["c"].grad is None  # absent task: untouched
    assert set(weights) == {"a", "b"}


def test_imtl_l_objective_and_optimum() -> None:
    bal = build_balancer("imtl_l", {}, TASKS)
    with torch.no_grad():
        bal.scales["a"].fill_(math.log(0.25))
    losses = _losses(a=4.0, c=2.0)
    total, weights = bal.combine(losses)
    assert total.item() == pytest.approx(0.25 * 4.0 - math.log(0.25) + 2.0, rel=1e-6)
    total.backward()
    # d/ds (e^s L - s) = e^s L - 1: zero for a, where the scaled loss is already 1.
    assert float(bal.scales["a"].grad) == pytest.approx(0.0, abs=1e-6)
    assert float(bal.scales["c"].grad) == pytest.approx(1.0, rel=1e-6)
    assert float(weights["a"]) == pytest.approx(0.25)


def test_gls_is_geometric_mean_and_weights_match_its_gradient() -> None:
    bal = build_balancer("gls", {}, TASKS)
    losses = _losses(a=1.0, b=4.0, c=16.0)
    total, weights = bal.combine(losses)
    assert total.item() == pytest.approx(4.0, rel=1e-6)
    total.backward()
    for k, v in losses.items():
        assert float(v.grad) == pytest.approx(float(weights[k]), rel=1e-5)


def test_rlw_weights_sum_to_present_tasks_and_follow_the_seed() -> None:
    bal = build_balancer("rlw", {}, TASKS)
    torch.manual_seed(3)
    first = bal.weights(_losses(a=1.0, c=1.0))
    torch.manual_seed(3)
    again = bal.weights(_losses(a=1.0, c=1.0))
    assert set(first) == {"a", "c"}
    assert float(sum(first.values())) == pytest.approx(2.0, rel=1e-6)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_dwa_equal_then_ratio_softmax_and_state_round_trip() -> None:
    bal = build_balancer("dwa", {"temperature": 2.0}, TASKS)
    assert [float(w) for w in bal.weights(_losses(a=1, b=1, c=1)).values()] == [1.0, 1.0, 1.0]
    bal.end_epoch({"a": 1.0, "b": 1.0, "c": 1.0})
    bal.end_epoch({"a": 0.5, "b": 1.0, "c": math.nan})  # c had no label this epoch
    ratios = torch.tensor([0.5, 1.0, 1.0])  # c keeps its previous loss: ratio 1
    expected = 3 * torch.softmax(ratios / 2.0, dim=0)
    got = bal.weights(_losses(a=1, b=1, c=1))
    for i, k in enumerate("abc"):
        assert float(got[k]) == pytest.approx(float(expected[i]), rel=1e-6)
    clone = build_balancer("dwa", {"temperature": 2.0}, TASKS)
    clone.load_state_dict(bal.state_dict())
    assert all(torch.equal(got[k], clone.weights(_losses(a=1, b=1, c=1))[k]) for k in got)


def test_dwa_rejects_bad_temperature() -> None:
    from polytask.errors import ConfigError

    with pytest.raises(ConfigError, match=r"balancer\.temperature"):
        build_balancer("dwa", {"temperature": 0}, TASKS)


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.parametrize("name", ["uncertainty", "imtl_l", "rlw", "gls", "dwa"])
def test_each_method_trains_the_synthetic_benchmark(name: str) -> None:
    assert name in BALANCERS
    frame = make_mmoe_synthetic(2000, 0.9, n_features=16, seed=0)
    raw = synthetic_raw(balancer=name, epochs=6, batch_size=64, lr=3e-3)
    result = run(config_from_dict(raw), frame=frame, quiet=True)
    assert result.metrics["value"]["r2"] > 0.6, result.metrics
    assert result.metrics["label"]["auroc"] > 0.85, result.metrics
    logged = result.fit.history[-1].weights
    assert set(logged) == {"value", "label"} and all(math.isfinite(w) for w in logged.values())


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.parametrize(
    "name", ["uncertainty", "imtl_l", "rlw", "dwa", "famo", "stch", "gradnorm"]
)
def test_stateful_and_random_methods_resume_exactly(name: str, tmp_path: Path) -> None:
    frame = make_mmoe_synthetic(600, 0.5, n_features=8, seed=4)
    raw = synthetic_raw(
        balancer=name, widths=(16,), dropout=0.2, epochs=4, batch_size=32, patience=None
    )
    full, resumed = run_interrupted_and_resumed(raw, frame, tmp_path)
    assert [r.weights for r in full.fit.history] == [r.weights for r in resumed.fit.history]
