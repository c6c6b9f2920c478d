"""Gradient-level balancers and the per-task gradient engine.

Each method is checked on seeded Jacobians across gradient magnitudes 1e-8..1e8, against the
property its paper states and against independent float64 computations (closed forms, explicit
projections, scipy solves of the method's own problem). The engine is checked against
materialised per-task gradients of a tiny model, and every method trains the synthetic
benchmark through the pipeline and resumes from a checkpoint bit for bit.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import Tensor, nn
from torchjd.aggregation import MGDAWeighting

from conftest import run_interrupted_and_resumed, synthetic_raw
from polytask import config_from_dict, run
from polytask.balance import BALANCERS, build_balancer
from polytask.balance import gramian as gramian_module
from polytask.balance.gradient_engine import (
    EngineParams,
    GradientBalancer,
    GradientMode,
    GramianWeighting,
    MatrixAggregator,
)
from polytask.balance.gradient_methods import NashBargaining
from polytask.balance.gramian import GramianRecorder
from polytask.data.spec import InputSpec
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.errors import ConfigError, PolytaskError
from polytask.models.architectures import Architecture
from polytask.models.config import ModelConfig
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task
from polytask.train.config import TrainConfig
from polytask.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # 2 shared cores: threads only wait

GRADIENT_METHODS = [
    "mgda",
    "pcgrad",
    "gradvac",
    "cagrad",
    "imtl_g",
    "nash_mtl",
    "aligned_mtl",
    "upgrad",
    "dualproj",
    "fairgrad",
    "graddrop",
    "db_mtl",
]
GRAMIAN_METHODS = [m for m in GRADIENT_METHODS if m != "graddrop"]
TASKS = [
    Task("a", "regression", target="ya"),
    Task("b", "binary", target="yb"),
    Task("c", "regression", target="yc"),
]
F64 = torch.float64


def _tasks(k: int) -> list[Task]:
    return [Task(f"t{i}", "regression", target=f"y{i}") for i in range(k)]


def _method(name: str, k: int, **params: Any) -> GramianWeighting:
    bal = build_balancer(name, params, _tasks(k))
    assert isinstance(bal, GradientBalancer) and isinstance(bal.method, GramianWeighting)
    return bal.method


def _weights(
    name: str, jac: Tensor, losses: Tensor | None = None, seed: int = 0, **params: Any
) -> Tensor:
    """Weights of a fresh ``name`` for ``G = J Jᵀ`` (global RNG seeded for random orders)."""
    k = jac.shape[0]
    method = _method(name, k, **params)
    torch.manual_seed(seed)
    loss = torch.ones(k, dtype=jac.dtype) if losses is None else losses
    weights: Tensor = method(jac @ jac.T, loss, list(range(k)))
    return weights


def _seeded_jacobian(k: int, n: int, seed: int, conflict: float = 1.0) -> Tensor:
    """Float64 ``[k, n]`` rows with unequal norms; row 1 is pushed against row 0."""
    g = torch.Generator().manual_seed(seed)
    jac = (
        torch.randn(k, n, generator=g, dtype=F64) * torch.linspace(0.5, 2.0, k, dtype=F64)[:, None]
    )
    jac[1] -= conflict * jac[0]
    return jac


def test_every_gradient_method_is_registered_as_an_engine_balancer() -> None:
    assert set(GRADIENT_METHODS) <= set(BALANCERS.names())
    for name in GRADIENT_METHODS:
        params = {"mode": "representation"} if name == "graddrop" else {}
        bal = build_balancer(name, params, TASKS)
        assert isinstance(bal, GradientBalancer) and bal.needs_gradients, name
    with pytest.raises(ConfigError, match=r"balancer\.update_every"):
        build_balancer("mgda", {"update_every": 0}, TASKS)
    with pytest.raises(ConfigError, match=r"balancer\.mode"):
        build_balancer("mgda", {"mode": "jacobian"}, TASKS)


# -- 1. finite, right shape, consistent across gradient magnitudes ------------------------------

MAGNITUDES = [10.0**e for e in range(-8, 9, 2)]
#: Weights scale as ``s**-power`` when every gradient is multiplied by ``s``: FairGrad's
#: ``G w = 1/w`` gives ``w ∝ 1/s``; every other method's weights are scale-free (Nash-MTL once
#: its norm clipping is off, since it normalises the Gramian).
SCALE_POWER = {"fairgrad": 1.0}


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", GRAMIAN_METHODS)
def test_weights_are_finite_and_consistent_across_magnitudes(name: str, dtype: torch.dtype) -> None:
    jac = _seeded_jacobian(3, 40, seed=0, conflict=2.0)  # the mean conflicts with task 0
    losses = torch.tensor([1.0, 2.0, 0.5], dtype=dtype)
    params: dict[str, Any] = {"max_norm": 0.0} if name == "nash_mtl" else {}
    reference = _weights(name, jac.to(dtype), losses, **params).double()
    power = SCALE_POWER.get(name, 0.0)
    for s in MAGNITUDES:
        w = _weights(name, (jac * s).to(dtype), losses, **params)
        assert w.shape == (3,) and w.dtype == dtype, (name, s)
        assert bool(torch.isfinite(w).all()), (name, s, w)
        # Same direction at every scale: torchjd's absolute thresholds once made CAGrad return
        # zeros, UPGrad and DualProj the plain mean and FairGrad too short an update when the
        # gradients were small (trace of G below 1e-4).
        rescaled = w.double() * s**power
        torch.testing.assert_close(rescaled, reference, rtol=2e-3, atol=0.0, msg=f"{name} s={s}")


def test_nash_mtl_update_norm_is_capped_at_every_magnitude() -> None:
    jac = _seeded_jacobian(3, 40, seed=0)
    for s in MAGNITUDES:
        w = _weights("nash_mtl", jac * s)
        norm = float((w @ (jac * s)).norm())
        assert math.isfinite(norm) and 0 < norm <= 1.0 + 1e-9, (s, norm)


def test_graddrop_is_finite_shaped_and_scale_equivariant() -> None:
    jac = _seeded_jacobian(3, 40, seed=0)
    bal = build_balancer("graddrop", {"mode": "representation"}, _tasks(3))
    assert isinstance(bal, GradientBalancer) and isinstance(bal.method, MatrixAggregator)
    for dtype in (torch.float32, F64):  # torch.rand draws differ between dtypes
        torch.manual_seed(0)
        reference = bal.method(jac.to(dtype))
        for s in MAGNITUDES:
            torch.manual_seed(0)
            out = bal.method((jac * s).to(dtype))
            assert out.shape == (40,) and out.dtype == dtype, (s, dtype)
            assert bool(torch.isfinite(out).all()), (s, dtype)
            # Signs and purities are scale-free: the same coordinates are kept at every scale.
            torch.testing.assert_close(out / s, reference, rtol=1e-5, atol=1e-6)


# -- 2 and 3. documented properties and float64 reference computations -------------------------


@pytest.mark.parametrize(
    "g1,g2",
    [
        ([1.0, 0.0], [0.0, 1.0]),
        ([2.0, 0.0, 0.0], [-1.0, 1.0, 0.5]),
        ([1.0, 0.0], [3.0, 1.0]),  # g1 inside the hull's min-norm region: weight 1 on g1
        ([3.0, 1.0], [1.0, 0.0]),  # and the mirror case: weight 0 on g1
        ([0.3, -1.2, 2.0, 0.1], [-0.5, 0.4, 1.0, -2.0]),
    ],
)
def test_mgda_two_tasks_matches_the_closed_form(g1: list[float], g2: list[float]) -> None:
    a, b = torch.tensor(g1, dtype=F64), torch.tensor(g2, dtype=F64)
    alpha = float(((b - a) @ b) / ((a - b) @ (a - b)))
    alpha = min(max(alpha, 0.0), 1.0)  # Sener & Koltun 2018, Algorithm 1
    w = _weights("mgda", torch.stack([a, b]))
    torch.testing.assert_close(w, torch.tensor([alpha, 1 - alpha], dtype=F64), rtol=0, atol=1e-9)


def test_mgda_is_the_min_norm_point_of_the_convex_hull() -> None:
    jac = _seeded_jacobian(4, 10, seed=1, conflict=1.5)
    tight = _weights("mgda", jac, epsilon=1e-9, max_iters=5000)
    # Frank-Wolfe approaches a zero weight only as 1/t: 5000 steps leave a relative optimality
    # gap of 7e-4 here, the defaults (ε = 1e-3, 100 steps) one of 1.8%.
    for w, tol in ((tight, 2e-3), (_weights("mgda", jac), 3e-2)):
        assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
        d = w @ jac
        sq = float(d @ d)
        # Optimality over the simplex: every g_i·d ≥ ‖d‖², so no convex combination is shorter.
        assert float((jac @ d).min()) >= sq * (1 - tol), (jac @ d, sq)
        assert math.sqrt(sq) <= float(jac.norm(dim=1).min())
    # Independent exact solve: the min-norm point of the hull is the min-norm point of the affine
    # hull of some face (w_S ∝ G_S⁻¹ 1) that is non-negative and satisfies the KKT condition.
    reference = None
    for size in range(1, 5):
        for face in itertools.combinations(range(4), size):
            sub = jac[list(face)]
            v = torch.linalg.solve(sub @ sub.T, torch.ones(size, dtype=F64))
            w = torch.zeros(4, dtype=F64)
            w[list(face)] = v / v.sum()
            d = w @ jac
            if bool((w >= 0).all()) and float((jac @ d).min()) >= float(d @ d) * (1 - 1e-12):
                reference = w
    assert reference is not None
    assert float((tight @ jac).norm()) == pytest.approx(float((reference @ jac).norm()), rel=1e-3)
    torch.testing.assert_close(tight, reference, rtol=0, atol=5e-4)
    assert float(reference[2]) == 0.0 and float(tight[2]) < 2e-4  # the face without task 2


def _pcgrad_reference(jac: Tensor, seed: int) -> Tensor:
    """Yu et al. 2020, Algorithm 1 on explicit vectors: each g_i is projected, in a random order
    of the others, onto the normal plane of every g_j it conflicts with; the update is the sum.
    The orders are drawn exactly as torchjd draws them (one ``randperm(K)`` per task)."""
    torch.manual_seed(seed)
    total = torch.zeros(jac.shape[1], dtype=F64)
    for i in range(jac.shape[0]):
        order = torch.randperm(jac.shape[0]).tolist()
        g = jac[i].clone()
        for j in order:
            if j != i and float(g @ jac[j]) < 0:
                g = g - (g @ jac[j]) / (jac[j] @ jac[j]) * jac[j]
        total += g
    return total


def test_pcgrad_two_conflicting_gradients_match_the_explicit_projection() -> None:
    g1 = torch.tensor([1.0, 2.0, 0.0], dtype=F64)
    g2 = torch.tensor([-2.0, 0.5, 1.0], dtype=F64)
    assert float(g1 @ g2) < 0
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = g2 - (g1 @ g2) / (g1 @ g1) * g1
    for seed in range(3):  # two tasks: the order cannot matter
        d = _weights("pcgrad", torch.stack([g1, g2]), seed=seed) @ torch.stack([g1, g2])
        torch.testing.assert_close(d, p1 + p2, rtol=1e-12, atol=1e-12)
    # The conflicting components are gone: each projected gradient is orthogonal to the other.
    assert float(p1 @ g2) == pytest.approx(0.0, abs=1e-12)
    assert float(p2 @ g1) == pytest.approx(0.0, abs=1e-12)
    # No conflict: nothing is projected and the update is the summed gradient (equal weights).
    agree = torch.stack([g1, torch.tensor([1.0, 0.0, 3.0], dtype=F64)])
    torch.testing.assert_close(_weights("pcgrad", agree), torch.ones(2, dtype=F64))


def test_pcgrad_random_order_matches_the_reference_for_the_same_draws() -> None:
    # Three mutually conflicting gradients (about 120° apart), so the order changes the result.
    jac = torch.tensor([[1.0, 0.0, 0.1], [-0.6, 0.9, 0.0], [-0.4, -1.3, 0.2]], dtype=F64)
    results = []
    for seed in range(8):
        d = _weights("pcgrad", jac, seed=seed) @ jac
        torch.testing.assert_close(d, _pcgrad_reference(jac, seed), rtol=1e-10, atol=1e-12)
        results.append(tuple(round(float(x), 9) for x in d))
    assert len(set(results)) > 1  # the orders really are random


def test_upgrad_and_dualproj_updates_do_not_conflict_with_any_task() -> None:
    for seed in range(4):
        jac = _seeded_jacobian(4, 6, seed=seed, conflict=3.0)
        assert float((jac @ jac.mean(0)).min()) < 0  # the mean gradient conflicts here
        scale = float((jac * jac).sum())
        for name in ("upgrad", "dualproj"):
            d = _weights(name, jac) @ jac
            # The projector regularises the unit-trace Gramian by 1e-4: J d ≥ -1e-4 tr(G) |w|.
            assert float((jac @ d).min()) >= -1e-3 * scale, (name, seed, jac @ d)
    # Rows that already agree pairwise: both return the plain mean (the equal weighting).
    agree = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.3], [0.2, 0.1, 2.0]], dtype=F64)
    assert bool(((agree @ agree.T) >= 0).all())
    for name in ("upgrad", "dualproj"):
        torch.testing.assert_close(_weights(name, agree), torch.full((3,), 1 / 3, dtype=F64))


def test_imtl_g_has_equal_projections_and_matches_the_closed_form() -> None:
    jac = _seeded_jacobian(4, 9, seed=2)
    w = _weights("imtl_g", jac)
    d = w @ jac
    units = jac / jac.norm(dim=1, keepdim=True)
    projections = units @ d
    torch.testing.assert_close(projections, projections.mean().expand(4), rtol=1e-9, atol=0.0)
    # Liu et al. 2021, Eq. 8: α_{2..K} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 − Σ α_{2..K}.
    diffs = jac[0] - jac[1:]
    unit_diffs = units[0] - units[1:]
    rest = jac[0] @ unit_diffs.T @ torch.linalg.inv(diffs @ unit_diffs.T)
    alpha = torch.cat([(1 - rest.sum()).reshape(1), rest])
    torch.testing.assert_close(w, alpha, rtol=1e-8, atol=1e-10)


def test_nash_mtl_solves_the_bargaining_system_and_clips_the_update() -> None:
    jac = _seeded_jacobian(3, 12, seed=3, conflict=0.7)
    gram = jac @ jac.T
    alpha = _weights("nash_mtl", jac, max_norm=0.0)
    assert bool((alpha > 0).all())
    # Navon et al. 2022, Eq. 4: G α = 1/α on the Gramian normalised by its Frobenius norm (as in
    # the authors' code), i.e. every task gains g_i·d = 1/α_i from the update d = Jᵀα.
    normalised = gram / torch.linalg.matrix_norm(gram)
    torch.testing.assert_close(normalised @ alpha, 1 / alpha, rtol=1e-8, atol=0.0)
    unclipped = float((alpha @ jac).norm())
    for cap in (0.25 * unclipped, 0.9 * unclipped):
        clipped = _weights("nash_mtl", jac, max_norm=cap)
        assert float((clipped @ jac).norm()) == pytest.approx(cap, rel=1e-10)
        torch.testing.assert_close(clipped, alpha * (cap / unclipped), rtol=1e-10, atol=0.0)
    torch.testing.assert_close(_weights("nash_mtl", jac, max_norm=2 * unclipped), alpha)


def test_nash_mtl_zero_gradient_task_raises() -> None:
    jac = _seeded_jacobian(3, 5, seed=0)
    jac[2] = 0.0
    with pytest.raises(PolytaskError, match="zero gradient"):
        _weights("nash_mtl", jac)


def test_nash_mtl_without_a_solution_raises_or_reuses_the_previous_weights() -> None:
    solvable = _seeded_jacobian(2, 6, seed=1, conflict=0.5)
    opposed = solvable.clone()
    opposed[1] = -2.0 * opposed[0]  # gradients cancel: G α = 1/α has no positive solution
    with pytest.raises(PolytaskError, match="did not converge"):
        _weights("nash_mtl", opposed, max_norm=0.0)
    method = _method("nash_mtl", 2, max_norm=0.0, on_failure="previous")
    assert isinstance(method, NashBargaining)
    with pytest.raises(PolytaskError, match="did not converge"):  # nothing to reuse yet
        method(opposed @ opposed.T, torch.ones(2, dtype=F64), [0, 1])
    first = method(solvable @ solvable.T, torch.ones(2, dtype=F64), [0, 1])
    again = method(opposed @ opposed.T, torch.ones(2, dtype=F64), [0, 1])
    torch.testing.assert_close(again, first, rtol=0.0, atol=0.0)
    assert method.reused == 1


def test_aligned_mtl_is_the_mean_of_the_aligned_gradients() -> None:
    # Senushkin et al. 2023: the aligned matrix Ĵ = √σ_min G^{-1/2} J has all singular values
    # equal to the smallest one of J (orthogonal rows of equal norm); the update is its mean row.
    jac = _seeded_jacobian(3, 7, seed=4)
    gram = (jac @ jac.T).numpy()
    lam, vec = np.linalg.eigh(gram)
    aligned = math.sqrt(lam.min()) * (vec @ np.diag(lam**-0.5) @ vec.T) @ jac.numpy()
    np.testing.assert_allclose(aligned @ aligned.T, lam.min() * np.eye(3), atol=1e-10)
    w = _weights("aligned_mtl", jac)
    np.testing.assert_allclose((w @ jac).numpy(), aligned.mean(axis=0), rtol=1e-8, atol=1e-12)


def _cagrad_reference(jac: Tensor, c: float) -> Tensor:
    """Liu et al. 2021, Eq. 9 solved independently: minimise gwᵀg0 + √φ‖gw‖ over the simplex
    (SLSQP, float64), φ = c²‖g0‖², then d = g0 + √φ/‖gw‖ gw."""
    j = jac.numpy()
    g0 = j.mean(axis=0)
    sqrt_phi = c * np.linalg.norm(g0)
    k = j.shape[0]
    res = minimize(
        lambda w: (w @ j) @ g0 + sqrt_phi * np.linalg.norm(w @ j),
        np.full(k, 1.0 / k),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert res.success, res.message
    gw = res.x @ j
    return torch.from_numpy(g0 + sqrt_phi / np.linalg.norm(gw) * gw)


@pytest.mark.parametrize("c", [0.2, 0.4, 0.8])
def test_cagrad_matches_an_independent_solve_of_its_dual(c: float) -> None:
    jac = _seeded_jacobian(3, 6, seed=5)
    g0 = jac.mean(0)
    d = _weights("cagrad", jac, c=c) @ jac
    # torchjd's weights are 1/K + √φ/‖gw‖ w, so Jᵀw is the paper's d itself (no 1/(1+c²)).
    torch.testing.assert_close(d, _cagrad_reference(jac, c), rtol=1e-4, atol=1e-6)
    # d lies on the ball of radius c‖g0‖ around g0 and helps the worst task more than g0 does.
    assert float((d - g0).norm()) == pytest.approx(c * float(g0.norm()), rel=1e-6)
    assert float((jac @ d).min()) > float((jac @ g0).min())


def test_cagrad_with_c_zero_is_the_mean_gradient() -> None:
    jac = _seeded_jacobian(3, 6, seed=5)
    torch.testing.assert_close(_weights("cagrad", jac, c=0.0), torch.full((3,), 1 / 3, dtype=F64))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_weights_solve_the_alpha_fair_system(alpha: float) -> None:
    # Ban & Ji 2024, Eq. 4: G w = w^(-1/α), i.e. g_i·d = w_i^(-1/α) for the update d = Jᵀw.
    jac = _seeded_jacobian(3, 8, seed=6)
    for s in (1e-4, 1.0, 1e4):
        w = _weights("fairgrad", jac * s, alpha=alpha)
        gram = (jac * s) @ (jac * s).T
        torch.testing.assert_close((gram @ w) * w ** (1 / alpha), torch.ones(3, dtype=F64))
    torch.testing.assert_close(
        _weights("fairgrad", jac, alpha=0.0), torch.full((3,), 1 / 3, dtype=F64)
    )


def test_gradvac_starts_as_pcgrad_and_then_aims_at_its_targets() -> None:
    g1 = torch.tensor([1.0, 2.0, 0.0], dtype=F64)
    g2 = torch.tensor([-2.0, 0.5, 1.0], dtype=F64)
    jac = torch.stack([g1, g2]).float()  # float32: the Gramian dtype of the engine
    method = _method("gradvac", 2, beta=0.25)
    torch.manual_seed(0)
    first = method(jac @ jac.T, torch.ones(2), [0, 1])
    # Zero initial targets φ̂: the correction makes g_i orthogonal to g_j, as PCGrad does.
    pc = _weights("pcgrad", jac.double())
    torch.testing.assert_close(first.double(), pc, rtol=1e-5, atol=1e-6)
    cosine = float(g1 @ g2 / (g1.norm() * g2.norm()))
    targets = method.get_extra_state()["0,1"]
    assert targets[0][1] == pytest.approx(0.25 * cosine, rel=1e-5)  # φ̂ ← (1−β)φ̂ + βφ
    # With targets φ̂ = 0.5 the corrected rows g_i + c_ij g_j have cosine exactly 0.5 with g_j.
    # Two tasks: weights = [1 + c_21, 1 + c_12], so each row's coefficient can be read back.
    method.set_extra_state({"0,1": [[0.0, 0.5], [0.5, 0.0]]})
    w = method(jac @ jac.T, torch.ones(2), [0, 1]).double()
    row1, row2 = g1 + (w[1] - 1) * g2, g2 + (w[0] - 1) * g1
    assert float(row1 @ g2 / (row1.norm() * g2.norm())) == pytest.approx(0.5, abs=1e-5)
    assert float(row2 @ g1 / (row2.norm() * g1.norm())) == pytest.approx(0.5, abs=1e-5)


def test_db_mtl_matches_its_formula_and_keeps_absent_tasks_state() -> None:
    jac = _seeded_jacobian(3, 5, seed=7)
    method = _method("db_mtl", 3, beta=0.9)
    eps = 1e-8
    losses = torch.tensor([0.5, 2.0, 1.0], dtype=F64)
    w = method(jac @ jac.T, losses, [0, 1, 2])
    # Lin et al. 2023: the log-loss gradients ∇L_k/L_k, each rescaled to the largest norm.
    norms = jac.norm(dim=1) / (losses + eps)
    torch.testing.assert_close(w, (norms.max() / norms) / (losses + eps), rtol=1e-12, atol=0.0)
    scaled = (w[:, None] * jac).norm(dim=1)  # every task's term has the same norm
    torch.testing.assert_close(scaled, scaled.max().expand(3), rtol=1e-12, atol=0.0)
    # Second step without task 1: EMA of the norms for 0 and 2, task 1's state untouched.
    jac2 = _seeded_jacobian(3, 5, seed=8)[[0, 2]]
    losses2 = torch.tensor([0.4, 1.5], dtype=F64)
    before = method.ema.clone()
    w2 = method(jac2 @ jac2.T, losses2, [0, 2])
    ema = 0.9 * norms[[0, 2]] + 0.1 * jac2.norm(dim=1) / (losses2 + eps)
    torch.testing.assert_close(method.ema[[0, 2]], ema, rtol=1e-12, atol=0.0)
    assert float(method.ema[1]) == float(before[1])
    torch.testing.assert_close(w2, (ema.max() / ema) / (losses2 + eps), rtol=1e-12, atol=0.0)


# -- 4. the engine on a tiny model --------------------------------------------------------------


class _Probe(GramianWeighting):
    """Records each Gramian it is given and returns weights that change with every call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Tensor, list[int]]] = []

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        self.seen.append((gramian.detach().clone(), list(tasks)))
        call = len(self.seen)
        return torch.tensor([0.3 + call, 1.7, 0.6 * call], dtype=gramian.dtype)[: len(tasks)]


def _tiny_model(seed: int = 0) -> MultiTaskModel:
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "mlp", "widths": [8, 6], "dropout": 0.0}, "head": {"widths": [4]}}
    )
    return build_model(TASKS, InputSpec(n_numeric=5), cfg, seed)


def _batch(seed: int = 0, n: int = 16) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    inputs = {"numeric": torch.randn(n, 5, generator=g)}
    targets = {
        "a": torch.randn(n, generator=g),
        "b": (torch.rand(n, generator=g) > 0.5).float(),
        "c": 3 * torch.randn(n, generator=g),
    }
    return inputs, targets


def _losses(
    outputs: dict[str, Tensor], targets: dict[str, Tensor], names: list[str]
) -> dict[str, Tensor]:
    return {
        n: F.binary_cross_entropy_with_logits(outputs[n], targets[n])
        if n == "b"
        else F.mse_loss(outputs[n], targets[n])
        for n in names
    }


def _flat(grads: list[Tensor | None], params: list[nn.Parameter]) -> Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1).double()
            for g, p in zip(grads, params, strict=True)
        ]
    )


class _Reference:
    """Per-task gradients materialised on a copy of the model, one backward per task."""

    def __init__(self, model: MultiTaskModel, names: list[str], seed: int = 0) -> None:
        clone = copy.deepcopy(model)
        inputs, targets = _batch(seed)
        shared = clone.shared_parameters()
        z = clone.represent(inputs)
        outputs = {t.name: clone.task_output(t.name, z) for t in TASKS}
        losses = _losses(outputs, targets, names)
        rows, zrows, self.heads = [], [], {}
        for n in names:
            rows.append(
                _flat(list(torch.autograd.grad(losses[n], shared, retain_graph=True)), shared)
            )
            zrows.append(
                torch.autograd.grad(losses[n], z, retain_graph=True)[0].reshape(-1).double()
            )
            own = clone.task_parameters(n)
            self.heads[n] = _flat(list(torch.autograd.grad(losses[n], own, retain_graph=True)), own)
        self.jac = torch.stack(rows)
        self.zjac = torch.stack(zrows)


def _step(
    bal: GradientBalancer, model: MultiTaskModel, names: list[str], seed: int = 0
) -> dict[str, float]:
    model.zero_grad(set_to_none=True)
    inputs, targets = _batch(seed)
    outputs = bal.forward(model, inputs)
    return bal.backward(_losses(outputs, targets, names), model).weights


def _shared_grad(model: MultiTaskModel) -> Tensor:
    params = model.shared_parameters()
    return _flat([p.grad for p in params], params)


def _assert_close_scaled(got: Tensor, want: Tensor, rtol: float = 2e-5) -> None:
    """Float32 backward against float64 reference: tolerance relative to the largest entry."""
    torch.testing.assert_close(got, want, rtol=0.0, atol=rtol * float(want.abs().max()))


@pytest.mark.parametrize("mode", ["exact", "representation"])
def test_engine_gramian_and_gradients_match_materialised_per_task_gradients(
    mode: GradientMode,
) -> None:
    model, names = _tiny_model(), ["a", "b", "c"]
    ref = _Reference(model, names)
    probe = _Probe()
    bal = GradientBalancer(TASKS, probe, EngineParams(mode=mode), "probe")
    model.zero_grad(set_to_none=True)
    inputs, targets = _batch()
    result = bal.backward(_losses(bal.forward(model, inputs), targets, names), model)
    weights = result.weights
    ((gramian, tasks),) = probe.seen
    rows = ref.jac if mode == "exact" else ref.zjac
    assert tasks == [0, 1, 2] and gramian.dtype == torch.float32
    _assert_close_scaled(gramian.double(), rows @ rows.T)
    norms = {n: float(v) for n, v in zip(names, rows.norm(dim=1), strict=True)}
    assert result.grad_norms == pytest.approx(norms, rel=1e-4)
    w = torch.tensor([weights[n] for n in names], dtype=F64)
    torch.testing.assert_close(w, torch.tensor([1.3, 1.7, 0.6], dtype=F64), rtol=1e-6, atol=0.0)
    # Shared parameters receive Jᵀw (in both modes: the chain rule through z gives the same).
    _assert_close_scaled(_shared_grad(model), w @ ref.jac)
    for n in names:  # each head: the plain gradient of its own loss
        own = model.task_parameters(n)
        _assert_close_scaled(_flat([p.grad for p in own], own), ref.heads[n])


@pytest.mark.parametrize("name", ["mgda", "upgrad", "imtl_g"])
def test_engine_weights_are_the_method_applied_to_the_true_gramian(name: str) -> None:
    model, names = _tiny_model(1), ["a", "b", "c"]
    ref = _Reference(model, names)
    bal = build_balancer(name, {}, TASKS)
    assert isinstance(bal, GradientBalancer)
    weights = _step(bal, model, names)
    w = torch.tensor([weights[n] for n in names], dtype=F64)
    torch.testing.assert_close(w, _weights(name, ref.jac), rtol=1e-3, atol=1e-4)
    _assert_close_scaled(_shared_grad(model), w @ ref.jac)


@pytest.mark.parametrize("mode", ["exact", "representation"])
def test_absent_task_gets_no_gradient_and_takes_no_part(mode: GradientMode) -> None:
    model, names = _tiny_model(), ["a", "c"]
    ref = _Reference(model, names)
    probe = _Probe()
    bal = GradientBalancer(TASKS, probe, EngineParams(mode=mode), "probe")
    weights = _step(bal, model, names)
    assert set(weights) == {"a", "c"}
    ((gramian, tasks),) = probe.seen
    rows = ref.jac if mode == "exact" else ref.zjac
    assert tasks == [0, 2]
    _assert_close_scaled(gramian.double(), rows @ rows.T)
    assert all(p.grad is None for p in model.task_parameters("b"))
    w = torch.tensor([weights["a"], weights["c"]], dtype=F64)
    _assert_close_scaled(_shared_grad(model), w @ ref.jac)
    assert torch.isnan(bal.cached[1]) and not bool(torch.isnan(bal.cached[[0, 2]]).any())


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(("rows", "block"), [(50, 16), (300, 128), (7, 128)])
def test_kernel_form_is_the_gram_matrix_of_the_weight_gradients(
    rows: int, block: int, batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel form (block upper triangle of a aᵀ, diagonal blocks halved, S + Sᵀ) against
    the float64 Gram matrix of the explicit weight gradients d_kᵀ a: several blocks with a
    ragged last one (50 rows in blocks of 16, 300 in blocks of 128) and a single block; the
    per-task products of a CPU and the broadcast product of an accelerator."""
    monkeypatch.setattr(gramian_module, "_MIN_BLOCK_ROWS", block)
    g = torch.Generator().manual_seed(rows)
    a = torch.randn(rows, 24, generator=g).relu()
    d = torch.randn(4, rows, 10, generator=g)
    flat = torch.einsum("kno,ni->koi", d.double(), a.double()).reshape(4, -1)
    got = gramian_module._kernel_form(a, d, batched=batched)
    assert got.shape == (4, 4) and got.dtype == torch.float32
    _assert_close_scaled(got.double(), flat @ flat.T)


class _TiedTrunk(nn.Module):
    """A wide dense layer called twice (weight tying; its Gramian takes the kernel form at 40
    rows), a layer norm (the generic path) and a narrow bias-free layer (the weight form)."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Linear(256, 256)
        self.norm = nn.LayerNorm(256)
        self.narrow = nn.Linear(256, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.wide(x))
        return self.narrow(self.norm(torch.relu(self.wide(h))))


def test_recorder_gramian_and_update_match_per_task_gradients_in_both_forms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    trunk = _TiedTrunk()
    x = torch.randn(40, 256)
    target = torch.randn(40, 3)
    kernel_rows: list[int] = []  # the layers whose Gramian took the kernel form, by row count
    kernel_form = gramian_module._kernel_form

    def spy(a: Tensor, d: Tensor) -> Tensor:
        kernel_rows.append(a.shape[0])
        return kernel_form(a, d)

    monkeypatch.setattr(gramian_module, "_kernel_form", spy)

    def losses(model: nn.Module) -> Tensor:
        z = model(x.to(next(model.parameters()).dtype))
        t = target.to(z.dtype)
        return torch.stack(
            [((z - t) ** 2)[:, k].mean() + z[:, (k + 1) % 3].mean() for k in range(3)]
        )

    reference = copy.deepcopy(trunk).double()
    params = list(reference.parameters())
    ref_losses = losses(reference)
    jac = torch.stack(
        [
            _flat(list(torch.autograd.grad(loss, params, retain_graph=True)), params)
            for loss in ref_losses
        ]
    )
    recorder = GramianRecorder([trunk])
    stacked = losses(trunk)
    gramian = recorder.gramian(stacked, torch.eye(3))
    _assert_close_scaled(gramian.double(), jac @ jac.T)
    assert kernel_rows == [80]  # the wide layer's two calls pooled; the narrow one by weights
    assert recorder.covers(list(trunk.parameters()))
    w = torch.tensor([0.5, -1.25, 2.0])
    recorder.backward(w)
    got = _flat([p.grad for p in trunk.parameters()], list(trunk.parameters()))
    _assert_close_scaled(got, w.double() @ jac)


def _forward_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("mode", ["exact", "representation"])
def test_update_every_reuses_the_weights_without_computing_a_gramian(mode: GradientMode) -> None:
    model, names = _tiny_model(), ["a", "b", "c"]
    ref = _Reference(model, names)
    probe = _Probe()
    params = EngineParams(mode=mode, update_every=3)
    bal = GradientBalancer(TASKS, probe, params, "probe")
    inputs, targets = _batch()
    for step in range(7):
        model.zero_grad(set_to_none=True)
        outputs = bal.forward(model, inputs)
        computing = step % 3 == 0
        # The exact engine hooks the shared layers on update steps only; reuse steps run the
        # plain model (no hooks, no split at the representation).
        assert (_forward_hooks(model) > 0) == (mode == "exact" and computing), step
        assert outputs["a"].grad_fn is not None
        weights = bal.backward(_losses(outputs, targets, names), model).weights
        assert _forward_hooks(model) == 0, "hooks outlive the step"
        # The Gramian is weighted after steps 0, 3 and 6 only: calls 1, 2, 3.
        call = step // 3 + 1
        assert len(probe.seen) == call, step
        expected = {"a": 0.3 + call, "b": 1.7, "c": 0.6 * call}
        assert weights == pytest.approx(expected, rel=1e-6), step
        w = torch.tensor([expected[n] for n in names], dtype=F64)
        _assert_close_scaled(_shared_grad(model), w @ ref.jac)
    assert int(bal.steps) == 7
    torch.testing.assert_close(
        bal.cached, torch.tensor([3.3, 1.7, 1.8], dtype=F64), rtol=1e-6, atol=0.0
    )


def test_task_subset_uses_exactly_s_tasks_reproducibly() -> None:
    def run_steps() -> list[tuple[str, ...]]:
        model, probe = _tiny_model(), _Probe()
        bal = GradientBalancer(TASKS, probe, EngineParams(task_subset=2), "probe")
        torch.manual_seed(7)
        chosen: list[tuple[str, ...]] = []
        for step in range(8):
            weights = _step(bal, model, ["a", "b", "c"], seed=step)
            picked = tuple(sorted(weights))
            assert len(picked) == 2
            gramian, tasks = probe.seen[-1]
            assert gramian.shape == (2, 2) and [TASKS[i].name for i in tasks] == list(picked)
            left_out = ({"a", "b", "c"} - set(picked)).pop()
            assert all(p.grad is None for p in model.task_parameters(left_out))
            chosen.append(picked)
        return chosen

    first = run_steps()
    assert first == run_steps()
    assert len(set(first)) > 1
    # Fewer present tasks than S: every present task is used.
    bal = GradientBalancer(TASKS, _Probe(), EngineParams(task_subset=2), "probe")
    assert set(_step(bal, _tiny_model(), ["c"])) == {"c"}


class _TwoTrunks(Architecture):
    """Each task reads its own trunk: no single shared representation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(5, 4)
        self.trunks = nn.ModuleDict({t.name: nn.Linear(4, 1) for t in TASKS})

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        h = torch.relu(self.stem(inputs["numeric"]))
        return {n: m(h) for n, m in self.trunks.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.stem.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.trunks[task].parameters())

    def shared_modules(self) -> list[nn.Module]:
        return [self.stem]


def test_representation_mode_needs_a_single_representation() -> None:
    model = MultiTaskModel(_TwoTrunks(), TASKS)
    bal = build_balancer("mgda", {"mode": "representation"}, TASKS)
    with pytest.raises(ConfigError, match=r"_TwoTrunks.*'exact'"):
        bal.check_model(model)
    with pytest.raises(ConfigError, match="'exact'"):
        Trainer(model, TASKS, bal, TrainConfig(), quiet=True)
    bal.check_model(_tiny_model())  # hard sharing has one
    exact = build_balancer("mgda", {}, TASKS)
    exact.check_model(model)
    assert isinstance(exact, GradientBalancer)
    weights = _step(exact, model, ["a", "b", "c"])  # and the exact engine trains it
    assert set(weights) == {"a", "b", "c"} and all(p.grad is not None for p in model.parameters())


def test_invalid_mode_fails_before_the_run_directory_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polytask.models.architectures import HardSharing

    monkeypatch.setattr(HardSharing, "single_representation", False)
    raw = synthetic_raw(balancer="mgda", epochs=1)
    raw["balancer"]["mode"] = "representation"
    frame = make_mmoe_synthetic(200, 0.9, n_features=4, seed=0)
    with pytest.raises(ConfigError, match=r"balancer\.mode 'representation'.*'exact'"):
        run(config_from_dict(raw), frame=frame, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_graddrop_needs_representation_mode() -> None:
    with pytest.raises(ConfigError, match="'representation'"):
        build_balancer("graddrop", {}, TASKS)
    with pytest.raises(ConfigError, match="'representation'"):
        build_balancer("graddrop", {"mode": "exact"}, TASKS)


def test_missing_optional_solver_fails_at_build(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "cvxpy" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match=r"'cagrad'.*cvxpy.*polytask\[solvers\]"):
        build_balancer("cagrad", {}, TASKS)
    build_balancer("mgda", {}, TASKS)  # methods without optional solvers still build


def test_a_failing_method_surfaces_with_balancer_and_step(monkeypatch: pytest.MonkeyPatch) -> None:
    model, names = _tiny_model(), ["a", "b", "c"]
    bal = build_balancer("mgda", {}, TASKS)
    assert isinstance(bal, GradientBalancer)
    for step in range(2):
        _step(bal, model, names, seed=step)
    cached = bal.cached.clone()

    def boom(self: MGDAWeighting, gramian: Tensor) -> Tensor:
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(MGDAWeighting, "forward", boom)
    with pytest.raises(PolytaskError, match=r"balancer 'mgda' failed at step 3: solver exploded"):
        _step(bal, model, names, seed=2)
    # Never a silent fallback to equal (or old) weights: no update was back-propagated.
    assert all(p.grad is None for p in model.shared_parameters())
    assert torch.equal(bal.cached, cached)


def test_non_finite_weights_are_an_error() -> None:
    class NaNs(GramianWeighting):
        def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
            return torch.full((len(tasks),), math.nan)

    bal = GradientBalancer(TASKS, NaNs(), EngineParams(), "nans")
    with pytest.raises(PolytaskError, match=r"'nans' produced non-finite weights at step 1"):
        _step(bal, _tiny_model(), ["a", "b", "c"])


def test_nash_mtl_with_a_zero_gradient_task_raises_in_training() -> None:
    model = _tiny_model()
    bal = build_balancer("nash_mtl", {}, TASKS)
    inputs, targets = _batch()
    outputs = bal.forward(model, inputs)
    losses = _losses(outputs, targets, ["a", "c"])
    losses["b"] = 0.0 * outputs["b"].sum()  # present, but its gradient is exactly zero
    expected = r"balancer 'nash_mtl' failed at step 1: nash_mtl: task #1 has a zero gradient"
    with pytest.raises(PolytaskError, match=expected):
        bal.backward(dict(sorted(losses.items())), model)


@pytest.mark.parametrize("mode", ["exact", "representation"])
def test_unit_weights_reproduce_the_equal_balancer_exactly(mode: GradientMode) -> None:
    class Ones(GramianWeighting):
        def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
            return torch.ones(len(tasks), dtype=gramian.dtype)

    model, names = _tiny_model(), ["a", "b", "c"]
    twin = copy.deepcopy(model)
    bal = GradientBalancer(TASKS, Ones(), EngineParams(mode=mode), "ones")
    assert _step(bal, model, names) == {"a": 1.0, "b": 1.0, "c": 1.0}
    equal = build_balancer("equal", {}, TASKS)
    inputs, targets = _batch()
    equal.backward(_losses(equal.forward(twin, inputs), targets, names), twin)
    # The update of every parameter is the gradient of the summed loss. Exact mode forms the
    # shared layers' gradients from their output gradients (issue 18), summing in another
    # order than autograd's backward: float32 rounding, hence atol 1e-6.
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


# -- 5. training the synthetic benchmark ---------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_frame() -> Any:
    return make_mmoe_synthetic(1000, 0.9, n_features=16, seed=0)


TRAINING = [(m, "exact") for m in GRAMIAN_METHODS] + [
    (m, "representation") for m in ("mgda", "upgrad", "nash_mtl", "graddrop")
]


@pytest.mark.parametrize("name,mode", TRAINING)
def test_each_method_trains_the_synthetic_benchmark(
    name: str, mode: str, synthetic_frame: Any
) -> None:
    raw = synthetic_raw(epochs=5, batch_size=64, lr=3e-3)
    raw["balancer"] = {"name": name, "mode": mode}
    result = run(config_from_dict(raw), frame=synthetic_frame, quiet=True)
    assert result.metrics["value"]["r2"] > 0.6, result.metrics
    assert result.metrics["label"]["auroc"] > 0.85, result.metrics
    for record in result.fit.history:
        assert set(record.grad_norms) == {"value", "label"}, record.grad_norms
        assert all(math.isfinite(v) and v > 0 for v in record.grad_norms.values()), record
        assert all(math.isfinite(w) for w in record.weights.values()), record.weights


# -- 6. exact resume ---------------------------------------------------------------------------


RESUMED: list[tuple[str, dict[str, Any]]] = [
    ("gradvac", {}),
    ("db_mtl", {}),
    ("pcgrad", {}),  # three tasks: random projection order
    ("graddrop", {"mode": "representation"}),
    ("mgda", {"update_every": 3}),  # the resume lands mid-cycle, on a reuse step
]


@pytest.mark.parametrize("name,params", RESUMED, ids=[n for n, _ in RESUMED])
def test_stateful_and_random_methods_resume_exactly(
    name: str, params: dict[str, Any], tmp_path: Path
) -> None:
    frame = make_mmoe_synthetic(600, 0.5, n_features=8, seed=4)
    raw = synthetic_raw(widths=(16,), dropout=0.2, epochs=4, batch_size=32, patience=None)
    # A third task (the unthresholded second target) so that task orders are really drawn.
    raw["data"]["ignore"] = []
    raw["tasks"].append({"name": "raw", "kind": "regression", "target": "y2_raw"})
    raw["balancer"] = {"name": name, **params}
    full, resumed = run_interrupted_and_resumed(raw, frame, tmp_path)
    assert [r.weights for r in full.fit.history] == [r.weights for r in resumed.fit.history]
    assert [r.grad_norms for r in full.fit.history] == [r.grad_norms for r in resumed.fit.history]
