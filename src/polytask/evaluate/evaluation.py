"""Running a model over a split: raw outputs, per-task losses and metrics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.data.tensors import TensorData
from polytask.devices import module_device, to_device
from polytask.distributed import collective
from polytask.evaluate.metrics import compute_metrics
from polytask.losses import TaskLoss
from polytask.tasks import Task
from polytask.tasks.kinds.tokens import pad_rows


@torch.no_grad()
def predict_outputs(
    model: nn.Module, inputs: dict[str, Tensor], batch_size: int
) -> dict[str, Tensor]:
    """Raw outputs of ``model`` in eval mode, computed in chunks of ``batch_size`` rows."""
    was_training = model.training
    model.eval()
    device = module_device(model)  # the outputs stay there: the losses and metrics follow
    try:
        n = next(iter(inputs.values())).shape[0]
        # No rows: one pass over the empty inputs still gives every output its shape.
        chunks: list[dict[str, Tensor]] = [
            model(to_device({k: v[start : start + batch_size] for k, v in inputs.items()}, device))
            for start in range(0, max(n, 1), batch_size)
        ]
    finally:
        model.train(was_training)
    # Token-level outputs of each chunk are trimmed to its longest sentence: pad_rows pads
    # them with zeros (the padding value of the sequence contract) before concatenating.
    return {k: pad_rows([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


def evaluate_data(
    model: nn.Module, tasks: list[Task], data: TensorData, batch_size: int
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Per-task mean loss over valid labels and per-task metrics on ``data``.

    In a data-parallel run each rank predicts its share of the rows and the outputs are
    gathered, so every rank computes the same losses and metrics (and early stopping decides
    the same) as one process would."""
    group = collective()
    if group.active and len(data) >= group.world_size:
        start, stop = group.share(len(data))
        mine = predict_outputs(
            model, {k: v[start:stop] for k, v in data.inputs.items()}, batch_size
        )
        outputs = {k: group.gather_rows(v) for k, v in mine.items()}
    else:
        outputs = predict_outputs(model, data.inputs, batch_size)
    losses: dict[str, float] = {}
    metrics: dict[str, dict[str, float]] = {}
    for task in tasks:
        out = outputs[task.name]
        tgt = data.targets[task.name].to(out.device)
        mask = data.masks[task.name].to(out.device)
        value = TaskLoss(task)(out, tgt, mask)
        losses[task.name] = float(value) if value is not None else float("nan")
        metrics[task.name] = compute_metrics(task, out, tgt, mask)
    return losses, metrics
