"""FAMO, smooth Tchebycheff and GradNorm: each against an independent float64 computation,
finite across loss magnitudes, partial steps leaving absent tasks' state alone, exact state
round trips, and training the synthetic benchmark through the pipeline."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from conftest import synthetic_raw
from polytask import config_from_dict, run
from polytask.balance import BALANCERS, build_balancer
from polytask.balance.base import Balancer
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.errors import ConfigError, PolytaskError
from polytask.tasks import Task

TASKS = [
    Task("a", "regression", target="ya"),
    Task("b", "binary", target="yb"),
    Task("c", "regression", target="yc"),
]
F64 = torch.float64


def _losses(**values: float) -> dict[str, Tensor]:
    return {k: torch.tensor(float(v), requires_grad=True) for k, v in values.items()}


def _state(bal: Balancer) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in bal.state_dict().items()}


def _unchanged_at(before: dict[str, Tensor], after: dict[str, Tensor], i: int) -> bool:
    """Every per-task state entry (1-D buffers of length 3) is identical at position ``i``;
    NaN equals NaN."""
    rows = [k for k, v in before.items() if v.dim() == 1 and len(v) == len(TASKS)]
    assert rows, "no per-task state found"
    return all(
        torch.equal(before[k][i : i + 1], after[k][i : i + 1])
        or (bool(torch.isnan(before[k][i])) and bool(torch.isnan(after[k][i])))
        for k in rows
    )


def test_registered_with_validated_params() -> None:
    assert {"famo", "stch", "gradnorm"} <= set(BALANCERS.names())
    with pytest.raises(ConfigError, match=r"balancer\.w_lr"):
        build_balancer("famo", {"w_lr": 0}, TASKS)
    with pytest.raises(ConfigError, match=r"balancer\.min_losses: unknown task 'z'"):
        build_balancer("famo", {"min_losses": {"z": 0.1}}, TASKS)
    with pytest.raises(ConfigError, match=r"balancer\.mu"):
        build_balancer("stch", {"mu": 0}, TASKS)
    with pytest.raises(ConfigError, match=r"balancer\.preference"):
        build_balancer("stch", {"preference": {"a": 0, "b": 0, "c": 0}}, TASKS)
    with pytest.raises(ConfigError, match=r"balancer\.alpha"):
        build_balancer("gradnorm", {"alpha": -1}, TASKS)


# -- FAMO -------------------------------------------------------------------------------------


def _as_loss(values: list[float]) -> Tensor:
    """``values`` as the balancer sees them: float32 losses, then widened to float64."""
    return torch.tensor(values, dtype=torch.float32).to(F64)


def _famo_reference(
    sequence: list[list[float]], w_lr: float, gamma: float, eps: float = 1e-8
) -> Tensor:
    """Logits after FAMO's update on consecutive full steps, with torch's own Adam."""
    xi = torch.zeros(len(sequence[0]), dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=w_lr, weight_decay=gamma)
    for prev, now in itertools.pairwise(sequence):
        delta = torch.log(_as_loss(prev) + eps) - torch.log(_as_loss(now) + eps)
        (grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
        opt.zero_grad()
        xi.grad = grad
        opt.step()
    return xi.detach()


def test_famo_logit_update_matches_adam_on_the_softmax_jacobian() -> None:
    bal = build_balancer("famo", {"w_lr": 0.1, "gamma": 0.01}, TASKS)
    sequence = [[2.0, 1.0, 0.5], [1.5, 0.99, 0.1], [1.0, 0.97, 0.09], [0.5, 0.96, 0.08]]
    for values in sequence:
        losses = _losses(**dict(zip("abc", values, strict=True)))
        total, weights = bal.combine(losses)
    expected = _famo_reference(sequence, w_lr=0.1, gamma=0.01)
    torch.testing.assert_close(bal.logits, expected, rtol=1e-12, atol=1e-14)
    # Task b decreased slowest in relative terms: its logit is the largest.
    assert int(torch.argmax(bal.logits)) == 1
    # Weights of the last step: (z/D) / Σ (z/D), equal to the objective's gradient.
    z = torch.softmax(expected, 0)
    d = _as_loss(sequence[-1]) + 1e-8
    direct = (z / d) / (z / d).sum()
    total.backward()
    for i, k in enumerate("abc"):
        assert float(weights[k]) == pytest.approx(float(direct[i]), rel=1e-12)
        assert float(losses[k].grad) == pytest.approx(float(direct[i]), rel=1e-5)


def test_famo_partial_steps_leave_the_absent_task_alone() -> None:
    bal = build_balancer("famo", {"w_lr": 0.05}, TASKS)
    bal.combine(_losses(a=1.0, b=2.0, c=3.0))
    bal.combine(_losses(a=0.5, b=1.9, c=2.0))  # all three updated once
    before = _state(bal)
    _, weights = bal.combine(_losses(a=0.4, b=1.5))  # c has no label in this batch
    after = _state(bal)
    assert set(weights) == {"a", "b"}
    assert float(sum(weights.values())) == pytest.approx(1.0, rel=1e-12)
    assert _unchanged_at(before, after, 2)
    assert not _unchanged_at(before, after, 0)
    # c is back, but was absent at the previous step: only a and b take part in the update.
    logit_c = float(bal.logits[2])
    bal.combine(_losses(a=0.3, b=1.4, c=1.0))
    assert float(bal.logits[2]) == logit_c
    assert bal.adam_steps.tolist() == [3, 3, 1]
    # One task in two consecutive steps: its softmax is constant, so nothing moves (weight
    # decay alone would otherwise drag the logit by about w_lr per step).
    bal.combine(_losses(a=0.2))
    before = _state(bal)
    _, weights = bal.combine(_losses(a=0.1))
    assert float(weights["a"]) == 1.0
    after = _state(bal)
    assert all(torch.equal(before[k], after[k]) for k in ("logits", "exp_avg", "adam_steps"))


def test_famo_weights_finite_across_magnitudes_and_favour_the_small_loss() -> None:
    bal = build_balancer("famo", {}, TASKS)
    for scale in (1.0, 0.5, 0.25):
        losses = _losses(a=1e-8 * scale, b=1.0 * scale, c=1e8 * scale)
        total, weights = bal.combine(losses)
        total.backward()
        values = [float(weights[k]) for k in "abc"]
        assert len(weights) == 3 and all(math.isfinite(w) and w >= 0 for w in values)
        assert all(math.isfinite(float(v.grad)) for v in losses.values())
        # log-loss objective: the weight of each loss is inversely proportional to it.
        assert values[0] == pytest.approx(1.0, rel=1e-6)
        assert values[2] < 1e-15


def test_famo_state_round_trip_gives_identical_next_weights() -> None:
    bal = build_balancer("famo", {}, TASKS)
    for values in ([1.0, 2.0, 3.0], [0.8, 1.9, 2.0], [0.7, 1.0, 1.9]):
        bal.combine(_losses(**dict(zip("abc", values, strict=True))))
    clone = build_balancer("famo", {}, TASKS)
    clone.load_state_dict(bal.state_dict())
    _, mine = bal.combine(_losses(a=0.6, b=0.9, c=1.8))
    _, theirs = clone.combine(_losses(a=0.6, b=0.9, c=1.8))
    assert all(torch.equal(mine[k], theirs[k]) for k in "abc")
    assert all(torch.equal(v, clone.state_dict()[k]) for k, v in bal.state_dict().items())


# -- STCH -------------------------------------------------------------------------------------

WEIGHTED = [
    Task("a", "regression", target="ya", weight=3.0),
    Task("b", "binary", target="yb", weight=1.0),
    Task("c", "regression", target="yc", weight=0.0),
]


def test_stch_objective_and_weights_against_the_formula() -> None:
    mu = 0.5
    bal = build_balancer("stch", {"mu": mu, "ideal": {"a": 0.125}}, WEIGHTED)
    losses = _losses(a=0.875, b=2.0, c=5.0)  # exact in float32
    total, weights = bal.combine(losses)
    lam = [0.75, 0.25, 0.0]  # task weights 3 : 1 : 0, normalised
    dist = [0.875 - 0.125, 2.0, 5.0]
    e = [math.exp(lk * dk / mu) for lk, dk in zip(lam, dist, strict=True)]
    assert total.item() == pytest.approx(mu * math.log(sum(e)), rel=1e-6)
    total.backward()
    for i, k in enumerate("abc"):
        direct = lam[i] * e[i] / sum(e)
        assert float(weights[k]) == pytest.approx(direct, rel=1e-12, abs=1e-300)
        assert float(losses[k].grad) == pytest.approx(direct, rel=1e-5)
    # Only b present: λ_b = 1 and the objective is the loss itself.
    total, weights = bal.combine(_losses(b=2.0))
    assert total.item() == pytest.approx(2.0) and float(weights["b"]) == 1.0


def test_stch_small_mu_approaches_the_weighted_max() -> None:
    bal = build_balancer("stch", {"mu": 1e-3}, TASKS)
    total, weights = bal.combine(_losses(a=1.0, b=1.6, c=1.2))
    assert total.item() == pytest.approx(1.6 / 3, abs=1e-3 * math.log(3))
    assert float(weights["b"]) == pytest.approx(1 / 3, rel=1e-6)


def test_stch_warmup_normalisation_and_partial_steps() -> None:
    bal = build_balancer("stch", {"warmup_steps": 2}, TASKS)
    tiny = 2.0**-20  # a small loss that float32 holds exactly
    bal.combine(_losses(a=2.0, b=100.0, c=tiny))
    before = _state(bal)
    bal.combine(_losses(a=4.0, c=3 * tiny))  # b absent: its statistics stay
    assert _unchanged_at(before, _state(bal), 1)
    losses = _losses(a=1.0, b=50.0, c=tiny)
    total, weights = bal.combine(losses)
    # a and c froze after two observations; b has seen two steps now (100 and 50).
    scale = [3.0, 75.0, 2 * tiny]
    u = [(1 / 3) * v / s for v, s in zip([1.0, 50.0, tiny], scale, strict=True)]
    soft = [math.exp(x) / sum(math.exp(y) for y in u) for x in u]
    total.backward()
    for i, k in enumerate("abc"):
        direct = (1 / 3) * soft[i] / scale[i]
        assert float(weights[k]) == pytest.approx(direct, rel=1e-12)
        assert float(losses[k].grad) == pytest.approx(direct, rel=1e-5)
    assert bal.norm_count.tolist() == [2, 2, 2]
    bal.combine(_losses(a=100.0, b=1.0, c=1.0))  # after warm-up: nothing changes
    assert bal.norm_sum.tolist() == [6.0, 150.0, 4 * tiny]


def test_stch_finite_across_magnitudes_and_round_trip() -> None:
    params = {"warmup_steps": 3}
    for config in ({}, params):
        bal = build_balancer("stch", config, TASKS)
        for scale in (1.0, 0.5):
            losses = _losses(a=1e-8 * scale, b=1.0 * scale, c=1e8 * scale)
            total, weights = bal.combine(losses)
            total.backward()
            assert len(weights) == 3 and math.isfinite(total.item())
            assert all(math.isfinite(float(w)) for w in weights.values())
            assert all(math.isfinite(float(v.grad)) for v in losses.values())
        if config:  # normalised: the three terms are on one scale, none is ignored
            assert (
                min(float(w) * s for w, s in zip(weights.values(), (1e-8, 1, 1e8), strict=True))
                > 0.05
            )
    clone = build_balancer("stch", params, TASKS)
    clone.load_state_dict(bal.state_dict())
    _, mine = bal.combine(_losses(a=3e-9, b=0.2, c=3e7))
    _, theirs = clone.combine(_losses(a=3e-9, b=0.2, c=3e7))
    assert all(torch.equal(mine[k], theirs[k]) for k in "abc")


# -- GradNorm -----------------------------------------------------------------------------------


class TinyModel(nn.Module):
    """Shared 3 -> 4 -> 4 trunk (the second layer is the "last shared layer") and one linear
    head per task, in float64."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Linear(3, 4).double()
        self.last = nn.Linear(4, 4).double()
        self.heads = nn.ModuleDict({k: nn.Linear(4, 1).double() for k in "abc"})

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return list(self.last.parameters())

    def losses(self, x: Tensor, y: Tensor, scale: dict[str, float]) -> dict[str, Tensor]:
        z = torch.tanh(self.last(torch.tanh(self.first(x))))
        return {
            k: s * (self.heads[k](z).squeeze(-1) - y[:, i]).pow(2).mean()
            for i, (k, s) in enumerate(scale.items())
        }


def _data(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=g, dtype=F64), torch.randn(8, 3, generator=g, dtype=F64)


def _materialised(
    model: TinyModel, x: Tensor, y: Tensor, scale: dict[str, float]
) -> tuple[dict[str, float], dict[str, float], dict[str, list[Tensor]]]:
    """Each task's loss, ‖∇_W L_k‖ and full gradient, from its own forward and backward pass."""
    values, norms, grads = {}, {}, {}
    for k in scale:
        model.zero_grad(set_to_none=True)
        loss = model.losses(x, y, scale)[k]
        loss.backward()
        values[k] = float(loss.detach())
        norms[k] = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.last.parameters()))
        grads[k] = [
            p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in model.parameters()
        ]
    model.zero_grad(set_to_none=True)
    return values, norms, grads


def _gradnorm_reference(
    weights: dict[str, float],
    values: dict[str, float],
    initial: dict[str, float],
    norms: dict[str, float],
    alpha: float,
) -> dict[str, float]:
    tasks = list(values)
    ratio = {k: values[k] / initial[k] for k in tasks}
    mean_ratio = sum(ratio.values()) / len(tasks)
    g = {k: weights[k] * norms[k] for k in tasks}
    g_bar = sum(g.values()) / len(tasks)
    target = {k: g_bar * (ratio[k] / mean_ratio) ** alpha for k in tasks}
    return {k: math.copysign(norms[k], g[k] - target[k]) for k in tasks}


def test_gradnorm_weight_gradient_matches_materialised_per_task_gradients() -> None:
    model = TinyModel()
    bal = build_balancer("gradnorm", {"alpha": 1.5}, TASKS)
    scale = {"a": 1.0, "b": 3.0, "c": 0.2}
    x, y = _data(0)
    first, norms, _ = _materialised(model, x, y, scale)
    applied = bal.backward(model.losses(x, y, scale), model).weights
    assert applied == {"a": 1.0, "b": 1.0, "c": 1.0}
    # First step: every ratio is 1, so the target is the mean weighted norm.
    expected = _gradnorm_reference(applied, first, first, norms, 1.5)
    for k in "abc":
        assert float(bal.loss_weights[k].grad) == pytest.approx(expected[k], rel=1e-6)
    # Second step, new batch, uneven stored weights (one negative, as an optimiser might leave).
    with torch.no_grad():
        for k, v in {"a": 2.0, "b": 0.5, "c": -1.0}.items():
            bal.loss_weights[k].fill_(v)
            bal.loss_weights[k].grad = None
    x, y = _data(4)
    values, norms, grads = _materialised(model, x, y, scale)
    applied = bal.backward(model.losses(x, y, scale), model).weights
    floored = {"a": 2.0, "b": 0.5, "c": 1e-3}
    renormalised = {k: 3 * v / sum(floored.values()) for k, v in floored.items()}
    for k in "abc":
        assert applied[k] == pytest.approx(renormalised[k], rel=1e-6)
        assert float(bal.loss_weights[k].detach()) == pytest.approx(renormalised[k], rel=1e-6)
    expected = _gradnorm_reference(renormalised, values, first, norms, 1.5)
    # This batch tells α apart: with α = 0 or 3 some target falls on the other side of G_k.
    for alpha in (0.0, 3.0):
        assert _gradnorm_reference(renormalised, values, first, norms, alpha) != expected
    for k in "abc":
        assert float(bal.loss_weights[k].grad) == pytest.approx(expected[k], rel=1e-5)
    # The network receives Σ_k w_k ∇L_k with the weights held constant.
    for i, p in enumerate(model.parameters()):
        direct = sum(renormalised[k] * grads[k][i] for k in "abc")
        torch.testing.assert_close(p.grad, direct, rtol=1e-6, atol=1e-12)


def test_gradnorm_partial_step_leaves_the_absent_task_alone() -> None:
    model = TinyModel()
    bal = build_balancer("gradnorm", {}, TASKS)
    x, y = _data(0)
    bal.backward(model.losses(x, y, {"a": 1.0, "b": 1.0, "c": 1.0}), model)
    with torch.no_grad():
        bal.loss_weights["c"].fill_(1.7)
    before = _state(bal)
    for p in bal.parameters():
        p.grad = None
    applied = bal.backward(model.losses(*_data(1), {"a": 1.0, "b": 2.0}), model).weights
    after = _state(bal)
    assert set(applied) == {"a", "b"} and sum(applied.values()) == pytest.approx(2.0)
    assert _unchanged_at(before, after, 2)
    assert torch.equal(before["loss_weights.c"], after["loss_weights.c"])
    assert bal.loss_weights["c"].grad is None
    # A task first seen later records its own initial loss.
    fresh = build_balancer("gradnorm", {}, TASKS)
    fresh.backward(model.losses(x, y, {"a": 1.0, "b": 1.0}), model)
    assert math.isnan(float(fresh.initial_losses[2]))
    fresh.backward(model.losses(x, y, {"a": 1.0, "c": 1.0}), model)
    assert math.isfinite(float(fresh.initial_losses[2]))


def test_gradnorm_finite_across_magnitudes_and_round_trip() -> None:
    model = TinyModel()
    bal = build_balancer("gradnorm", {}, TASKS)
    scale = {"a": 1e-8, "b": 1.0, "c": 1e8}
    for seed in range(3):
        applied = bal.backward(model.losses(*_data(seed), scale), model).weights
        assert len(applied) == 3 and all(math.isfinite(w) and w > 0 for w in applied.values())
        assert sum(applied.values()) == pytest.approx(3.0, rel=1e-6)
        assert all(math.isfinite(float(p.grad)) for p in bal.parameters())
        assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        with torch.no_grad():  # a plain SGD step on the weights, as the trainer's would do
            for p in bal.parameters():
                p -= 1e-9 * p.grad
                p.grad = None
    clone = build_balancer("gradnorm", {}, TASKS)
    clone.load_state_dict(bal.state_dict())
    mine = bal.backward(model.losses(*_data(9), scale), model)
    theirs = clone.backward(model.losses(*_data(9), scale), model)
    assert mine == theirs
    assert all(torch.equal(bal.loss_weights[k].grad, clone.loss_weights[k].grad) for k in "abc")


def test_gradnorm_rejects_a_model_without_a_last_shared_layer() -> None:
    bal = build_balancer("gradnorm", {}, TASKS)
    with pytest.raises(PolytaskError, match="last_shared_parameters"):
        bal.backward(_losses(a=1.0), nn.Linear(2, 2))


# -- through the pipeline ---------------------------------------------------------------------

METHODS = ["famo", "stch", "gradnorm"]


@pytest.mark.usefixtures("torch_single_thread")
@pytest.mark.parametrize("name", METHODS)
def test_each_method_trains_the_synthetic_benchmark(name: str) -> None:
    frame = make_mmoe_synthetic(2000, 0.9, n_features=16, seed=0)
    raw = synthetic_raw(balancer=name, epochs=6, batch_size=64, lr=3e-3)
    result = run(config_from_dict(raw), frame=frame, quiet=True)
    assert result.metrics["value"]["r2"] > 0.6, result.metrics
    assert result.metrics["label"]["auroc"] > 0.85, result.metrics
    history = result.fit.history
    for task in ("value", "label"):
        assert history[-1].train_loss[task] < 0.8 * history[0].train_loss[task], task
    logged = history[-1].weights
    assert set(logged) == {"value", "label"} and all(math.isfinite(w) for w in logged.values())
