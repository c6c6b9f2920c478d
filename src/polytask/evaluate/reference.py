"""A model against its reference, the one definition: per task the primary metric of both,
the relative change signed so that negative means the model is better, and Δm. The run's
table, ``polytask compare`` and the report all read a :class:`Comparison` made here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from polytask.evaluate.delta import delta_m, relative_change
from polytask.evaluate.metrics import higher_is_better
from polytask.tasks import Task

DELTA_M_DEFINITION = (
    "delta_m% = 100 * mean_k s_k (M_mtl,k - M_stl,k) / |M_stl,k| on each task's primary "
    "metric, s_k = -1 if higher is better else +1; negative = multi-task better"
)


@dataclass
class TaskComparison:
    task: str
    metric: str
    higher_is_better: bool
    multi_task: float
    single_task: float | None
    relative_change_pct: float | None


@dataclass
class Comparison:
    """Per-task rows and the overall Δm (NaN when there are no baselines)."""

    split: str
    rows: list[TaskComparison] = field(default_factory=list)
    delta_m_pct: float = math.nan
    #: What the multi-task model is compared with: single-task nets, or a student's teachers.
    reference: str = "single-task"

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "delta_m_pct": self.delta_m_pct,
            "delta_m_definition": DELTA_M_DEFINITION,
            "tasks": [r.__dict__ for r in self.rows],
            "reference": self.reference,
        }

    def table(self) -> Table:
        table = Table(title=f"Per-task {self.split} metrics: multi-task vs {self.reference}")
        for col in ("task", "metric", "multi-task", self.reference, "rel. change"):
            table.add_column(col, justify="left" if col in ("task", "metric") else "right")
        for r in self.rows:
            arrow = "↑" if r.higher_is_better else "↓"
            stl = "-" if r.single_task is None else f"{r.single_task:.4f}"
            change = "-" if r.relative_change_pct is None else f"{r.relative_change_pct:+.2f}%"
            table.add_row(r.task, f"{r.metric} {arrow}", f"{r.multi_task:.4f}", stl, change)
        if not math.isnan(self.delta_m_pct):
            table.caption = (
                f"Δm = {self.delta_m_pct:+.2f}%  (relative changes are signed so that "
                "negative = multi-task better)"
            )
        return table


def against_reference(
    tasks: list[Task],
    multi: dict[str, dict[str, float]],
    single: dict[str, dict[str, float]],
    split: str,
    reference: str = "single-task",
) -> Comparison:
    """Compare each task's primary metric between the multi-task model and the ``single``
    metrics of the ``reference`` models (single-task nets, or a distilled student's teachers)."""
    result = Comparison(split, reference=reference)
    values, refs, hib = {}, {}, {}
    for t in tasks:
        m = t.primary
        up = higher_is_better(t, m)
        stl = single.get(t.name, {}).get(m)
        change = None if stl is None else 100.0 * relative_change(multi[t.name][m], stl, up)
        result.rows.append(TaskComparison(t.name, m, up, multi[t.name][m], stl, change))
        values[t.name], hib[t.name] = multi[t.name][m], up
        if stl is not None:
            refs[t.name] = stl
    result.delta_m_pct = delta_m(values, refs, hib)
    return result
