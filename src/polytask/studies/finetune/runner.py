"""``polytask finetune BASE CONFIG``: continue from a trained model.

The run's configuration names the tasks to train: a task named like one of the base's continues
that task (its head, classes and target scaling) on the new data; any other task is new and gets
a new head. The base's other tasks are kept with their heads frozen (``finetune.keep_tasks``) or
dropped. The shared encoder is frozen whole, in its first layers, or not at all, optionally
unfrozen gradually (:mod:`polytask.train.freeze`, :mod:`polytask.train.unfreeze`). The run
directory is a normal run directory whose model records where it came from (``lineage.json``)
and whose ``results.json`` reports what fine-tuning did to the base's tasks
(:mod:`polytask.studies.finetune.checks`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from torch import Tensor

from polytask._version import __version__
from polytask.config import RunConfig, load_config
from polytask.data.prepare import PreparedData, prepare_data
from polytask.data.tensors import TensorData
from polytask.distributed import launched
from polytask.errors import ConfigError
from polytask.evaluate.evaluation import evaluate_data
from polytask.evaluate.reference import against_reference
from polytask.models.model import build_model
from polytask.run.build import build_run, train_built
from polytask.run.directory import create_out_dir
from polytask.run.pipeline import RunResult, save_run, writers_out_dir
from polytask.run.predictor import Predictor
from polytask.studies.finetune.base import (
    BaseModelDir,
    TaskPlan,
    check_run_config,
    load_base,
    load_base_weights,
)
from polytask.studies.finetune.checks import compare_outputs, remeasure, unchanged_tensors
from polytask.tasks import Task
from polytask.train.trainer import Callback
from polytask.train.tuning import Tuning


class _RowIndex:
    """Tags each row of the table ``prepare_data`` reads with its position (as a per-row
    tensor, which the split carries along with the inputs), and keeps the table: the rows of a
    split can then be found again to score the base's tasks on them."""

    KEY = "polytask.studies.finetune.row"

    def __init__(self) -> None:
        self.table: pd.DataFrame | None = None
        self.source = ""
        self.files_root: Path | None = None

    def __call__(
        self, table: pd.DataFrame, source: str, files_root: Path | None, tasks: list[Task]
    ) -> dict[str, Tensor]:
        self.table, self.source, self.files_root = table, source, files_root
        return {self.KEY: torch.arange(len(table))}

    def rows(self, split: TensorData) -> pd.DataFrame:
        assert self.table is not None
        index = split.soft[self.KEY].numpy()
        rows: pd.DataFrame = self.table.iloc[index]
        return rows


@dataclass
class _Reference:
    """A table labelled for the base's tasks (``finetune.reference_data``)."""

    table: pd.DataFrame
    source: str
    base_dir: Path


def _reference_table(cfg: RunConfig, base: BaseModelDir, plan: TaskPlan) -> _Reference | None:
    """``finetune.reference_data`` read and checked before anything is trained."""
    if cfg.finetune.reference_data is None:
        return None
    path = cfg.resolve(cfg.finetune.reference_data)
    if not path.is_file():
        raise ConfigError(f"config error: finetune.reference_data: file '{path}' not found")
    table = base.predictor.read(path)
    old = [base.tasks[n] for n in plan.kept + plan.continued]
    if old and not any(all(c in table.columns for c in t.targets) for t in old):
        columns = sorted({c for t in old for c in t.targets})
        raise ConfigError(
            f"config error: finetune.reference_data: '{path}' has none of the base tasks' "
            f"label columns {columns}"
        )
    return _Reference(table, f"reference data '{path}'", path.parent)


def _data_lineage(cfg: RunConfig, data: PreparedData) -> dict[str, Any]:
    """Which data the run trained on."""
    spec = cfg.data
    rows = {"train": len(data.train), "val": len(data.val)}
    if data.test is not None:
        rows["test"] = len(data.test)
    return {
        "source": data.source,
        "path": str(cfg.resolve(spec.path).resolve()) if spec.path else None,
        "dataset": spec.dataset,
        "sources": [
            {"name": s.name, "path": str(cfg.resolve(s.path).resolve()) if s.path else None}
            | ({"dataset": s.dataset} if s.dataset else {})
            for s in spec.sources
        ],
        "where": spec.where,
        "split": spec.split.model_dump(mode="json"),
        "train_fraction": spec.train_fraction,
        "rows": rows,
    }


def _lineage(
    cfg: RunConfig,
    base: BaseModelDir,
    plan: TaskPlan,
    tuning: Tuning,
    frozen_at_start: list[str],
    data: PreparedData,
) -> dict[str, Any]:
    policy = cfg.finetune
    frozen = tuning.plan
    return {
        "kind": "finetune",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "polytask_version": __version__,
        "base": {
            "directory": str(base.directory),
            "model_sha256": base.sha256,
            "tasks": list(base.tasks),
            # The base's own origin, if it was fine-tuned or distilled: the chain back.
            "lineage": base.predictor.lineage or None,
        },
        "tasks": plan.to_dict(),
        "freeze": {
            "policy": policy.freeze,
            "layers": policy.layers if policy.freeze == "layers" else None,
            "layer_groups": [g.name for g in frozen.groups],
            "frozen_groups": [g.name for g in frozen.groups[: frozen.frozen]],
            "frozen_parameters": frozen_at_start,
            "unfreeze": policy.unfreeze,
            "unfreeze_every": policy.unfreeze_every if policy.unfreeze == "gradual" else None,
            "released": tuning.unfreezing.released if tuning.unfreezing is not None else [],
            "frozen_at_end": frozen.frozen_names(),
        },
        "learning_rates": {
            "lr": cfg.train.lr,
            "shared_lr_scale": policy.shared_lr_scale,
            "head_lr_scale": policy.head_lr_scale,
            "layer_lr_decay": policy.layer_lr_decay,
        },
        "data": _data_lineage(cfg, data),
    }


def finetune(
    base: str | Path,
    cfg: RunConfig | str | Path,
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
    """Fine-tune the model in ``base`` (a model or run directory) as ``cfg`` describes (a
    :class:`RunConfig` or a TOML path); data from ``cfg`` or ``frame`` / ``frames``.

    Everything is checked (the configuration against the base, the data, the freeze policy)
    before ``out`` is touched; the model directory is written atomically. The result's
    ``baseline_metrics`` are the base model's metrics of the continued tasks on the same split
    (its comparison's reference); ``predictor.lineage`` says where the model came from.
    """
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg)
    # Under torchrun: data-parallel, rank 0 alone checks and writes the run directory.
    with launched(cfg.train.device, cfg.distributed) as group:
        protected = [("the base model", Path(base))]
        out_dir = writers_out_dir(group, cfg, out, resume, overwrite, protected)
        return _finetune(
            base, cfg, frame, frames, out_dir, resume, overwrite, quiet, console, callbacks
        )


def _finetune(
    base: str | Path,
    cfg: RunConfig,
    frame: pd.DataFrame | None,
    frames: Mapping[str, pd.DataFrame] | None,
    out_dir: Path | None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    console: Console | None,
    callbacks: Sequence[Callback],
) -> RunResult:
    source = load_base(base)
    plan = check_run_config(cfg, source)
    reference = _reference_table(cfg, source, plan)
    row_index = _RowIndex()
    data = prepare_data(
        cfg,
        frame,
        frames,
        preprocessor=source.predictor.preprocessor,
        fitted=plan.fitted,
        soft_targets=row_index,
    )
    tasks = data.tasks
    fitted = {t.name: t for t in tasks}
    model_tasks = [fitted.get(n, t) for n, t in source.tasks.items() if n not in plan.dropped]
    model_tasks += [fitted[n] for n in plan.new]
    spec, model_cfg = source.predictor.input_spec, source.predictor.model_config
    model = build_model(model_tasks, spec, model_cfg, seed=cfg.seed)
    load_base_weights(model, source, plan)
    built = build_run(
        cfg,
        spec,
        tasks,
        model=model,
        architecture=model_cfg.architecture.name,
        fixed_tasks=plan.kept,
    )
    assert built.tuning is not None  # a given model is always tuned
    tuning = built.tuning
    frozen_at_start = tuning.plan.frozen_names()
    # Every check passed: from here on the output directory may be written (locked; with
    # ``overwrite``, ``work_dir`` is the sibling that replaces it once the block finished).
    with create_out_dir(out_dir, cfg, resume, overwrite) as work_dir:
        fit = train_built(
            cfg,
            built,
            data,
            work_dir,
            resume=resume,
            quiet=quiet,
            console=console,
            callbacks=callbacks,
            label="finetune",
        )
        if tuning.unfreezing is not None:
            tuning.unfreezing.settle(len(fit.history))
        batch = cfg.train.eval_batch_size
        eval_split, split_name = data.evaluation_split()
        _, metrics = evaluate_data(model, tasks, eval_split, batch)
        base_metrics: dict[str, dict[str, float]] = {}
        if plan.continued:
            continued = [fitted[n] for n in plan.continued]
            _, base_metrics = evaluate_data(source.model, continued, eval_split, batch)
        comparison = against_reference(
            tasks, metrics, base_metrics, split_name, reference="base model"
        )

        lineage = _lineage(cfg, source, plan, tuning, frozen_at_start, data)
        # What never trained must be exactly the base's: weights and batch-norm statistics.
        frozen_check = unchanged_tensors(
            model.state_dict(), source.model.state_dict(), tuning.plan.frozen_state_names()
        )
        checked = [data.val] + ([data.test] if data.test is not None else [])
        inputs = {k: torch.cat([s.inputs[k] for s in checked]) for k in data.val.inputs}
        outputs = compare_outputs(source.model, model, plan.kept, inputs, batch)
        # The returned model is an ordinary one again: nothing frozen, nothing held in eval mode.
        model.keep_in_eval([])
        model.requires_grad_(True)
        predictor = Predictor(
            model,
            model_tasks,
            source.predictor.preprocessor,
            model_cfg,
            spec,
            id_column=cfg.data.id or source.predictor.id_column,
            na_values=list(dict.fromkeys([*source.predictor.na_values, *cfg.data.na_values])),
            lineage=lineage,
        )
        encoder_trained = tuning.plan.frozen < len(tuning.plan.groups) or tuning.plan.released > 0
        old_tasks: dict[str, Any] = {
            "kept": plan.kept,
            "continued": plan.continued,
            "outputs": {
                "split": "+".join(["val"] + (["test"] if data.test is not None else [])),
                "rows": int(next(iter(inputs.values())).shape[0]),
                "per_task": outputs,
            },
            "frozen_tensors": frozen_check,
            **_measure_old_tasks(
                source,
                predictor,
                plan,
                reference,
                row_index,
                eval_split,
                split_name,
                encoder_trained or any(not c["unchanged"] for c in outputs.values()),
            ),
        }
        summary = {
            "split": split_name,
            "best_epoch": fit.best_epoch,
            "skipped_steps": fit.skipped_steps,
            "multi_task": metrics,
            "single_task": {},
            "comparison": comparison.to_dict(),
            "base_model": base_metrics,
            "old_tasks": old_tasks,
        }
        predictor.metrics = summary
        if work_dir is not None:
            save_run(work_dir, predictor, summary)
    return RunResult(predictor, fit, metrics, base_metrics, comparison, out_dir)


def _measure_old_tasks(
    base: BaseModelDir,
    tuned: Predictor,
    plan: TaskPlan,
    reference: _Reference | None,
    row_index: _RowIndex,
    eval_split: TensorData,
    split_name: str,
    needed: bool,
) -> dict[str, Any]:
    """The base's tasks scored again by both models, when the shared encoder trained (or a
    kept task's outputs moved); else why not."""
    old = plan.kept + plan.continued
    if not old:
        return {"measured": False, "reason": "the run keeps none of the base model's tasks"}
    if not needed:
        return {
            "measured": False,
            "reason": "the shared encoder stayed frozen and the kept tasks' outputs are "
            "bit-identical to the base model's: their metrics cannot have changed",
        }
    base_dir: Path | None
    if reference is not None:
        table, source, base_dir = reference.table, reference.source, reference.base_dir
        on = source
    else:
        table = row_index.rows(eval_split)
        source, base_dir = row_index.source, row_index.files_root
        on = f"the run's {split_name} split"
    per_task = remeasure(base.predictor, tuned, old, table, source, base_dir)
    if not per_task:
        return {
            "measured": False,
            "reason": f"no finetune.reference_data, and {on} has no label column of the base "
            f"model's tasks ({', '.join(old)})",
        }
    return {"measured": True, "on": on, "per_task": per_task}
