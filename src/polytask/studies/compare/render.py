"""compare.md and the terminal tables, both drawn from the compare.json document alone (so
either can be regenerated from the file)."""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.table import Table

from polytask.evaluate.reference import outcome
from polytask.evaluate.statistics import FEW_SEEDS
from polytask.studies.compare.config import SINGLE_TASK

_MARK = {"helps": "helps", "hurts": "HURTS", "no significant difference": "n.s."}


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _mean_pm(stat: dict[str, Any], digits: int = 4, unit: str = "") -> str:
    """``mean ± half-width`` of an interval (``mean`` alone when it has one seed)."""
    mean, low, high = stat.get("mean"), stat.get("ci_low"), stat.get("ci_high")
    if mean is None:
        return "-"
    if low is None or high is None:
        return f"{mean:.{digits}f}{unit}"
    if not math.isclose(mean - low, high - mean, rel_tol=1e-9, abs_tol=1e-12):
        # Clipped at the metric's range (AUROC <= 1): no longer symmetric, so both ends.
        return f"{mean:.{digits}f}{unit} [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{mean:.{digits}f}{unit} ± {(high - low) / 2:.{digits}f}"


def _signed_pm(stat: dict[str, Any]) -> str:
    mean, low, high = stat.get("mean"), stat.get("ci_low"), stat.get("ci_high")
    if mean is None:
        return "-"
    if low is None or high is None:
        return f"{mean:+.2f}%"
    return f"{mean:+.2f}% [{low:+.2f}, {high:+.2f}]"


def _verdict(v: dict[str, Any]) -> str:
    text = str(v.get("verdict"))
    change = v.get("change_pct")
    p = v.get("p_value")
    detail = [] if change is None else [f"{change:+.2f}%"]
    if p is not None:
        detail.append(f"p={p:.3g}")
    n = v.get("n_pairs")
    if v.get("evidence") and isinstance(n, int):
        detail.append(f"only {n} seeds")
    return f"{text} ({', '.join(detail)})" if detail else text


def _raw_change(doc: dict[str, Any], row: dict[str, Any], base: dict[str, Any], task: str) -> str:
    """Mean over seeds of the configuration minus that of the baselines, in the metric's unit,
    and whether that is better or worse in the metric's direction."""
    mean = row["per_task"][task].get("mean")
    ref = base["per_task"][task].get("mean") if base else None
    if mean is None or ref is None:
        return "-"
    word = outcome(mean, ref, doc["tasks"][task]["higher_is_better"])
    return f"{mean - ref:+.3f} {word}"


def _few_seeds(rows: list[dict[str, Any]]) -> str | None:
    """The caveat of verdicts that rest on few seeds (None when every verdict has enough)."""
    n = [
        v["n_pairs"]
        for r in rows
        for v in (r.get("verdicts") or {}).values()
        if v.get("evidence") and isinstance(v.get("n_pairs"), int)
    ]
    if not n:
        return None
    return (
        f"verdicts from {min(n)} seeds rest on little: the paired t-test has {min(n) - 1} "
        f"degree{'s' if min(n) > 2 else ''} of freedom; train {FEW_SEEDS} or more seeds "
        "(--seeds) before relying on them"
    )


def _by_fraction(doc: dict[str, Any], fraction: float) -> list[dict[str, Any]]:
    return [r for r in doc["results"] if r["fraction"] == fraction]


def _task_header(doc: dict[str, Any], task: str) -> str:
    info = doc["tasks"][task]
    return f"{task} ({info['metric']} {'↑' if info['higher_is_better'] else '↓'})"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *[line(r) for r in rows]]


def markdown(doc: dict[str, Any]) -> str:
    """compare.md: per fraction, test metrics per configuration, Δm, worst task and verdicts."""
    tasks = list(doc["tasks"])
    seeds = ", ".join(str(s) for s in doc["seeds"])
    lines = [
        "# polytask compare: should I use multi-task learning here?",
        "",
        f"Seeds: {seeds}. Test split; checkpoints and tuning chosen on validation only.",
        "",
        f"- Δm: {doc['delta_m_definition']}",
        f"- Verdict: {doc['test']}",
        "- Cells: mean ± half-width of the 95% Student-t interval over seeds "
        "(mean [low, high] where the interval is clipped to the metric's range).",
    ]
    for name, conf in doc["configurations"].items():
        overrides = ", ".join(f"`{o}`" for o in conf["overrides"]) or "the config as written"
        lines.append(f"- `{name}`: {overrides}")
    if doc.get("grid"):
        grid = "; ".join(f"`{k}` ∈ {v}" for k, v in doc["grid"].items())
        lines.append(f"- Tuned on validation for every model alike: {grid}")
    for fraction in doc["fractions"]:
        rows = _by_fraction(doc, fraction)
        lines += ["", f"## Training fraction {fraction:g}", "", "### Test metrics", ""]
        lines += _md_table(
            ["configuration", "seeds", *[_task_header(doc, t) for t in tasks]],
            [
                [r["configuration"], str(r["n_seeds"])]
                + [_mean_pm(r["per_task"][t]) for t in tasks]
                for r in rows
            ],
        )
        multi = [r for r in rows if r["configuration"] != SINGLE_TASK]
        lines += ["", "### Multi-task vs single-task", ""]
        lines += _md_table(
            ["configuration", "Δm (primary) [95% CI]", "Δm (all metrics) [95% CI]", "worst task"],
            [
                [
                    r["configuration"],
                    _signed_pm(r["delta_m"]),
                    _signed_pm(r["delta_m_all_metrics"]),
                    _worst(r),
                ]
                for r in multi
            ],
        )
        lines += ["", "### Verdicts per task", ""]
        lines += _md_table(
            ["configuration", *tasks],
            [[r["configuration"]] + [_verdict(r["verdicts"][t]) for t in tasks] for r in multi],
        )
        few = _few_seeds(multi)
        if few:
            lines += ["", f"Note: {few}."]
    return "\n".join(lines) + "\n"


def _worst(row: dict[str, Any]) -> str:
    worst = row["worst_task"]
    if worst.get("task") is None:
        return "-"
    return f"{worst['task']} ({worst['change_pct']:+.2f}%)"


def _counts(row: dict[str, Any], tasks: list[str]) -> str:
    verdicts = [row["verdicts"][t]["verdict"] for t in tasks]
    n = {k: verdicts.count(k) for k in ("helps", "no significant difference", "hurts")}
    return f"{n['helps']} / {n['no significant difference']} / {n['hurts']}"


def _name_width(rows: list[dict[str, Any]]) -> int:
    """The configuration column's width: its longest name, up to 20 characters (a longer one
    breaks over lines rather than ending in "…")."""
    return min(20, max([13, *(len(r["configuration"]) for r in rows)]))


def summary_table(doc: dict[str, Any], fraction: float) -> Table:
    """One training fraction in a few columns, however many tasks: per configuration its Δm
    (the mean over tasks), how many tasks it helps / leaves / hurts, and its worst task."""
    tasks = list(doc["tasks"])
    rows = _by_fraction(doc, fraction)
    table = Table(
        title=f"polytask compare: training fraction {fraction:g}, {len(tasks)} tasks (test split)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("configuration", overflow="fold", min_width=_name_width(rows))
    table.add_column("seeds", justify="right", no_wrap=True)
    table.add_column("Δm [95% CI]", justify="right", no_wrap=True)
    table.add_column("helps/n.s./hurts", justify="right", no_wrap=True)
    table.add_column("worst task (change)", justify="right")
    for r in rows:
        if r["configuration"] == SINGLE_TASK:
            table.add_row(r["configuration"], str(r["n_seeds"]), "(reference)", "", "")
            continue
        table.add_row(
            r["configuration"],
            str(r["n_seeds"]),
            _signed_pm(r["delta_m"]),
            _counts(r, tasks),
            _worst(r),
        )
    notes = [
        "Δm: mean over tasks of the relative change, < 0: multi-task better; "
        "worst task: its relative change (> 0: worse); --per-task: every task"
    ]
    few = _few_seeds(rows)
    if few:
        notes.append(few)
    table.caption = "; ".join(notes)
    return table


def per_task_table(doc: dict[str, Any], fraction: float) -> Table:
    """Every task of one training fraction, one row per task and configuration (long, not
    wide: fits 80 columns with any number of tasks)."""
    tasks = list(doc["tasks"])
    rows = _by_fraction(doc, fraction)
    base = next((r for r in rows if r["configuration"] == SINGLE_TASK), {})
    table = Table(
        title=f"per task: training fraction {fraction:g} (test split)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("task", overflow="fold")
    table.add_column("configuration", overflow="fold", min_width=_name_width(rows))
    # Never "0…": on a narrow terminal a cell breaks between its words, never inside a number.
    table.add_column("mean ± 95% CI", justify="right", overflow="fold")
    table.add_column("vs single", justify="right", overflow="fold")
    table.add_column("verdict", justify="right", overflow="fold")
    for t in tasks:
        for r in rows:
            single = r["configuration"] == SINGLE_TASK
            verdict = r["verdicts"][t] if not single else {}
            table.add_row(
                _task_header(doc, t).replace(" ↑", "↑").replace(" ↓", "↓") if r is rows[0] else "",
                r["configuration"],
                _mean_pm(r["per_task"][t], digits=3).replace(", ", "–"),
                "" if single else _raw_change(doc, r, base, t),
                "" if single else _short_verdict(verdict),
                end_section=r is rows[-1],
            )
    notes = ["vs single-task: difference of the means, better/worse in the metric's direction"]
    few = _few_seeds(rows)
    if few:
        notes.append(few)
    table.caption = "; ".join(notes)
    return table


def _short_verdict(v: dict[str, Any]) -> str:
    text = _MARK.get(str(v.get("verdict")), str(v.get("verdict")))
    p = v.get("p_value")
    return text if p is None else f"{text} p={p:.2g}"


def tables(doc: dict[str, Any], per_task: bool = False) -> list[Table]:
    """The terminal tables: per training fraction a summary, and with ``per_task`` the table
    of every task after it."""
    result = []
    for fraction in doc["fractions"]:
        result.append(summary_table(doc, fraction))
        if per_task:
            result.append(per_task_table(doc, fraction))
    return result


__all__ = ["markdown", "per_task_table", "summary_table", "tables"]
