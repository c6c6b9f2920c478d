"""Gradient diagnostics shared by the trainer and the balancing methods."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def task_gradient_norms(losses: dict[str, Tensor], params: list[nn.Parameter]) -> dict[str, float]:
    """‖∇_θ L_k‖ over ``params`` for each task, leaving the graph (and ``.grad``) intact."""
    params = [p for p in params if p.requires_grad]
    norms: dict[str, float] = {}
    for name, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squared = sum(float(g.pow(2).sum()) for g in grads if g is not None)
        norms[name] = squared**0.5
    return norms
