"""From finished runs to pareto.json and pareto.md.

Objectives: each task's primary metric on the test split (validation metrics at the selected
epoch are stored beside them), minimised: a higher-is-better metric enters with its sign
flipped (:func:`polytask.studies.pareto.front.to_minimisation`); pareto.json keeps the metric values
themselves. A *set* of points is what one seed of one method produced: the sweep (one point
per preference), the conditioned model (one point per preference, one training run) or a
balancing method (one point). Each set gets its non-dominated mask and its hypervolume, all
sets of the document against one reference point (:data:`polytask.studies.pareto.front.
REFERENCE_RULE`, or ``[pareto] reference`` in metric units), so hypervolumes divide: the
summary gives each method's hypervolume as a fraction of the sweep's of the same seed, and its
training cost (sum of epoch seconds) as a fraction of the sweep's.

A point with an undefined metric (NaN) is kept in the list but left out of the masks and
hypervolumes (its mask entry is ``null``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

import numpy as np
from rich.table import Table

from polytask.evaluate.metrics import higher_is_better
from polytask.studies.pareto.front import (
    REFERENCE_RULE,
    default_reference,
    from_minimisation,
    hypervolume,
    non_dominated,
    to_minimisation,
)
from polytask.studies.pareto.plan import SweepPlan, sweep_name

KIND = "polytask-pareto"


def _primary(metrics: Mapping[str, Any], task: str, metric: str) -> float:
    value = (metrics.get(task) or {}).get(metric)
    return float(value) if isinstance(value, int | float) else math.nan


def _stat(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else math.nan)
    return {"mean": mean, "std": std, "values": values}


def _sets(plan: SweepPlan, results: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of each (method, seed), in plan order, with metric values per task."""
    tasks = plan.cfg.task_objects()
    primary = {t.name: t.primary for t in tasks}

    def values(metrics: Mapping[str, Any]) -> dict[str, float]:
        return {k: _primary(metrics, k, m) for k, m in primary.items()}

    sets: dict[tuple[str, int], dict[str, Any]] = {}
    for run in plan.runs:
        key = (run.group, run.spec.seed)
        entry = sets.setdefault(
            key,
            {
                "name": run.group,
                "kind": run.kind,
                "seed": run.spec.seed,
                "runs": 0,
                "finished": 0,
                "training_seconds": 0.0,
                "points": [],
            },
        )
        entry["runs"] += 1
        result = results.get(run.spec.path)
        if result is None:
            continue
        entry["finished"] += 1
        entry["training_seconds"] = round(entry["training_seconds"] + result["seconds"], 3)
        if run.kind == "conditioned":
            points = result["points"]
            for r, val, test in zip(
                points["preferences"], points["val"], points["test"], strict=True
            ):
                entry["points"].append(
                    {
                        "preference": r,
                        "run": run.spec.path,
                        "test": values(test),
                        "val": values(val),
                    }
                )
        else:
            entry["points"].append(
                {
                    "preference": list(run.preference) if run.preference is not None else None,
                    "run": run.spec.path,
                    "seconds": result["seconds"],
                    "test": values(result["test"]),
                    "val": values(result["val"]),
                }
            )
    out = list(sets.values())
    for entry in out:
        entry["complete"] = entry.pop("finished") == entry.pop("runs")
    return out


def summarise(plan: SweepPlan, results: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The pareto.json document for the runs finished so far (``results`` by run path)."""
    tasks = plan.cfg.task_objects()
    names = [t.name for t in tasks]
    hib = [higher_is_better(t, t.primary) for t in tasks]
    sets = _sets(plan, results)

    def objectives(entry: dict[str, Any]) -> np.ndarray:
        rows = [[p["test"][k] for k in names] for p in entry["points"]]
        return to_minimisation(np.asarray(rows, dtype=np.float64).reshape(-1, len(names)), hib)

    finite_rows = [row for e in sets for row in objectives(e) if np.isfinite(row).all()]
    section = plan.section
    reference: dict[str, Any] = {"rule": REFERENCE_RULE, "margin": section.margin}
    ref_objective: np.ndarray | None = None
    if section.reference is not None:
        metric = [section.reference[k] for k in names]
        ref_objective = to_minimisation(np.asarray(metric, dtype=np.float64), hib)
        reference["rule"] = "given in [pareto] reference (metric units)"
    elif finite_rows:
        ref_objective = default_reference(np.asarray(finite_rows), section.margin)
    if ref_objective is not None:
        metric_ref = from_minimisation(ref_objective, hib)
        reference["metric"] = dict(zip(names, metric_ref.tolist(), strict=True))
        reference["objective"] = ref_objective.tolist()
    for entry in sets:
        obj = objectives(entry)
        ok = np.isfinite(obj).all(axis=1) if len(obj) else np.zeros(0, dtype=bool)
        mask: list[bool | None] = [None] * len(obj)
        if ok.any():
            for i, flag in zip(np.flatnonzero(ok), non_dominated(obj[ok]), strict=True):
                mask[int(i)] = bool(flag)
        entry["non_dominated"] = mask
        entry["hypervolume"] = (
            hypervolume(obj[ok], ref_objective) if ref_objective is not None else math.nan
        )
    return {
        "kind": KIND,
        "tasks": {
            t.name: {"metric": t.primary, "higher_is_better": h}
            for t, h in zip(tasks, hib, strict=True)
        },
        "objectives": "each task's primary metric on the test split (checkpoint selected on "
        "validation); minimised with the sign of higher-is-better metrics flipped",
        "method": section.method,
        "sweep": sweep_name(section.method),
        "seeds": plan.seeds,
        "preferences": plan.preferences,
        "min_weight": section.min_weight,
        "reference": reference,
        "sets": sets,
        "summary": _summary(sets, sweep_name(section.method), plan.seeds),
    }


def _summary(sets: list[dict[str, Any]], sweep: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Per method: hypervolume, its ratio to the sweep's and the training cost, over seeds
    (complete sets only; a seed not finished yet is ``NaN`` there)."""
    by = {(e["name"], e["seed"]): e for e in sets}
    rows = []
    for name in dict.fromkeys(e["name"] for e in sets):
        hv, ratio, seconds, cost = [], [], [], []
        for seed in seeds:
            entry, base = by.get((name, seed)), by.get((sweep, seed))
            good = entry is not None and entry["complete"]
            base_ok = base is not None and base["complete"]
            hv.append(entry["hypervolume"] if good else math.nan)  # type: ignore[index]
            seconds.append(entry["training_seconds"] if good else math.nan)  # type: ignore[index]
            if good and base_ok and base["hypervolume"] > 0:  # type: ignore[index]
                ratio.append(entry["hypervolume"] / base["hypervolume"])  # type: ignore[index]
            else:
                ratio.append(math.nan)
            if good and base_ok and base["training_seconds"] > 0:  # type: ignore[index]
                cost.append(entry["training_seconds"] / base["training_seconds"])  # type: ignore[index]
            else:
                cost.append(math.nan)
        kind = next(e["kind"] for e in sets if e["name"] == name)
        rows.append(
            {
                "name": name,
                "kind": kind,
                "n_seeds": sum(math.isfinite(v) for v in hv),
                "hypervolume": _stat(hv),
                "hypervolume_ratio": _stat(ratio),
                "training_seconds": _stat(seconds),
                "cost_ratio": _stat(cost),
            }
        )
    return rows


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) and math.isfinite(value) else "–"


def _mean_std(stat: Mapping[str, Any], digits: int = 4, pct: bool = False) -> str:
    mean, std = stat.get("mean"), stat.get("std")
    if not (isinstance(mean, int | float) and math.isfinite(mean)):
        return "–"
    scale = 100.0 if pct else 1.0
    text = f"{mean * scale:.1f}%" if pct else _fmt(mean, digits)
    if isinstance(std, int | float) and math.isfinite(std) and std > 0:
        text += f" ± {std * scale:.1f}%" if pct else f" ± {_fmt(std, 2)}"
    return text


SUMMARY_HEADER = ["set", "kind", "seeds", "hypervolume", "HV / sweep", "train s", "cost / sweep"]


def summary_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    return [
        [
            row["name"],
            row["kind"],
            str(row["n_seeds"]),
            _mean_std(row["hypervolume"]),
            _mean_std(row["hypervolume_ratio"], pct=True),
            _mean_std(row["training_seconds"], 3),
            _mean_std(row["cost_ratio"], pct=True),
        ]
        for row in doc["summary"]
    ]


def terminal_table(doc: Mapping[str, Any]) -> Table:
    table = Table(title="Pareto front: hypervolume and training cost")
    for i, col in enumerate(SUMMARY_HEADER):
        table.add_column(col, justify="left" if i < 2 else "right")
    for row in summary_rows(doc):
        table.add_row(*row)
    return table


def mean_points(doc: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The points of set ``name`` averaged over the seeds whose set is complete, matched by
    position (the same preference, or the single point of a balancer)."""
    entries = [e for e in doc["sets"] if e["name"] == name and e["complete"] and e["points"]]
    if not entries:
        return []
    tasks = list(doc["tasks"])
    out = []
    for i, first in enumerate(entries[0]["points"]):
        test = {k: statistics.fmean([e["points"][i]["test"][k] for e in entries]) for k in tasks}
        out.append({"preference": first.get("preference"), "test": test})
    return out


def markdown(doc: Mapping[str, Any]) -> str:
    """pareto.md: set-up, the summary table and the points of the sweep and conditioned model."""
    tasks = doc["tasks"]
    names = list(tasks)
    ref = doc["reference"]
    objectives = ", ".join(f"{k} {v['metric']}" for k, v in tasks.items())
    lines = [
        "# Pareto front",
        "",
        f"- objectives (test split): {objectives}",
        f"- sweep: {doc['sweep']}, {len(doc['preferences'])} preferences (min weight "
        f"{doc['min_weight']:g}), seeds {doc['seeds']}",
        "- hypervolume reference: "
        + (
            ", ".join(f"{k} {_fmt(v)}" for k, v in ref["metric"].items())
            if "metric" in ref
            else "not yet (no finished run)"
        )
        + f" ({ref['rule']})",
        "",
        "| " + " | ".join(SUMMARY_HEADER) + " |",
        "| :--- | :--- | " + " | ".join(["---:"] * (len(SUMMARY_HEADER) - 2)) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(doc)]
    for name in dict.fromkeys(e["name"] for e in doc["sets"] if e["kind"] != "balancer"):
        points = mean_points(doc, name)
        if not points:
            continue
        arrows = [" ↑" if tasks[k]["higher_is_better"] else " ↓" for k in names]
        lines += [
            "",
            f"## {name}: test metrics per preference (mean over complete seeds)",
            "",
            "| preference | "
            + " | ".join(f"{k} {tasks[k]['metric']}{a}" for k, a in zip(names, arrows, strict=True))
            + " |",
            "| :--- | " + " | ".join(["---:"] * len(names)) + " |",
        ]
        for p in points:
            pref = ", ".join(f"{v:.3g}" for v in p["preference"] or [])
            lines.append(f"| {pref} | " + " | ".join(_fmt(p["test"][k]) for k in names) + " |")
    balancers = dict.fromkeys(e["name"] for e in doc["sets"] if e["kind"] == "balancer")
    rows = [(n, points[0]) for n in balancers if (points := mean_points(doc, n))]
    if rows:
        lines += [
            "",
            "## Balancing methods: test metrics (mean over complete seeds)",
            "",
            "| method | " + " | ".join(f"{k} {tasks[k]['metric']}" for k in names) + " |",
            "| :--- | " + " | ".join(["---:"] * len(names)) + " |",
        ]
        lines += [
            f"| {n} | " + " | ".join(_fmt(p["test"][k]) for k in names) + " |" for n, p in rows
        ]
    return "\n".join(lines) + "\n"
