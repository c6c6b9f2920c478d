"""Every run a comparison needs, each with its validated configuration and its directory.

For each seed and training fraction: one single-task baseline per task (the config as written,
with hard sharing — the encoder and one head — and a static weight of 1, which is what a
single-task network is) and each multi-task configuration, each at every point of the tuning
grid. All configurations are built and validated here, before anything trains, so a typo in
the fifth configuration fails at once rather than after hours.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polytask.config import RunConfig, apply_override, config_from_dict, parse_override
from polytask.data.config import SplitConfig
from polytask.errors import ConfigError
from polytask.studies.compare.config import SINGLE_TASK, CompareConfig
from polytask.tasks import Task
from polytask.train.criterion import criterion_for_tasks

#: One point of the tuning grid: (key, value) pairs in the grid's key order.
GridPoint = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class RunSpec:
    """One training run of a comparison."""

    fraction: float
    #: ``"single-task"`` or a multi-task configuration's name.
    configuration: str
    #: The task of a single-task baseline; ``None`` for a multi-task run.
    task: str | None
    seed: int
    point: GridPoint
    cfg: RunConfig
    #: Run directory, relative to the comparison's output directory.
    path: str

    @property
    def group(self) -> tuple[float, str, str | None, int]:
        """Runs differing only in their grid point: one of them is selected on validation."""
        return (self.fraction, self.configuration, self.task, self.seed)


@dataclass(frozen=True)
class Plan:
    """The comparison's axes and its runs, in training order (seed, fraction, baselines first)."""

    seeds: list[int]
    fractions: list[float]
    configurations: dict[str, list[str]]
    grid: dict[str, list[Any]]
    alpha: float
    confidence: float
    runs: list[RunSpec]
    #: The tasks as declared in the config (their primary metrics define Δm).
    tasks: list[Task]


def fraction_dir(fraction: float) -> str:
    return f"fraction-{fraction:g}"


def _slug(point: GridPoint) -> str:
    """A readable directory name for a grid point: ``train.lr=0.001,train.batch_size=64``."""
    text = ",".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in point)
    return re.sub(r"[^A-Za-z0-9._=,+-]", "-", text)


def base_raw(cfg: RunConfig) -> dict[str, Any]:
    """The configuration as a raw dict that every run of the comparison starts from."""
    raw = cfg.model_dump(mode="json", exclude={"compare", "base_dir"})
    raw["out"] = None
    # Baselines are runs of their own; the per-epoch log is read back in its JSON form.
    raw["baselines"] = False
    raw["train"]["log_format"] = "jsonl"
    return raw


def _copy(raw: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(raw))
    return copied


def grid_points(grid: dict[str, list[Any]]) -> list[GridPoint]:
    """Every combination of the grid's values (one empty point without a grid)."""
    keys = list(grid)
    return [tuple(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


#: How a single-task baseline's configuration differs from the config as written (each
#: section replaced whole, so parameters of the written architecture or balancer are dropped).
SINGLE_TASK_OVERRIDES = ["model.architecture.name=hard", "balancer.name=static"]


def _single_task_raw(raw: dict[str, Any], task: str) -> dict[str, Any]:
    single = _copy(raw)
    single["model"]["architecture"] = {"name": "hard"}
    single["balancer"] = {"name": "static"}
    single["train"]["criterion"] = criterion_for_tasks(single["train"]["criterion"], [task])
    return single


def check_test_split(cfg: RunConfig, command: str = "compare") -> None:
    """Raise unless every split of ``cfg`` keeps test rows (``command`` reports on them)."""
    splits: list[tuple[str, SplitConfig]] = [("data.split", cfg.data.split)]
    splits += [
        (f"data.sources.{i}.split", s.split) for i, s in enumerate(cfg.data.sources) if s.split
    ]
    for where, split in splits:
        empty = (split.method in ("random", "group") and split.test <= 0) or (
            split.method == "files" and split.test_path is None
        )
        if empty:
            raise ConfigError(
                f"config error: {where}: {command} reports test metrics (checkpoints and "
                "tuning use validation only) and needs a test split"
            )


def build_plan(cfg: RunConfig) -> Plan:
    """Every run of the comparison described by ``cfg`` (its ``[compare]`` section)."""
    cmp = cfg.section("compare", CompareConfig)
    check_test_split(cfg)
    configurations = {c.name: list(c.set) for c in cmp.configurations} or {"multi-task": []}
    grid_keys = set(cmp.grid)
    for name, overrides in configurations.items():
        for text in overrides:
            key = ".".join(parse_override(text)[0])
            if key in grid_keys:
                raise ConfigError(
                    f"config error: compare.configurations: {name!r} sets {key}, which "
                    "compare.grid tunes; remove one of them"
                )
    seeds, points = cmp.seed_list(cfg.seed), grid_points(cmp.grid)
    tasks = cfg.named_tasks("compare")
    if len(tasks) < 2:
        raise ConfigError("config error: tasks: a comparison needs at least two tasks")
    raw = base_raw(cfg)
    runs: list[RunSpec] = []
    for seed, fraction in itertools.product(seeds, cmp.fractions):
        for point in points:
            one = _copy(raw)
            one["seed"] = seed
            one["data"]["train_fraction"] = fraction
            for key, value in point:
                apply_override(one, key.split("."), value)
            where = Path(fraction_dir(fraction))
            tail = [_slug(point)] if point else []
            for task in tasks:
                single = _build(_single_task_raw(one, task), [], cfg, f"{SINGLE_TASK} ({task})")
                path = where.joinpath(SINGLE_TASK, task, f"seed{seed}", *tail)
                runs.append(
                    RunSpec(fraction, SINGLE_TASK, task, seed, point, single, path.as_posix())
                )
            for name, overrides in configurations.items():
                multi = _build(one, overrides, cfg, f"configuration {name!r}")
                path = where.joinpath(name, f"seed{seed}", *tail)
                runs.append(RunSpec(fraction, name, None, seed, point, multi, path.as_posix()))
    # Seeds outermost: every configuration gets its first seeds early, so a partial
    # compare.json already compares like with like. Within a seed, baselines come first: a
    # multi-task grid point is chosen against them.
    order = {(s, f): i for i, (s, f) in enumerate(itertools.product(seeds, cmp.fractions))}
    runs.sort(key=lambda r: (order[(r.seed, r.fraction)], r.configuration != SINGLE_TASK))
    return Plan(
        seeds,
        list(cmp.fractions),
        configurations,
        dict(cmp.grid),
        cmp.alpha,
        cmp.confidence,
        runs,
        cfg.task_objects(),
    )


def _build(raw: dict[str, Any], overrides: list[str], cfg: RunConfig, what: str) -> RunConfig:
    try:
        return config_from_dict(raw, overrides, base_dir=cfg.base_dir)
    except ConfigError as exc:
        raise ConfigError(f"compare, {what}: {exc}") from None
