"""Predict with an exported ONNX file through onnxruntime, in :meth:`Predictor.predict`'s format.

:class:`OnnxPredictor` reads the file's metadata (:mod:`polytask.export.onnx_export`), turns a
DataFrame (or a dict of column arrays) into the graph's inputs with the same helpers thetorch
predictor uses (``mark_missing``, ``as_float``, ``as_text``; the input processor itself,
rebuilt from the stored preprocessing, for image/audio/text models: raw texts and recordings
go through polytask's tokenizer or audio reader here, token ids trimmed to the longest row as
the torch encoders trim them) and the graph's outputs
into the same columns: ``<task>`` / ``<task>_proba`` (binary), ``<task>_proba_<class>``
(multiclass), ``<task>.<label>`` / ``<task>.<label>_proba`` (multilabel), values (regression),
one array per row (per-pixel kinds), with no label (None) where the output is undefined.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polytask.data.preprocess import TablePreprocessor, as_float, as_text
from polytask.errors import PolytaskError
from polytask.run.model_schema import parse_preprocessing
from polytask.run.predictor import mark_missing
from polytask.tasks import Task
from polytask.tasks.kinds.base import labelled_where, per_row_column
from polytask.tasks.preferences import parse_preference
from polytask.tasks.task import select_tasks


class OnnxPredictor:
    """An exported model run by onnxruntime: ``OnnxPredictor(path).predict(frame)``."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        # onnxruntime is an optional dependency (polytask[export]): imported when used.
        import onnxruntime as ort  # type: ignore[import-untyped]  # (ships no type information)

        self.path = Path(path)
        if not self.path.is_file():
            raise PolytaskError(f"ONNX model '{self.path}' not found")
        options = ort.SessionOptions()
        if threads is not None:
            # A bounded thread budget (a server among others on the machine): threads that
            # wait for the next request sleep instead of spinning on a core.
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PolytaskError(f"ONNX model '{self.path}': cannot be loaded ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("polytask.format") != "polytask.onnx/1":
            raise PolytaskError(f"ONNX model '{self.path}': not exported by polytask export")
        self.metadata = {
            k: json.loads(v)
            for k, v in meta.items()
            if k.startswith("polytask.")
            and k
            not in ("polytask.version", "polytask.exporter", "polytask.opset", "polytask.format")
        }
        self.version = meta["polytask.version"]
        self.tasks = [Task.from_dict(t) for t in self.metadata["polytask.tasks"]]
        self.preprocessor = parse_preprocessing(
            meta["polytask.preprocessing"], f"ONNX model '{self.path}' metadata"
        )
        self.id_column: str | None = self.metadata["polytask.id_column"]
        self.na_values: list[str] = self.metadata["polytask.na_values"]
        self.preference_conditioned: bool = self.metadata["polytask.preference_conditioned"]
        #: Task order of the preference (every task the model was trained with).
        self.preference_tasks: list[str] = self.metadata["polytask.all_tasks"]
        self.input_schema: list[dict[str, Any]] = self.metadata["polytask.inputs"]

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def _select(self, names: Sequence[str] | None) -> list[Task]:
        return select_tasks(self.tasks, names)

    def feeds(
        self,
        df: pd.DataFrame,
        source: str = "data frame",
        base_dir: Path | None = None,
        preference: str | Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """The graph's inputs for the rows of ``df`` (missing-value markers applied)."""
        pre = self.preprocessor
        feeds: dict[str, np.ndarray] = {}
        if isinstance(pre, TablePreprocessor):
            missing = [c for c in pre.columns if c not in df.columns]
            if missing:
                raise PolytaskError(
                    f"{source}: feature column(s) {missing[:5]} not found; the model was "
                    f"trained with {len(pre.columns)} feature columns"
                )
            for col in pre.numeric:
                feeds[col.name] = as_float(df[col.name], source)
            for cat in pre.categorical:
                feeds[cat.name] = as_text(df[cat.name]).to_numpy(dtype=object).astype(str)
        else:
            # The model's own input processor (text, audio, image), rebuilt from the metadata.
            feeds = {k: v.numpy() for k, v in pre.transform(df, source, base_dir).items()}
            for entry in self.input_schema:
                if entry.get("type") == "token_ids" and entry["name"] in feeds:
                    feeds[entry["name"]] = trim_ids(feeds[entry["name"]], entry["pad_id"])
        if self.preference_conditioned:
            r = (
                np.full(len(self.preference_tasks), 1.0 / len(self.preference_tasks))
                if preference is None
                else parse_preference(preference, self.preference_tasks)
            )
            feeds["preference"] = np.tile(r.astype(np.float32), (len(df), 1))
        elif preference is not None:
            raise PolytaskError(
                "this model is not preference-conditioned (it was trained without "
                "model.preference_conditioning); predict without a preference"
            )
        return feeds

    def raw(
        self,
        df: pd.DataFrame | Mapping[str, Any],
        tasks: Sequence[str] | None = None,
        source: str = "data frame",
        base_dir: Path | None = None,
        preference: str | Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """The graph's outputs (name → array) for the chosen tasks."""
        frame = mark_missing(_frame(df), self.na_values)
        names = [n for t in self._select(tasks) for n in _graph_outputs(t)]
        values = self.session.run(names, self.feeds(frame, source, base_dir, preference))
        return dict(zip(names, values, strict=True))

    def predict(
        self,
        df: pd.DataFrame | Mapping[str, Any],
        tasks: Sequence[str] | None = None,
        source: str = "data frame",
        base_dir: Path | None = None,
        preference: str | Sequence[float] | None = None,
    ) -> pd.DataFrame:
        """Predictions in :meth:`polytask.Predictor.predict`'s columns (id column first)."""
        frame = mark_missing(_frame(df), self.na_values)
        chosen = self._select(tasks)
        names = [n for t in chosen for n in _graph_outputs(t)]
        values = dict(
            zip(
                names,
                self.session.run(names, self.feeds(frame, source, base_dir, preference)),
                strict=True,
            )
        )
        columns: dict[str, Any] = {}
        if self.id_column is not None and self.id_column in frame.columns:
            columns[self.id_column] = frame[self.id_column].to_numpy()
        for task in chosen:
            columns.update(task_columns(task, values))
        result: pd.DataFrame = pd.DataFrame(columns, index=frame.index)
        return result


def trim_ids(ids: np.ndarray, pad_id: int) -> np.ndarray:
    """Token ids ``[B, L]`` without the trailing columns that are padding in every row (at
    least one kept): what the torch encoders do first (``polytask.data.inputs.hf.trim_padding``),
    so the graph computes on the same width. The graph masks padding, so this changes the work,
    not the outputs."""
    if ids.ndim != 2:
        return ids
    lengths = (ids != pad_id).sum(axis=1)
    width = max(int(lengths.max()), 1) if len(ids) else 1
    return np.ascontiguousarray(ids[:, :width])


def _frame(df: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame(dict(df))


def _graph_outputs(task: Task) -> list[str]:
    if task.kind in ("binary", "multiclass"):
        return [task.name, f"{task.name}_proba"]
    if task.kind == "multilabel":
        return [f"{task.name}_label", f"{task.name}_proba"]
    return [task.name]


def _labels(names: np.ndarray) -> np.ndarray:
    """String labels with None where the graph gave none (the empty string)."""
    out = names.astype(object)
    return labelled_where(out, out != "")


def task_columns(task: Task, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``task``'s prediction columns from the graph's outputs, as its kind decodes them."""
    n = task.name
    if task.kind == "binary":
        return {n: _labels(values[n]), f"{n}_proba": values[f"{n}_proba"]}
    if task.kind == "multiclass":
        assert task.classes is not None
        cols: dict[str, np.ndarray] = {n: _labels(values[n])}
        for j, label in enumerate(task.classes):
            cols[f"{n}_proba_{label}"] = values[f"{n}_proba"][:, j]
        return cols
    if task.kind == "multilabel":
        cols = {}
        for j, label in enumerate(task.targets):
            decided: np.ndarray = values[f"{n}_label"][:, j]
            defined: np.ndarray = np.greater_equal(decided, 0)
            cols[f"{n}.{label}"] = labelled_where(decided, defined)
            cols[f"{n}.{label}_proba"] = values[f"{n}_proba"][:, j]
        return cols
    if task.kind == "regression":
        return {n: values[n]}
    maps = values[n]
    if task.kind == "segmentation":
        known: np.ndarray = np.all(maps.reshape(len(maps), -1) >= 0, axis=1)
        return {n: labelled_where(per_row_column(maps), known)}
    return {n: per_row_column(maps)}
