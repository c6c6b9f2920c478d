"""What fine-tuning did to the base model's tasks, checked rather than assumed.

* With the shared encoder frozen, a kept task's outputs must be exactly the base model's: both
  models are run on the same rows and compared bit for bit (``torch.equal``), and the frozen
  tensors (weights and batch-norm statistics) are compared with the base's.
* Once any shared parameter has trained, the base's tasks are scored again, with the base model
  and with the fine-tuned one, on a table labelled for them (``finetune.reference_data``, or the
  run's own test rows when they hold the labels), and every drop is reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from polytask.evaluate.delta import relative_change
from polytask.evaluate.evaluation import predict_outputs
from polytask.evaluate.metrics import higher_is_better
from polytask.run.predictor import Predictor


def compare_outputs(
    base: nn.Module,
    tuned: nn.Module,
    tasks: list[str],
    inputs: dict[str, Tensor],
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    """Per task: the largest absolute difference between the two models' raw outputs on
    ``inputs`` and whether they are bit-identical."""
    if not tasks or not inputs or next(iter(inputs.values())).shape[0] == 0:
        return {}
    before = predict_outputs(base, inputs, batch_size)
    after = predict_outputs(tuned, inputs, batch_size)
    result: dict[str, dict[str, Any]] = {}
    for task in tasks:
        a, b = before[task], after[task]
        result[task] = {
            "max_abs_diff": float((a.double() - b.double()).abs().max()),
            "unchanged": bool(torch.equal(a, b)),
        }
    return result


def unchanged_tensors(
    tuned: dict[str, Tensor], base: dict[str, Tensor], names: list[str]
) -> dict[str, Any]:
    """Whether every tensor ``names`` of the state dict ``tuned`` equals the base's, bit for
    bit; the names that differ (none, when the freeze held)."""
    changed = [n for n in names if not torch.equal(tuned[n], base[n])]
    return {"count": len(names), "unchanged": not changed, "changed": changed}


def remeasure(
    base: Predictor,
    tuned: Predictor,
    tasks: list[str],
    table: pd.DataFrame,
    source: str,
    base_dir: Path | None,
) -> dict[str, dict[str, Any]]:
    """Primary metric of each task of ``tasks`` whose label columns ``table`` holds, from the
    base and from the fine-tuned model; ``worse`` marks a drop (in the metric's direction)."""
    by_name = {t.name: t for t in tuned.tasks}
    scored = [n for n in tasks if all(c in table.columns for c in by_name[n].targets)]
    if not scored:
        return {}
    before = base.evaluate(table, scored, source, base_dir)
    after = tuned.evaluate(table, scored, source, base_dir)
    result: dict[str, dict[str, Any]] = {}
    for name in scored:
        task = by_name[name]
        metric = task.primary
        up = higher_is_better(task, metric)
        old = before[name].get(metric, math.nan)
        new = after[name][metric]
        change = relative_change(new, old, up)
        result[name] = {
            "metric": metric,
            "higher_is_better": up,
            "base": old,
            "finetuned": new,
            "change": new - old,
            # Signed as everywhere in polytask: positive = worse.
            "relative_change_pct": 100.0 * change,
            "worse": bool(change > 0),
        }
    return result


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The old tasks' checks of a fine-tuning run's ``results.json``, one line each."""
    old = summary.get("old_tasks", {})
    lines = []
    outputs = old.get("outputs", {})
    where = f"{outputs.get('rows', 0)} {outputs.get('split', '')} rows"
    for task, check in outputs.get("per_task", {}).items():
        if check["unchanged"]:
            lines.append(f"old task {task!r}: outputs unchanged (bit-identical on {where})")
        else:
            lines.append(
                f"old task {task!r}: outputs changed (max |difference| "
                f"{check['max_abs_diff']:.3g} on {where})"
            )
    frozen = old.get("frozen_tensors")
    if frozen and frozen["count"]:
        state = "bit-identical to the base" if frozen["unchanged"] else "CHANGED"
        lines.append(f"frozen tensors: {frozen['count']}, {state}")
    if old.get("measured"):
        for task, row in old.get("per_task", {}).items():
            verdict = "worse" if row["worse"] else "not worse"
            lines.append(
                f"old task {task!r}: {row['metric']} {row['base']:.4f} -> {row['finetuned']:.4f} "
                f"({row['change']:+.4f}, {verdict}) on {old['on']}"
            )
    elif old.get("reason"):
        lines.append(f"old tasks not re-measured: {old['reason']}")
    return lines
