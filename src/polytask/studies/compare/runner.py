"""Running one planned run, or reading it back when it already finished.

A run directory with ``results.json`` is finished and never trained again (the comparison is
resumable); one without it is continued from its last checkpoint, or restarted when it has
none. A finished run whose stored configuration differs from the planned one is an error
rather than silently reused: its numbers would answer a different question.

Multi-task runs go through :func:`polytask.run.pipeline.run` unchanged. Single-task baselines are
the pipeline's own (:func:`polytask.run.baselines.train_baseline`, on data prepared for all
tasks, so features, preprocessing and splits are identical), each in a run directory of its own.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError
from rich.console import Console

from polytask.config import RunConfig
from polytask.console import make_console
from polytask.data.prepare import PreparedData, prepare_data
from polytask.errors import PolytaskError
from polytask.evaluate.reference import against_reference
from polytask.run.baselines import train_baseline
from polytask.run.directory import (
    CONFIG,
    has_checkpoint,
    is_finished,
    read_config,
    read_results,
    remove_run_dir,
    write_config,
)
from polytask.run.pipeline import run, run_predictor, save_run
from polytask.state_io import to_json
from polytask.studies.compare.plan import RunSpec

#: Settings that change how a run is shown or where it lives, not what it computes.
_COSMETIC = (
    ("base_dir",),
    ("out",),
    ("train", "progress"),
    ("train", "threads"),
    ("train", "tensorboard"),
    # Settings of `polytask affinity` and `polytask pareto`, which a compare run never reads.
    ("affinity",),
    ("pareto",),
)


@dataclass(frozen=True)
class Outcome:
    """What the comparison needs from a finished run: its metrics on the test split and on
    validation at the epoch its checkpoint was selected."""

    test: dict[str, dict[str, float]]
    val: dict[str, dict[str, float]]


def _comparable(config: Any) -> Any:
    config = json.loads(json.dumps(config))
    for path in _COSMETIC:
        node = config
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return config


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{where}.{key}".lstrip("."))
    return where or "(root)"


def _stored_config_matches(run_dir: Path, cfg: RunConfig) -> tuple[bool, str]:
    if not (run_dir / CONFIG).is_file():
        return False, "config.json missing"
    try:
        # Read through the schema, so keys a newer polytask added (with their defaults) do not
        # count as differences.
        stored_cfg = RunConfig.model_validate(read_config(run_dir))
    except ValidationError:
        return False, "its config.json does not fit this version of polytask"
    stored = _comparable(json.loads(to_json(stored_cfg.model_dump(mode="json"))))
    expected = _comparable(json.loads(to_json(cfg.model_dump(mode="json"))))
    if stored == expected:
        return True, ""
    return False, _first_difference(stored, expected)


def _metrics(value: Any) -> dict[str, dict[str, float]]:
    """Per-task metrics from JSON, where ``null`` stands for an undefined (NaN) metric."""
    if not isinstance(value, dict):
        return {}
    return {
        task: {m: math.nan if v is None else float(v) for m, v in metrics.items()}
        for task, metrics in value.items()
        if isinstance(metrics, dict)
    }


def read_outcome(run_dir: Path) -> Outcome:
    """Test metrics (results.json) and validation metrics of the selected epoch
    (metrics.jsonl) of a finished run."""
    results = read_results(run_dir)
    if results.get("split") != "test":
        raise PolytaskError(
            f"run '{run_dir}' has no test split (it reports {results.get('split')!r}); "
            "compare needs one: give data.split a test fraction or test rows"
        )
    val: dict[str, dict[str, float]] = {}
    log = run_dir / "metrics.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line.strip() else {}
            if record.get("epoch") == results.get("best_epoch"):
                val = _metrics(record.get("val_metrics"))
    return Outcome(_metrics(results.get("multi_task")), val)


class DataCache:
    """The data of the last single-task configuration prepared: the baselines of one seed and
    fraction share it (they differ only in the task trained)."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._data: PreparedData | None = None

    def get(
        self,
        cfg: RunConfig,
        frame: pd.DataFrame | None,
        frames: Mapping[str, pd.DataFrame] | None,
    ) -> PreparedData:
        # What prepare_data reads: the seed (split, training subset), data and tasks.
        parts = [cfg.seed, cfg.base_dir, cfg.data.model_dump(mode="json")]
        key = json.dumps(parts + [t.model_dump(mode="json") for t in cfg.tasks], sort_keys=True)
        if key != self._key or self._data is None:
            self._data = None  # free the old data before preparing the new
            self._data, self._key = prepare_data(cfg, frame, frames), key
        return self._data

    def clear(self) -> None:
        self._key, self._data = None, None


def _train_single_task(
    spec: RunSpec, run_dir: Path, data: PreparedData, resume: bool, quiet: bool, console: Console
) -> None:
    """One single-task baseline (:func:`polytask.run.baselines.train_baseline`), written as a
    run directory like :func:`polytask.run.pipeline.run` writes one."""
    cfg = spec.cfg
    task = next(t for t in data.tasks if t.name == spec.task)
    assert data.test is not None  # build_plan requires a test split
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, cfg)
    baseline = train_baseline(
        cfg, data, task, data.test, run_dir, resume=resume, quiet=quiet, console=console
    )
    single, metrics = [baseline.task], {task.name: baseline.metrics}
    comparison = against_reference(single, metrics, {}, "test")
    summary = {
        "split": "test",
        "best_epoch": baseline.fit.best_epoch,
        "multi_task": metrics,
        "single_task": {},
        "comparison": comparison.to_dict(),
    }
    save_run(run_dir, run_predictor(cfg, baseline.model, single, data, summary), summary)


def ensure_run(
    spec: RunSpec,
    root: Path,
    *,
    frame: pd.DataFrame | None,
    frames: Mapping[str, pd.DataFrame] | None,
    cache: DataCache,
    quiet: bool,
    console: Console,
) -> tuple[Outcome, bool]:
    """The outcome of ``spec``, training it unless its directory holds a finished run; the flag
    says whether it trained."""
    run_dir = root / spec.path
    matches, difference = _stored_config_matches(run_dir, spec.cfg)
    if is_finished(run_dir):
        if not matches:
            raise PolytaskError(
                f"run '{run_dir}' finished with another configuration ({difference}); "
                "delete it (or use another --out) to train it again"
            )
        return read_outcome(run_dir), False
    resume = matches and has_checkpoint(run_dir)
    if not resume:
        # An unfinished run without a usable checkpoint starts over: only a polytask run that
        # no live process holds is deleted (anything else fails, untouched).
        remove_run_dir(run_dir)
    if spec.task is not None:
        data = cache.get(spec.cfg, frame, frames)
        if data.test is None:
            raise PolytaskError(
                f"{data.source}: the split left no test row; compare reports test metrics"
            )
        _train_single_task(spec, run_dir, data, resume, quiet, console)
    else:
        cache.clear()  # the baselines of this seed and fraction are done; free their data
        run(
            spec.cfg,
            frame=frame,
            frames=frames,
            out=run_dir,
            resume=resume,
            quiet=quiet,
            console=console,
        )
    return read_outcome(run_dir), True


class TrainRun:
    """:func:`ensure_run` as a picklable callable of one :class:`RunSpec`, which a
    :class:`~polytask.studies.backends.Backend` calls wherever it runs: trains (or continues)
    the run in ``root / spec.path`` and returns whether it trained and the seconds it took. The
    caller reads the outcome back from the run directory.

    Called in this process it keeps one :class:`DataCache` across calls (the baselines of one
    seed and fraction share their data) and prints progress unless ``quiet``; a pickled copy
    (another process, a Ray task) starts with an empty cache and prints nothing."""

    def __init__(
        self,
        root: Path,
        frame: pd.DataFrame | None,
        frames: Mapping[str, pd.DataFrame] | None,
        *,
        quiet: bool,
        console: Console,
    ) -> None:
        self.root, self.frame, self.frames = root, frame, frames
        self.quiet, self.console = quiet, console
        self.cache = DataCache()

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "frame": self.frame, "frames": self.frames}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["root"],
            state["frame"],
            state["frames"],
            quiet=True,
            console=make_console(stderr=True, quiet=True),
        )

    def __call__(self, spec: RunSpec) -> tuple[bool, float]:
        started = time.perf_counter()
        _, trained = ensure_run(
            spec,
            self.root,
            frame=self.frame,
            frames=self.frames,
            cache=self.cache,
            quiet=self.quiet,
            console=self.console,
        )
        return trained, time.perf_counter() - started
