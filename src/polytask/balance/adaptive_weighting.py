"""Adaptive loss-level balancing: FAMO, smooth Tchebycheff scalarisation and GradNorm.

Each method turns the present tasks' losses into one backward pass whose gradient is a weighted
sum ``Σ_k w_k ∇L_k``; the reported weights are those ``w_k`` (``∂(objective)/∂L_k``).

Partial steps: ``losses`` holds only the tasks with a valid label in the batch. Weights are
computed over the present tasks, and every state update (logits, optimiser moments, warm-up
statistics, initial losses, learned weights) touches present tasks only, so an absent task's
state is exactly what it was. All state lives in buffers and parameters, so ``state_dict()``
captures it and a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.balance.base import BALANCERS, BackwardResult, Balancer
from polytask.balance.diagnostics import task_jacobian
from polytask.config_errors import MAX_STEPS, Schema
from polytask.errors import ConfigError, PolytaskError
from polytask.tasks import Task

# Adam's defaults (Kingma & Ba 2015; torch.optim.Adam), used by FAMO's logit optimiser.
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
# Floor for loss scales used as divisors: a loss that is exactly 0 must not give inf or NaN.
_TINY = 1e-30


def _per_task(
    values: dict[str, float] | None, tasks: list[Task], default: float, where: str
) -> list[float]:
    """One value per task (in task order) from an optional ``{task: value}`` mapping."""
    names = [t.name for t in tasks]
    values = values or {}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown task {unknown[0]!r}; tasks: {', '.join(names)}")
    return [float(values.get(n, default)) for n in names]


class _IndexedBalancer(Balancer):
    """A balancer whose state is one entry per task, addressed by the task's index."""

    stateful = True

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__(tasks)
        self._index = {n: i for i, n in enumerate(self.task_names)}

    def _indices(self, losses: dict[str, Tensor]) -> Tensor:
        return torch.tensor([self._index[k] for k in losses], dtype=torch.long)


# -- FAMO ------------------------------------------------------------------------------------


class FAMOParams(Schema):
    w_lr: float = Field(default=0.025, gt=0.0, description="Adam learning rate of the logits")
    gamma: float = Field(default=1e-3, ge=0.0, description="weight decay (L2) of the logits")
    eps: float = Field(default=1e-8, gt=0.0, description="added to L_k - min_k before the log")
    min_losses: dict[str, float] | None = Field(
        default=None, description="per-task lower bound of the loss (default 0)"
    )


class FAMO(_IndexedBalancer):
    """Fast adaptive multitask optimisation, FAMO (Liu, Liu, Jin, Stone & Liu, "FAMO: Fast
    Adaptive Multitask Optimization", NeurIPS 2023).

    Each task has a logit ``ξ_k``; over the present tasks ``z = softmax(ξ)`` and, with
    ``D_k = L_k − min_k + eps``, the network minimises ``Σ_k z_k log D_k / c`` where
    ``c = Σ_k z_k / D_k`` is held constant. Its gradient is ``Σ_k w_k ∇L_k`` with
    ``w_k = (z_k / D_k) / Σ_j (z_j / D_j)`` (summing to 1), the weights reported. Working on
    ``log D_k`` makes the step decrease every loss at a similar *relative* rate.

    The logits follow the paper's update: with ``δ_k = log D_k(before) − log D_k(after)`` the
    logit gradient is ``Jᵀ_softmax δ`` (plus the L2 term ``γ ξ``), stepped by Adam with
    learning rate ``w_lr``. A task whose loss fell more gets a smaller logit.

    Deviation from the paper: the official code re-evaluates the *same* batch after the
    parameter step to get ``D(after)``, which costs a second forward pass. Here ``D(after)`` is
    the *next* step's loss on the next batch, so the update of ``ξ`` happens at the start of the
    following step, before its weights are computed. That is an unbiased but noisier estimate
    of the same decrease, at no extra cost. A task takes part in an update only if it was
    present in both steps, and an update needs at least two such tasks (with one, the softmax
    is constant and only the weight decay would move its logit).

    Adam's moments and step counts are kept per task in buffers (``torch.optim`` state would
    not be in this module's ``state_dict``), so resuming is exact and an absent task's moments
    do not decay. A loss below its ``min_k`` is treated as ``min_k`` (``D`` stays positive).
    """

    logits: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_steps: Tensor
    prev_log_gap: Tensor
    prev_step: Tensor
    steps: Tensor
    min_losses: Tensor

    def __init__(
        self, tasks: list[Task], w_lr: float, gamma: float, eps: float, min_losses: list[float]
    ) -> None:
        super().__init__(tasks)
        self.w_lr, self.gamma, self.eps = w_lr, gamma, eps
        k = len(self.task_names)
        f64 = torch.float64
        self.register_buffer("logits", torch.zeros(k, dtype=f64))
        self.register_buffer("exp_avg", torch.zeros(k, dtype=f64))
        self.register_buffer("exp_avg_sq", torch.zeros(k, dtype=f64))
        self.register_buffer("adam_steps", torch.zeros(k, dtype=torch.long))
        # log D_k at the step the task was last present (NaN = never), and that step's number.
        self.register_buffer("prev_log_gap", torch.full((k,), math.nan, dtype=f64))
        self.register_buffer("prev_step", torch.full((k,), -1, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("min_losses", torch.tensor(min_losses, dtype=f64))

    def _gap(self, losses: Tensor, idx: Tensor) -> Tensor:
        return (losses - self.min_losses[idx].to(losses.dtype)).clamp_min(0.0) + self.eps

    def _update_logits(self, idx: Tensor, log_gap: Tensor) -> None:
        """One Adam step on the logits of the tasks present now and at the previous step."""
        prev = self.prev_log_gap[idx]
        both = (self.prev_step[idx] == self.steps - 1) & torch.isfinite(prev)
        if int(both.sum()) < 2:
            return
        sel = idx[both]
        delta = prev[both] - log_gap[both]
        xi = self.logits[sel]
        z = torch.softmax(xi, dim=0)
        # Jᵀ δ for the softmax Jacobian J = diag(z) − z zᵀ, plus torch Adam's L2 weight decay.
        grad = z * (delta - (z * delta).sum()) + self.gamma * xi
        t = (self.adam_steps[sel] + 1).to(torch.float64)
        m = _BETA1 * self.exp_avg[sel] + (1 - _BETA1) * grad
        v = _BETA2 * self.exp_avg_sq[sel] + (1 - _BETA2) * grad * grad
        m_hat = m / (1 - _BETA1**t)
        v_hat = v / (1 - _BETA2**t)
        self.logits[sel] = xi - self.w_lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)
        self.exp_avg[sel], self.exp_avg_sq[sel] = m, v
        self.adam_steps[sel] += 1

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Current weights, without advancing the state."""
        idx = self._indices(losses)
        stacked = torch.stack([v.detach() for v in losses.values()]).to(torch.float64)
        z = torch.softmax(self.logits[idx], dim=0)
        ratio = z / self._gap(stacked, idx)
        return dict(zip(losses, ratio / ratio.sum(), strict=True))

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The FAMO objective and weights; advances the state, so call it once per step."""
        idx = self._indices(losses)
        stacked = torch.stack(list(losses.values()))
        with torch.no_grad():
            log_gap = torch.log(self._gap(stacked.detach().to(torch.float64), idx))
            self._update_logits(idx, log_gap)
            self.prev_log_gap[idx] = log_gap
            self.prev_step[idx] = self.steps
            self.steps += 1
        z = torch.softmax(self.logits[idx], dim=0).to(stacked.dtype)
        gap = self._gap(stacked, idx)
        c = (z / gap).sum().detach()
        total = (z * torch.log(gap)).sum() / c
        return total, self.weights(losses)


@BALANCERS.register(
    "famo",
    params=FAMOParams,
    summary="fast adaptive multitask optimisation, FAMO (Liu et al. 2023)",
)
def build_famo(tasks: list[Task], params: BaseModel) -> Balancer:
    assert isinstance(params, FAMOParams)
    mins = _per_task(params.min_losses, tasks, 0.0, "balancer.min_losses")
    return FAMO(tasks, params.w_lr, params.gamma, params.eps, mins)


# -- smooth Tchebycheff -----------------------------------------------------------------------


class STCHParams(Schema):
    mu: float = Field(default=1.0, gt=0.0, description="smoothing; -> 0 gives the max")
    preference: dict[str, float] | None = Field(
        default=None, description="per-task preference (normalised); default: task weights"
    )
    ideal: dict[str, float] | None = Field(
        default=None, description="per-task ideal point z* (default 0), in loss units"
    )
    warmup_steps: int = Field(
        default=0,
        ge=0,
        le=MAX_STEPS,
        description="divide each loss by its mean over its first N steps",
    )


class SmoothTchebycheff(_IndexedBalancer):
    """Smooth Tchebycheff scalarisation, STCH (Lin, Zhang, Chen, Zhang & Liu, "Smooth
    Tchebycheff Scalarization for Multi-Objective Optimization", ICML 2024).

    ``L = μ log Σ_k exp(λ_k (L_k − z*_k) / (n_k μ))``: a smooth maximum of the weighted
    distances to the ideal point ``z*``, which tends to the Tchebycheff ``max_k λ_k(L_k − z*_k)``
    as ``μ → 0``; for small ``μ``, varying ``λ`` reaches (weakly) Pareto-optimal solutions on
    non-convex parts of the front too, which a weighted sum cannot. The preference
    ``λ`` is the tasks' declared weights (or ``preference``) normalised to sum to 1 over the
    present tasks. The reported weights are ``∂L/∂L_k = λ_k softmax_k(·) / n_k``.

    ``n_k`` = 1 unless ``warmup_steps`` > 0: then ``n_k`` is the mean of task k's loss over
    the first ``warmup_steps`` steps in which it was present (the running mean while fewer have
    been seen, then frozen), which puts losses of very different sizes on one scale. LibMTL
    instead optimises ``Σ log L_k`` for a warm-up epoch, takes the epoch-mean losses as a nadir
    point and applies STCH to ``log(L_k / nadir_k)``; counting steps per task keeps ours
    independent of epochs and correct for rarely labelled tasks, and keeping the linear losses
    keeps the objective the paper's.
    """

    preference: Tensor
    ideal: Tensor
    norm_sum: Tensor
    norm_count: Tensor

    def __init__(
        self,
        tasks: list[Task],
        mu: float,
        preference: list[float],
        ideal: list[float],
        warmup_steps: int,
    ) -> None:
        super().__init__(tasks)
        self.mu, self.warmup_steps = mu, warmup_steps
        k = len(self.task_names)
        self.register_buffer("preference", torch.tensor(preference, dtype=torch.float64))
        self.register_buffer("ideal", torch.tensor(ideal, dtype=torch.float64))
        self.register_buffer("norm_sum", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("norm_count", torch.zeros(k, dtype=torch.long))

    def _scales(self, idx: Tensor, losses: Tensor, *, update: bool) -> Tensor:
        if self.warmup_steps == 0:
            return torch.ones(len(idx), dtype=torch.float64)
        total, count = self.norm_sum[idx].clone(), self.norm_count[idx].clone()
        fresh = count < self.warmup_steps
        total[fresh] += losses[fresh]
        count[fresh] += 1
        if update:
            self.norm_sum[idx], self.norm_count[idx] = total, count
        return (total / count.clamp_min(1)).clamp_min(_TINY)

    def _lambda(self, idx: Tensor) -> Tensor:
        lam = self.preference[idx]
        total = lam.sum()
        # Only zero-preference tasks present: nothing to optimise this step (all weights 0).
        return lam / total if float(total) > 0 else lam

    def _parts(self, losses: dict[str, Tensor], *, update: bool) -> tuple[Tensor, Tensor]:
        """``(slope, shift)`` such that the objective's exponents are ``slope_k L_k − shift_k``."""
        idx = self._indices(losses)
        detached = torch.stack([v.detach() for v in losses.values()]).to(torch.float64)
        scale = self._scales(idx, detached, update=update)
        slope = self._lambda(idx) / (scale * self.mu)
        return slope, slope * self.ideal[idx]

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Current weights ``∂L/∂L_k``, without advancing the warm-up statistics."""
        return self._weights(losses, *self._parts(losses, update=False))

    def _weights(
        self, losses: dict[str, Tensor], slope: Tensor, shift: Tensor
    ) -> dict[str, Tensor]:
        detached = torch.stack([v.detach() for v in losses.values()]).to(torch.float64)
        soft = torch.softmax(slope * detached - shift, dim=0)
        return dict(zip(losses, self.mu * slope * soft, strict=True))

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The STCH objective and weights; advances the warm-up, so call it once per step."""
        slope, shift = self._parts(losses, update=True)
        stacked = torch.stack(list(losses.values()))
        exponents = slope.to(stacked.dtype) * stacked - shift.to(stacked.dtype)
        total = self.mu * torch.logsumexp(exponents, dim=0)
        return total, self._weights(losses, slope, shift)


@BALANCERS.register("stch", params=STCHParams, summary="smooth Tchebycheff (Lin et al. 2024)")
def build_stch(tasks: list[Task], params: BaseModel) -> Balancer:
    assert isinstance(params, STCHParams)
    # A task the preference does not name keeps its declared weight.
    declared = {t.name: t.weight for t in tasks}
    _per_task(params.preference, tasks, 0.0, "balancer.preference")  # rejects unknown tasks
    preference = [{**declared, **(params.preference or {})}[t.name] for t in tasks]
    if not all(math.isfinite(p) and p >= 0 for p in preference) or not any(preference):
        raise ConfigError(
            f"balancer.preference: needs finite values >= 0, not all 0 (got {preference})"
        )
    ideal = _per_task(params.ideal, tasks, 0.0, "balancer.ideal")
    return SmoothTchebycheff(tasks, params.mu, preference, ideal, params.warmup_steps)


# -- GradNorm ---------------------------------------------------------------------------------


@runtime_checkable
class HasLastSharedLayer(Protocol):
    """A model that names the parameters of its last shared layer (``MultiTaskModel``)."""

    def last_shared_parameters(self) -> list[nn.Parameter]: ...


class GradNormParams(Schema):
    alpha: float = Field(default=1.5, ge=0.0, description="strength of the rate balancing")
    min_weight: float = Field(
        default=1e-3, gt=0.0, description="floor of a weight before renormalisation"
    )


class GradNorm(_IndexedBalancer):
    """Gradient normalisation, GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm:
    Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018).

    Learnable weights ``w_k`` scale the losses: the network is trained on ``Σ_k w_k L_k``.
    At ``W`` = the last shared layer, ``G_k = w_k ‖∇_W L_k‖`` is each task's weighted gradient
    norm and ``Ḡ`` their mean; with the inverse training rate ``r_k = L̃_k / mean_j L̃_j``,
    ``L̃_k = L_k / L_k(0)``, the target is ``T_k = Ḡ r_k^α`` (held constant), and the weights
    follow the gradient of ``Σ_k |G_k − T_k|``: ``sign(G_k − T_k) ‖∇_W L_k‖``. A task that
    trains slowly (large ``r_k``) is pushed towards larger gradients.

    The ``w_k`` are parameters of this module, stepped by the trainer's optimiser (their own
    group, no weight decay); this balancer only sets their ``.grad``. As in the paper they are
    renormalised to sum to the number of tasks, here over the present tasks at the start of each
    step (so an absent task's weight is untouched). To keep them positive, a weight that an
    optimiser step took below ``min_weight`` is raised to it before renormalising.

    ``L_k(0)`` is the task's first observed loss (a buffer, NaN until seen), so a task first
    labelled late starts at ratio 1. The norms need ``K`` small gradient computations through
    the heads into ``W`` only; the network's gradient is then one ordinary backward pass.
    """

    initial_losses: Tensor

    def __init__(self, tasks: list[Task], alpha: float, min_weight: float) -> None:
        super().__init__(tasks)
        self.alpha, self.min_weight = alpha, min_weight
        self.loss_weights = nn.ParameterDict(
            {name: nn.Parameter(torch.ones(())) for name in self.task_names}
        )
        k = len(self.task_names)
        self.register_buffer("initial_losses", torch.full((k,), math.nan, dtype=torch.float64))

    def check_model(self, model: nn.Module) -> None:
        """GradNorm needs a last shared layer; say so when the run is built, not at step 1."""
        try:
            layer = model.last_shared_parameters()  # type: ignore[operator]
        except (PolytaskError, AttributeError, NotImplementedError) as exc:
            raise ConfigError(f"balancer 'gradnorm' needs a last shared layer: {exc}") from exc
        if not layer:
            raise ConfigError("balancer 'gradnorm' needs a last shared layer; the model has none")
        # A frozen encoder (fine-tuning) leaves GradNorm nothing to measure: fail now, before a
        # run directory is written, rather than at the first step.
        if not any(p.requires_grad for p in layer):
            raise ConfigError(
                "balancer 'gradnorm' weighs the tasks by their gradients on the last shared "
                "layer, which is frozen; use a loss-level balancer (e.g. 'static') or leave "
                "that layer trainable"
            )

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The present tasks' weights, floored and renormalised to sum to their number."""
        raw = torch.stack([self.loss_weights[k].detach() for k in losses])
        floored = raw.clamp_min(self.min_weight)
        return dict(zip(losses, floored * (len(losses) / floored.sum()), strict=True))

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        weights = self.weights(losses)
        return torch.stack([weights[k] * losses[k] for k in losses]).sum(), weights

    def backward(self, losses: dict[str, Tensor], model: nn.Module) -> BackwardResult:
        if not isinstance(model, HasLastSharedLayer):
            raise PolytaskError(
                f"balancer 'gradnorm' needs a model with last_shared_parameters(); "
                f"{type(model).__name__} has none"
            )
        layer = [p for p in model.last_shared_parameters() if p.requires_grad]
        if not layer:
            raise PolytaskError("balancer 'gradnorm': the last shared layer has no trainable ones")
        weights = self.weights(losses)
        with torch.no_grad():  # the paper's renormalisation, applied to the stored weights
            for name, w in weights.items():
                self.loss_weights[name].copy_(w)
        norms = self._gradient_norms(losses, layer)
        w = torch.stack(list(weights.values())).to(torch.float64)
        grads = self._weight_gradients(losses, w, norms)
        for name, g in zip(losses, grads, strict=True):
            p = self.loss_weights[name]
            g = self.scaled(g).to(p.dtype)  # the trainer unscales every gradient alike
            p.grad = g if p.grad is None else p.grad + g
        total = torch.stack([weights[k] * losses[k] for k in losses]).sum()
        self.scaled(total).backward()  # type: ignore[no-untyped-call]
        return BackwardResult({k: float(v) for k, v in weights.items()})

    def _gradient_norms(self, losses: dict[str, Tensor], layer: list[nn.Parameter]) -> Tensor:
        """``‖∇_W L_k‖`` for each present task (0 for a loss that does not reach ``W``); in a
        data-parallel run, of the global batch's gradients (summed over the ranks)."""
        jacobian = task_jacobian(list(losses.values()), layer, self.collective)
        norms: Tensor = jacobian.double().norm(dim=1)
        return norms

    def _weight_gradients(self, losses: dict[str, Tensor], w: Tensor, norms: Tensor) -> Tensor:
        """``∂/∂w_k Σ_j |G_j − T_j|`` with the targets held constant; records ``L_k(0)``."""
        idx = self._indices(losses)
        current = torch.stack([v.detach() for v in losses.values()]).to(torch.float64)
        first = torch.isnan(self.initial_losses[idx])
        self.initial_losses[idx[first]] = current[first]
        ratio = current / self.initial_losses[idx].clamp_min(_TINY)
        rate = ratio / ratio.mean().clamp_min(_TINY)
        g = w * norms
        target = g.mean() * rate.pow(self.alpha)
        return torch.sign(g - target) * norms


@BALANCERS.register("gradnorm", params=GradNormParams, summary="GradNorm (Chen et al. 2018)")
def build_gradnorm(tasks: list[Task], params: BaseModel) -> Balancer:
    assert isinstance(params, GradNormParams)
    return GradNorm(tasks, params.alpha, params.min_weight)
