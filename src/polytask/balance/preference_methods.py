"""Preference-directed methods: train towards a chosen trade-off between the tasks, or train one
model for every trade-off.

``epo``
    Exact Pareto optimal search (Mahapatra & Rajan, "Multi-Task Learning with User Preferences:
    Gradient Descent with Controlled Ascent in Pareto Optimization", ICML 2020). Given a
    preference ``r``, it seeks the Pareto-optimal point where ``r_k L_k`` is the same for every
    task (the *preference ray*: a task with more weight ends with a proportionally smaller
    loss). Each step solves a small linear program over the task Gramian for weights ``α`` on
    the simplex: while the losses are off the ray (non-uniformity
    ``μ = KL(r⊙L / Σ r⊙L ‖ 1/K)`` above ``eps``) it *balances* — it ascends the losses that
    are too low relative to the ray, if need be, while descending the others; once on the ray it
    *descends* along a direction that decreases every loss. Gradient-level: run by
    :mod:`polytask.balance.gradient_engine`, which supplies the Gramian (no K × P Jacobian).
``cosmos``
    COSMOS (Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective
    Learning", ICDM 2021): one preference-conditioned network learns the whole front in a
    single run. Each step draws ``r ~ Dirichlet(α)``, runs the model conditioned on ``r``
    (:mod:`polytask.models.conditioning`) and minimises ``Σ_k r_k L_k − λ cos(·)``, a weighted
    sum plus a cosine term that pulls the loss vector onto a ray, so different preferences map
    to different points of the front even where it is not convex. See :class:`COSMOS` for the
    one deliberate difference from the authors' code (which ray).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linprog
from torch import Tensor, nn

from polytask.balance.base import BALANCERS, Balancer
from polytask.balance.gradient_engine import EngineParams, GradientBalancer, GramianWeighting
from polytask.balance.gradient_methods import unit_trace
from polytask.config_errors import Schema
from polytask.errors import ConfigError, PolytaskError
from polytask.tasks import Task

if TYPE_CHECKING:
    from polytask.models.model import MultiTaskModel

# -- EPO -------------------------------------------------------------------------------------


def non_uniformity(weighted: np.ndarray) -> float:
    """EPO's ``μ(r⊙L)``: the KL divergence of the normalised ``r⊙L`` from the uniform
    distribution; 0 exactly on the preference ray."""
    share = weighted / weighted.sum()
    share = share[share > np.finfo(np.float64).eps]
    return float(np.sum(share * np.log(share * len(weighted))))


def epo_weights(
    gramian: np.ndarray, losses: np.ndarray, preference: np.ndarray, eps: float
) -> np.ndarray:
    """The EPO search direction's weights ``α`` (on the simplex) for one step.

    ``gramian`` is ``C = J Jᵀ`` of the tasks' gradients, ``losses`` the (positive) losses and
    ``preference`` the ``r``. Follows the authors' ``EPO_LP``: with ``a = r ⊙ (log(K·l̂) − μ)``
    (``l̂`` the normalised ``r⊙L``; descending along ``Jᵀa`` moves ``r⊙L`` towards uniform) and
    ``Ca = C a``:

    * balance (``μ > eps``): maximise ``αᵀCa`` subject to ``(Cα)_j ≥ Ca_j`` for the tasks with
      ``Ca_j ≤ 0`` (not made worse than the balancing direction would), ``(Cα)_j ≥ 0`` for the
      tasks with the largest ``r_j L_j`` (they must not ascend), and none for the others (they
      may ascend: the *controlled ascent*); without any ``Ca_j > 0``, ``Cα ≥ 0`` throughout;
    * descend (``μ ≤ eps``): maximise ``Σ_j (Cα)_j`` subject to ``Cα ≥ 0`` and
      ``αᵀCa ≥ min(max_j Ca_j, 0)`` (stay on the ray), relaxed to ``Cα ≥ 0`` alone when that is
      infeasible.

    ``Cα ≥ 0`` is always feasible (MGDA's min-norm point satisfies it), so a step never fails
    for want of a solution. The LPs are solved by HiGHS through :func:`scipy.optimize.linprog`
    (the authors use cvxpy with GLPK)."""
    k = len(losses)
    rl = preference * np.maximum(losses, np.finfo(np.float64).tiny)
    share = rl / rl.sum()
    mu = non_uniformity(rl)
    a = preference * (np.log(np.maximum(share * k, np.finfo(np.float64).tiny)) - mu)
    ca = gramian @ a
    simplex = {"A_eq": np.ones((1, k)), "b_eq": [1.0], "bounds": [(0.0, None)] * k}
    attempts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if mu > eps:
        ascending = ca > 0
        if ascending.any():
            top = rl >= rl.max() - 1e-12 * abs(rl.max())
            rows = ~ascending | top
            rhs = np.where(top, 0.0, ca)[rows]
        else:
            rows, rhs = np.ones(k, dtype=bool), np.zeros(k)
        attempts.append((-ca, -gramian[rows], -rhs))
    else:
        floor = min(float(ca.max()), 0.0)
        attempts.append(
            (-gramian.sum(axis=0), np.vstack([-gramian, -ca[None, :]]), np.r_[np.zeros(k), -floor])
        )
    # Relaxed problem (Cα ≥ 0 only): always feasible, the fallback of either mode.
    attempts.append((-gramian.sum(axis=0), -gramian, np.zeros(k)))
    for cost, a_ub, b_ub in attempts:
        result = linprog(cost, A_ub=a_ub, b_ub=b_ub, method="highs", **simplex)
        if result.status == 0:
            alpha: np.ndarray = np.clip(np.asarray(result.x, dtype=np.float64), 0.0, None)
            normalised: np.ndarray = alpha / alpha.sum()
            return normalised
    raise PolytaskError(f"epo: no linear program had a solution ({result.message})")


class ExactParetoOptimal(GramianWeighting):
    """EPO's weights from the Gramian (see :func:`epo_weights`). The Gramian is scaled to unit
    trace first: the LP's solution does not change with the gradients' common scale, and the
    solver's tolerances stay relative."""

    def __init__(self, preference: list[float], eps: float) -> None:
        super().__init__()
        self.preference = np.asarray(preference, dtype=np.float64)
        self.eps = eps

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        g = unit_trace(gramian.detach().double()).numpy()
        alpha = epo_weights(g, losses.detach().double().numpy(), self.preference[tasks], self.eps)
        return torch.as_tensor(alpha, dtype=gramian.dtype)


class EPOParams(EngineParams):
    preference: list[float] = Field(
        min_length=2,
        description="the preference r, one positive weight per task in task order; EPO seeks "
        "the Pareto-optimal point with r_k L_k equal for every task",
    )
    eps: float = Field(
        default=1e-4, gt=0, description="non-uniformity below which a step descends (on the ray)"
    )


@BALANCERS.register(
    "epo",
    params=EPOParams,
    summary="exact Pareto optimal search on a preference ray, EPO (Mahapatra & Rajan 2020)",
)
def build_epo(tasks: list[Task], params: BaseModel) -> Balancer:
    assert isinstance(params, EPOParams)
    # r_k = 0 puts log(0) in the balancing direction; EPO's ray needs every task.
    r = _positive_per_task(params.preference, tasks, "balancer.preference", "weights")
    engine = EngineParams.model_validate({k: getattr(params, k) for k in EngineParams.model_fields})
    total = sum(r)
    return GradientBalancer(
        tasks, ExactParetoOptimal([v / total for v in r], params.eps), engine, "epo"
    )


def _positive_per_task(values: list[float], tasks: list[Task], key: str, what: str) -> list[float]:
    """``values``, one per task in task order, checked finite and positive."""
    if len(values) != len(tasks):
        names = ", ".join(t.name for t in tasks)
        raise ConfigError(f"{key}: {len(values)} {what} for {len(tasks)} tasks ({names})")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"{key}: every one of the {what} must be positive, got {values}")
    return [float(v) for v in values]


# -- COSMOS ----------------------------------------------------------------------------------

CosmosRay = Literal["epo", "paper"]
CosmosSampling = Literal["example", "batch"]


class COSMOSParams(Schema):
    model_config = ConfigDict(populate_by_name=True)
    alpha: float | list[float] = Field(
        default=1.2,
        description="Dirichlet concentration of the sampled preferences (one value, or one per "
        "task); the paper uses 1.2 on Multi-MNIST",
    )
    lam: float = Field(
        default=0.5,
        ge=0.0,
        alias="lambda",
        description="weight λ of the cosine term (the paper: 2 on Multi-MNIST, 0.01 on tables; "
        "0.5 here: with λ = 2 a MultiMNIST run was unstable early and stopped early)",
    )
    ray: CosmosRay = Field(
        default="epo",
        description="epo: cosine between r⊙L and the all-ones vector (r_k L_k equal: more "
        "weight, lower loss); paper: cosine between r and L, as in the authors' code",
    )
    sampling: CosmosSampling = Field(
        default="example",
        description="example: one preference per training example (YOTO), which batch "
        "normalisation leaves intact; batch: one per batch, as in the paper",
    )


def scale_row_gradients(output: Tensor, weights: Tensor) -> Tensor:
    """``output`` unchanged in value, its gradient row ``i`` multiplied by ``weights[i]``: a
    loss averaged over the rows then back-propagates the ``weights``-weighted average."""
    w = weights.reshape(-1, *([1] * (output.dim() - 1))).to(output.dtype)
    return output.detach() + (output - output.detach()) * w


class COSMOS(Balancer):
    """COSMOS (Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep Multi-Objective
    Learning", ICDM 2021) on a preference-conditioned model (:mod:`polytask.models.
    conditioning`): one network trained for every preference ``r`` at once, by minimising over
    the tasks present in the batch

        ``Σ_k r_k L_k − λ · cos(u, v)``

    with ``r ~ Dirichlet(α)`` drawn from torch's global generator (seeded and checkpointed by
    the trainer, so a resumed run draws the same preferences) and the model conditioned on it.

    **Which ray.** The authors' code takes ``cos(r, L)``, largest when ``L ∝ r``: the task with
    more weight is pulled towards the *larger* loss, against the weighted sum, and with the
    paper's λ = 2 the cosine term wins near the middle of the simplex, so a user asking for
    70 % on task A would get a model worse on A. polytask's default (``ray = "epo"``) takes
    ``cos(r⊙L, 1)``, largest when ``r_k L_k`` is equal for every task: the EPO preference ray,
    along which more weight means a lower loss, as in the weighted sum (and the point
    :func:`polytask.studies.pareto.closest_to_preference` picks). ``ray = "paper"`` restores the
    authors' term.

    **One preference per example** (``sampling = "example"``, the default), as in loss-
    conditional training (Dosovitskiy & Djolonga, "You Only Train Once", ICLR 2020), rather than
    the paper's one per batch: a batch-normalisation layer downstream of the conditioning sees
    in training batches of *one* preference, whose statistics differ from the running averages
    over all preferences that it uses at prediction time, so a per-batch model works near the
    average preference and collapses away from it (measured on MultiMNIST: left-digit accuracy
    0.83 at r = (0.5, 0.5) but 0.12 at (0.95, 0.05)). With a preference per row, every batch
    mixes preferences as the running statistics do. Each row ``i`` is run with its own ``r_i``
    and its loss weighted by ``r_ik`` through its gradient (:func:`scale_row_gradients` by
    ``r_ik / r̄_k``): the linear term is exactly ``mean_i Σ_k r_ik ℓ_ik``; the cosine term is
    taken on the batch means ``r̄`` and ``L`` (exact with ``sampling = "batch"``).

    The reported weights are ``∂(objective)/∂L_k`` at the step's losses and ``r̄``;
    back-propagating ``Σ_k w_k L_k`` through the (row-scaled) outputs gives the objective's
    gradient.
    """

    #: The forward pass is conditioned on the step's sampled preferences.
    changes_forward = True

    def __init__(
        self,
        tasks: list[Task],
        alpha: list[float],
        lam: float,
        ray: CosmosRay,
        sampling: CosmosSampling,
    ) -> None:
        super().__init__(tasks)
        self.lam, self.ray, self.sampling = lam, ray, sampling
        self.concentration = torch.tensor(alpha, dtype=torch.float32)
        self._index = {n: i for i, n in enumerate(self.task_names)}
        #: The step's mean preference r̄ (the preference itself with one per batch).
        self._preference: Tensor | None = None

    def check_model(self, model: MultiTaskModel) -> None:
        if not getattr(model, "preference_conditioned", False):
            raise ConfigError(
                "balancer 'cosmos' trains one model for every preference, so the model must "
                "take one: set model.preference_conditioning = 'film' (or 'input')"
            )
        batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if self.sampling == "batch" and batch_norm:
            raise ConfigError(
                "balancer.sampling 'batch' draws one preference per batch, and the model's "
                "batch normalisation would see a different mixture of preferences in training "
                "than at prediction; use balancer.sampling = 'example'"
            )

    def forward(self, model: MultiTaskModel, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        rows = next(iter(inputs.values())).shape[0]
        dirichlet = torch.distributions.Dirichlet(self.concentration)
        if self.sampling == "example":
            r = dirichlet.sample((rows,))
        else:
            r = dirichlet.sample().expand(rows, -1)
        mean = r.mean(dim=0)
        self._preference = mean
        with model.preferring(r):
            outputs: dict[str, Tensor] = model(inputs)
        if self.sampling == "batch":
            return outputs
        return {
            k: scale_row_gradients(v, r[:, self._index[k]] / mean[self._index[k]])
            for k, v in outputs.items()
        }

    def _objective(self, losses: Tensor, r: Tensor) -> Tensor:
        weighted = (r * losses).sum()
        if self.lam == 0 or len(losses) < 2:
            return weighted  # the cosine of two 1-vectors is constant
        if self.ray == "epo":
            cos = torch.cosine_similarity(r * losses, torch.ones_like(losses), dim=0)
        else:
            cos = torch.cosine_similarity(losses, r, dim=0)
        return weighted - self.lam * cos

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        if self._preference is None:
            raise PolytaskError("cosmos: weights asked for before any conditioned forward pass")
        names = list(losses)
        r = self._preference[[self._index[n] for n in names]]
        point = torch.stack([losses[n].detach().float() for n in names]).requires_grad_()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._objective(point, r), point)
        return dict(zip(names, grad, strict=True))


@BALANCERS.register(
    "cosmos",
    params=COSMOSParams,
    summary="one preference-conditioned model for the whole front, COSMOS (Ruchte & Grabocka 2021)",
)
def build_cosmos(tasks: list[Task], params: BaseModel) -> Balancer:
    assert isinstance(params, COSMOSParams)
    alpha = params.alpha if isinstance(params.alpha, list) else [params.alpha] * len(tasks)
    alpha = _positive_per_task(alpha, tasks, "balancer.alpha", "Dirichlet concentrations")
    return COSMOS(tasks, alpha, params.lam, params.ray, params.sampling)
