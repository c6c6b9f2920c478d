"""The single-task baseline: one task, trained alone as the multi-task model was (same encoder,
budget and data), the reference a multi-task model is compared with.

Used by the pipeline (``baselines/<task>/`` of a run) and by ``polytask compare`` (a baseline
per task, seed and fraction), so a baseline means the same everywhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console

from polytask.config import RunConfig
from polytask.data.prepare import PreparedData
from polytask.data.tensors import TensorData
from polytask.distributed import collective
from polytask.evaluate.evaluation import evaluate_data
from polytask.evaluate.pooled import Pair, metric_pairs
from polytask.models.model import MultiTaskModel
from polytask.run.build import train_model
from polytask.run.directory import baseline_dir, model_dir, write_results
from polytask.run.predictor import Predictor
from polytask.tasks import Task
from polytask.train.criterion import criterion_for_tasks
from polytask.train.trainer import FitResult


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One trained single-task baseline and its metrics on the evaluation split."""

    task: Task
    model: MultiTaskModel
    fit: FitResult
    metrics: dict[str, float]


def single_task_config(cfg: RunConfig, task: str) -> RunConfig:
    """``cfg`` for ``task`` alone: an early-stopping criterion naming another task's metric
    becomes ``mean_relative`` (:func:`polytask.train.criterion.criterion_for_tasks`)."""
    criterion = criterion_for_tasks(cfg.train.criterion, [task])
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"criterion": criterion})})


def train_baseline(
    cfg: RunConfig,
    data: PreparedData,
    task: Task,
    eval_split: TensorData,
    run_dir: Path | None,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
) -> Baseline:
    """Train ``task`` alone (weight 1) on its own sources and score it on ``eval_split``."""
    single = [dataclasses.replace(task, weight=1.0)]
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    model, fit = train_model(
        single_task_config(cfg, task.name),
        data,
        single,
        run_dir,
        resume=resume,
        quiet=quiet,
        console=console,
        label=f"single:{task.name}",
    )
    batch = cfg.train.eval_batch_size
    _, metrics = evaluate_data(model, single, eval_split.subset_tasks([task.name]), batch)
    return Baseline(single[0], model, fit, metrics[task.name])


def train_baselines(
    cfg: RunConfig,
    data: PreparedData,
    tasks: list[Task],
    eval_split: TensorData,
    out_dir: Path | None,
    *,
    resume: bool = False,
    quiet: bool = False,
    console: Console | None = None,
    pairs: dict[str, Pair] | None = None,
    split_name: str = "test",
) -> dict[str, dict[str, float]]:
    """Every task's baseline (in ``out_dir/baselines/<task>/`` when there is a run directory;
    a resumed run continues the baselines that had checkpoints). ``pairs``, when given,
    receives each baseline's metric inputs on ``eval_split`` (for pooled metrics). Each
    baseline directory is also a finished run: its ``model/`` can be predicted with, served,
    exported or distilled like any model; ``results.json`` holds its metrics on
    ``split_name``."""
    metrics: dict[str, dict[str, float]] = {}
    for task in tasks:
        sub_dir = baseline_dir(out_dir, task.name) if out_dir is not None else None
        sub_resume = resume and sub_dir is not None and (sub_dir / "checkpoints").exists()
        # Data parallelism: rank 0 holds the run directory; every rank resumes as it does.
        sub_resume = bool(collective().broadcast_object(sub_resume))
        baseline = train_baseline(
            cfg, data, task, eval_split, sub_dir, resume=sub_resume, quiet=quiet, console=console
        )
        metrics[task.name] = baseline.metrics
        if sub_dir is not None:
            save_baseline(cfg, data, baseline, sub_dir, split_name)
        if pairs is not None:
            own = eval_split.subset_tasks([task.name])
            batch = cfg.train.eval_batch_size
            pairs.update(metric_pairs(baseline.model, [baseline.task], own, batch))
    return metrics


def save_baseline(
    cfg: RunConfig, data: PreparedData, baseline: Baseline, run_dir: Path, split_name: str
) -> None:
    """Write ``run_dir/model/`` (the baseline as a model directory: the multi-task model's
    preprocessing, id column and missing-value markers) and then ``results.json``."""
    summary = {
        "split": split_name,
        "best_epoch": baseline.fit.best_epoch,
        "multi_task": {baseline.task.name: baseline.metrics},
        "single_task": {},
        "baseline_of": baseline.task.name,
    }
    Predictor(
        baseline.model,
        [baseline.task],
        data.preprocessor,
        cfg.model,
        data.input_spec,
        id_column=cfg.data.id,
        na_values=cfg.data.na_values,
        metrics=summary,
    ).save(model_dir(run_dir))
    write_results(run_dir, summary)
