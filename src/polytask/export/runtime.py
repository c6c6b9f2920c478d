"""Predict with an exported ONNX file through onnxruntime, in :meth:`Predictor.predict`'s format.

:class:`OnnxPredictor` reads the file's metadata (:mod:`polytask.export.onnx_export`), turns a
DataFrame (or a dict of column arrays) into the graph's inputs with the same helpers the torch
predictor uses (for a table, its few-row conversions ``mark_missing_cells``, ``cells_as_float``
and ``cells_as_text``, packed into the ``numbers`` and ``categories`` matrices; the input
processor itself,
rebuilt from the stored preprocessing, for image/audio/text models: raw texts and recordings
go through polytask's tokenizer or audio reader here, token ids trimmed to the longest row as
the torch encoders trim them; for molecular-graph models the SMILES go through polytask's
RDKit featuriser, so RDKit is needed here: :mod:`polytask.export.graphs`) and the graph's outputs
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

from polytask.data.preprocess import (
    TablePreprocessor,
    as_float,
    as_text,
    cells_as_float,
    cells_as_text,
)
from polytask.errors import DataError, PolytaskError
from polytask.export import detection
from polytask.export.graph import CATEGORIES, NUMBERS
from polytask.export.onnx_export import FORMAT
from polytask.export.tokens import TOKEN_KINDS, token_columns, token_graph_outputs
from polytask.run.model_schema import parse_preprocessing
from polytask.run.predictor import mark_missing, mark_missing_cells
from polytask.tasks import Task
from polytask.tasks.kinds.base import labelled_where, per_row_column
from polytask.tasks.preferences import parse_preference
from polytask.tasks.task import select_tasks

#: Frames of at most this many rows (a request) take the few-row conversions; longer ones the
#: pandas conversion column by column, vectorised over their rows.
FEW_ROWS = 256


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
        found = meta.get("polytask.format")
        if found is not None and found.startswith("polytask.onnx/") and found != FORMAT:
            raise PolytaskError(
                f"ONNX model '{self.path}': format '{found}' (an older polytask export, one "
                f"input per table column); this polytask reads '{FORMAT}': export it again"
            )
        if found != FORMAT:
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
        pre = self.preprocessor
        if isinstance(pre, TablePreprocessor):
            self._numeric = pd.Index([c.name for c in pre.numeric])
            self._categorical = pd.Index([c.name for c in pre.categorical])
            self._marker_numbers = _marker_numbers(self.na_values)
            self._packed = ((NUMBERS, self._numeric), (CATEGORIES, self._categorical))
        #: The last frame's column index and the packed columns' positions in it.
        self._seen_columns: tuple[pd.Index, dict[str, np.ndarray]] | None = None

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
        """The graph's inputs for the rows of ``df``, the model's missing-value markers applied
        here (a table: its columns packed into ``numbers`` and ``categories``)."""
        pre = self.preprocessor
        feeds: dict[str, np.ndarray]
        if isinstance(pre, TablePreprocessor):
            positions = self._positions(df.columns, source)
            few = None
            if len(df) <= FEW_ROWS:
                try:
                    few = self._table_feeds(df, positions, source)
                except DataError:
                    # The cells have lost the frame's index: the pandas conversion below
                    # names the row by its label (and raises the same error).
                    few = None
            if few is None:
                few = self._table_feeds_pandas(mark_missing(df, self.na_values), source)
            feeds = few
        else:
            # The model's own input processor (text, audio, image), rebuilt from the metadata.
            marked = mark_missing(df, self.na_values)
            feeds = {k: v.numpy() for k, v in pre.transform(marked, source, base_dir).items()}
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

    def _positions(self, columns: pd.Index, source: str) -> dict[str, np.ndarray]:
        """Where each packed column is among ``columns``, which must be unique and hold every
        feature column. The last answer is kept for the same index object: a server's frames
        of numbers only share one (comparing 2,064 names took 1 ms a request)."""
        seen = self._seen_columns
        if seen is not None and seen[0] is columns:
            return seen[1]
        if not columns.is_unique:
            repeated = columns[columns.duplicated()].unique().tolist()
            raise PolytaskError(
                f"{source}: column(s) {repeated[:5]} appear more than once; give each column once"
            )
        positions = {
            NUMBERS: _positions(columns, self._numeric, 0),
            CATEGORIES: _positions(columns, self._categorical, len(self._numeric)),
        }
        absent = [(names, positions[key] < 0) for key, names in self._packed]
        if any(bool(lost.any()) for _, lost in absent):
            missing = [name for names, lost in absent for name in names[lost]]
            raise PolytaskError(
                f"{source}: feature column(s) {missing[:5]} not found; the model was "
                f"trained with {len(self._numeric) + len(self._categorical)} feature columns"
            )
        self._seen_columns = (columns, positions)
        return positions

    def _table_feeds(
        self, df: pd.DataFrame, positions: Mapping[str, np.ndarray], source: str
    ) -> dict[str, np.ndarray] | None:
        """``numbers`` and ``categories`` of the few rows of ``df`` (markers not yet applied;
        ``positions``: where each packed column is among ``df``'s) by the torch predictor's
        few-row conversions, or None for a frame they do not take (an extension dtype other
        than text, such as ``Int64``: the pandas path keeps its type).

        The frame is read as one array (per-column pandas work was 96% of a request's time,
        2 ms a column; even selecting a block of columns cost 1 ms): number columns of NumPy
        number dtypes as one float64 matrix, markers applied to it at once; object columns
        as their cells; any other column cell by cell."""
        # The dtypes as an array and their distinct values: a check per column costs a
        # 2,064-column row more than the graph.
        dtypes = df.dtypes.to_numpy()
        distinct = set(dtypes.tolist())
        if not all(isinstance(t, (np.dtype, pd.StringDtype)) for t in distinct):
            return None
        numeric_frame = all(_numeric_dtype(t) for t in distinct)
        # A frame of numbers only (a fingerprint table) stays float64; else objects, each cell
        # as the column holds it.
        whole = df.to_numpy(dtype=np.float64 if numeric_frame else object)

        def cells(at: int) -> np.ndarray:
            if numeric_frame or dtypes[at] == np.dtype(object):
                return whole[:, at]
            # Its own array: converted to objects, a float or integer column would lose the
            # dtype that decides how cells_as_text writes its numbers.
            values: np.ndarray = df.iloc[:, at].to_numpy()
            return values

        feeds: dict[str, np.ndarray] = {}
        n = len(df)
        numeric = positions[NUMBERS]
        if len(numeric):
            if numeric_frame or all(_numeric_dtype(t) for t in set(dtypes[numeric].tolist())):
                x = whole[:, numeric].astype(np.float64)
                if self._marker_numbers.size:
                    # mark_missing on a number column: a cell equal to a numeric marker.
                    x[np.isin(x, self._marker_numbers)] = np.nan
            else:
                x = np.empty((n, len(numeric)), dtype=np.float64)
                for i, (name, at) in enumerate(zip(self._numeric, numeric, strict=True)):
                    marked = mark_missing_cells(cells(at), name, self.na_values)
                    x[:, i] = cells_as_float(marked, name, source)
            feeds[NUMBERS] = x
        categorical = positions[CATEGORIES]
        if len(categorical):
            text = np.empty((n, len(categorical)), dtype=object)
            for j, (name, at) in enumerate(zip(self._categorical, categorical, strict=True)):
                marked = mark_missing_cells(cells(at), name, self.na_values)
                text[:, j] = cells_as_text(marked, name)
            feeds[CATEGORIES] = text
        return feeds

    def _table_feeds_pandas(self, df: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        """``numbers`` and ``categories`` of ``df`` (markers applied) column by column with
        pandas: the one definition of every conversion and of its error messages."""
        feeds: dict[str, np.ndarray] = {}
        if len(self._numeric):
            feeds[NUMBERS] = np.stack(
                [as_float(df[name], source) for name in self._numeric], axis=1
            ).reshape(len(df), len(self._numeric))
        if len(self._categorical):
            columns = [as_text(df[name]).to_numpy(dtype=object) for name in self._categorical]
            feeds[CATEGORIES] = np.stack(columns, axis=1).reshape(len(df), len(columns))
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
        frame = _frame(df)
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
        frame = _frame(df)
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
            ids = frame[self.id_column].to_numpy()
            columns[self.id_column] = np.asarray(
                mark_missing_cells(ids, self.id_column, self.na_values)
            )
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


def _positions(columns: pd.Index, names: pd.Index, start: int) -> np.ndarray:
    """Where each of ``names`` is among ``columns`` (unique), -1 where absent: at ``start``
    on, in order, in a request's frame (checked without looking up each name)."""
    stop = start + len(names)
    if columns[start:stop].equals(names):
        return np.arange(start, stop)
    found: np.ndarray = columns.get_indexer(names)
    return found


def _numeric_dtype(dtype: Any) -> bool:
    """A NumPy integer or float dtype (booleans and text are converted cell by cell)."""
    return isinstance(dtype, np.dtype) and dtype.kind in "fiu"


def _marker_numbers(markers: Sequence[str]) -> np.ndarray:
    """The missing-value markers that are numbers (``-999``), as ``mark_missing`` reads them."""
    numbers = []
    for marker in markers:
        try:
            numbers.append(float(marker))
        except ValueError:
            continue
    return np.array(numbers, dtype=np.float64)


def _frame(df: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame(dict(df))


def _graph_outputs(task: Task) -> list[str]:
    if task.kind in TOKEN_KINDS:
        return token_graph_outputs(task)
    if task.kind in ("binary", "multiclass"):
        return [task.name, f"{task.name}_proba"]
    if task.kind == "multilabel":
        return [f"{task.name}_label", f"{task.name}_proba"]
    if task.kind == "detection":
        return list(detection.output_names(task))
    return [task.name]


def _labels(names: np.ndarray) -> np.ndarray:
    """String labels with None where the graph gave none (the empty string)."""
    out = names.astype(object)
    return labelled_where(out, out != "")


def task_columns(task: Task, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``task``'s prediction columns from the graph's outputs, as its kind decodes them."""
    n = task.name
    if task.kind in TOKEN_KINDS:
        return token_columns(task, values)
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
    if task.kind == "detection":  # boxes and scores per image, as Detection.decode
        found = (values[f"{n}_{part}"] for part in ("boxes", "scores", "classes"))
        return detection.prediction_columns(task, *found)
    maps = values[n]
    if task.kind == "segmentation":
        known: np.ndarray = np.all(maps.reshape(len(maps), -1) >= 0, axis=1)
        return {n: labelled_where(per_row_column(maps), known)}
    return {n: per_row_column(maps)}
