"""A whole run from a configuration: data -> multi-task model -> single-task baselines ->
comparison -> model directory. The CLI and the Python API both call :func:`run`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from polytask.config import RunConfig, config_from_dict
from polytask.console import make_console
from polytask.data.prepare import PreparedData, prepare_data
from polytask.data.summary import DataSummary, describe_data
from polytask.data.tensors import TensorData
from polytask.distributed import Collective, collective, launched
from polytask.errors import ConfigError
from polytask.evaluate.evaluation import evaluate_data
from polytask.evaluate.pooled import Pair, metric_pairs, pooled_metrics, pooled_rows
from polytask.evaluate.reference import Comparison, against_reference
from polytask.models.model import MultiTaskModel
from polytask.progress import console_sink, reporting
from polytask.run.baselines import train_baselines
from polytask.run.build import build_run, train_built
from polytask.run.directory import (
    check_out_dir,
    create_out_dir,
    model_dir,
    protected_paths,
    write_results,
    write_splits,
)
from polytask.run.predictor import Predictor
from polytask.run.variant import RunVariant, variant_for
from polytask.tasks import Task
from polytask.train.callbacks.tensorboard import require_tensorboard
from polytask.train.trainer import Callback, FitResult


@dataclass
class RunResult:
    """What a run produced: the predictor, its fit history, metrics and the comparison."""

    predictor: Predictor
    fit: FitResult
    metrics: dict[str, dict[str, float]]
    baseline_metrics: dict[str, dict[str, float]]
    comparison: Comparison
    out_dir: Path | None


def fit(
    data: pd.DataFrame | str | Path | None,
    tasks: Sequence[Task],
    *,
    sources: Mapping[str, tuple[pd.DataFrame | str | Path, Sequence[str]]] | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    baselines: bool = True,
    data_options: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    balancer: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    sampling: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Keras-style entry point: a table (DataFrame or CSV/Parquet path) and a list of tasks.

    With one table per task (or group of tasks), pass ``data=None`` and
    ``sources={"books": (books_df, ["books"]), "dvd": ("dvd.csv", ["dvd"])}``: each source's
    table and the tasks it labels; ``sampling`` chooses how batches are drawn from them.
    The keyword sections are the config file's sections as dicts (``train={"epochs": 5}``);
    they are validated exactly as a TOML file would be, then :func:`run` trains.
    """
    raw: dict[str, Any] = {
        "seed": seed,
        "baselines": baselines,
        "data": dict(data_options or {}),
        "tasks": [t.declared() for t in tasks],
    }
    sections = {
        "model": model,
        "balancer": balancer,
        "train": train,
        "sampling": sampling,
        "schedule": schedule,
    }
    raw.update({key: section for key, section in sections.items() if section is not None})
    frame = None
    frames: dict[str, pd.DataFrame] = {}
    if (data is None) == (sources is None):
        raise ConfigError("fit: give either data (one table) or sources (one per task group)")
    if isinstance(data, pd.DataFrame):
        frame = data
    elif data is not None:
        raw["data"]["path"] = str(Path(data).resolve())
    for name, (table, labelled) in (sources or {}).items():
        entry: dict[str, Any] = {"name": name, "tasks": list(labelled)}
        if isinstance(table, pd.DataFrame):
            frames[name] = table
        else:
            entry["path"] = str(Path(table).resolve())
        raw["data"].setdefault("sources", []).append(entry)
    cfg = config_from_dict(raw)
    return run(cfg, frame=frame, frames=frames, out=out, overwrite=overwrite, quiet=quiet)


def check_tensorboard(cfg: RunConfig, out_dir: Path | None) -> None:
    """``train.tensorboard`` needs a run directory and the package: fail before any data is
    read."""
    if not cfg.train.tensorboard:
        return
    if out_dir is None:
        raise ConfigError(
            "config error: train.tensorboard: logs go to <run dir>/tensorboard; "
            "give an output directory"
        )
    require_tensorboard()


def run_predictor(
    cfg: RunConfig,
    model: MultiTaskModel,
    tasks: list[Task],
    data: PreparedData,
    summary: dict[str, Any],
    lineage: dict[str, Any] | None = None,
) -> Predictor:
    """The predictor of a model trained on ``data`` as ``cfg`` describes (its preprocessing,
    id column and missing-value markers), carrying the run's ``summary`` as its metrics."""
    return Predictor(
        model,
        tasks,
        data.preprocessor,
        cfg.model,
        data.input_spec,
        id_column=cfg.data.id,
        na_values=cfg.data.na_values,
        metrics=summary,
        lineage=lineage,
        groups=data.groups,
    )


def pooled_summary(
    cfg: RunConfig,
    data: PreparedData,
    model: MultiTaskModel,
    eval_split: TensorData,
    baseline_pairs: dict[str, Pair],
    comparison: Comparison,
) -> dict[str, Any]:
    """The pooled (micro) metrics of the task templates (:mod:`polytask.evaluate.pooled`)
    for the model and the single-task baselines, added to ``comparison`` as rows and
    returned for ``results.json`` with the templates' record; {} without templates."""
    if not data.groups:
        return {}
    pairs = metric_pairs(model, data.tasks, eval_split, cfg.train.eval_batch_size)
    multi = pooled_metrics(data.groups, data.tasks, pairs)
    single = pooled_metrics(data.groups, data.tasks, baseline_pairs) if baseline_pairs else {}
    comparison.pooled = pooled_rows(data.groups, data.tasks, multi, single)
    return {
        "pooled": {"multi_task": multi, "single_task": single},
        "templates": [g.to_dict() for g in data.groups],
        "comparison": comparison.to_dict(),
    }


def run(
    cfg: RunConfig,
    *,
    frame: pd.DataFrame | None = None,
    frames: Mapping[str, pd.DataFrame] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    variant: RunVariant | None = None,
) -> RunResult:
    """Train the multi-task model (and single-task baselines) described by ``cfg``.

    With an output directory, it receives ``model/`` (the model directory), ``checkpoints/``,
    the metrics log, ``baselines/<task>/`` and ``results.json``
    (:mod:`polytask.run.directory`). All input checks run before the directory is touched, so
    bad input leaves nothing behind; the directory is locked while the run writes it, and
    ``overwrite`` replaces a previous run only once the new one has finished. ``variant``
    names what a feature built on the run changes (:class:`polytask.run.variant.RunVariant`);
    by default the registered studies' rule for ``cfg`` (``[distill]`` teachers make a
    distillation), else the plain run.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), the run joins the process group and trains
    data-parallel (:mod:`polytask.distributed`); rank 0 alone checks and writes the run
    directory and returns its path.
    """
    with launched(cfg.train.device, cfg.distributed) as group:
        out_dir = writers_out_dir(group, cfg, out, resume, overwrite)
        return _run(
            cfg, frame, frames, out_dir, resume, overwrite, quiet, console, callbacks, variant
        )


def writers_out_dir(
    group: Collective,
    cfg: RunConfig,
    out: str | Path | None,
    resume: bool,
    overwrite: bool,
    protected: Sequence[tuple[str, Path]] = (),
) -> Path | None:
    """The run directory (``out``, else the config's ``out``), checked before anything is read
    (:func:`check_out_dir`, with ``protected`` paths besides the config's own); ``None`` on the
    ranks of a data-parallel run that do not write (every rank but 0)."""
    out_dir = Path(out) if out is not None else (cfg.resolve(cfg.out) if cfg.out else None)
    if not group.writes:
        return None
    check_out_dir(out_dir, resume, overwrite, [*protected_paths(cfg), *protected])
    check_tensorboard(cfg, out_dir)
    return out_dir


def _run(
    cfg: RunConfig,
    frame: pd.DataFrame | None,
    frames: Mapping[str, pd.DataFrame] | None,
    out_dir: Path | None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    console: Console | None,
    callbacks: Sequence[Callback],
    variant: RunVariant | None,
) -> RunResult:
    if variant is None:
        variant = variant_for(cfg, console)
    console = console or make_console(stderr=True)
    # The long steps of data preparation (sentence embeddings, decoding recordings or images,
    # featurising molecules) report their progress where the training's progress goes.
    speaks = not quiet and cfg.train.progress and collective().writes  # rank 0 speaks
    with reporting(console_sink(console) if speaks else None):
        data = prepare_data(cfg, frame, frames, soft_targets=variant.soft_targets)
    tasks = data.tasks
    built = build_run(cfg, data.input_spec, tasks)
    # ``work_dir`` is ``out_dir``, or with ``overwrite`` the sibling that replaces it only once
    # this block has finished; the directory is locked until then.
    with create_out_dir(out_dir, cfg, resume, overwrite) as work_dir:
        # Once every check has passed, with the progress display (train.progress): a run that
        # stops on bad input prints its one line only.
        if speaks:
            for line in summarise_data(data).lines():
                console.print(line, markup=False, highlight=False)
        if work_dir is not None and data.split_rows is not None:
            write_splits(work_dir, data.split_rows)
        fit = train_built(
            cfg,
            built,
            data,
            work_dir,
            resume=resume,
            quiet=quiet,
            console=console,
            callbacks=callbacks,
            loss_fn=variant.loss(tasks) if variant.loss is not None else None,
        )
        model = built.model
        eval_split, split_name = data.evaluation_split()
        _, metrics = evaluate_data(model, tasks, eval_split, cfg.train.eval_batch_size)

        baselines: dict[str, dict[str, float]] = {}
        # Each baseline's metric inputs, for the pooled metrics of task templates.
        baseline_pairs: dict[str, Pair] | None = {} if data.groups else None
        if variant.reference is not None:
            baselines = variant.reference(tasks, eval_split)
        elif cfg.baselines and len(tasks) > 1:
            baselines = train_baselines(
                cfg,
                data,
                tasks,
                eval_split,
                work_dir,
                resume=resume,
                quiet=quiet,
                console=console,
                pairs=baseline_pairs,
                split_name=split_name,
            )
        comparison = against_reference(
            tasks, metrics, baselines, split_name, variant.reference_name
        )
        pooled = pooled_summary(cfg, data, model, eval_split, baseline_pairs or {}, comparison)
        summary = {
            "split": split_name,
            "best_epoch": fit.best_epoch,
            "skipped_steps": fit.skipped_steps,
            "multi_task": metrics,
            "single_task": baselines if variant.reference is None else {},
            "comparison": comparison.to_dict(),
            **pooled,
            **(variant.summary(model, baselines) if variant.summary is not None else {}),
        }
        lineage = variant.lineage(data) if variant.lineage is not None else None
        predictor = run_predictor(cfg, model, tasks, data, summary, lineage)
        if work_dir is not None:
            save_run(work_dir, predictor, summary)
    return RunResult(predictor, fit, metrics, baselines, comparison, out_dir)


def summarise_data(data: PreparedData) -> DataSummary:
    """What the run read (:func:`polytask.data.summary.describe_data`), printed before
    training."""
    sources = {s.name: len(s.data) for s in data.sources} if data.sources else None
    return describe_data(
        data.tasks,
        data.preprocessor,
        {"train": data.train, "val": data.val, "test": data.test},
        source=data.source,
        train_rows=data.stream.n_train if data.stream is not None else None,
        sources=sources,
    )


def save_run(out_dir: Path, predictor: Predictor, summary: dict[str, Any]) -> None:
    """Write the model directory, then ``results.json`` (last: its presence means done)."""
    predictor.save(model_dir(out_dir))
    write_results(out_dir, summary)
