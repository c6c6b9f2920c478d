"""Pooled (micro) metrics of a task template: every row's own-task prediction against its label,
all of the template's tasks together, with the kind's metrics.

For task-indexed data (a task per school, per landmine field) this is the number the community
reports, and the only meaningful one when a task has a dozen test rows. Classification
templates fit their classes once (every expanded task has the same classes in the same order),
and regression metrics are in the target's own unit, so the tasks' metric inputs concatenate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from polytask.data.tensors import TensorData
from polytask.evaluate.delta import relative_change
from polytask.evaluate.evaluation import predict_outputs
from polytask.evaluate.metrics import higher_is_better, make_metric
from polytask.evaluate.reference import TaskComparison
from polytask.tasks import Task
from polytask.tasks.template import TaskGroup

#: A task's metric inputs on a split: predictions and targets of its valid labels.
Pair = tuple[Tensor, Tensor]


def metric_pairs(
    model: nn.Module, tasks: Sequence[Task], data: TensorData, batch_size: int
) -> dict[str, Pair]:
    """Each task's metric inputs (valid labels only) from ``model`` on ``data``."""
    outputs = predict_outputs(model, data.inputs, batch_size)
    pairs: dict[str, Pair] = {}
    for task in tasks:
        out = outputs[task.name]
        target = data.targets[task.name].to(out.device)
        mask = data.masks[task.name].to(out.device)
        preds, tgt = task.spec.metric_inputs(task, out, target, mask)
        pairs[task.name] = (preds.detach().cpu(), tgt.detach().cpu())
    return pairs


def pooled_metrics(
    groups: Sequence[TaskGroup], tasks: Sequence[Task], pairs: Mapping[str, Pair]
) -> dict[str, dict[str, float]]:
    """Per group (by its name), the kind's metrics over every row of its tasks in ``pairs``;
    a group none of whose tasks is in ``pairs`` is left out."""
    by_name = {t.name: t for t in tasks}
    result: dict[str, dict[str, float]] = {}
    for group in groups:
        members = [n for n in group.tasks if n in pairs and n in by_name]
        if not members:
            continue
        first = by_name[members[0]]
        preds = torch.cat([pairs[n][0] for n in members])
        targets = torch.cat([pairs[n][1] for n in members])
        result[group.name] = _metrics(first, preds, targets)
    return result


def _metrics(task: Task, preds: Tensor, targets: Tensor) -> dict[str, float]:
    """``task``'s metrics of inputs already read as the metrics read them (see
    :func:`polytask.evaluate.metrics.compute_metrics`, which reads raw outputs)."""
    values: dict[str, float] = {}
    for name in task.metric_names:
        if targets.numel() == 0 or task.spec.degenerate(name, targets):
            values[name] = math.nan
            continue
        metric = make_metric(task, name)
        metric.update(preds, targets)
        values[name] = float(metric.compute())
    return values


def pooled_rows(
    groups: Sequence[TaskGroup],
    tasks: Sequence[Task],
    multi: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
) -> list[TaskComparison]:
    """The comparison rows of the pooled metrics (a template's primary metric), labelled
    ``<template> (pooled, K tasks)``, beside the per-task rows."""
    by_name = {t.name: t for t in tasks}
    rows: list[TaskComparison] = []
    for group in groups:
        if group.name not in multi or not group.tasks or group.tasks[0] not in by_name:
            continue
        task = by_name[group.tasks[0]]
        metric = task.primary
        up = higher_is_better(task, metric)
        value = multi[group.name][metric]
        ref = single.get(group.name, {}).get(metric)
        change = None if ref is None else 100.0 * relative_change(value, ref, up)
        label = f"{group.name} (pooled, {len(group.tasks)} tasks)"
        rows.append(TaskComparison(label, metric, up, value, ref, change))
    return rows
