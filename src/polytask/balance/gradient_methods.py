"""Gradient-level balancing methods, each a weighting of the per-task Gramian (or, for GradDrop,
an aggregation of the per-task gradients), run by :mod:`polytask.balance.gradient_engine`.

Where torchjd (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024) ships a
Gramian weighting for a method, that implementation is used as is; this module adds what it
lacks: a Nash-MTL that works from the Gramian alone and fails loudly instead of silently reusing
old weights when its problem has no solution, DB-MTL on the Gramian, per-task-set state for
GradVac (whose state is indexed by row), and clear errors when an optional solver is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn
from torchjd.aggregation import (
    AlignedMTLWeighting,
    CAGradWeighting,
    DualProjWeighting,
    FairGradWeighting,
    GradDrop,
    GradVacWeighting,
    IMTLGWeighting,
    MGDAWeighting,
    PCGradWeighting,
    UPGradWeighting,
)

from polytask.balance.base import BALANCERS, Balancer
from polytask.balance.gradient_engine import (
    EngineParams,
    GradientBalancer,
    GramianWeighting,
    MatrixAggregator,
)
from polytask.config_errors import Steps
from polytask.errors import ConfigError, PolytaskError
from polytask.tasks import Task


def unit_trace(gramian: Tensor) -> Tensor:
    """``G / tr G`` (``G`` itself when every gradient is zero).

    The weights of MGDA, PCGrad, GradVac, CAGrad, IMTL-G, Aligned-MTL, UPGrad and DualProj do not
    change when every gradient is scaled by the same factor, but torchjd's implementations hold
    absolute thresholds (CAGrad and the UPGrad/DualProj projector zero a Gramian whose trace is
    below 1e-4, GradVac adds 1e-8 to products of norms), so small gradients (norms below ~1e-2,
    common late in training) silently gave zero or mean weights. On a unit-trace Gramian those
    thresholds are relative, as intended, and the weights are the same at every scale.
    """
    trace = gramian.diagonal().sum()
    return gramian / trace if bool(trace > 0) else gramian


class TorchJDWeighting(GramianWeighting):
    """A stateless, scale-invariant torchjd Gramian weighting, applied to the unit-trace Gramian
    (see :func:`unit_trace`; the losses and task indices are not needed)."""

    def __init__(self, weighting: nn.Module) -> None:
        super().__init__()
        self.weighting = weighting

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        weights: Tensor = self.weighting(unit_trace(gramian))
        return weights


class FairGradScaled(GramianWeighting):
    """FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024) via
    torchjd's ``FairGradWeighting``: the ``w > 0`` with ``G w = w^(-1/α)``.

    torchjd solves that system by least squares from ``w = 1/K``, which for gradient norms far
    from 1 stops far from the solution (at norms ~1e-4 the update was a third of its true
    length). The solution scales exactly: if ``Ĝ ŵ = ŵ^(-1/α)`` with ``Ĝ = G / t`` then
    ``w = t^(-α/(1+α)) ŵ`` solves the original system, so the solver always sees a unit-trace
    Gramian and the weights are rescaled.
    """

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.weighting = FairGradWeighting(alpha=alpha)

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        trace = gramian.diagonal().sum()
        weights: Tensor = self.weighting(unit_trace(gramian))
        if bool(trace > 0):
            weights = weights * trace ** (-self.alpha / (1 + self.alpha))
        return weights


class GradVacPerTaskSet(GramianWeighting):
    """GradVac (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine", ICLR 2021) via torchjd's
    ``GradVacWeighting``, whose EMA targets φ̂ are indexed by Gramian row. With missing labels the
    rows change meaning from step to step, so one instance is kept per set of present tasks; the
    targets are saved through ``get_extra_state`` so a resume continues them exactly. It sees the
    unit-trace Gramian (:func:`unit_trace`), so its ``eps`` stays negligible for small gradients."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta
        self._by_set: dict[str, GradVacWeighting] = {}

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        key = ",".join(map(str, tasks))
        if key not in self._by_set:
            self._by_set[key] = GradVacWeighting(beta=self.beta)
        # float32 always, so the state's dtype key matches what a resume restores.
        weights: Tensor = self._by_set[key](unit_trace(gramian).float())
        return weights.to(gramian.dtype)

    def get_extra_state(self) -> dict[str, Any]:
        # torchjd keeps φ̂ in ``_phi_t`` and its shape/dtype key in ``_state_key``; a change there
        # is caught by the checkpoint round-trip test.
        return {
            key: w._phi_t.tolist()  # type: ignore[attr-defined]
            for key, w in self._by_set.items()
            if w._phi_t is not None
        }

    def set_extra_state(self, state: Any) -> None:
        self._by_set = {}
        for key, phi in dict(state).items():
            weighting = GradVacWeighting(beta=self.beta)
            weighting._phi_t = torch.tensor(phi, dtype=torch.float32)  # type: ignore[assignment]
            weighting._state_key = (len(phi), torch.float32)
            self._by_set[key] = weighting


class NashBargaining(GramianWeighting):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022).

    The bargaining solution is the ``α > 0`` with ``G α = 1/α`` (element-wise), ``G`` the Gramian
    normalised by its Frobenius norm as in the authors' code. That is the stationary point of the
    strictly convex ``½ αᵀGα − Σ log α_k``, found here by damped Newton steps in float64 from the
    Gramian alone (no cvxpy, no K × P Jacobian). The problem has no solution when a task's
    gradient is zero or when the gradients cancel exactly (two tasks' gradients pointing against
    each other: Pareto stationarity for two objectives of a small parameter), and the Newton
    iteration does not converge near such points. ``on_failure = "raise"`` (the default) stops
    the step with that message; ``"previous"`` reuses the last solved weights of the same task
    set, as the authors' code does silently (the first step still raises). The update norm
    ``‖Jᵀα‖`` is clipped to ``max_norm`` (0 disables), as in the paper's implementation.
    """

    def __init__(
        self,
        max_norm: float,
        max_iter: int = 100,
        tol: float = 1e-8,
        on_failure: Literal["raise", "previous"] = "raise",
    ) -> None:
        super().__init__()
        self.max_norm, self.max_iter, self.tol = max_norm, max_iter, tol
        self.on_failure = on_failure
        #: The last solved weights per task set (``on_failure = "previous"``).
        self._previous: dict[tuple[int, ...], Tensor] = {}
        #: Steps whose weights were reused because the bargaining problem had no solution.
        self.reused = 0

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        g = gramian.detach().double()
        key = tuple(tasks)
        try:
            scale = torch.linalg.matrix_norm(g)
            if not bool(scale > 0):
                raise PolytaskError("nash_mtl: every task gradient is zero")
            alpha = solve_bargaining(g / scale, self.max_iter, self.tol)
        except PolytaskError:
            if self.on_failure == "raise" or key not in self._previous:
                raise
            alpha = self._previous[key]
            self.reused += 1
        else:
            self._previous[key] = alpha
        if self.max_norm > 0:
            norm = torch.sqrt(alpha @ g @ alpha)
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return alpha.to(gramian.dtype)


def solve_bargaining(gramian: Tensor, max_iter: int = 100, tol: float = 1e-8) -> Tensor:
    """The ``α > 0`` solving ``G α = 1/α`` for a PSD ``G`` (float64), by damped Newton on
    ``½ αᵀGα − Σ log α``; raises :class:`PolytaskError` if it does not converge."""
    diag = gramian.diagonal()
    if bool((diag <= 0).any()):
        zero = int(torch.nonzero(diag <= 0)[0])
        raise PolytaskError(
            f"nash_mtl: task #{zero} has a zero gradient, so the bargaining solution does not exist"
        )
    alpha = 1.0 / diag.sqrt()
    for _ in range(max_iter):
        residual = gramian @ alpha - 1.0 / alpha
        if float(residual.norm()) <= tol * float((1.0 / alpha).norm()):
            return alpha
        hessian = gramian + torch.diag(1.0 / alpha**2)
        try:
            step = torch.linalg.solve(hessian, residual)
        except RuntimeError:  # torch.linalg.LinAlgError: α diverging, gradients cancel
            break
        t = 1.0
        while bool((alpha - t * step <= 0).any()):
            t *= 0.5  # stay inside the positive orthant, where the objective is defined
        alpha = alpha - t * step
    raise PolytaskError(f"nash_mtl: the bargaining problem did not converge in {max_iter} steps")


class DualBalancing(GramianWeighting):
    """DB-MTL (Lin, Ye, Xu, Shi & Zhang, "Dual-Balancing for Multi-Task Learning", 2023), on the
    Gramian. Loss scales are balanced by the log transform (the gradient of ``log L_k`` is
    ``∇L_k / L_k``); gradient magnitudes by scaling each task's log-loss gradient to the largest
    one: weight on ``L_k`` is ``(max_j n_j / n_k) / L_k`` with ``n_k`` an exponential moving
    average (factor ``beta``) of ``‖∇ log L_k‖``.

    Difference from the paper, stated plainly: the paper averages the gradient *vectors*, which
    needs K × P state and the full Jacobian; here only their norms are averaged (K numbers from
    the Gramian's diagonal), and each task's direction is the current one.
    """

    ema: Tensor

    def __init__(self, n_tasks: int, beta: float, eps: float = 1e-8) -> None:
        super().__init__()
        self.beta, self.eps = beta, eps
        self.register_buffer("ema", torch.full((n_tasks,), float("nan"), dtype=torch.float64))

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        logs = losses.detach().double() + self.eps
        norms = gramian.detach().double().diagonal().clamp_min(0).sqrt() / logs
        old = self.ema[tasks]
        new = torch.where(torch.isnan(old), norms, self.beta * old + (1 - self.beta) * norms)
        self.ema[tasks] = new
        scale = new.max() / new.clamp_min(torch.finfo(torch.float64).tiny)
        return (scale / logs).to(gramian.dtype)


class GradDropAggregator(MatrixAggregator):
    """GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
    Sign Dropout", NeurIPS 2020) via torchjd: per coordinate of the representation gradient,
    keep the positive or the negative components with probability given by their sign purity.
    Randomness comes from torch's global generator, which the trainer seeds and checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.aggregator = GradDrop()

    def forward(self, matrix: Tensor) -> Tensor:
        vector: Tensor = self.aggregator(matrix)
        return vector


# -- parameters ----------------------------------------------------------------------------------
class MGDAParams(EngineParams):
    epsilon: float = Field(default=1e-3, gt=0, description="Frank-Wolfe stopping tolerance")
    max_iters: Steps = Field(
        default=100, description="Frank-Wolfe iterations of the min-norm solver at most"
    )


class CAGradParams(EngineParams):
    c: float = Field(default=0.4, ge=0, description="radius of the conflict-averse ball")


class GradVacParams(EngineParams):
    beta: float = Field(default=0.01, ge=0, le=1, description="EMA factor of the target cosines")


class NashParams(EngineParams):
    max_norm: float = Field(default=1.0, ge=0, description="clip ‖update‖ to this; 0 = off")
    on_failure: Literal["raise", "previous"] = Field(
        default="raise",
        description="when the bargaining problem has no solution (a zero gradient, gradients "
        "cancelling exactly): raise, or reuse the previous step's weights (the authors' code)",
    )


class AlignedParams(EngineParams):
    scale_mode: str = Field(
        default="min",
        pattern="^(min|median|rmse)$",
        description="scale of the aligned update: the smallest singular value (min), the "
        "median or the RMS",
    )


class FairGradParams(EngineParams):
    alpha: float = Field(default=1.0, ge=0, description="α of α-fairness (1 = proportional)")


class DBMTLParams(EngineParams):
    beta: float = Field(default=0.9, ge=0, lt=1, description="EMA factor of the gradient norms")


Maker = Callable[[list[Task], Any], GramianWeighting | MatrixAggregator]

#: Optional packages each method needs (the ``solvers`` extra), checked when the run is built.
_REQUIRES: dict[str, tuple[str, ...]] = {
    "cagrad": ("cvxpy", "clarabel"),
    "fairgrad": ("scipy",),
    "upgrad": ("quadprog", "qpsolvers"),
    "dualproj": ("quadprog", "qpsolvers"),
}


def _stateless(factory: Callable[[Any], nn.Module]) -> Maker:
    return lambda tasks, p: TorchJDWeighting(factory(p))


_METHODS: list[tuple[str, type[EngineParams], str, Maker]] = [
    (
        "mgda",
        MGDAParams,
        "min-norm point of the convex hull, MGDA (Sener & Koltun 2018)",
        _stateless(lambda p: MGDAWeighting(epsilon=p.epsilon, max_iters=p.max_iters)),
    ),
    ("pcgrad", EngineParams, "projecting conflicting gradients, PCGrad (Yu et al. 2020)",
     _stateless(lambda p: PCGradWeighting())),
    ("gradvac", GradVacParams, "gradient vaccine, GradVac (Wang et al. 2021)",
     lambda tasks, p: GradVacPerTaskSet(p.beta)),
    ("cagrad", CAGradParams, "conflict-averse gradient descent, CAGrad (Liu et al. 2021)",
     _stateless(lambda p: CAGradWeighting(c=p.c))),
    ("imtl_g", EngineParams, "impartial gradient weighting, IMTL-G (Liu et al. 2021)",
     _stateless(lambda p: IMTLGWeighting())),
    ("nash_mtl", NashParams, "Nash bargaining solution, Nash-MTL (Navon et al. 2022)",
     lambda tasks, p: NashBargaining(p.max_norm, on_failure=p.on_failure)),
    ("aligned_mtl", AlignedParams, "aligned gradients, Aligned-MTL (Senushkin et al. 2023)",
     _stateless(lambda p: AlignedMTLWeighting(scale_mode=p.scale_mode))),
    ("upgrad", EngineParams, "unconflicting projections, UPGrad (Quinton & Rey 2024)",
     _stateless(lambda p: UPGradWeighting())),
    ("dualproj", EngineParams, "projection onto the dual cone, DualProj (Quinton & Rey 2024)",
     _stateless(lambda p: DualProjWeighting())),
    ("fairgrad", FairGradParams, "α-fair resource allocation, FairGrad (Ban & Ji 2024)",
     lambda tasks, p: FairGradScaled(p.alpha)),
    ("graddrop", EngineParams, "gradient sign dropout, GradDrop (Chen et al. 2020)",
     lambda tasks, p: GradDropAggregator()),
    ("db_mtl", DBMTLParams,
     "dual-balancing of loss scales and gradient norms, DB-MTL (Lin et al. 2023)",
     lambda tasks, p: DualBalancing(len(tasks), p.beta)),
]  # fmt: skip


def _factory(name: str, make: Maker) -> Callable[[list[Task], BaseModel], Balancer]:
    def build(tasks: list[Task], params: BaseModel) -> Balancer:
        assert isinstance(params, EngineParams)
        missing = [m for m in _REQUIRES.get(name, ()) if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"balancer {name!r} needs the optional package(s) {', '.join(missing)}: "
                "pip install 'polytask[solvers]'"
            )
        engine = EngineParams.model_validate(
            {k: getattr(params, k) for k in EngineParams.model_fields}
        )
        return GradientBalancer(tasks, make(tasks, params), engine, name)

    return build


for _name, _params, _summary, _make in _METHODS:
    BALANCERS.register(_name, params=_params, summary=_summary)(_factory(_name, _make))
