"""What the report says about each kind of directory: the tables, figures and notes.

Every figure whose data is absent (an older run without gradient cosines, a comparison at a
single training fraction) is replaced by a note saying what is missing and why, so a reader
never wonders whether a plot silently failed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polytask.evaluate.reference import SINGLE_RUN_NOTE, change_text, outcome
from polytask.report import figures as F
from polytask.report.html import Cell, Note, Section, Table
from polytask.report.loading import RunLog, load_run, metric_series, number, split_pair
from polytask.run.directory import is_finished, read_records
from polytask.studies.pareto.front import non_dominated, to_minimisation
from polytask.studies.pareto.summary import SUMMARY_HEADER, mean_points, summary_rows

#: Above this many task pairs one line per pair is unreadable: the figure shows the spread over
#: all pairs (median and min–max band) and only the most conflicting pairs individually.
MAX_PAIR_LINES = 8
HIGHLIGHTED_PAIRS = 3


def _fmt(value: Any, digits: int = 4) -> str:
    v = number(value)
    return "–" if not math.isfinite(v) else f"{v:.{digits}g}"


def _pct(value: Any) -> str:
    v = number(value)
    return "–" if not math.isfinite(v) else f"{v:+.2f}%"


def _arrow(higher_is_better: bool | None) -> str:
    return "" if higher_is_better is None else (" ↑" if higher_is_better else " ↓")


def _pair_label(key: str) -> str:
    a, b = split_pair(key)
    return f"{a} – {b}"


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


# -- run directories -------------------------------------------------------------------------


def _results_table(results: dict[str, Any]) -> Table | None:
    comparison = results.get("comparison") or {}
    rows: list[list[Cell]] = []
    for row in comparison.get("tasks") or []:
        # No colour: one seed cannot tell a real change from noise (polytask compare can).
        rows.append(
            [
                str(row.get("task")),
                f"{row.get('metric')}{_arrow(row.get('higher_is_better'))}",
                _fmt(row.get("multi_task")),
                _fmt(row.get("single_task")),
                _change(row),
                _outcome(row),
            ]
        )
    if not rows:
        return None
    split = results.get("split", comparison.get("split", "test"))
    delta = number(comparison.get("delta_m_pct"))
    caption = f"Final {split} metrics: multi-task vs single-task"
    if math.isfinite(delta):
        caption += f" (Δm = {delta:+.2f}%; < 0: multi-task better on average)"
    caption += f"; {SINGLE_RUN_NOTE}"
    header = ["task", "metric", "multi-task", "single-task", "change", "outcome"]
    return Table(caption, header, rows)


def _change(row: dict[str, Any]) -> str:
    """The raw change and its percentage (:func:`polytask.evaluate.reference.change_text`)."""
    multi, single = number(row.get("multi_task")), number(row.get("single_task"))
    text = change_text(multi, single)
    return "–" if text == "-" else text


def _outcome(row: dict[str, Any]) -> str:
    """better / worse in the metric's direction (computed for runs written before the field)."""
    hib = row.get("higher_is_better")
    if hib is None:
        return "–"
    word = outcome(number(row.get("multi_task")), number(row.get("single_task")), bool(hib))
    return "–" if word == "-" else word


def _pair_series(
    x: list[float], pairs: dict[str, list[float]], worst_first: bool
) -> list[F.Series]:
    """One line per pair, or (many pairs) the spread plus the most extreme pairs.

    ``worst_first``: True ranks pairs by their highest mean (conflict fractions), False by their
    lowest mean (cosines) — in both cases the most conflicting pairs are highlighted.
    """
    palette = F.colors(list(pairs))
    if len(pairs) <= MAX_PAIR_LINES:
        return [F.Series(_pair_label(k), x, v, palette[k]) for k, v in pairs.items()]
    columns = list(zip(*pairs.values(), strict=True))

    def spread(pick: Any) -> list[float]:
        out = []
        for col in columns:
            finite = [v for v in col if math.isfinite(v)]
            out.append(pick(finite) if finite else math.nan)
        return out

    ranked = sorted(pairs, key=lambda k: _mean(pairs[k]), reverse=worst_first)
    band = F.Series(
        f"all {len(pairs)} pairs: median, min–max",
        x,
        spread(statistics.median),
        "#57606a",
        low=spread(min),
        high=spread(max),
    )
    top = [F.Series(_pair_label(k), x, pairs[k], palette[k]) for k in ranked[:HIGHLIGHTED_PAIRS]]
    return [band, *top]


def _cosine_matrix(run: RunLog, pairs: list[str]) -> tuple[list[str], list[list[float]]]:
    labels = list(run.tasks)
    index = {t: i for i, t in enumerate(labels)}
    k = len(labels)
    matrix = [[1.0 if i == j else math.nan for j in range(k)] for i in range(k)]
    for key in pairs:
        a, b = split_pair(key)
        if a in index and b in index:
            value = _mean(run.series("grad_cosines", key))
            matrix[index[a]][index[b]] = matrix[index[b]][index[a]] = value
    return labels, matrix


def run_sections(run: RunLog, prefix: str = "", name_prefix: str = "") -> list[Section]:
    """Learning curves, task balance and gradient diagnostics of one training run."""
    x = run.epochs
    palette = F.colors(run.tasks)
    best = run.best_epoch
    vlines = [(best, f"best epoch ({best:g})")] if math.isfinite(best) else []
    training = Section(f"{prefix}Training")
    seconds = sum(number(r.get("seconds")) for r in run.records)
    summary = f"{len(run.records)} epochs logged for {len(run.tasks)} tasks"
    if math.isfinite(best):
        summary += f"; best epoch {best:g} (the kept checkpoint, chosen on validation)"
    if math.isfinite(seconds):
        summary += f"; {seconds:.1f} s of training"
    training.items.append(Note(summary + "."))
    if run.results is not None:
        table = _results_table(run.results)
        if table is not None:
            training.items.append(table)
    else:
        training.items.append(
            Note("No results.json: the run has not finished; showing its log so far.", True)
        )
    if not run.records:
        training.items.append(Note("The metrics log holds no epochs yet: nothing to plot.", True))
        return [training]

    loss_panels = [
        F.Panel(
            task,
            [
                F.Series("train", x, run.series("train_loss", task), palette[task]),
                F.Series("validation", x, run.series("val_loss", task), palette[task], "--"),
            ],
            ylabel="loss",
            vlines=vlines,
        )
        for task in run.tasks
    ]
    training.items.append(
        F.line_panels(
            f"{name_prefix}learning_curves",
            "Learning curves per task",
            "Training loss (solid) and validation loss (dashed) of each task per epoch; the "
            "dotted line marks the best epoch.",
            loss_panels,
            shared_legend=True,
        )
    )
    metric_panels = []
    for task in run.tasks:
        metric = run.primary.get(task, "")
        series = [F.Series("multi-task", x, run.metric_series(task, metric), palette[task])]
        baseline = run.baselines.get(task)
        if baseline:
            bx = [number(r.get("epoch")) for r in baseline]
            series.append(
                F.Series("single-task", bx, metric_series(baseline, task, metric), "#57606a", ":")
            )
        metric_panels.append(
            F.Panel(f"{task}", series, ylabel=f"validation {metric}", vlines=vlines)
        )
    baseline_note = (
        " The dotted grey line is the single-task baseline trained with the same budget."
        if run.baselines
        else ""
    )
    training.items.append(
        F.line_panels(
            f"{name_prefix}validation_metrics",
            "Validation primary metric per task",
            "Each task's primary metric (the one early stopping and Δm use) on the validation "
            "split per epoch." + baseline_note,
            metric_panels,
            shared_legend=True,
        )
    )

    balance = Section(f"{prefix}Task balance")
    weights = {t: run.series("weights", t) for t in run.tasks}
    if any(math.isfinite(v) for series in weights.values() for v in series):
        balance.items.append(
            F.line_panels(
                f"{name_prefix}task_weights",
                "Task weights over time",
                "Mean weight the balancer gave each task's loss per epoch (constant for equal or "
                "static weighting; for gradient-level methods, the weights applied to the task "
                "gradients).",
                [
                    F.Panel(
                        "task weights",
                        [F.Series(t, x, w, palette[t]) for t, w in weights.items()],
                        "weight",
                    )
                ],
            )
        )
    else:
        balance.items.append(Note("Task weights over time: no weights in the log.", True))
    norm_tasks = run.keys("grad_norms")
    if norm_tasks:
        norms = {t: run.series("grad_norms", t) for t in norm_tasks}
        finite = [v for s in norms.values() for v in s if math.isfinite(v) and v > 0]
        balance.items.append(
            F.line_panels(
                f"{name_prefix}gradient_norms",
                "Gradient norms per task",
                "Mean norm of each task's gradient with respect to the shared parameters over "
                "the steps that measured it (log scale when the norms span more than a factor "
                "of 20). A task whose gradient is far larger than the others' steers the shared "
                "layers.",
                [
                    F.Panel(
                        "gradient norm",
                        [F.Series(t, x, v, palette.get(t)) for t, v in norms.items()],
                        "‖∇ loss‖",
                        logy=bool(finite) and max(finite) > 20 * min(finite),
                    )
                ],
            )
        )
    else:
        balance.items.append(
            Note("Gradient norms: not logged in this run (an older polytask version).", True)
        )
    dominance = run.keys("dominance")
    if dominance:
        balance.items.append(
            F.stacked_shares(
                f"{name_prefix}dominance",
                "Dominance over epochs",
                "Each task's share of the combined update of the shared parameters per epoch "
                "(shares sum to 1); one task holding most of the area dominates training.",
                x,
                {t: run.series("dominance", t) for t in dominance},
                {t: palette.get(t, F.colors(dominance)[t]) for t in dominance},
                "share of the update",
            )
        )
    else:
        balance.items.append(
            Note(
                "Dominance over epochs: not shown, this run's log has no 'dominance' field "
                "(logged by newer polytask versions).",
                True,
            )
        )

    conflict = Section(f"{prefix}Gradient conflict")
    pairs = run.keys("grad_cosines")
    if pairs:
        cosines = {k: run.series("grad_cosines", k) for k in pairs}
        panels = [
            F.Panel(
                "mean gradient cosine",
                _pair_series(x, cosines, worst_first=False),
                "cosine",
                hline=0.0,
                ylim=(-1.05, 1.05),
            )
        ]
        conflict_pairs = run.keys("conflicts")
        if conflict_pairs:
            fractions = {k: run.series("conflicts", k) for k in conflict_pairs}
            panels.append(
                F.Panel(
                    "share of steps in conflict (cosine < 0)",
                    _pair_series(x, fractions, worst_first=True),
                    "fraction of steps",
                    ylim=(-0.03, 1.03),
                )
            )
        conflict.items.append(
            F.line_panels(
                f"{name_prefix}gradient_conflict",
                "Gradient conflict between tasks",
                "Left: mean cosine similarity between two tasks' gradients with respect to the "
                "shared parameters over the steps measured each epoch (below 0: the tasks pull "
                "the shared layers in opposing directions). Right: fraction of those steps "
                "whose cosine was negative."
                + (
                    f" With {len(pairs)} pairs, the grey band spans all of them and the "
                    f"{HIGHLIGHTED_PAIRS} most conflicting are drawn."
                    if len(pairs) > MAX_PAIR_LINES
                    else ""
                ),
                panels,
                ncols=2,
                row_height=3.6,
            )
        )
        if len(run.tasks) >= 3:
            labels, matrix = _cosine_matrix(run, pairs)
            conflict.items.append(
                F.heatmap(
                    f"{name_prefix}gradient_cosine_matrix",
                    "Gradient cosine between tasks, mean over training",
                    "Pairwise gradient cosine averaged over the epochs (blue: aligned, red: "
                    "conflicting; diagonal = 1; colour scale -1 to 1).",
                    matrix,
                    labels,
                    scale=1.0,
                )
            )
    else:
        conflict.items.append(
            Note(
                "Gradient conflict plot: not shown, this run's log has no 'grad_cosines' "
                "(pairwise gradient cosines are logged by newer polytask versions).",
                True,
            )
        )
    return [training, balance, conflict]


# -- compare directories ---------------------------------------------------------------------


class _Compare:
    """Lookups over a compare.json (which may be partial)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.tasks: dict[str, dict[str, Any]] = dict(data.get("tasks") or {})
        results = [r for r in data.get("results") or [] if isinstance(r, dict)]
        self.results = {
            (number(r.get("fraction")), str(r.get("configuration"))): r for r in results
        }
        names = list(data.get("configurations") or {})
        names += [c for _, c in self.results if c not in names]
        # The baseline first: every other configuration is read against it.
        self.configurations = sorted(names, key=lambda c: c != "single-task")
        fractions = {number(f) for f in data.get("fractions") or []}
        fractions |= {f for f, _ in self.results}
        self.fractions = sorted(f for f in fractions if math.isfinite(f))
        self.multi = [c for c in self.configurations if c != "single-task"]

    def get(self, fraction: float, configuration: str) -> dict[str, Any] | None:
        return self.results.get((fraction, configuration))

    def metric(self, task: str) -> str:
        info = self.tasks.get(task) or {}
        return f"{info.get('metric', 'metric')}{_arrow(info.get('higher_is_better'))}"


def _estimate(stat: Any) -> tuple[float, float, float]:
    stat = stat if isinstance(stat, dict) else {}
    return number(stat.get("mean")), number(stat.get("ci_low")), number(stat.get("ci_high"))


def _ci_text(stat: Any, pct: bool = False) -> str:
    mean, low, high = _estimate(stat)
    show = _pct if pct else _fmt
    if not math.isfinite(mean):
        return "–"
    if not (math.isfinite(low) and math.isfinite(high)):
        return show(mean)
    return f"{show(mean)} [{show(low)}, {show(high)}]"


def _verdict_css(verdict: str) -> str:
    return {"helps": "helps", "hurts": "hurts"}.get(verdict, "neutral")


def compare_sections(directory: Path, data: dict[str, Any]) -> list[Section]:
    cmp = _Compare(data)
    tasks = list(cmp.tasks)
    config_palette = F.colors(cmp.configurations)
    config_palette["single-task"] = "#57606a"
    full = cmp.fractions[-1] if cmp.fractions else 1.0

    setup = Section("Set-up")
    seeds = data.get("seeds") or []
    setup.items.append(
        Note(
            f"{len(tasks)} tasks, {len(cmp.configurations)} configurations, "
            f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), training fractions "
            f"{', '.join(f'{f:g}' for f in cmp.fractions)}. Checkpoints are chosen on "
            "validation; metrics below are on the held-out split."
        )
    )
    if data.get("delta_m_definition"):
        setup.items.append(Note(f"Δm: {data['delta_m_definition']}"))
    if data.get("test"):
        setup.items.append(Note(f"Verdict test: {data['test']}"))
    config_rows: list[list[Cell]] = []
    for name in cmp.configurations:
        overrides = ((data.get("configurations") or {}).get(name) or {}).get("overrides") or []
        text = ", ".join(map(str, overrides)) or "(the base configuration)"
        config_rows.append([name, (text, "text")])
    setup.items.append(Table("Configurations", ["configuration", "overrides"], config_rows))
    expected = len(cmp.fractions) * len(cmp.configurations)
    if len(cmp.results) < expected:
        setup.items.append(
            Note(
                f"Partial comparison: {len(cmp.results)} of {expected} (fraction, configuration) "
                "results are in compare.json so far.",
                True,
            )
        )
    runs = directory / "runs"
    if runs.is_dir():
        dirs = [p for p in runs.rglob("metrics.jsonl")] + list(runs.rglob("metrics.csv"))
        finished = [p for p in dirs if is_finished(p.parent)]
        setup.items.append(
            Note(f"Run directories under runs/: {len(dirs)} with a log, {len(finished)} finished.")
        )

    per_task = Section("Per-task results")
    for fraction in cmp.fractions:
        rows: list[list[Cell]] = []
        for name in cmp.configurations:
            entry = cmp.get(fraction, name)
            if entry is None:
                continue
            per = entry.get("per_task") or {}
            worst = entry.get("worst_task") or {}
            worst_text = (
                f"{worst.get('task')} ({_pct(worst.get('change_pct'))})"
                if worst.get("task")
                else "–"
            )
            rows.append(
                [name, str(entry.get("n_seeds", "–"))]
                + [_ci_text(per.get(t)) for t in tasks]
                + [_ci_text(entry.get("delta_m"), pct=True), worst_text]
            )
        if rows:
            header = ["configuration", "seeds", *(f"{t} ({cmp.metric(t)})" for t in tasks)]
            per_task.items.append(
                Table(
                    f"Training fraction {fraction:g}: mean [95% CI] over seeds",
                    [*header, "Δm", "worst task"],
                    rows,
                )
            )
    points = []
    for task in tasks:
        present = [c for c in cmp.configurations if cmp.get(full, c) is not None]
        est = [_estimate((cmp.get(full, c) or {}).get("per_task", {}).get(task)) for c in present]
        points.append(
            F.Points(
                task,
                present,
                [e[0] for e in est],
                [e[1] for e in est],
                [e[2] for e in est],
                [config_palette[c] for c in present],
                cmp.metric(task),
            )
        )
    if points and any(p.categories for p in points):
        per_task.items.append(
            F.point_panels(
                "per_task_metrics",
                "Per-task metric by configuration",
                f"Mean over seeds with 95% confidence interval, training fraction {full:g}; "
                "arrows give the better direction. The grey point is the single-task baseline.",
                points,
            )
        )
    else:
        per_task.items.append(Note("Per-task metric figure: no results yet.", True))

    delta = Section("Δm: overall multi-task gain")
    delta_rows: list[list[Cell]] = []
    for fraction in cmp.fractions:
        for name in cmp.multi:
            entry = cmp.get(fraction, name)
            if entry is None or "delta_m" not in entry:
                continue
            _, low, high = _estimate(entry.get("delta_m"))
            css = "neutral"
            if math.isfinite(high) and high < 0:
                css = "helps"
            elif math.isfinite(low) and low > 0:
                css = "hurts"
            delta_rows.append(
                [
                    f"{fraction:g}",
                    name,
                    (_ci_text(entry.get("delta_m"), pct=True), css),
                    _ci_text(entry.get("delta_m_all_metrics"), pct=True),
                ]
            )
    if delta_rows:
        delta.items.append(
            Table(
                "Δm per configuration, mean [95% CI] over seeds (negative = multi-task better; "
                "green: the whole interval below 0, red: above 0)",
                ["fraction", "configuration", "Δm (primary metrics)", "Δm (all metrics)"],
                delta_rows,
            )
        )
        delta_points = []
        for fraction in cmp.fractions:
            present = [c for c in cmp.multi if "delta_m" in (cmp.get(fraction, c) or {})]
            if not present:
                continue
            est = [_estimate((cmp.get(fraction, c) or {}).get("delta_m")) for c in present]
            delta_points.append(
                F.Points(
                    f"training fraction {fraction:g}",
                    present,
                    [e[0] for e in est],
                    [e[1] for e in est],
                    [e[2] for e in est],
                    [config_palette[c] for c in present],
                    "Δm % (< 0: multi-task better)",
                    hline=0.0,
                )
            )
        delta.items.append(
            F.point_panels(
                "delta_m",
                "Δm per configuration",
                "Mean relative change over tasks against the single-task baselines, with 95% "
                "confidence interval over seeds; below the line at 0 the multi-task model is "
                "better on average.",
                delta_points,
                ncols=2,
            )
        )
    else:
        delta.items.append(Note("Δm: no multi-task results yet.", True))

    efficiency = Section("Data efficiency")
    # Curves need at least two fractions with multi-task results (a partial compare.json may
    # list fractions it has not reached yet).
    xs = sorted({f for f, c in cmp.results if c in cmp.multi})
    if len(xs) >= 2:

        def curve(name: str, pick: Any) -> F.Series:
            est = [_estimate(pick(cmp.get(f, name) or {})) for f in xs]
            style = "--" if name == "single-task" else "-"
            return F.Series(
                name,
                xs,
                [e[0] for e in est],
                config_palette[name],
                style,
                low=[e[1] for e in est],
                high=[e[2] for e in est],
            )

        efficiency.items.append(
            F.line_panels(
                "data_efficiency_delta_m",
                "Data efficiency: Δm vs training fraction",
                "Δm of each multi-task configuration at each fraction of the training labels "
                "(shaded: 95% CI over seeds). A curve falling further below 0 at small fractions "
                "means sharing helps more when labels are scarce.",
                [
                    F.Panel(
                        "Δm by training fraction",
                        [curve(c, lambda e: e.get("delta_m")) for c in cmp.multi],
                        "Δm % (< 0: multi-task better)",
                        xlabel="fraction of training data",
                        hline=0.0,
                        logx=True,
                        xticks=xs,
                    )
                ],
            )
        )
        efficiency.items.append(
            F.line_panels(
                "data_efficiency_per_task",
                "Data efficiency: per-task metric vs training fraction",
                "Each task's primary metric per configuration and training fraction (shaded: 95% "
                "CI over seeds; dashed grey: single-task baseline).",
                [
                    F.Panel(
                        task,
                        [
                            curve(c, lambda e, t=task: (e.get("per_task") or {}).get(t))
                            for c in cmp.configurations
                        ],
                        cmp.metric(task),
                        xlabel="fraction of training data",
                        logx=True,
                        xticks=xs,
                    )
                    for task in tasks
                ],
                shared_legend=True,
            )
        )
    else:
        efficiency.items.append(
            Note(
                "Data-efficiency curves: not shown, the comparison ran at a single training "
                "fraction (set several fractions to see whether sharing helps more when labels "
                "are scarce).",
                True,
            )
        )

    verdicts = Section("Verdicts per task")
    verdict_rows: list[list[Cell]] = []
    for fraction in cmp.fractions:
        for name in cmp.multi:
            entry = cmp.get(fraction, name) or {}
            found = entry.get("verdicts") or {}
            if not found:
                continue
            row: list[Cell] = [f"{fraction:g}", name]
            for task in tasks:
                v = found.get(task) or {}
                verdict = str(v.get("verdict", "–"))
                p = number(v.get("p_value"))
                detail = f"{_pct(v.get('change_pct'))}" + (
                    f", p = {p:.3g}" if math.isfinite(p) else ""
                )
                row.append((f"{verdict} ({detail})", _verdict_css(verdict)))
            verdict_rows.append(row)
    if verdict_rows:
        verdicts.items.append(
            Table(
                "Multi-task vs single-task per task: verdict (relative change, signed so that "
                f"negative = better; p-value). Test: {data.get('test', 'not stated')}",
                ["fraction", "configuration", *tasks],
                verdict_rows,
            )
        )
    else:
        verdicts.items.append(Note("Verdicts: no multi-task results yet.", True))
    return [setup, per_task, delta, efficiency, verdicts]


# -- affinity directories --------------------------------------------------------------------


def _mutual(matrix: list[list[Any]], i: int, j: int) -> float:
    # Affinity is directional (a step on i changes j's loss); a pair's mutual affinity is the
    # mean of both directions, as Fifty et al. (2021) use when scoring groups.
    return _mean([number(matrix[i][j]), number(matrix[j][i])])


def affinity_sections(directory: Path, data: dict[str, Any]) -> list[Section]:
    tasks = [str(t) for t in data["tasks"]]
    k = len(tasks)
    section = Section("Task relationships")
    details = [f"{k} tasks", f"method: {data.get('method', 'not stated')}"]
    if "epochs" in data:
        details.append(f"{data['epochs']} epochs")
    if "steps_measured" in data:
        details.append(f"{data['steps_measured']} steps measured")
    if data.get("probe"):
        details.append("probe mode (short training: a cheap, rougher estimate)")
    section.items.append(Note("; ".join(details) + "."))
    affinity, cosine = data.get("affinity"), data.get("gradient_cosine")
    if affinity is not None:
        section.items.append(
            F.heatmap(
                "affinity_heatmap",
                "Lookahead task affinity",
                "Affinity Z(i→j) (Fifty et al., 2021, 'Efficiently Identifying Task Groupings'): "
                "the relative drop of task j's loss (column) after a gradient step on task i "
                "(row) alone, averaged over training. Positive (blue): the step on i helps j; "
                "negative (red): it hurts j. The diagonal is each task's self-affinity; the "
                "colour scale is set by the off-diagonal entries (a larger diagonal is clipped).",
                affinity,
                tasks,
                row_label="step on task i",
                col_label="loss of task j",
            )
        )
    else:
        section.items.append(Note("Affinity heat map: no 'affinity' matrix in the file.", True))
    if cosine is not None:
        section.items.append(
            F.heatmap(
                "gradient_cosine_heatmap",
                "Gradient cosine similarity between tasks",
                "Mean cosine between two tasks' gradients with respect to the shared parameters "
                "(blue: aligned, red: conflicting; diagonal = 1; colour scale -1 to 1).",
                cosine,
                tasks,
                scale=1.0,
            )
        )
    else:
        section.items.append(
            Note("Gradient-cosine heat map: no 'gradient_cosine' matrix in the file.", True)
        )
    if affinity is not None or cosine is not None:
        rows: list[list[Cell]] = []
        ranked = []
        for i in range(k):
            for j in range(i + 1, k):
                mutual = _mutual(affinity, i, j) if affinity is not None else math.nan
                cos = number(cosine[i][j]) if cosine is not None else math.nan
                ranked.append((i, j, mutual, cos))
        ranked.sort(key=lambda r: -r[2] if math.isfinite(r[2]) else -r[3])
        for i, j, mutual, cos in ranked[:30]:
            forward = number(affinity[i][j]) if affinity is not None else math.nan
            backward = number(affinity[j][i]) if affinity is not None else math.nan
            rows.append(
                [
                    f"{tasks[i]} – {tasks[j]}",
                    _fmt(forward, 3),
                    _fmt(backward, 3),
                    _fmt(mutual, 3),
                    _fmt(cos, 3),
                ]
            )
        caption = "Task pairs, most related first"
        if len(ranked) > 30:
            caption += f" (30 of {len(ranked)} pairs)"
        header = ["pair (a – b)", "Z(a→b)", "Z(b→a)", "mutual affinity", "gradient cosine"]
        section.items.append(Table(caption, header, rows))

    over = [e for e in data.get("over_training") or [] if isinstance(e, dict)]
    if len(over) >= 2:
        x = [number(e.get("epoch")) for e in over]
        pair_keys = [(i, j) for i in range(k) for j in range(i + 1, k)]
        labels = {(i, j): f"{tasks[i]}|{tasks[j]}" for i, j in pair_keys}
        panels = []
        for key, title, ylabel in (
            ("gradient_cosine", "gradient cosine per pair", "cosine"),
            ("affinity", "mutual affinity per pair", "affinity"),
        ):
            if all(isinstance(e.get(key), list) for e in over):
                series = {
                    labels[(i, j)]: [
                        number(e[key][i][j]) if key == "gradient_cosine" else _mutual(e[key], i, j)
                        for e in over
                    ]
                    for i, j in pair_keys
                }
                panels.append(
                    F.Panel(title, _pair_series(x, series, worst_first=False), ylabel, hline=0.0)
                )
        if panels:
            section.items.append(
                F.line_panels(
                    "relationships_over_training",
                    "Task relationships over training",
                    "Pairwise gradient cosine and mutual affinity (mean of both directions) per "
                    "epoch; relationships that change sign during training make a single "
                    "number misleading.",
                    panels,
                    ncols=2,
                    row_height=3.6,
                )
            )
    else:
        section.items.append(
            Note("Relationships over training: the file has fewer than two epochs to plot.", True)
        )

    grouping = Section("Suggested grouping")
    group_info = data.get("grouping") or {}
    groups = [g for g in group_info.get("groups") or [] if isinstance(g, list)]
    if groups:
        grouping.items.append(
            Table(
                "Train these tasks together, one model per group",
                ["group", "tasks"],
                [[str(n), (", ".join(map(str, g)), "text")] for n, g in enumerate(groups, 1)],
            )
        )
        grouping.items.append(
            Note(
                f"Grouping score {_fmt(group_info.get('score'))} (higher: tasks in the same "
                f"group help each other more); search: {group_info.get('search', 'not stated')}"
                f", at most {group_info.get('max_groups', '?')} groups."
            )
        )
    else:
        grouping.items.append(Note("Suggested grouping: none in the file.", True))
    sections = [section, grouping]
    run_dir = directory / "run"
    if read_records(run_dir) if run_dir.is_dir() else []:
        sections += run_sections(load_run(run_dir), "Measured run: ", "run_")
    return sections


# -- Pareto directories ----------------------------------------------------------------------


def _pareto_points(data: dict[str, Any], name: str) -> list[dict[str, Any]]:

    return mean_points(data, name)


def _front_mask(points: list[dict[str, Any]], tasks: dict[str, Any]) -> list[bool]:
    """Non-dominated mask of seed-mean points (NaN points count as dominated)."""

    names = list(tasks)
    rows = [[number(p["test"].get(k)) for k in names] for p in points]
    hib = [bool(tasks[k].get("higher_is_better")) for k in names]
    ok = [all(math.isfinite(v) for v in row) for row in rows]
    mask = [False] * len(rows)
    finite = [r for r, good in zip(rows, ok, strict=True) if good]
    if finite:
        flags = iter(non_dominated(to_minimisation(finite, hib)).tolist())
        mask = [bool(next(flags)) if good else False for good in ok]
    return mask


def pareto_sections(directory: Path, data: dict[str, Any]) -> list[Section]:
    tasks: dict[str, Any] = dict(data.get("tasks") or {})
    names = list(tasks)
    sets = [e for e in data.get("sets") or [] if isinstance(e, dict)]
    set_names = list(dict.fromkeys(str(e.get("name")) for e in sets))
    palette = F.colors(set_names)
    kinds = {str(e.get("name")): e.get("kind") for e in sets}

    def label(task: str) -> str:
        info = tasks.get(task) or {}
        return f"{task} {info.get('metric', '')}{_arrow(info.get('higher_is_better'))} (test)"

    setup = Section("Set-up")
    ref = data.get("reference") or {}
    ref_text = (
        ", ".join(f"{k} {_fmt(v)}" for k, v in (ref.get("metric") or {}).items()) or "not yet"
    )
    setup.items.append(
        Note(
            f"{len(names)} tasks ({', '.join(names)}); {data.get('sweep', 'sweep')} over "
            f"{len(data.get('preferences') or [])} preference vectors (each weight at least "
            f"{_fmt(data.get('min_weight'))}); seeds {data.get('seeds')}. "
            f"Objectives: {data.get('objectives', 'not stated')}."
        )
    )
    setup.items.append(
        Note(f"Hypervolume reference (metric units): {ref_text}. Rule: {ref.get('rule', '–')}.")
    )
    incomplete = [f"{e.get('name')} (seed {e.get('seed')})" for e in sets if not e.get("complete")]
    if incomplete:
        setup.items.append(
            Note(f"Partial sweep: still running or missing: {', '.join(incomplete)}.", True)
        )

    setup.items.append(
        Table(
            "Hypervolume (higher is better) and training cost per set of points, mean ± sd "
            "over seeds; ratios against the sweep of the same seed",
            list(SUMMARY_HEADER),
            [list[Cell](row) for row in summary_rows(data)],
        )
    )

    front = Section("Pareto front")
    averaged = {n: _pareto_points(data, n) for n in set_names}
    panels = []
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    for i, j in pairs[:6]:
        point_sets = []
        for n in set_names:
            points = averaged[n]
            if not points:
                continue
            point_sets.append(
                F.PointSet(
                    n,
                    [number(p["test"].get(names[i])) for p in points],
                    [number(p["test"].get(names[j])) for p in points],
                    _front_mask(points, tasks),
                    palette[n],
                    # A curve only where it is one: in 2-D, and not for one point per seed.
                    line=len(names) == 2 and kinds[n] != "balancer",
                    marker="D" if kinds[n] == "balancer" else "o",
                )
            )
        if point_sets:
            panels.append(
                F.ScatterPanel(
                    f"{names[i]} vs {names[j]}", label(names[i]), label(names[j]), point_sets
                )
            )
    if panels:
        what = (
            "the front in objective space"
            if len(names) == 2
            else f"pairwise projections of the {len(names)}-task front"
            + (f" (first 6 of {len(pairs)} pairs)" if len(pairs) > 6 else "")
        )
        front.items.append(
            F.scatter_panels(
                "pareto_front",
                "Pareto front",
                f"Test metrics of every point, {what}; mean over complete seeds, per preference "
                "(sweep, conditioned model) or per method (balancers, diamonds). Coloured points "
                "are non-dominated within their set, grey ones are beaten on every task by "
                "another point of the same set (dominance in all tasks at once, also in a "
                "projection).",
                panels,
            )
        )
    else:
        front.items.append(Note("Pareto front: no finished run yet.", True))

    trade = [n for n in set_names if kinds[n] in ("sweep", "conditioned") and averaged[n]]
    trade_panels = []
    for k, task in enumerate(names):
        series = []
        for n in trade:
            points = sorted(
                averaged[n], key=lambda p: number((p["preference"] or [0.0] * len(names))[k])
            )
            series.append(
                F.Series(
                    n,
                    [number(p["preference"][k]) for p in points],
                    [number(p["test"].get(task)) for p in points],
                    palette[n],
                )
            )
        if series:
            trade_panels.append(F.Panel(task, series, label(task), f"preference weight of {task}"))
    if trade_panels:
        front.items.append(
            F.line_panels(
                "trade_off_by_preference",
                "Each task's metric against its preference weight",
                "Test metric of each task against the weight the preference gives that task "
                "(sweep: one run per preference; conditioned model: one run evaluated at every "
                "preference). A model that follows the preference moves monotonically: more "
                "weight, better metric.",
                trade_panels,
                ncols=min(3, len(trade_panels)),
            )
        )
    else:
        front.items.append(Note("Trade-off against the preference: no sweep points yet.", True))

    cost = Section("Hypervolume and cost")
    summary = [r for r in data.get("summary") or [] if isinstance(r, dict)]
    stats = []
    for key, title, ylabel in (
        ("hypervolume", "hypervolume of each set", "hypervolume"),
        ("training_seconds", "training cost", "seconds (sum of epochs)"),
    ):
        cats, mean, low, high = [], [], [], []
        for row in summary:
            values = [number(v) for v in (row.get(key) or {}).get("values") or []]
            finite = [v for v in values if math.isfinite(v)]
            if not finite:
                continue
            cats.append(str(row.get("name")))
            mean.append(_mean(finite))
            low.append(min(finite) if len(finite) > 1 else math.nan)
            high.append(max(finite) if len(finite) > 1 else math.nan)
        if cats:
            stats.append(F.Points(title, cats, mean, low, high, [palette[c] for c in cats], ylabel))
    if stats:
        cost.items.append(
            F.point_panels(
                "hypervolume_and_cost",
                "Hypervolume and training cost",
                "Mean over seeds (bars: min–max when there are several seeds). The hypervolume "
                "is the area (volume) of objective space a set dominates up to the reference "
                "point; the cost is the sum of the training epochs' seconds of all its runs.",
                stats,
                ncols=2,
            )
        )
    else:
        cost.items.append(Note("Hypervolume and cost: no complete set yet.", True))
    out = [setup, front, cost]
    conditioned = next(
        (e for e in sets if e.get("kind") == "conditioned" and e.get("points")), None
    )
    if conditioned is not None:
        run_dir = directory / "runs" / str(conditioned["points"][0].get("run"))
        if read_records(run_dir) if run_dir.is_dir() else []:
            out += run_sections(load_run(run_dir), "Conditioned run: ", "conditioned_")
    return out
