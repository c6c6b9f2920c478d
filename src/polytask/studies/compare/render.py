"""compare.md and the terminal tables, both drawn from the compare.json document alone (so
either can be regenerated from the file)."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

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
    return f"{text} ({', '.join(detail)})" if detail else text


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
        "- Cells: mean ± half-width of the 95% Student-t interval over seeds.",
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
    return "\n".join(lines) + "\n"


def _worst(row: dict[str, Any]) -> str:
    worst = row["worst_task"]
    if worst.get("task") is None:
        return "-"
    return f"{worst['task']} ({worst['change_pct']:+.2f}%)"


def tables(doc: dict[str, Any]) -> list[Table]:
    """One terminal table per training fraction."""
    tasks = list(doc["tasks"])
    result = []
    for fraction in doc["fractions"]:
        table = Table(title=f"polytask compare — training fraction {fraction:g} (test split)")
        table.add_column("configuration")
        for t in tasks:
            table.add_column(_task_header(doc, t), justify="right")
        table.add_column("Δm [95% CI]", justify="right")
        table.add_column("worst task", justify="right")
        for r in _by_fraction(doc, fraction):
            cells = [_mean_pm(r["per_task"][t]) for t in tasks]
            if r["configuration"] != SINGLE_TASK:
                cells = [
                    f"{c} {_MARK.get(r['verdicts'][t]['verdict'], '?')}"
                    for c, t in zip(cells, tasks, strict=True)
                ]
                extra = [_signed_pm(r["delta_m"]), _worst(r)]
            else:
                extra = ["", ""]
            table.add_row(f"{r['configuration']} ({r['n_seeds']} seeds)", *cells, *extra)
        table.caption = (
            "mean ± 95% CI half-width over seeds; Δm < 0: multi-task better; "
            "helps / n.s. / HURTS: paired t-test over seeds (see compare.md)"
        )
        result.append(table)
    return result


__all__ = ["markdown", "tables"]
