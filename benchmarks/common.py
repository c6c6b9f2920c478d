"""Helpers shared by the benchmark scripts: paths, machine description, formatting, output."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import polytask
from polytask.config import RunConfig, load_config

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
EXAMPLES_DIR = REPO_DIR / "examples"
RESULTS_DIR = BENCH_DIR / "results"


def example_config(name: str, overrides: Sequence[str] = ()) -> RunConfig:
    """The example config ``examples/<name>.toml`` with ``key=value`` overrides applied."""
    return load_config(EXAMPLES_DIR / f"{name}.toml", list(overrides))


def machine_info() -> dict[str, Any]:
    """Date, machine and software versions, and the command that produced the results."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": platform.machine(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "polytask": polytask.__version__,
        "command": "python " + shlex.join([_relative(sys.argv[0]), *sys.argv[1:]]),
    }
    try:
        import sklearn

        info["scikit-learn"] = sklearn.__version__
    except ImportError:  # pragma: no cover - sklearn is a bench dependency
        pass
    return info


def worker_run_info(workers: int | None = None, wall: float | None = None) -> dict[str, Any]:
    """:func:`machine_info` for a benchmark whose runs each use one torch thread (in ``workers``
    parallel processes, taking ``wall`` seconds in all, when given)."""
    info = machine_info()
    info["torch_threads"] = 1
    if workers is not None:
        info["workers"] = workers
    if wall is not None:
        info["wall_seconds"] = round(wall, 1)
    return info


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_DIR))
    except ValueError:
        return path


def machine_lines(info: dict[str, Any]) -> list[str]:
    """The machine description as markdown bullet lines."""
    keys = ["date", "machine", "nproc", "torch_threads", "python", "torch", "scikit-learn"]
    lines = [f"- {k}: {info[k]}" for k in keys if k in info]
    lines.append(f"- command: `{info['command']}`")
    return lines


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value), NaNs skipped."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), std


def fmt_mean_std(values: Sequence[float], digits: int = 4) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1
) -> list[str]:
    """A markdown table; the first ``left`` columns left-aligned, the others right-aligned."""
    align = [":---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def write_results(stem: str, markdown: list[str], data: dict[str, Any], out_dir: Path) -> None:
    """Write ``<stem>.md`` and ``<stem>.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    text = json.dumps(data, indent=2, allow_nan=True)
    (out_dir / f"{stem}.json").write_text(text + "\n", encoding="utf-8")


def subset_tasks(raw: dict[str, Any], keep: Sequence[str]) -> dict[str, Any]:
    """A raw run configuration trained on the tasks ``keep`` only (in the config's task order).

    The target columns of the dropped tasks go to ``data.ignore``: columns that are neither a
    target nor ignored are features, so without this the other tasks' labels (of a registered
    dataset like Tox21, or any table) would become inputs of the subset's model.
    """
    wanted = set(keep)
    known = {t["name"] for t in raw["tasks"]}
    missing = sorted(wanted - known)
    if missing:
        raise ValueError(f"unknown task(s) {missing}")
    out: dict[str, Any] = json.loads(json.dumps(raw))
    dropped = [t for t in out["tasks"] if t["name"] not in wanted]
    out["tasks"] = [t for t in out["tasks"] if t["name"] in wanted]
    # ``target`` is one column, or a list of them (a multilabel task).
    columns = [
        c for t in dropped for c in ([t["target"]] if isinstance(t["target"], str) else t["target"])
    ]
    out["data"]["ignore"] = sorted(set(out["data"].get("ignore") or []) | set(columns))
    return out


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none): above the core count, other
    jobs were slowing the benchmark down."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def job_key(job: dict[str, Any]) -> str:
    """A short stable hash of a job description, for cache file names."""
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:10]
