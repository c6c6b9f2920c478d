"""A model against its reference, the one definition: per task the primary metric of both,
the relative change signed so that negative means the model is better (and, for people, the
raw change with the word better/worse in the metric's own direction), and Δm. The run's
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


#: The uncertainty of one run's comparison, in words (the table's caption, results.json).
SINGLE_RUN_NOTE = (
    "one run of each model: Δm and the changes carry no uncertainty estimate "
    "(polytask compare trains over seeds and gives confidence intervals)"
)


def outcome(value: float | None, reference: float | None, higher_is_better: bool) -> str:
    """``better``, ``worse`` or ``same``: ``value`` against ``reference`` in the metric's own
    direction (a fall in AUROC is worse, a fall in MAE better); ``-`` when either is missing."""
    if value is None or reference is None or math.isnan(value) or math.isnan(reference):
        return "-"
    if value == reference:
        return "same"
    return "better" if (value > reference) == higher_is_better else "worse"


def change_text(value: float | None, reference: float | None, percent: bool = True) -> str:
    """The raw change ``value - reference`` (and with ``percent`` its percentage of
    ``|reference|``), unsigned by direction: ``-0.0251 (-3.00%)`` for an AUROC that fell 3%.
    Read it with :func:`outcome`."""
    if value is None or reference is None or math.isnan(value) or math.isnan(reference):
        return "-"
    diff = value - reference
    if reference == 0 or not percent:
        return f"{diff:+.4f}"
    return f"{diff:+.4f} ({100.0 * diff / abs(reference):+.2f}%)"


@dataclass
class TaskComparison:
    """One task's primary metric for the model and its reference.

    ``relative_change_pct`` is signed like Δm (negative = the model is better, whatever the
    metric's direction); :attr:`change` is the plain difference and :attr:`outcome` says in
    words which side is better."""

    task: str
    metric: str
    higher_is_better: bool
    multi_task: float
    single_task: float | None
    relative_change_pct: float | None

    @property
    def change(self) -> float | None:
        """``multi_task - single_task`` in the metric's unit (None without a reference)."""
        if self.single_task is None:
            return None
        return self.multi_task - self.single_task

    @property
    def outcome(self) -> str:
        return outcome(self.multi_task, self.single_task, self.higher_is_better)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "change": self.change, "outcome": self.outcome}


@dataclass
class Comparison:
    """Per-task rows and the overall Δm (NaN when there are no baselines)."""

    split: str
    rows: list[TaskComparison] = field(default_factory=list)
    delta_m_pct: float = math.nan
    #: What the multi-task model is compared with: single-task nets, or a student's teachers.
    reference: str = "single-task"
    #: Pooled (micro) rows of task templates (:mod:`polytask.evaluate.pooled`): every row's
    #: own-task prediction, all of a template's tasks together; not part of Δm.
    pooled: list[TaskComparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "delta_m_pct": self.delta_m_pct,
            "delta_m_definition": DELTA_M_DEFINITION,
            "tasks": [r.to_dict() for r in self.rows],
            "reference": self.reference,
            **({"pooled": [r.to_dict() for r in self.pooled]} if self.pooled else {}),
            "uncertainty": SINGLE_RUN_NOTE,
        }

    def table(self) -> Table:
        """Per task: both values, the raw change and whether the model is better or worse on
        that metric; Δm and the single-run note as the caption. Fits 80 columns (a long task
        name breaks over lines in its own cell, never ends in "…")."""
        table = Table(title=f"Per-task {self.split} metrics: multi-task vs {self.reference}")
        table.add_column("task", overflow="fold")
        for col in ("metric", "multi-task", self.reference, "change", "outcome"):
            table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
        for r in [*self.rows, *self.pooled]:
            arrow = "↑" if r.higher_is_better else "↓"
            stl = "-" if r.single_task is None else f"{r.single_task:.4f}"
            table.add_row(
                r.task,
                f"{r.metric} {arrow}",
                f"{r.multi_task:.4f}",
                stl,
                change_text(r.multi_task, r.single_task, percent=False),
                r.outcome,
            )
        if not math.isnan(self.delta_m_pct):
            table.caption = (
                f"Δm = {self.delta_m_pct:+.2f}% (< 0: multi-task better on average); "
                f"{SINGLE_RUN_NOTE}"
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
