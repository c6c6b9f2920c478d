"""The ``inverse_loss`` balancer: each present task weighted by the inverse of its own loss.

``w_k = n / (L_k · Σ_j 1/L_j)`` over the ``n`` tasks present in the batch, computed on detached
losses (the weights are constants of the step, not trained). Every weighted loss ``w_k L_k`` is
then the same, so no task dominates because its loss is on a larger scale, and the weights sum
to ``n`` as equal weighting's do. The update is that of ``Σ_k log L_k`` up to a positive factor,
the geometric-mean objective (Chennupati et al., CVPR Workshops 2019).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from polytask.balance.base import BALANCERS, Balancer
from polytask.tasks import Task


class InverseLossParams(BaseModel):
    """Parameters of ``inverse_loss`` (checked when the config is loaded)."""

    model_config = ConfigDict(extra="forbid")
    eps: float = Field(default=1e-8, gt=0.0, description="added to each loss before inverting")


class InverseLoss(Balancer):
    """Weights ``n (1/L_k) / Σ_j 1/L_j`` over the present tasks; finite and positive."""

    def __init__(self, tasks: list[Task], eps: float) -> None:
        super().__init__(tasks)
        self.eps = eps

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        names = list(losses)
        inverse = 1.0 / (torch.stack([losses[k].detach() for k in names]) + self.eps)
        w = len(names) * inverse / inverse.sum()
        return dict(zip(names, w, strict=True))


@BALANCERS.register(
    "inverse_loss", params=InverseLossParams, summary="each task weighted by 1 / its loss"
)
def build_inverse_loss(tasks: list[Task], params: BaseModel) -> Balancer:
    assert isinstance(params, InverseLossParams)
    return InverseLoss(tasks, params.eps)
