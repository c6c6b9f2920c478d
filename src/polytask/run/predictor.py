"""Model directories: save a trained model, load it back, predict from DataFrames.

A model directory holds ``model.safetensors`` (weights) and JSON files: ``model.json``
(architecture and input shape), ``tasks.json`` (fitted task specs), ``preprocessing.json``,
``metrics.json`` and, for a fine-tuned or distilled model, ``lineage.json``. Nothing is
unpickled on load. Directories are written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from polytask._version import __version__
from polytask.data.inputs import InputProcessor, input_from_dict
from polytask.data.inputs.base import FORMAT as INPUT_FORMAT
from polytask.data.preprocess import TablePreprocessor
from polytask.data.spec import InputSpec
from polytask.data.tables import read_table
from polytask.data.targets import encode_targets
from polytask.data.tensors import TensorData
from polytask.errors import DataError, PolytaskError
from polytask.evaluate.evaluation import evaluate_data, predict_outputs
from polytask.models.config import ModelConfig
from polytask.models.model import MultiTaskModel, build_model
from polytask.state_io import atomic_directory, read_json, write_json
from polytask.tasks import Task
from polytask.tasks.preferences import parse_preference

MODEL_FORMAT = "polytask.model/1"


class Predictor:
    """A trained multi-task model with its preprocessing: predicts all tasks from a table."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: list[Task],
        preprocessor: TablePreprocessor | InputProcessor,
        model_config: ModelConfig,
        input_spec: InputSpec,
        *,
        id_column: str | None = None,
        na_values: list[str] | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.tasks = tasks
        self.preprocessor = preprocessor
        self.model_config = model_config
        self.input_spec = input_spec
        self.id_column = id_column
        self.na_values = list(na_values or [])
        self.metrics = metrics or {}
        #: Where the model came from when it was not trained from scratch: the base model of
        #: a fine-tuning run, the teachers of a distilled one (``lineage.json``; empty else).
        self.lineage = lineage or {}
        self.batch_size = 8192

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def _select(self, names: list[str] | None) -> list[Task]:
        if not names:
            return self.tasks
        unknown = [n for n in names if n not in self.task_names]
        if unknown:
            raise PolytaskError(
                f"unknown task {unknown[0]!r}; this model predicts: {', '.join(self.task_names)}"
            )
        return [t for t in self.tasks if t.name in names]

    @property
    def preference_conditioned(self) -> bool:
        """Whether the model takes a preference over its tasks (trained by ``cosmos``)."""
        return self.model.preference_conditioned

    def _preference(self, preference: str | Sequence[float] | None) -> Tensor | None:
        """A preference checked against this model: one non-negative weight per task (in task
        order), normalised to sum to 1; None keeps the model's default (uniform)."""
        if preference is None:
            return None
        if not self.preference_conditioned:
            raise PolytaskError(
                "this model is not preference-conditioned (it was trained without "
                "model.preference_conditioning); predict without a preference"
            )
        return torch.as_tensor(parse_preference(preference, self.task_names)).float()

    def read(self, path: str | Path) -> pd.DataFrame:
        """Read a CSV/Parquet table with the missing-value markers used in training."""
        return read_table(path, na_values=self.na_values)

    def outputs(
        self,
        df: pd.DataFrame,
        source: str = "data frame",
        base_dir: Path | None = None,
        preference: str | Sequence[float] | None = None,
    ) -> dict[str, Tensor]:
        """Raw outputs (logits / standardised values) for every task; file paths in ``df``
        (images, recordings) are resolved against ``base_dir``. ``preference``: the trade-off
        a preference-conditioned model serves (one weight per task, e.g. ``[0.7, 0.3]``;
        default uniform)."""
        r = self._preference(preference)
        inputs = self.preprocessor.transform(df, source, base_dir)
        with self.model.preferring(r):
            return predict_outputs(self.model, inputs, self.batch_size)

    def predict(
        self,
        df: pd.DataFrame,
        tasks: list[str] | None = None,
        source: str = "data frame",
        base_dir: Path | None = None,
        preference: str | Sequence[float] | None = None,
    ) -> pd.DataFrame:
        """Predictions in the user's labels and units: one or more columns per task (a
        column of arrays for per-pixel tasks). ``preference``: see :meth:`outputs`."""
        chosen = self._select(tasks)
        outputs = self.outputs(df, source, base_dir, preference)
        columns: dict[str, Any] = {}
        if self.id_column is not None and self.id_column in df.columns:
            columns[self.id_column] = df[self.id_column].to_numpy()
        for task in chosen:
            columns.update(_task_columns(task, outputs[task.name]))
        result: pd.DataFrame = pd.DataFrame(columns, index=df.index)
        return result

    def evaluate(
        self,
        df: pd.DataFrame,
        tasks: list[str] | None = None,
        source: str = "data frame",
        base_dir: Path | None = None,
        preference: str | Sequence[float] | None = None,
    ) -> dict[str, dict[str, float]]:
        """Metrics of each task whose target column(s) ``df`` holds (missing labels skipped).
        ``preference``: see :meth:`outputs`."""
        r = self._preference(preference)
        chosen = [t for t in self._select(tasks) if all(c in df.columns for c in t.targets)]
        if not chosen:
            wanted = sorted({c for t in self._select(tasks) for c in t.targets})
            raise DataError(f"{source}: none of the target columns {wanted} found; cannot score")
        encoded = {t.name: encode_targets(t, df, source, base_dir) for t in chosen}
        data = TensorData(
            self.preprocessor.transform(df, source, base_dir),
            {k: v[0] for k, v in encoded.items()},
            {k: v[1] for k, v in encoded.items()},
        )
        with self.model.preferring(r):
            _, metrics = evaluate_data(self.model, chosen, data, self.batch_size)
        return metrics

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the model directory atomically (replacing an existing one)."""
        target = Path(path)
        with atomic_directory(target) as staging:
            save_file(
                {k: v.detach().contiguous() for k, v in self.model.state_dict().items()},
                str(staging / "model.safetensors"),
                metadata={"format": MODEL_FORMAT},
            )
            write_json(
                staging / "model.json",
                {
                    "format": MODEL_FORMAT,
                    "polytask_version": __version__,
                    "model": self.model_config.model_dump(),
                    "input_spec": asdict(self.input_spec),
                    "id_column": self.id_column,
                    "na_values": self.na_values,
                },
            )
            write_json(staging / "tasks.json", [t.to_dict() for t in self.tasks])
            write_json(staging / "preprocessing.json", self.preprocessor.to_dict())
            write_json(staging / "metrics.json", self.metrics)
            if self.lineage:
                write_json(staging / "lineage.json", self.lineage)
        return target


def _task_columns(task: Task, out: Tensor) -> dict[str, np.ndarray]:
    """The prediction columns of ``task``, decoded by its kind."""
    return task.spec.decode(task, out)


def model_dir(path: str | Path) -> Path:
    """``path`` itself if it is a model directory, or its ``model/`` subfolder (a run dir)."""
    p = Path(path)
    if (p / "model.json").is_file():
        return p
    if (p / "model" / "model.json").is_file():
        return p / "model"
    if not p.exists():
        raise PolytaskError(f"model directory '{p}' not found")
    raise PolytaskError(f"'{p}' is not a polytask model directory (no model.json)")


def load(path: str | Path) -> Predictor:
    """Load a model directory (or a run directory holding ``model/``) without unpickling."""
    directory = model_dir(path)
    meta = read_json(directory / "model.json")
    if meta.get("format") != MODEL_FORMAT:
        raise PolytaskError(f"'{directory}': unsupported model format {meta.get('format')!r}")
    tasks = [Task.from_dict(t) for t in read_json(directory / "tasks.json")]
    pre_data = read_json(directory / "preprocessing.json")
    pre: TablePreprocessor | InputProcessor = (
        input_from_dict(pre_data)
        if pre_data.get("format") == INPUT_FORMAT
        else TablePreprocessor.from_dict(pre_data)
    )
    spec = InputSpec(**meta["input_spec"])
    model_cfg = ModelConfig.model_validate(meta["model"])
    model = build_model(tasks, spec, model_cfg, seed=0)
    model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    metrics_path = directory / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    lineage_path = directory / "lineage.json"
    lineage = read_json(lineage_path) if lineage_path.is_file() else {}
    return Predictor(
        model,
        tasks,
        pre,
        model_cfg,
        spec,
        id_column=meta.get("id_column"),
        na_values=meta.get("na_values"),
        metrics=metrics,
        lineage=lineage,
    )
