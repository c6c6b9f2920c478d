"""``polytask pareto``: train the configuration over preference vectors, read the front.

The runs (all planned and validated before anything trains):

* the **sweep**: one run per preference vector ``r`` and seed, with ``balancer = static``
  and weights ``r`` (``[pareto] method = "static"``, the weighted-sum scalarisation) or
  ``balancer = epo`` with preference ``r`` (``method = "epo"``);
* when the config's balancer is ``cosmos``: one **conditioned** run per seed (the config as
  written), evaluated afterwards at every preference of the sweep, so its front costs one
  training run;
* one run per seed for each balancing method in ``[pareto] balancers``: one point each;
* when the conditioned run trains for other epochs than the sweep (``[pareto]
  conditioned_epochs``, with ``budget_control`` on, the default): one run per seed of equal
  weights for those epochs, so the conditioned model's front can be told apart from what its
  longer budget alone buys.

Every run is an ordinary run directory under ``OUT/runs/``, trained or read back by the compare
command's runner (:func:`polytask.studies.compare.runner.ensure_run`): a run directory with
``results.json`` is never trained again, an interrupted one continues from its checkpoint, and
one finished with another configuration is an error. The runs to train go to a backend
(:mod:`polytask.studies.backends`): with ``workers > 1`` that many local processes (spawned, one
torch thread each), or a Ray cluster (``--backend ray``); finished runs are read back here.
``OUT/pareto.json`` is rewritten after each finished run and ``OUT/pareto.md`` at the end
(:mod:`polytask.studies.pareto.summary`).

Checkpoints are selected on validation by the config's criterion (unweighted: a sweep run with
``r = (0.9, 0.1)`` keeps its best epoch by the mean over tasks, not by ``r``); every number on
the front is on the test split.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from polytask.config import RunConfig, config_from_dict, load_config
from polytask.config_errors import validation_message
from polytask.console import make_console
from polytask.data.prepare import prepare_data
from polytask.errors import ConfigError, PolytaskError
from polytask.evaluate.evaluation import evaluate_data
from polytask.run.directory import is_finished, read_records
from polytask.run.predictor import load
from polytask.state_io import atomic_write_text, read_json, to_json
from polytask.studies.backends import Backend, LocalBackend, require_visible
from polytask.studies.compare.plan import RunSpec, base_raw, check_test_split
from polytask.studies.compare.runner import DataCache, ensure_run
from polytask.studies.pareto.config import ParetoConfig
from polytask.studies.pareto.plan import SweepPlan, SweepRun, sweep_name
from polytask.studies.pareto.summary import markdown, summarise, terminal_table
from polytask.tasks.preferences import preference_points

#: The set of equal-weight runs trained for the conditioned run's epochs (``budget_control``).
BUDGET_CONTROL = "equal, conditioned epochs"

#: Where a conditioned run keeps its evaluation at the sweep's preferences.
POINTS_FILE = "preference_points.json"


@dataclass
class ParetoResult:
    """A finished sweep: the pareto.json document and where it was written."""

    summary: dict[str, Any]
    out: Path
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def table(self) -> Table:
        """Hypervolume and training cost of each set of points (terminal)."""

        return terminal_table(self.summary)


def _dir_name(path: str) -> str:
    """``path`` with every character outside ``[A-Za-z0-9._=,+-/]`` replaced by ``-``."""
    return "".join(c if c.isalnum() or c in "._=,+-/" else "-" for c in path)


def _build(raw: dict[str, Any], cfg: RunConfig, what: str) -> RunConfig:
    try:
        return config_from_dict(raw, [], base_dir=cfg.base_dir)
    except ConfigError as exc:
        raise ConfigError(f"pareto, {what}: {exc}") from None


def _unconditioned(raw: dict[str, Any], seed: int, balancer: str) -> dict[str, Any]:
    """A copy of ``raw`` for one unconditioned run of ``balancer`` (default parameters)."""
    one: dict[str, Any] = json.loads(json.dumps(raw))
    one["seed"] = seed
    one["model"]["preference_conditioning"] = "none"
    one["balancer"] = {"name": balancer}
    return one


def plan_sweep(cfg: RunConfig) -> SweepPlan:
    """Every run of the sweep described by ``cfg`` (its ``[pareto]`` section)."""
    section = cfg.section("pareto", ParetoConfig)
    names = cfg.named_tasks("pareto")
    if len(names) < 2:
        raise ConfigError("config error: tasks: a Pareto front needs at least two tasks")
    check_test_split(cfg, "pareto")
    if not section.min_weight < 1.0 / len(names):
        raise ConfigError(
            f"config error: pareto.min_weight: must be below 1/{len(names)} for {len(names)} "
            f"tasks, got {section.min_weight}"
        )
    unknown = sorted(set(section.reference or {}) - set(names))
    missing = sorted(set(names) - set(section.reference or {})) if section.reference else []
    if unknown or missing:
        bad = f"unknown task {unknown[0]!r}" if unknown else f"no value for task {missing[0]!r}"
        raise ConfigError(f"config error: pareto.reference: {bad}; tasks: {', '.join(names)}")
    conditioned = cfg.balancer.name == "cosmos"
    if conditioned and cfg.model.preference_conditioning == "none":
        raise ConfigError(
            "config error: model.preference_conditioning: balancer 'cosmos' trains a "
            "preference-conditioned model; set it to 'film' or 'input'"
        )
    prefs = preference_points(
        len(names), section.n_points, min_weight=section.min_weight, seed=cfg.seed
    )
    preferences = [[round(float(v), 12) for v in row] for row in prefs]
    raw = base_raw(cfg)
    raw.pop("pareto", None)  # runs never read it: editing [pareto] must not orphan them
    seeds = section.seed_list(cfg.seed)
    fraction = cfg.data.train_fraction
    runs: list[SweepRun] = []
    group = sweep_name(section.method)
    for seed in seeds:
        for i, r in enumerate(preferences):
            one = json.loads(json.dumps(raw))
            one["seed"] = seed
            one["model"]["preference_conditioning"] = "none"
            if section.method == "static":
                one["balancer"] = {"name": "static", "weights": dict(zip(names, r, strict=True))}
            else:
                one["balancer"] = {"name": "epo", "preference": r}
            label = ",".join(f"{v:.4g}" for v in r)
            path = f"sweep-{section.method}/seed{seed}/{i:02d}_r={label}"
            built = _build(one, cfg, f"preference {label}")
            spec = RunSpec(fraction, group, None, seed, (), built, _dir_name(path))
            runs.append(SweepRun(spec, group, "sweep", tuple(r)))
        if conditioned:
            one = json.loads(json.dumps(raw))
            one["seed"] = seed
            if section.conditioned_epochs is not None:
                one["train"]["epochs"] = section.conditioned_epochs
            built = _build(one, cfg, "the conditioned run")
            spec = RunSpec(fraction, "cosmos", None, seed, (), built, f"cosmos/seed{seed}")
            runs.append(SweepRun(spec, "cosmos", "conditioned"))
        for name in section.balancers:
            built = _build(_unconditioned(raw, seed, name), cfg, f"balancer {name!r}")
            path = _dir_name(f"balancer-{name}/seed{seed}")
            spec = RunSpec(fraction, name, None, seed, (), built, path)
            runs.append(SweepRun(spec, name, "balancer"))
        epochs = section.conditioned_epochs
        if conditioned and section.budget_control and epochs not in (None, cfg.train.epochs):
            # Same budget as the conditioned run, no conditioning: what the epochs alone buy.
            one = _unconditioned(raw, seed, "equal")
            one["train"]["epochs"] = epochs
            built = _build(one, cfg, "the budget control")
            spec = RunSpec(
                fraction, BUDGET_CONTROL, None, seed, (), built, f"budget-control/seed{seed}"
            )
            runs.append(SweepRun(spec, BUDGET_CONTROL, "balancer"))
    groups = [r.group for r in runs]
    if len(set(zip(groups, [r.spec.path for r in runs], strict=True))) != len(runs):
        raise ConfigError("config error: pareto.balancers: a balancer is listed twice")
    return SweepPlan(cfg, section, seeds, preferences, runs)


# -- one run ---------------------------------------------------------------------------------


def training_seconds(run_dir: Path) -> float:
    """Training cost of a run: the sum of its epochs' wall-clock seconds (metrics.jsonl;
    validation included, data preparation not)."""

    total = sum(float(r.get("seconds") or 0.0) for r in read_records(run_dir))
    return round(total, 3)


def conditioned_points(
    run_dir: Path,
    cfg: RunConfig,
    preferences: list[list[float]],
    frame: pd.DataFrame | None,
    frames: Mapping[str, pd.DataFrame] | None,
) -> dict[str, Any]:
    """Validation and test metrics of the conditioned model at each preference, cached in
    ``run_dir/preference_points.json`` (recomputed when the preferences change)."""

    cache = run_dir / POINTS_FILE
    if cache.is_file():
        stored = read_json(cache)
        if stored.get("preferences") == preferences:
            return dict(stored)
    predictor = load(run_dir / "model")
    # The model's own preprocessing and fitted tasks: the split (seeded) and the tensors are
    # the ones it was trained and selected on.
    data = prepare_data(
        cfg,
        frame,
        frames,
        preprocessor=predictor.preprocessor,
        fitted={t.name: t for t in predictor.tasks},
    )
    if data.test is None:
        raise PolytaskError(
            f"{data.source}: the split left no test row; pareto reports test metrics"
        )
    model, tasks = predictor.model, data.tasks
    size = cfg.train.eval_batch_size
    val, test = [], []
    for r in preferences:
        with model.preferring(r):
            val.append(evaluate_data(model, tasks, data.val, size)[1])
            test.append(evaluate_data(model, tasks, data.test, size)[1])
    doc = {"preferences": preferences, "val": val, "test": test}
    atomic_write_text(cache, to_json(doc) + "\n")
    stored = json.loads(to_json(doc))  # NaN -> null, exactly as a later read returns it
    return dict(stored)


def _execute(
    run: SweepRun,
    root: Path,
    frame: pd.DataFrame | None,
    frames: Mapping[str, pd.DataFrame] | None,
    preferences: list[list[float]],
    quiet: bool,
) -> dict[str, Any]:
    """Train (or read back) one run; what the summary needs, as plain JSON-ready data."""
    console = make_console(stderr=True, quiet=quiet)
    outcome, trained = ensure_run(
        run.spec, root, frame=frame, frames=frames, cache=DataCache(), quiet=quiet, console=console
    )
    run_dir = root / run.spec.path
    result: dict[str, Any] = {
        "trained": trained,
        "seconds": training_seconds(run_dir),
        "test": outcome.test,
        "val": outcome.val,
    }
    if run.kind == "conditioned":
        result["points"] = conditioned_points(run_dir, run.spec.cfg, preferences, frame, frames)
    plain: dict[str, Any] = json.loads(to_json(result))
    return plain


class TrainSweepRun:
    """Training one run of the sweep as a picklable callable, which a
    :class:`~polytask.studies.backends.Backend` calls wherever it runs: :func:`_execute` (the
    run, and a conditioned run's evaluation at the preferences, cached in its directory);
    returns whether it trained and the seconds it took. The driver reads the result back from
    the run directory, as it reads a run an earlier invocation finished."""

    def __init__(
        self,
        root: Path,
        frame: pd.DataFrame | None,
        frames: Mapping[str, pd.DataFrame] | None,
        preferences: list[list[float]],
        quiet: bool,
    ) -> None:
        self.root, self.frame, self.frames = root, frame, frames
        self.preferences, self.quiet = preferences, quiet

    def __getstate__(self) -> dict[str, Any]:
        # Another process (a local worker, a Ray task) prints nothing.
        return {**self.__dict__, "quiet": True}

    def __call__(self, run: SweepRun) -> tuple[bool, float]:
        started = time.perf_counter()
        result = _execute(run, self.root, self.frame, self.frames, self.preferences, self.quiet)
        return bool(result["trained"]), time.perf_counter() - started


# -- the whole sweep -------------------------------------------------------------------------


def _with_overrides(cfg: RunConfig, **values: Any) -> RunConfig:
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return cfg
    try:
        section = ParetoConfig.model_validate(
            {**cfg.section("pareto", ParetoConfig).model_dump(), **given}
        )
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "pareto", ParetoConfig)) from None
    return cfg.with_section("pareto", section)


def sweep(
    config: RunConfig | str | Path,
    *,
    out: str | Path,
    frame: pd.DataFrame | None = None,
    frames: Mapping[str, pd.DataFrame] | None = None,
    seeds: int | list[int] | None = None,
    workers: int | None = None,
    quiet: bool = False,
    console: Console | None = None,
    backend: Backend | None = None,
) -> ParetoResult:
    """Map the Pareto front of the config's tasks (``[pareto]`` section; ``seeds`` and
    ``workers`` override its keys) into ``out``: ``out/runs/`` (one run directory per run),
    ``out/pareto.json`` (rewritten after each finished run) and ``out/pareto.md``. Finished
    runs found in ``out/runs/`` are read back, not trained again. ``frame`` / ``frames`` give
    the data as data frames, as for :func:`polytask.run.pipeline.run`. ``backend`` is where the
    runs to train execute (:mod:`polytask.studies.backends`; default: a local backend of
    ``workers`` processes). With more than one local worker the runs train in spawned
    processes, so a script calling this must guard its entry point with
    ``if __name__ == "__main__":`` (the command line needs nothing)."""

    cfg = load_config(config) if isinstance(config, str | Path) else config
    cfg = _with_overrides(cfg, seeds=seeds, workers=workers)
    plan = plan_sweep(cfg)
    console = console or make_console(stderr=True)
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise PolytaskError(f"output path '{root}' exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    runs_root = root / "runs"
    results: dict[str, dict[str, Any]] = {}
    trained: list[str] = []
    reused: list[str] = []

    def record(run: SweepRun, result: dict[str, Any], seconds: float, n: int) -> None:
        results[run.spec.path] = result
        (trained if result["trained"] else reused).append(run.spec.path)
        if result["trained"]:
            atomic_write_text(root / "pareto.json", to_json(summarise(plan, results)) + "\n")
        if not quiet:
            what = f"trained in {seconds:.1f}s" if result["trained"] else "already finished"
            console.print(
                f"pareto [{n}/{len(plan.runs)}] runs/{run.spec.path}: {what}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    # Finished runs first (read here, whatever the backend): the pareto.json written after
    # the first new run already holds everything an earlier invocation finished.
    done = [is_finished(runs_root / r.spec.path) for r in plan.runs]
    count = 0
    for run in (r for r, d in zip(plan.runs, done, strict=True) if d):
        count += 1
        record(run, _execute(run, runs_root, frame, frames, plan.preferences, True), 0.0, count)
    # The others train on the backend, each into its own run directory, read back here.
    todo = [r for r, d in zip(plan.runs, done, strict=True) if not d]
    backend = backend or LocalBackend(plan.section.workers)
    train = TrainSweepRun(runs_root.resolve(), frame, frames, plan.preferences, quiet)
    for i, (did_train, seconds) in backend.map(train, todo):
        count += 1
        run_dir = runs_root / todo[i].spec.path
        require_visible(is_finished(run_dir), run_dir, backend)
        result = _execute(todo[i], runs_root, frame, frames, plan.preferences, True)
        record(todo[i], {**result, "trained": did_train}, seconds, count)
    doc = summarise(plan, results)
    atomic_write_text(root / "pareto.json", to_json(doc) + "\n")
    atomic_write_text(root / "pareto.md", markdown(doc))
    return ParetoResult(doc, root, trained, reused)
