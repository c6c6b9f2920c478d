"""The trainer's side of data parallelism (:mod:`polytask.distributed`): each rank's share of a
global batch, per-task losses that are the global batch's means, and the gradient sum.

Every rank draws the same global batch of B rows and keeps its contiguous share
(:func:`share_batch`). A task's loss on one process is the mean over the batch's valid labels;
on W ranks, rank r computes the mean over its own labels, ``m_r = S_r / d_r``, and
:func:`global_losses` rescales it to its share of the global mean, ``m_r d_r / D`` with
``D = Σ d_r`` (one all-reduce of 2K numbers carries every ``d_r`` and ``S_r``). The value each
rank hands to the balancer is the global loss ``Σ S_r / D``, the same number on every rank, so
loss-driven balancers (uncertainty, DWA, FAMO, GradNorm, ...) stay in lockstep; its gradient is
the rank's share only, so summing the ranks' gradients (:func:`sum_gradients`) gives the global
loss's gradient. A task labelled on some ranks but not this one still takes part everywhere,
with a zero share that keeps it in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from polytask.data.tensors import Batch
from polytask.distributed import Collective


def share_batch(batch: Batch, group: Collective) -> Batch:
    """This rank's contiguous share of the rows of a global ``batch``."""
    start, stop = group.share(len(batch))

    def rows(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v[start:stop] for k, v in tensors.items()}

    return Batch(rows(batch.inputs), rows(batch.targets), rows(batch.masks), rows(batch.soft))


def global_losses(
    local: dict[str, Tensor],
    denominators: dict[str, Tensor],
    outputs: dict[str, Tensor],
    names: Sequence[str],
    group: Collective,
) -> dict[str, Tensor]:
    """Per task present anywhere in the global batch: a tensor whose value is the global
    batch's mean loss and whose gradient is this rank's share of it (module docstring)."""
    k = len(names)
    device = next(iter(outputs.values())).device
    packed = torch.zeros(2 * k, dtype=torch.float64, device=device)
    for i, name in enumerate(names):
        if name in local:
            d = denominators[name].to(device, torch.float64)
            packed[i] = d
            packed[k + i] = local[name].detach().double() * d
    group.sum_([packed])
    totals, sums = packed[:k], packed[k:]
    present = (totals > 0).tolist()
    found: dict[str, Tensor] = {}
    for i, name in enumerate(names):
        if not present[i]:
            continue
        value = (sums[i] / totals[i]).float()
        if name in local:
            share = local[name] * (denominators[name].to(device, torch.float64) / totals[i]).float()
        else:
            # No label of this task among this rank's rows: a zero share, still part of the
            # graph, so every rank runs the same backward passes (and their collectives).
            share = outputs[name].float().sum().nan_to_num(0.0, 0.0, 0.0) * 0.0
        found[name] = share + (value - share.detach())
    return found


def sum_gradients(params: Sequence[nn.Parameter], group: Collective, bucket_bytes: int) -> None:
    """Sum every parameter's gradient over the ranks (bucketed all-reduces). A parameter that
    no rank gave a gradient keeps none (``None``, not zeros: AdamW would move it)."""
    if not params:
        return
    flags = torch.tensor(
        [0.0 if p.grad is None else 1.0 for p in params],
        dtype=params[0].dtype,
        device=params[0].device,
    )
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    # The flags travel in the gradients' first bucket: one all-reduce more is not needed.
    group.sum_([flags, *grads], bucket_bytes)
    for p, flag in zip(params, flags.tolist(), strict=True):
        if flag == 0.0:
            p.grad = None


def average_batchnorm_statistics(model: nn.Module, group: Collective) -> None:
    """Average the running statistics of batch norms that normalised over each rank's rows
    only (``distributed.sync_batchnorm = false``), so evaluation uses one set everywhere."""
    buffers = [
        b
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for b in (m.running_mean, m.running_var)
        if b is not None
    ]
    if not buffers:
        return
    group.sum_(buffers)
    for b in buffers:
        b.div_(group.world_size)
