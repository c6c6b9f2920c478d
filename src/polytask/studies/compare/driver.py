"""``polytask compare``: plan the runs, train the missing ones, keep compare.json current."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from polytask.config import RunConfig, load_config
from polytask.config_errors import validation_message
from polytask.console import make_console
from polytask.errors import ConfigError, PolytaskError
from polytask.run.directory import is_finished
from polytask.state_io import atomic_write_text, to_json
from polytask.studies.backends import Backend, LocalBackend, require_visible
from polytask.studies.compare.config import CompareConfig
from polytask.studies.compare.plan import Plan, RunSpec, build_plan
from polytask.studies.compare.render import markdown, tables
from polytask.studies.compare.runner import DataCache, Outcome, TrainRun, ensure_run, read_outcome
from polytask.studies.compare.summary import summarise


@dataclass
class CompareResult:
    """A finished comparison: the compare.json document and where it was written."""

    summary: dict[str, Any]
    out: Path
    #: Runs trained by this call (the others were finished already and read back).
    trained: list[str]
    reused: list[str]

    def tables(self, per_task: bool = False) -> list[Table]:
        """The terminal tables: a summary per training fraction (and, with ``per_task``, the
        table of every task)."""
        return tables(self.summary, per_task)


def _write(out: Path, plan: Plan, outcomes: Mapping[str, Outcome]) -> dict[str, Any]:
    doc = summarise(plan, outcomes)
    atomic_write_text(out / "compare.json", to_json(doc) + "\n")
    return doc


def compare(
    config: RunConfig | str | Path,
    *,
    out: str | Path,
    frame: pd.DataFrame | None = None,
    frames: Mapping[str, pd.DataFrame] | None = None,
    seeds: int | list[int] | None = None,
    quiet: bool = False,
    console: Console | None = None,
    backend: Backend | None = None,
) -> CompareResult:
    """Multi-task vs single-task on the config's data, over seeds, with a verdict per task.

    ``config`` is a run configuration (or a TOML path) whose ``[compare]`` section lists the
    seeds, the multi-task configurations (as ``--set`` overrides), the training fractions and
    an optional tuning grid; ``seeds`` replaces its seeds. Every run is a normal run directory
    under ``out/runs/``; runs already finished there are read back, not trained again.
    ``out/compare.json`` is rewritten after each run (a partial comparison is readable while it
    runs) and ``out/compare.md`` is written at the end. ``frame`` / ``frames`` give the data as
    data frames, as for :func:`polytask.run.pipeline.run`. ``backend`` is where the runs to
    train execute (:mod:`polytask.studies.backends`; default: one after the other in this
    process); finished runs are always read back here.
    """
    cfg = load_config(config) if isinstance(config, str | Path) else config
    if seeds is not None:
        try:
            given = cfg.section("compare", CompareConfig).model_dump()
            section = CompareConfig.model_validate({**given, "seeds": seeds})
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "compare", CompareConfig)) from None
        cfg = cfg.model_copy(update={"compare": section})
    console = console or make_console(stderr=True)
    plan = build_plan(cfg)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise PolytaskError(f"output path '{root}' exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, Outcome] = {}
    trained: list[str] = []
    reused: list[str] = []
    total = len(plan.runs)
    runs_root = root / "runs"

    def record(spec: RunSpec, outcome: Outcome, did_train: bool, seconds: float) -> None:
        outcomes[spec.path] = outcome
        (trained if did_train else reused).append(spec.path)
        if did_train:
            _write(root, plan, outcomes)
        if not quiet:
            what = f"trained in {seconds:.1f}s" if did_train else "already finished"
            console.print(
                f"compare [{len(outcomes)}/{total}] runs/{spec.path}: {what}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    # Finished runs are read first (here, whatever the backend), so the compare.json written
    # after the first new run already holds everything an earlier invocation finished.
    done = [is_finished(runs_root / s.path) for s in plan.runs]
    cache = DataCache()
    for spec in (s for s, d in zip(plan.runs, done, strict=True) if d):
        outcome, did_train = ensure_run(
            spec, runs_root, frame=frame, frames=frames, cache=cache, quiet=quiet, console=console
        )
        record(spec, outcome, did_train, 0.0)
    # The others train on the backend, each into its own run directory, read back here.
    todo = [s for s, d in zip(plan.runs, done, strict=True) if not d]
    backend = backend or LocalBackend()
    train = TrainRun(runs_root.resolve(), frame, frames, quiet=quiet, console=console)
    for i, (did_train, seconds) in backend.map(train, todo):
        run_dir = runs_root / todo[i].path
        require_visible(is_finished(run_dir), run_dir, backend)
        record(todo[i], read_outcome(run_dir), did_train, seconds)
    doc = _write(root, plan, outcomes)
    atomic_write_text(root / "compare.md", markdown(doc))
    return CompareResult(doc, root, trained, reused)
