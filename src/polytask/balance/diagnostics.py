"""Gradient diagnostics shared by the trainer and the balancing methods.

Everything here is a function of the K × K Gramian ``G = J Jᵀ`` of the tasks' gradients of the
shared parameters (``G_ab = ⟨g_a, g_b⟩``) and of the weights the balancer applied:

* gradient norm ``‖g_a‖ = sqrt(G_aa)``;
* gradient cosine ``cos_ab = G_ab / sqrt(G_aa G_bb)``; a *conflict* is a step with
  ``cos_ab < 0`` (the conflicting-gradients criterion of PCGrad, Yu et al., "Gradient Surgery for
  Multi-Task Learning", NeurIPS 2020);
* dominance, the share of the combined update that comes from each task. With the combined
  gradient ``g = Σ_k w_k g_k``, task k's share is the component of its weighted gradient along
  ``g``, as a fraction of ``‖g‖²``::

      d_k = ⟨w_k g_k, g⟩ / ‖g‖² = w_k (G w)_k / (wᵀ G w),      Σ_k d_k = 1.

  This is the additive decomposition of ``‖g‖²`` into per-task terms. A share above 1 or below
  0 is possible and meaningful: a negative share means the task's weighted gradient points
  against the update the others produce (it is overruled), and the others' shares then sum to
  more than 1. The decomposition is of the combined *gradient*, before clipping (a common scale
  that leaves the shares unchanged) and before the optimiser's per-coordinate preconditioning.

Gradient-level balancers already hold ``G`` (or the per-task gradients) at every weight update
and return it (:class:`polytask.balance.base.BackwardResult`); for loss-level methods the
trainer's gradient diagnostics measure it once per epoch with :func:`task_gradient_gramian`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from polytask.distributed import LOCAL, Collective, collective


@dataclass(frozen=True)
class TaskGramian:
    """The Gramian of the named tasks' gradients (``gramian[a, b] = ⟨g_a, g_b⟩``, float64)."""

    names: list[str]
    gramian: Tensor

    def norms(self) -> dict[str, float]:
        """``‖g_a‖`` of each task."""
        diag = self.gramian.diagonal().clamp_min(0).sqrt()
        return {n: float(v) for n, v in zip(self.names, diag, strict=True)}

    def cosines(self) -> dict[tuple[str, str], float]:
        """``cos(g_a, g_b)`` for every pair ``a`` before ``b`` in ``names``; a pair with a zero
        gradient has no direction and is left out."""
        g = self.gramian.double()
        out: dict[tuple[str, str], float] = {}
        for i, a in enumerate(self.names):
            for j in range(i + 1, len(self.names)):
                denominator = math.sqrt(max(float(g[i, i]), 0.0) * max(float(g[j, j]), 0.0))
                if denominator > 0.0:
                    out[(a, self.names[j])] = _clip_unit(float(g[i, j]) / denominator)
        return out

    def dominance(self, weights: dict[str, float]) -> dict[str, float] | None:
        """Each task's share ``w_k (G w)_k / (wᵀ G w)`` of the combined update (module
        docstring); ``None`` when the combined gradient is zero (no update to share)."""
        w = torch.tensor([weights.get(n, 0.0) for n in self.names], dtype=torch.float64)
        gw = self.gramian.double() @ w
        total = float(w @ gw)
        if not total > 0.0:
            return None
        shares = w * gw / total
        return {n: float(v) for n, v in zip(self.names, shares, strict=True)}


def task_gradient_gramian(losses: dict[str, Tensor], params: list[nn.Parameter]) -> TaskGramian:
    """The Gramian of ``∇_θ L_k`` over ``params`` (of the global batch in a data-parallel run),
    one backward pass per task, leaving the graph (and ``.grad``) intact."""
    params = [p for p in params if p.requires_grad]
    names = list(losses)
    jacobian = task_jacobian([losses[n] for n in names], params, collective()).double()
    return TaskGramian(names, (jacobian @ jacobian.T).cpu())


def gradient_gramian(
    names: list[str],
    grads: Sequence[Sequence[Tensor | None]],
    params: Sequence[nn.Parameter],
) -> TaskGramian:
    """The Gramian of per-task gradients given parameter by parameter (``grads[k][p]``, None =
    the task's loss does not reach that parameter). The K gradients are held at once (K × the
    size of ``params``) so their inner products can be taken; products are in float64."""
    k = len(names)
    gramian = torch.zeros(k, k, dtype=torch.float64)
    for index, param in enumerate(params):
        rows = [g[index] for g in grads]
        if all(r is None for r in rows):
            continue
        stacked = torch.stack(
            [(r if r is not None else torch.zeros_like(param)).reshape(-1).double() for r in rows]
        )
        gramian += stacked @ stacked.T
    return TaskGramian(names, gramian)


def pair_key(a: str, b: str) -> str:
    """The metrics-log key of a task pair (``a`` before ``b`` in task order)."""
    return f"{a}|{b}"


def _clip_unit(value: float) -> float:
    # Rounding can put |cos| a few ulps above 1 for (anti)parallel gradients.
    return min(1.0, max(-1.0, value))


def task_jacobian(
    losses: Sequence[Tensor],
    params: Sequence[nn.Parameter],
    group: Collective = LOCAL,
    *,
    batched: bool = False,
) -> Tensor:
    """The ``[K, P]`` matrix of the tasks' gradients with respect to ``params`` (flattened, in
    order; zero where a loss does not reach a parameter), summed over the ranks of ``group``:
    in a data-parallel run each rank's loss is its share of the global mean, so the sum is the
    global batch's Jacobian, whose Gramian is exact (an average of per-rank Gramians is not:
    it misses the cross-rank terms). One backward pass per task, or with ``batched`` one
    vectorised backward of the K directions (``is_grads_batched``; not through collectives,
    so not under global batch norm), leaving the graph intact."""
    if batched:
        stacked = torch.stack(list(losses))
        eye = torch.eye(len(losses), dtype=stacked.dtype, device=stacked.device)
        found = torch.autograd.grad(
            stacked, list(params), eye, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
        k = len(losses)
        jacobian = torch.cat(
            [
                (g if g is not None else p.new_zeros((k, *p.shape))).reshape(k, -1)
                for g, p in zip(found, params, strict=True)
            ],
            dim=1,
        )
        group.sum_([jacobian])
        return jacobian
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    jacobian = torch.stack(rows)
    group.sum_([jacobian])
    return jacobian
