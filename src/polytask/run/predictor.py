"""Model directories: save a trained model, load it back, predict from DataFrames.

A model directory holds ``model.safetensors`` (weights) and JSON files: ``model.json``
(architecture and input shape), ``tasks.json`` (fitted task specs), ``preprocessing.json``,
``metrics.json`` and, for a fine-tuned or distilled model, ``lineage.json``. Nothing is
unpickled on load, and every file is checked before anything is built
(:mod:`polytask.run.model_schema`). Directories are written atomically, and only when every
weight and statistic is finite.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polytask._version import __version__
from polytask.data.inputs import InputProcessor
from polytask.data.preprocess import TablePreprocessor
from polytask.data.spec import InputSpec
from polytask.data.tables import read_table
from polytask.data.targets import encode_targets
from polytask.data.tensors import TensorData
from polytask.errors import DataError, PolytaskError
from polytask.evaluate.evaluation import evaluate_data, predict_outputs
from polytask.models.config import ModelConfig
from polytask.models.model import MultiTaskModel
from polytask.run.model_schema import (
    MODEL_FORMAT,
    describe_for_save,
    load_weights,
    nonfinite_tensor,
    read_model_files,
)
from polytask.safe_read import read_json_file
from polytask.state_io import atomic_directory, write_json, write_tensors
from polytask.tasks import Task
from polytask.tasks.preferences import parse_preference

__all__ = ["MODEL_FORMAT", "Predictor", "load", "mark_missing", "model_dir"]


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
        (images, recordings) are resolved against ``base_dir``. Cells holding one of the
        model's missing-value markers (``na_values``) are missing, as when a table is read with
        :meth:`read`. ``preference``: the trade-off a preference-conditioned model serves (one
        weight per task, e.g. ``[0.7, 0.3]``; default uniform)."""
        return self._outputs(mark_missing(df, self.na_values), source, base_dir, preference)

    def _outputs(
        self,
        df: pd.DataFrame,
        source: str,
        base_dir: Path | None,
        preference: str | Sequence[float] | None,
    ) -> dict[str, Tensor]:
        """:meth:`outputs` of a frame whose markers are already applied."""
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
        column of arrays for per-pixel tasks); a row whose output is not finite gets no label
        (an empty cell). Missing-value markers and ``preference``: see :meth:`outputs`."""
        chosen = self._select(tasks)
        df = mark_missing(df, self.na_values)
        outputs = self._outputs(df, source, base_dir, preference)
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
        """Metrics of every task (or of the ``tasks`` named), each of whose label columns
        ``df`` must hold; rows with a missing label are skipped. Missing-value markers and
        ``preference``: see :meth:`outputs`."""
        r = self._preference(preference)
        chosen = self._select(tasks)
        absent = [(t.name, c) for t in chosen for c in t.targets if c not in df.columns]
        if len(absent) == sum(len(t.targets) for t in chosen):
            wanted = sorted({c for t in chosen for c in t.targets})
            raise DataError(f"{source}: none of the target columns {wanted} found; cannot score")
        if absent:
            task, column = absent[0]
            held = [t.name for t in chosen if all(c in df.columns for c in t.targets)]
            raise DataError(
                f"{source}: task '{task}' reads label column '{column}', which is missing; "
                f"score only the tasks it holds with tasks={held} (command line: --task)"
            )
        df = mark_missing(df, self.na_values)
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
        """Write the model directory atomically (replacing an existing one). Refused, with
        nothing written, when a weight or a statistic is not finite or a file would not load
        back (the files are checked as :func:`load` checks them)."""
        target = Path(path)
        refused = f"cannot save the model to '{target}'"
        weights = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        bad = nonfinite_tensor(weights)
        if bad is not None:
            raise PolytaskError(f"{refused}: weight {bad!r} holds non-finite values (NaN or inf)")
        meta = {
            "format": MODEL_FORMAT,
            "polytask_version": __version__,
            "model": self.model_config.model_dump(),
            "input_spec": asdict(self.input_spec),
            "id_column": self.id_column,
            "na_values": self.na_values,
        }
        tasks = [t.to_dict() for t in self.tasks]
        preprocessing = self.preprocessor.to_dict()
        try:
            describe_for_save(meta, tasks, preprocessing)
        except PolytaskError as exc:
            raise PolytaskError(f"{refused}: {exc}") from None
        with atomic_directory(target) as staging:
            write_tensors(staging / "model.safetensors", weights, {"format": MODEL_FORMAT})
            write_json(staging / "model.json", meta)
            write_json(staging / "tasks.json", tasks)
            write_json(staging / "preprocessing.json", preprocessing)
            write_json(staging / "metrics.json", self.metrics)
            if self.lineage:
                write_json(staging / "lineage.json", self.lineage)
        return target


def _task_columns(task: Task, out: Tensor) -> dict[str, np.ndarray]:
    """The prediction columns of ``task``, decoded by its kind."""
    return task.spec.decode(task, out)


def mark_missing(df: pd.DataFrame, markers: Sequence[str]) -> pd.DataFrame:
    """``df`` with every cell that holds one of the missing-value ``markers`` made missing,
    as :func:`polytask.data.tables.read_table` does when it reads a file: a text cell that
    is a marker (surrounding spaces aside), a number equal to a marker that is a number
    (``-999``). ``df`` itself is left as it is; without a hit it is returned unchanged."""
    if not markers:
        return df
    texts = {m.strip() for m in markers}
    numbers = [float(m) for m in markers if _is_number(m)]
    changed: dict[str, pd.Series] = {}
    for column in df.columns:
        series = df[column]
        if pd.api.types.is_bool_dtype(series):
            continue
        if pd.api.types.is_numeric_dtype(series):
            hit = series.isin(numbers) if numbers else None
        else:
            hit = series.map(lambda v: isinstance(v, str) and v.strip() in texts).astype(bool)
        if hit is not None and bool(hit.any()):
            changed[column] = series.astype(object).mask(hit, np.nan)
    if not changed:
        return df
    marked: pd.DataFrame = df.copy(deep=False)
    for column, values in changed.items():
        marked[column] = values
    return marked


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def model_dir(path: str | Path) -> Path:
    """``path`` itself if it is a model directory, or its ``model/`` subfolder (a run dir).

    A ``model.json`` that is there but not a regular file still marks the directory: reading
    it then says what is wrong with it."""
    p = Path(path)
    if os.path.lexists(p / "model.json"):
        return p
    if os.path.lexists(p / "model" / "model.json"):
        return p / "model"
    if not p.exists():
        raise PolytaskError(f"model directory '{p}' not found")
    raise PolytaskError(f"'{p}' is not a polytask model directory (no model.json)")


def _optional_object(path: Path) -> dict[str, Any]:
    """The JSON object of an optional file (``metrics.json``, ``lineage.json``); {} if absent."""
    if not os.path.lexists(path):
        return {}
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise PolytaskError(f"'{path}': expected a JSON object, found {type(data).__name__}")
    return data


def load(path: str | Path) -> Predictor:
    """Load a model directory (or a run directory holding ``model/``) without unpickling.

    Every file is checked before anything is built (:mod:`polytask.run.model_schema`): a
    damaged or edited file is a one-line :class:`PolytaskError` naming it."""
    directory = model_dir(path)
    files = read_model_files(directory)
    model = load_weights(directory / "model.safetensors", files)
    return Predictor(
        model,
        files.tasks,
        files.preprocessor,
        files.meta.model,
        files.input_spec,
        id_column=files.meta.id_column,
        na_values=files.meta.na_values,
        metrics=_optional_object(directory / "metrics.json"),
        lineage=_optional_object(directory / "lineage.json"),
    )
