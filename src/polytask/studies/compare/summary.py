"""From finished runs to compare.json: grid points chosen on validation, per-task means with
confidence intervals, Δm, the worst task and a verdict per task.

Tuning never looks at the test split. Of the runs that differ only in their grid point, the
one kept is the best on validation at its selected epoch: a single-task baseline by its task's
primary metric, a multi-task run by its validation Δm against the chosen single-task baselines
of the same seed and fraction. Ties (and undefined scores) keep the earlier grid point.

Per-seed lists in the output are aligned with ``seeds``; a seed whose runs have not finished
yet is ``null`` there and left out of means, intervals and tests (so a partial compare.json,
written while the comparison runs, is already correct for the seeds it covers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from polytask.evaluate.delta import delta_m, delta_m_all_metrics
from polytask.evaluate.metrics import higher_is_better, metric_range
from polytask.evaluate.reference import DELTA_M_DEFINITION
from polytask.evaluate.statistics import mean_ci, paired_verdict, verdict_test_description
from polytask.studies.compare.config import SINGLE_TASK
from polytask.studies.compare.plan import SINGLE_TASK_OVERRIDES, Plan, RunSpec
from polytask.studies.compare.runner import Outcome

KIND = "polytask-compare"

DEFINITION = (
    f"{DELTA_M_DEFINITION}. Computed per seed against the single-task baselines of the same "
    "seed, then averaged over seeds with a Student-t confidence interval. delta_m_all_metrics: "
    "the same mean taken over every metric of every task. change_pct (verdicts, worst_task): "
    "one task's 100 * s_k (M_mtl,k - M_stl,k) / |M_stl,k|, same sign (negative = multi-task "
    "better)."
)

#: A selection key: (fraction, configuration, task or None, seed).
Group = tuple[float, str, str | None, int]


class _Tasks:
    """Primary metric and metric directions of each task."""

    def __init__(self, plan: Plan) -> None:
        self.names = [t.name for t in plan.tasks]
        self.primary = {t.name: t.primary for t in plan.tasks}
        self.hib = {t.name: higher_is_better(t, t.primary) for t in plan.tasks}
        #: What each primary metric can take: intervals are clipped to it (AUROC <= 1).
        self.range = {t.name: metric_range(t, t.primary) for t in plan.tasks}
        self.hib_all = {
            t.name: {m: higher_is_better(t, m) for m in t.metric_names} for t in plan.tasks
        }

    def val_primary(self, outcome: Outcome, names: list[str]) -> dict[str, float]:
        """Validation primary metric of each of ``names`` (NaN when undefined)."""
        return {k: outcome.val.get(k, {}).get(self.primary[k], math.nan) for k in names}


def select(plan: Plan, outcomes: Mapping[str, Outcome]) -> dict[Group, tuple[RunSpec, Outcome]]:
    """The run kept for each (fraction, configuration, task, seed) whose grid is complete."""
    tasks = _Tasks(plan)
    groups: dict[Group, list[RunSpec]] = {}
    for spec in plan.runs:
        groups.setdefault(spec.group, []).append(spec)
    chosen: dict[Group, tuple[RunSpec, Outcome]] = {}
    # Baselines first: a multi-task group is scored against them.
    for key in sorted(groups, key=lambda g: g[1] != SINGLE_TASK):
        specs = groups[key]
        if any(s.path not in outcomes for s in specs):
            continue
        fraction, _, task, seed = key
        if len(specs) == 1:
            chosen[key] = (specs[0], outcomes[specs[0].path])
            continue
        if task is not None:
            # Relative change against a fixed value ranks like the metric itself.
            names = [task]
            reference = tasks.val_primary(outcomes[specs[0].path], names)
        else:
            names = tasks.names
            singles = [chosen.get((fraction, SINGLE_TASK, t, seed)) for t in names]
            if any(s is None for s in singles):
                continue
            reference = {
                t: tasks.val_primary(s[1], [t])[t]
                for t, s in zip(names, singles, strict=True)
                if s is not None
            }
        hib = {t: tasks.hib[t] for t in names}
        scores = [
            delta_m(tasks.val_primary(outcomes[s.path], names), reference, hib) for s in specs
        ]
        # An undefined score (no defined validation metric) never wins over a defined one.
        ranked = [(math.inf if math.isnan(v) else v, i) for i, v in enumerate(scores)]
        best = min(ranked)[1]
        chosen[key] = (specs[best], outcomes[specs[best].path])
    return chosen


def _primary(outcome: Outcome | None, task: str, metric: str) -> float | None:
    if outcome is None:
        return None
    value = outcome.test.get(task, {}).get(metric, math.nan)
    return None if math.isnan(value) else value


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


Chosen = tuple[RunSpec, Outcome] | None


def _point(chosen: Chosen) -> dict[str, Any] | None:
    return None if chosen is None else dict(chosen[0].point)


class _Section:
    """The results at one training fraction: the baselines, then each configuration."""

    def __init__(
        self, plan: Plan, tasks: _Tasks, chosen: Mapping[Group, tuple[RunSpec, Outcome]], f: float
    ) -> None:
        self.plan, self.tasks, self.chosen, self.fraction = plan, tasks, chosen, f
        self.single: dict[str, list[Chosen]] = {
            t: [chosen.get((f, SINGLE_TASK, t, s)) for s in plan.seeds] for t in tasks.names
        }
        self.single_values = {
            t: [_primary(c and c[1], t, tasks.primary[t]) for c in runs]
            for t, runs in self.single.items()
        }
        #: Seeds whose baselines all finished (Δm needs every task's reference).
        self.complete = [
            all(self.single[t][i] for t in tasks.names) for i in range(len(plan.seeds))
        ]

    def _stats(self, values: list[float | None], task: str | None = None) -> dict[str, Any]:
        """Mean and interval; a task's primary metric is clipped to its range."""
        bounds = self.tasks.range[task] if task is not None else (-math.inf, math.inf)
        return mean_ci(values, self.plan.confidence, bounds).to_dict()

    def baselines(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "fraction": self.fraction,
            "configuration": SINGLE_TASK,
            "n_seeds": sum(self.complete),
            "per_task": {t: self._stats(v, t) for t, v in self.single_values.items()},
        }
        if self.plan.grid:
            entry["chosen"] = {t: [_point(c) for c in runs] for t, runs in self.single.items()}
        return entry

    def _delta_m(self, seed_index: int, out: Outcome) -> tuple[float | None, float | None]:
        """Δm on primary metrics and on all metrics of one seed."""
        tasks = self.tasks
        refs = {t: self.single[t][seed_index] for t in tasks.names}
        ref_test = {t: c[1].test.get(t, {}) for t, c in refs.items() if c is not None}
        primary = {t: out.test.get(t, {}).get(tasks.primary[t], math.nan) for t in ref_test}
        ref_primary = {t: m.get(tasks.primary[t], math.nan) for t, m in ref_test.items()}
        return (
            _finite(delta_m(primary, ref_primary, tasks.hib)),
            _finite(delta_m_all_metrics(out.test, ref_test, tasks.hib_all)),
        )

    def configuration(self, name: str) -> dict[str, Any]:
        tasks = self.tasks
        runs = [self.chosen.get((self.fraction, name, None, s)) for s in self.plan.seeds]
        values = {t: [_primary(c and c[1], t, tasks.primary[t]) for c in runs] for t in tasks.names}
        deltas = [
            self._delta_m(i, c[1]) if c is not None and self.complete[i] else (None, None)
            for i, c in enumerate(runs)
        ]
        verdicts = {
            t: paired_verdict(values[t], self.single_values[t], tasks.hib[t], self.plan.alpha)
            for t in tasks.names
        }
        # Δm's sign: the largest relative change is the task multi-task training hurts most.
        changes = [(v.change_pct, t) for t, v in verdicts.items() if not math.isnan(v.change_pct)]
        worst = max(changes) if changes else None
        entry: dict[str, Any] = {
            "fraction": self.fraction,
            "configuration": name,
            "n_seeds": sum(c is not None for c in runs),
            "per_task": {t: self._stats(v, t) for t, v in values.items()},
            "delta_m": self._stats([d[0] for d in deltas]),
            "delta_m_all_metrics": self._stats([d[1] for d in deltas]),
            "worst_task": {
                "task": None if worst is None else worst[1],
                "change_pct": None if worst is None else worst[0],
            },
            "verdicts": {t: v.to_dict() for t, v in verdicts.items()},
        }
        if self.plan.grid:
            entry["chosen"] = [_point(c) for c in runs]
        return entry


def summarise(plan: Plan, outcomes: Mapping[str, Outcome]) -> dict[str, Any]:
    """The compare.json document for the runs finished so far (``outcomes`` by run path)."""
    tasks = _Tasks(plan)
    chosen = select(plan, outcomes)
    configurations: dict[str, dict[str, Any]] = {
        SINGLE_TASK: {"overrides": list(SINGLE_TASK_OVERRIDES)}
    }
    configurations.update({k: {"overrides": list(v)} for k, v in plan.configurations.items()})
    results: list[dict[str, Any]] = []
    for fraction in plan.fractions:
        section = _Section(plan, tasks, chosen, fraction)
        results.append(section.baselines())
        results += [section.configuration(name) for name in plan.configurations]
    return {
        "kind": KIND,
        "seeds": list(plan.seeds),
        "fractions": list(plan.fractions),
        "tasks": {
            t: {"metric": tasks.primary[t], "higher_is_better": tasks.hib[t]} for t in tasks.names
        },
        "delta_m_definition": DEFINITION,
        "test": verdict_test_description(plan.alpha),
        "configurations": configurations,
        "grid": dict(plan.grid),
        "results": results,
    }
