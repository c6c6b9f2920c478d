"""Reading what a report shows: a run dir, a compare dir or an affinity dir.

The three kinds are told apart by the files present (``compare.json``, ``affinity.json``,
``metrics.jsonl`` / ``metrics.csv``). Fields that older runs did not log (gradient cosines,
conflicts, dominance) simply come back empty, so the report can say what is missing instead of
failing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from polytask.errors import PolytaskError
from polytask.run.directory import (
    CONFIG,
    baseline_dir,
    is_finished,
    read_config,
    read_records,
    read_results,
)

Kind = Literal["run", "compare", "affinity", "pareto"]

#: Per-epoch fields keyed by task (or by "a|b" task pair): one level of nesting.
_KEYED_FIELDS = (
    "train_loss",
    "val_loss",
    "weights",
    "examples",
    "grad_norms",
    "sources",
    "sampling",
    "schedule",
    "scheduled_steps",
    "grad_cosines",
    "conflicts",
    "dominance",
)
PAIR_SEPARATOR = "|"


def detect(directory: Path) -> Kind:
    """Which kind of directory ``directory`` is, or a one-line error naming what was expected."""
    if not directory.exists():
        raise PolytaskError(f"report: directory '{directory}' not found")
    if not directory.is_dir():
        raise PolytaskError(f"report: '{directory}' is a file, not a directory")
    if (directory / "compare.json").is_file():
        return "compare"
    if (directory / "affinity.json").is_file():
        return "affinity"
    if (directory / "pareto.json").is_file():
        return "pareto"
    if (directory / "metrics.jsonl").is_file() or (directory / "metrics.csv").is_file():
        return "run"
    raise PolytaskError(
        f"report: '{directory}' is not a polytask run, compare, affinity or pareto directory "
        "(expected metrics.jsonl or metrics.csv, compare.json, affinity.json or pareto.json "
        "in it)"
    )


def read_json_file(path: Path) -> Any:
    """A JSON file's content, with a one-line error naming the file if it is unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolytaskError(f"report: cannot read '{path}': {exc}") from exc


def number(value: Any) -> float:
    """A JSON number as float; null (a non-finite value in strict JSON) and junk become NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def split_pair(key: str) -> tuple[str, str]:
    a, _, b = key.partition(PAIR_SEPARATOR)
    return a, b


# -- run directories -------------------------------------------------------------------------


@dataclass
class RunLog:
    """A run directory's per-epoch log and, when the run finished, its results."""

    directory: Path
    records: list[dict[str, Any]]
    tasks: list[str]
    #: Primary (early-stopping / Δm) metric of each task.
    primary: dict[str, str]
    results: dict[str, Any] | None = None
    #: Per-epoch logs of the single-task baselines trained alongside (``baselines/<task>/``).
    baselines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def epochs(self) -> list[float]:
        return [number(r.get("epoch")) for r in self.records]

    def series(self, name: str, key: str) -> list[float]:
        """``record[name][key]`` per epoch (NaN where absent)."""
        return [number((r.get(name) or {}).get(key)) for r in self.records]

    def keys(self, name: str) -> list[str]:
        """Keys logged under ``name`` in any epoch, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.records:
            value = r.get(name)
            if isinstance(value, dict):
                seen.update(dict.fromkeys(value))
        return list(seen)

    def metric_series(self, task: str, metric: str) -> list[float]:
        return metric_series(self.records, task, metric)

    @property
    def best_epoch(self) -> float:
        """The last epoch marked best (the checkpoint the model kept), NaN if none."""
        best = [number(r.get("epoch")) for r in self.records if r.get("best")]
        return best[-1] if best else math.nan


def metric_series(records: list[dict[str, Any]], task: str, metric: str) -> list[float]:
    return [number(((r.get("val_metrics") or {}).get(task) or {}).get(metric)) for r in records]


def _primary_metrics(
    directory: Path, records: list[dict[str, Any]], tasks: list[str], results: dict[str, Any] | None
) -> dict[str, str]:
    # The run's own comparison names each task's primary metric; an unfinished run has only
    # config.json (primary_metric may be left to the kind's default, which is the first metric
    # the log holds for that task).
    primary: dict[str, str] = {}
    rows = ((results or {}).get("comparison") or {}).get("tasks") or []
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("metric"), str):
            primary[str(row.get("task"))] = row["metric"]
    if (directory / CONFIG).is_file():
        try:
            cfg: Any = read_config(directory)
        except (OSError, json.JSONDecodeError, PolytaskError):
            cfg = {}
        for spec in cfg.get("tasks") or [] if isinstance(cfg, dict) else []:
            name, metric = spec.get("name"), spec.get("primary_metric")
            if isinstance(name, str) and isinstance(metric, str):
                primary.setdefault(name, metric)
    for task in tasks:
        if task not in primary:
            for r in records:
                logged = (r.get("val_metrics") or {}).get(task) or {}
                if logged:
                    primary[task] = next(iter(logged))
                    break
    return primary


def load_run(directory: Path) -> RunLog:
    """The run directory's log, results and single-task baseline logs."""
    records = read_records(directory)
    seen: dict[str, None] = {}
    for r in records:
        seen.update(dict.fromkeys((r.get("train_loss") or {}).keys()))
        seen.update(dict.fromkeys((r.get("val_metrics") or {}).keys()))
    tasks = list(seen)
    results = read_results(directory) if is_finished(directory) else None
    baselines: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        sub = baseline_dir(directory, task)
        if sub.is_dir():
            logged = read_records(sub)
            if logged:
                baselines[task] = logged
    primary = _primary_metrics(directory, records, tasks, results)
    return RunLog(directory, records, tasks, primary, results, baselines)


# -- compare and affinity directories --------------------------------------------------------


def _require(data: Any, path: Path, kind: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PolytaskError(f"report: '{path}' is not a JSON object")
    if data.get("kind") != kind:
        raise PolytaskError(f"report: '{path}' has kind {data.get('kind')!r}; expected {kind!r}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise PolytaskError(f"report: '{path}' lacks the key {missing[0]!r}")
    return data


def load_compare(directory: Path) -> dict[str, Any]:
    """``compare.json`` (possibly partial: it is rewritten after each finished run)."""
    path = directory / "compare.json"
    return _require(
        read_json_file(path), path, "polytask-compare", ("tasks", "configurations", "results")
    )


def load_affinity(directory: Path) -> dict[str, Any]:
    """``affinity.json``: K×K affinity and gradient-cosine matrices and a suggested grouping."""
    path = directory / "affinity.json"
    data = _require(read_json_file(path), path, "polytask-affinity", ("tasks",))
    k = len(data["tasks"])
    for key in ("affinity", "gradient_cosine"):
        matrix = data.get(key)
        if matrix is not None and (
            not isinstance(matrix, list)
            or len(matrix) != k
            or any(not isinstance(row, list) or len(row) != k for row in matrix)
        ):
            raise PolytaskError(f"report: '{path}': {key!r} is not a {k}×{k} matrix")
    return data


def load_pareto(directory: Path) -> dict[str, Any]:
    """``pareto.json``: the points of the sweep, conditioned model and balancers per seed, their
    non-dominated masks and hypervolumes (possibly partial: rewritten after each run)."""
    path = directory / "pareto.json"
    return _require(read_json_file(path), path, "polytask-pareto", ("tasks", "sets", "summary"))
