"""Loss-level weighting methods: one backward pass on a weighted (or transformed) sum.

Every method here copes with partial steps: ``losses`` holds only the tasks with a valid label
in the batch, and weights, regularisers and state updates touch those tasks only. State lives
in buffers and parameters, so checkpoints (``state_dict``) resume exactly.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.balance.base import BALANCERS, Balancer, BalancerFactory
from polytask.config_errors import Schema
from polytask.tasks import Task


class LearnedLossScales(Balancer):
    """Shared mechanics of methods that learn one scalar ``s_k`` per task and minimise
    ``Σ_k w(s_k) L_k + r(s_k)``: a weight that scales the loss and a regulariser that keeps the
    scale from collapsing. The ``s_k`` are trained by the same optimiser as the network (the
    trainer adds the balancer's parameters, without weight decay); absent tasks are untouched.
    """

    stateful = True

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__(tasks)
        self.scales = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(())) for name in self.task_names}
        )

    def _weight(self, s: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _regulariser(self, s: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        w = self._weight(self._present_scales(losses))
        return dict(zip(losses, w.unbind(), strict=True))

    def _present_scales(self, losses: dict[str, Tensor]) -> Tensor:
        """The present tasks' ``s_k`` as one vector (absent tasks' scales stay out of the
        graph: no gradient reaches them)."""
        return torch.stack([self.scales[k] for k in losses])

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        # Vectorised over the present tasks (one node per operation, not one per task); the
        # elementwise values are those of the per-task terms, summed in the same order.
        s = self._present_scales(losses)
        w = self._weight(s)
        values = torch.stack(list(losses.values()))
        total = (w * values + self._regulariser(s)).sum()
        return total, dict(zip(losses, w.detach().unbind(), strict=True))


class UncertaintyWeighting(LearnedLossScales):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Each task k learns ``s_k = log σ_k²``; the objective is
    ``Σ_k ½ exp(−s_k) L_k + ½ s_k``, so noisier tasks get smaller weights while the ``½ s_k``
    term stops every σ from growing without bound.
    """

    def _weight(self, s: Tensor) -> Tensor:
        return 0.5 * torch.exp(-s)

    def _regulariser(self, s: Tensor) -> Tensor:
        return 0.5 * s


class ImpartialLossScaling(LearnedLossScales):
    """IMTL-L, the loss-balance half of impartial multi-task learning (Liu et al., "Towards
    Impartial Multi-task Learning", ICLR 2021): each task learns a scale ``s_k`` and the
    objective is ``Σ_k exp(s_k) L_k − s_k``, whose optimum in ``s_k`` makes every scaled loss
    ``exp(s_k) L_k`` equal to 1, so no task dominates by the size of its loss."""

    def _weight(self, s: Tensor) -> Tensor:
        return torch.exp(s)

    def _regulariser(self, s: Tensor) -> Tensor:
        return -s


class RandomWeighting(Balancer):
    """Random loss weighting, RLW (Lin et al., "Reasonable Effectiveness of Random Weighting",
    TMLR 2022): each step, weights are the softmax of standard normal draws over the present
    tasks, scaled to sum to the number of present tasks. Draws use torch's global generator,
    which the trainer seeds and checkpoints, so runs are reproducible and resumable."""

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        names = list(losses)
        w = torch.softmax(torch.randn(len(names)), dim=0) * len(names)
        return dict(zip(names, w, strict=True))


class GeometricLoss(Balancer):
    """Geometric loss strategy, GLS (Chennupati et al., CVPR Workshops 2019): minimise the
    geometric mean ``(Π_k L_k)^(1/K)`` of the present tasks' losses, which is invariant to each
    loss's scale. Its gradient equals a weighted sum with weights ``GM / (K · L_k)``, which are
    what is logged."""

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        gm = self._geometric_mean(losses).detach()
        values = torch.stack([v.detach() for v in losses.values()])
        return dict(zip(losses, (gm / (len(losses) * values)).unbind(), strict=True))

    @staticmethod
    def _geometric_mean(losses: dict[str, Tensor]) -> Tensor:
        # A loss of exactly 0 would give log(0); clamp to keep the step finite.
        logs = torch.log(torch.stack(list(losses.values())).clamp_min(1e-12))
        return torch.exp(logs.mean())

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self._geometric_mean(losses), self.weights(losses)


class DWAParams(Schema):
    temperature: float = Field(
        default=2.0,
        gt=0.0,
        description="T of the softmax over the tasks' loss ratios: larger is closer to "
        "equal weights",
    )


class DynamicWeightAverage(Balancer):
    """Dynamic weight average, DWA (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
    Attention", CVPR 2019): ``w_k = K exp(r_k / T) / Σ_j exp(r_j / T)`` with
    ``r_k = L_k(t−1) / L_k(t−2)`` from the mean training losses of the two previous epochs;
    equal weights for the first two epochs. A task whose loss falls slowly gets more weight.
    """

    stateful = True
    history: Tensor
    current: Tensor

    def __init__(self, tasks: list[Task], temperature: float) -> None:
        super().__init__(tasks)
        self.temperature = temperature
        k = len(self.task_names)
        # Epoch-mean losses of the last two epochs (row 0 = older); NaN = not seen yet.
        self.register_buffer("history", torch.full((2, k), math.nan, dtype=torch.float64))
        self.register_buffer("current", torch.ones(k, dtype=torch.float64))

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        new = torch.tensor(
            [mean_losses.get(n, math.nan) for n in self.task_names], dtype=torch.float64
        )
        # A task absent from a whole epoch (scheduled out, or its source not drawn) keeps both
        # of its values: its ratio stays the last one it earned.
        # (Seen in one epoch only: its ratio is 1.)
        absent = torch.isnan(new)
        keep = absent & ~torch.isnan(self.history[0])
        older = torch.where(keep, self.history[0], self.history[1])
        new = torch.where(absent, self.history[1], new)
        self.history.copy_(torch.stack([older, new]))
        ratio = self.history[1] / self.history[0]
        if bool(torch.isfinite(ratio).all()):
            k = len(self.task_names)
            self.current.copy_(k * torch.softmax(ratio / self.temperature, dim=0))

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        index = {n: i for i, n in enumerate(self.task_names)}
        rows = torch.tensor([index[k] for k in losses], device=self.current.device)
        return dict(zip(losses, self.current[rows].float().unbind(), strict=True))


def _without_params(cls: type[Balancer]) -> BalancerFactory:
    """Factory of a method whose only input is the task list."""

    def build(tasks: list[Task], params: BaseModel) -> Balancer:
        return cls(tasks)

    return build


for _name, _cls, _summary in (
    ("uncertainty", UncertaintyWeighting, "learned homoscedastic uncertainty (Kendall 2018)"),
    ("imtl_l", ImpartialLossScaling, "impartial loss scaling, IMTL-L (Liu et al. 2021)"),
    ("rlw", RandomWeighting, "random loss weighting (Lin et al. 2022)"),
    ("gls", GeometricLoss, "geometric mean of the losses (Chennupati et al. 2019)"),
):
    BALANCERS.register(_name, summary=_summary)(_without_params(_cls))


@BALANCERS.register("dwa", params=DWAParams, summary="dynamic weight average (Liu et al. 2019)")
def build_dwa(tasks: list[Task], params: BaseModel) -> Balancer:
    assert isinstance(params, DWAParams)
    return DynamicWeightAverage(tasks, params.temperature)
