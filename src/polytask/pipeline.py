"""A whole run from a configuration: data -> multi-task model -> single-task baselines ->
comparison -> model directory. The CLI and the Python API both call :func:`run`."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from polytask.artifacts import Predictor
from polytask.balance.base import build_balancer
from polytask.config import RunConfig, config_from_dict
from polytask.data.prepare import PreparedData, prepare_data
from polytask.errors import ConfigError, PolytaskError
from polytask.evaluate.compare import Comparison, compare
from polytask.evaluate.evaluation import evaluate_data
from polytask.losses import BatchLoss
from polytask.models.model import MultiTaskModel, build_model
from polytask.state_io import atomic_write_text, to_json, write_json
from polytask.tasks import Task
from polytask.train.criterion import criterion_for_tasks
from polytask.train.trainer import Callback, FitResult, Trainer


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
        "tasks": [_declared(t) for t in tasks],
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


def _declared(task: Task) -> dict[str, Any]:
    """What the user declared of a task (fitted fields and unset options left out)."""
    fitted = {"target_mean", "target_std"}
    return {k: v for k, v in task.to_dict().items() if v is not None and k not in fitted}


def prepare_out_dir(out: Path | None, resume: bool, overwrite: bool) -> None:
    if out is None:
        if resume:
            raise PolytaskError("resume needs an output directory holding checkpoints")
        return
    if out.exists() and not out.is_dir():
        raise PolytaskError(f"output path '{out}' exists and is not a directory")
    busy = out.exists() and any(out.iterdir())
    if resume:
        if not (out / "checkpoints" / "last" / "state.json").is_file():
            raise PolytaskError(f"cannot resume: no checkpoint in '{out / 'checkpoints' / 'last'}'")
    elif busy and not overwrite:
        raise PolytaskError(
            f"output directory '{out}' is not empty; pass --overwrite to replace it "
            "or --resume to continue its run"
        )


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
    from polytask.train.tensorboard_log import require_tensorboard

    require_tensorboard()


def create_out_dir(out: Path | None, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """Create (or, with ``overwrite``, replace) the run directory, once every check passed."""
    if out is None:
        return
    if overwrite and out.exists() and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.model_dump(mode="json"))


def _tune_new_model(
    cfg: RunConfig, model: MultiTaskModel, tasks: list[Task]
) -> tuple[list[dict[str, Any]] | None, list[Callback]]:
    """The ``[finetune]`` options of a training run applied to its new ``model`` (freezing or
    gradually unfreezing a pretrained encoder, per-group learning rates): the optimiser groups
    and callbacks, or ``(None, [])`` when the run sets none."""
    from polytask.finetune.tuning import tune_training_run  # the package imports this module

    tuning = tune_training_run(cfg, model, tasks)
    if tuning is None:
        return None, []
    return tuning.param_groups, tuning.callbacks


def train_model(
    cfg: RunConfig,
    data: PreparedData,
    tasks: list[Task],
    run_dir: Path | None,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    callbacks: Sequence[Callback] = (),
    label: str = "multi-task",
    model: MultiTaskModel | None = None,
    loss_fn: BatchLoss | None = None,
    param_groups: Sequence[dict[str, Any]] | None = None,
) -> tuple[MultiTaskModel, FitResult]:
    """Build and train one model on ``tasks`` (all of them, or one for a baseline).

    ``model`` trains a given model instead of a new one (fine-tuning); a new one takes the
    run's ``[finetune]`` options, if any (:func:`polytask.finetune.tuning.tune_training_run`).
    ``loss_fn`` and ``param_groups`` go to the :class:`Trainer`. With ``train.tensorboard`` and a
    ``run_dir``, the epochs are also logged to ``run_dir/tensorboard/`` (without a run
    directory there is nowhere to write: no logging).
    """
    names = [t.name for t in tasks]
    logger = None
    if cfg.train.tensorboard and run_dir is not None:
        from polytask.train.tensorboard_log import TensorBoardLogger

        # First, so an epoch is logged even if a later callback stops the run.
        logger = TensorBoardLogger(run_dir / "tensorboard")
        callbacks = [logger, *callbacks]
    if model is None:
        model = build_model(tasks, data.input_spec, cfg.model, seed=cfg.seed)
        tuned_groups, tuning = _tune_new_model(cfg, model, tasks)
        param_groups = tuned_groups if tuned_groups is not None else param_groups
        callbacks = [*callbacks, *tuning]
    balancer = build_balancer(cfg.balancer.name, cfg.balancer.params(), tasks)
    trainer = Trainer(
        model,
        tasks,
        balancer,
        cfg.train,
        seed=cfg.seed,
        callbacks=callbacks,
        console=console,
        label=label,
        quiet=quiet,
        schedule=cfg.schedule,
        loss_fn=loss_fn,
        param_groups=param_groups,
    )
    train = data.training_sources(cfg.sampling).subset_tasks(names)
    try:
        fit = trainer.fit(train, data.val.subset_tasks(names), run_dir, resume=resume)
    finally:
        if logger is not None:
            logger.close()
    return model, fit


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
    )


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
) -> RunResult:
    """Train the multi-task model (and single-task baselines) described by ``cfg``.

    With an output directory, it receives ``model/`` (the model directory), ``checkpoints/``,
    the metrics log, ``baselines/<task>/`` and ``results.json``. All input checks run before the
    directory is touched, so bad input leaves nothing behind.
    """
    out_dir = Path(out) if out is not None else (cfg.resolve(cfg.out) if cfg.out else None)
    prepare_out_dir(out_dir, resume, overwrite)
    check_tensorboard(cfg, out_dir)
    distillation = None
    if cfg.distill.teachers:
        from polytask.distill import Distillation

        distillation = Distillation.from_config(cfg, console)
    data = prepare_data(
        cfg, frame, frames, soft_targets=distillation.outputs if distillation else None
    )
    tasks = data.tasks
    # A combination no schema can see (an engine mode the architecture cannot serve) must fail
    # here, before the output directory is touched.
    probe = build_balancer(cfg.balancer.name, cfg.balancer.params(), tasks)
    probe_model = build_model(tasks, data.input_spec, cfg.model, seed=cfg.seed)
    probe.check_model(probe_model)
    _tune_new_model(cfg, probe_model, tasks)  # a [finetune] policy the model cannot take
    create_out_dir(out_dir, cfg, resume, overwrite)
    model, fit = train_model(
        cfg,
        data,
        tasks,
        out_dir,
        resume=resume,
        quiet=quiet,
        console=console,
        callbacks=callbacks,
        loss_fn=distillation.loss(tasks) if distillation else None,
    )
    eval_split, split_name = (data.test, "test") if data.test is not None else (data.val, "val")
    _, metrics = evaluate_data(model, tasks, eval_split, cfg.train.eval_batch_size)

    baselines: dict[str, dict[str, float]] = {}
    extra: dict[str, Any] = {}
    lineage: dict[str, Any] = {}
    if distillation is not None:
        # A student is measured against its teachers, on the same rows: no single-task nets.
        baselines = distillation.teacher_metrics(tasks, eval_split)
        extra["parameters"] = {
            "student": sum(p.numel() for p in model.parameters()),
            "teachers": distillation.teacher_parameters(),
        }
        rows = {"train": len(data.train), "val": len(data.val)}
        if data.test is not None:
            rows["test"] = len(data.test)
        lineage = distillation.lineage(data.source, rows)
    elif cfg.baselines and len(tasks) > 1:
        for task in tasks:
            single = [dataclasses.replace(task, weight=1.0)]
            sub_dir = out_dir / "baselines" / task.name if out_dir is not None else None
            sub_resume = resume and sub_dir is not None and (sub_dir / "checkpoints").exists()
            if sub_dir is not None:
                sub_dir.mkdir(parents=True, exist_ok=True)
            criterion = criterion_for_tasks(cfg.train.criterion, [task.name])
            stl_cfg = cfg.model_copy(
                update={"train": cfg.train.model_copy(update={"criterion": criterion})}
            )
            stl_model, _ = train_model(
                stl_cfg,
                data,
                single,
                sub_dir,
                resume=sub_resume,
                quiet=quiet,
                console=console,
                label=f"single:{task.name}",
            )
            _, m = evaluate_data(
                stl_model, single, eval_split.subset_tasks([task.name]), cfg.train.eval_batch_size
            )
            baselines[task.name] = m[task.name]
    reference = "teachers" if distillation is not None else "single-task"
    comparison = compare(tasks, metrics, baselines, split_name, reference)
    summary = {
        "split": split_name,
        "best_epoch": fit.best_epoch,
        "multi_task": metrics,
        "single_task": {} if distillation is not None else baselines,
        "comparison": comparison.to_dict(),
        **({"teachers": baselines} if distillation is not None else {}),
        **extra,
    }
    predictor = run_predictor(cfg, model, tasks, data, summary, lineage)
    if out_dir is not None:
        predictor.save(out_dir / "model")
        atomic_write_text(out_dir / "results.json", to_json(summary) + "\n")
    return RunResult(predictor, fit, metrics, baselines, comparison, out_dir)
