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
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from polytask._version import __version__
from polytask.data.inputs import InputProcessor
from polytask.data.preprocess import Cells, TablePreprocessor
from polytask.data.spec import InputSpec
from polytask.data.tables import read_table
from polytask.data.targets import encode_targets
from polytask.data.tensors import TensorData
from polytask.devices import (
    autocast,
    check_precision,
    module_device,
    resolve_device,
    to_device,
)
from polytask.errors import DataError, PolytaskError
from polytask.evaluate.evaluation import evaluate_data, predict_outputs
from polytask.models.config import ModelConfig
from polytask.models.model import MultiTaskModel
from polytask.run.fast import FastTable, PreparedRows
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
from polytask.tasks.task import select_tasks
from polytask.tasks.template import TaskGroup, own_task_columns

__all__ = ["MODEL_FORMAT", "Predictor", "load", "mark_missing", "mark_missing_cells", "model_dir"]


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
        precision: str = "32",
        groups: Sequence[TaskGroup] | None = None,
    ) -> None:
        self.model = model.eval()
        #: The ``[[tasks]]`` templates the tasks were expanded from (``templates.json``):
        #: a task-indexed one predicts each row's own task (:meth:`predict`).
        self.groups = list(groups or [])
        #: The forward pass's precision (``train.precision``'s values; :func:`load`).
        self.precision = precision
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
        #: A table model predicts frames of at most this many rows on the fast path
        #: (:meth:`predict_columns`): per-cell Python beats pandas' per-column overhead there.
        self.fast_rows = 256
        #: False: every frame takes the pandas path (``TablePreprocessor.transform``), the
        #: definition the fast paths are tested against; True: a table model encodes a frame
        #: of more rows through :meth:`FastTable.frame` (same tensors, bit for bit).
        self.fast_frames = True
        #: (preprocessor, markers, its FastTable): see :meth:`_fast_table`.
        self._fast: tuple[object, list[str], FastTable] | None = None

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def _select(self, names: list[str] | None) -> list[Task]:
        return select_tasks(self.tasks, names)

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
        fast = self._fast_table() if self.fast_frames else None
        rows = None if fast is None else fast.prepare(df, source)
        with self.model.preferring(r), self._autocast():
            if fast is not None and rows is not None:
                outputs = self._forward_encoded(fast, rows)
            else:
                inputs = self.preprocessor.transform(df, source, base_dir)
                outputs = predict_outputs(self.model, inputs, self.batch_size)
        return {k: v.float().cpu() for k, v in outputs.items()}  # decoded on the host

    @torch.no_grad()
    def _forward_encoded(self, fast: FastTable, rows: PreparedRows) -> dict[str, Tensor]:
        """:func:`predict_outputs` of ``rows``, each batch encoded just before its forward
        pass (:meth:`FastTable.encode`): the same batches of the same tensors, so the same
        outputs, without the whole frame's float32 matrix in memory at once."""
        model = self.model
        was_training = model.training
        model.eval()
        device = module_device(model)
        n, size = len(rows), self.batch_size
        try:
            # No rows: one pass over the empty inputs still gives every output its shape.
            chunks = [
                model(to_device(fast.encode(rows, start, min(n, start + size)), device))
                for start in range(0, max(n, 1), size)
            ]
        finally:
            model.train(was_training)
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}

    def _autocast(self) -> AbstractContextManager[object]:
        """The forward pass's precision on the model's device (:mod:`polytask.devices`)."""
        if self.precision == "32":
            return nullcontext()  # what autocast gives for 32, without looking up the device
        return autocast(module_device(self.model), self.precision)

    def predict(
        self,
        df: pd.DataFrame,
        tasks: list[str] | None = None,
        source: str = "data frame",
        base_dir: Path | None = None,
        preference: str | Sequence[float] | None = None,
        *,
        per_task: bool = False,
    ) -> pd.DataFrame:
        """Predictions in the user's labels and units: one or more columns per task (a
        column of arrays for per-pixel tasks); a row whose output is not finite gets no label
        (an empty cell). Missing-value markers and ``preference``: see :meth:`outputs`.

        A model of task-indexed data (``[data] task_column``) given a table holding that
        column returns each row's own task's output in one column set named after the
        template (``score``; ``score_proba`` for a binary one), beside the task column;
        ``per_task=True`` (or naming ``tasks``) returns every task's columns instead."""
        indexed = self._indexed_groups(df, tasks, per_task)
        if indexed:
            return self._predict_indexed(df, indexed, source, base_dir, preference)
        if 0 < len(df) <= self.fast_rows and self.fast_frames:
            few = self._predict_few_rows(df, tasks, source, preference)
            if few is not None:
                return few
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

    def _indexed_groups(
        self, df: pd.DataFrame, tasks: list[str] | None, per_task: bool
    ) -> list[TaskGroup]:
        """The task-indexed groups whose task column ``df`` holds (none when every task's
        columns are asked for)."""
        if per_task or tasks:
            return []
        return [g for g in self.groups if g.column is not None and g.column in df.columns]

    def _predict_indexed(
        self,
        df: pd.DataFrame,
        groups: list[TaskGroup],
        source: str,
        base_dir: Path | None,
        preference: str | Sequence[float] | None,
    ) -> pd.DataFrame:
        """:meth:`predict` of a task-indexed table: the id and task columns, each task that no
        template made, then each group's own-task columns (:func:`own_task_columns`)."""
        df = mark_missing(df, self.na_values)
        outputs = self._outputs(df, source, base_dir, preference)
        columns: dict[str, Any] = {}
        if self.id_column is not None and self.id_column in df.columns:
            columns[self.id_column] = df[self.id_column].to_numpy()
        for group in groups:
            assert group.column is not None
            columns.setdefault(group.column, df[group.column].to_numpy())
        grouped = {name for g in groups for name in g.tasks}
        for task in self.tasks:
            if task.name not in grouped:
                columns.update(_task_columns(task, outputs[task.name]))
        by_name = {t.name: t for t in self.tasks}
        for group in groups:
            columns.update(own_task_columns(group, by_name, outputs, df[group.column]))
        result: pd.DataFrame = pd.DataFrame(columns, index=df.index)
        return result

    @property
    def _table_columns(self) -> list[str]:
        """The feature columns of a table model (none for other inputs)."""
        pre = self.preprocessor
        return pre.columns if isinstance(pre, TablePreprocessor) else []

    def _predict_few_rows(
        self,
        df: pd.DataFrame,
        tasks: list[str] | None,
        source: str,
        preference: str | Sequence[float] | None,
    ) -> pd.DataFrame | None:
        """:meth:`predict` of a few rows of a table model without per-column pandas work, or
        None for the pandas path (another model, duplicated column names, a feature column
        of an extension type other than text, or a cell that fails to convert, whose error
        the pandas path names by the row's label).

        Plain cells (numbers, text, missing) are read from the frame's column arrays as
        Python values and encoded in one pass (:meth:`FastTable.lists`, as a JSON request
        is); any other cell (a marker, a number written as text) sends the columns through
        :meth:`predict_columns`, which converts them as pandas does."""
        fast = self._fast_table()
        if fast is None or not df.columns.is_unique:
            return None
        values = _frame_values(df)
        features = [*fast.numeric, *fast.categorical]
        plain = [values.get(c) for c in features]
        if any(v is None for v in plain):
            return None  # an absent column (the pandas path names it), or Int64 and the like
        n = len(df)
        inputs = fast.lists(plain[: len(fast.numeric)], plain[len(fast.numeric) :], n)  # type: ignore[arg-type]
        if inputs is None:
            wanted = [*features, *([self.id_column] if self.id_column else [])]
            cells = _frame_cells(df, wanted)
            try:
                columns = self.predict_columns(cells, tasks, source, preference)
            except DataError:
                return None  # the cells have lost the frame's index: the pandas path has it
            return _output_frame(columns, df.index)
        chosen = self._select(tasks)
        r = self._preference(preference)
        key = self.id_column
        ids = None
        if key is not None and key in values:
            ids = mark_missing_cells(_frame_cells(df, [key])[key], key, self.na_values)
        return _output_frame(self._predict_few(inputs, n, chosen, r, ids), df.index)

    def predict_columns(
        self,
        columns: Mapping[str, Cells],
        tasks: list[str] | None = None,
        source: str = "request",
        preference: str | Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """The columns :meth:`predict` returns (id column first when given, then each task's),
        as arrays, from rows given column by column: a list of Python values per column (typed
        as ``pd.DataFrame`` would type it) or a NumPy array. The fast path for a few rows (a
        request): markers, conversion, category lookup and standardisation run on the cells
        without per-column pandas work, sharing the fitted preprocessing and the decoding with
        :meth:`predict`, whose output it equals. Models reading files (images, audio, text)
        go through :meth:`predict`."""
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise DataError(f"{source}: columns of different lengths {sorted(sizes)}")
        if not isinstance(self.preprocessor, TablePreprocessor):
            frame = self.predict(pd.DataFrame(dict(columns)), tasks, source, None, preference)
            return {str(k): v.to_numpy() for k, v in frame.items()}
        chosen = self._select(tasks)
        r = self._preference(preference)
        n = sizes.pop() if sizes else 0
        cells = {k: mark_missing_cells(v, k, self.na_values) for k, v in columns.items()}
        fast = self._fast_table()
        inputs = None if fast is None else fast.columns(cells, n, source)
        if inputs is None:
            inputs = self.preprocessor.transform_cells(cells, n, source)
        ids = cells.get(self.id_column) if self.id_column is not None else None
        return self._predict_few(inputs, n, chosen, r, ids)

    def _fast_table(self) -> FastTable | None:
        """The few-row encoding of a table model (:mod:`polytask.run.fast`), built once for
        the current preprocessor and missing-value markers; None for other inputs."""
        pre = self.preprocessor
        if not isinstance(pre, TablePreprocessor):
            return None
        cached = self._fast
        if cached is None or cached[0] is not pre or cached[1] != self.na_values:
            cached = (pre, list(self.na_values), FastTable(pre, self.na_values))
            self._fast = cached
        return cached[2]

    def _predict_few(
        self,
        inputs: dict[str, Tensor],
        n: int,
        chosen: list[Task],
        preference: Tensor | None,
        ids: Cells | None,
    ) -> dict[str, np.ndarray]:
        """The prediction columns of ``n`` encoded rows (the id column's cells first when
        given): one forward pass and each chosen task's decoding."""
        model = self.model
        if preference is None and model.preference is None:
            outputs = self._forward_few(inputs, n)  # nothing to set and restore
        else:
            with model.preferring(preference):
                outputs = self._forward_few(inputs, n)
        result: dict[str, np.ndarray] = {}
        if ids is not None:
            result[str(self.id_column)] = np.asarray(ids)
        for task in chosen:  # the outputs carry no autograd history: no grad mode needed
            result.update(_task_columns(task, outputs[task.name].cpu()))
        return result

    def _forward_few(self, inputs: dict[str, Tensor], n: int) -> dict[str, Tensor]:
        """:func:`predict_outputs` of ``n`` rows: one forward pass of the model, already in
        eval mode, without setting and restoring eval mode on every submodule (two walks of
        the module tree cost a one-row request as much as the encoding)."""
        with self._autocast():
            if self.model.training or n > self.batch_size:
                outputs = predict_outputs(self.model, inputs, self.batch_size)
            else:
                device = module_device(self.model)
                if device.type != "cpu":
                    inputs = to_device(inputs, device)
                with torch.inference_mode():
                    outputs = self.model(inputs)
        return {k: v.float() for k, v in outputs.items()}

    def predict_records(
        self,
        records: Sequence[Mapping[str, Any]],
        tasks: list[str] | None = None,
        source: str = "request",
        preference: str | Sequence[float] | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`predict` of rows given as dicts (column -> value, as parsed from JSON): one
        dict of plain Python values per row, ready for ``json.dumps``: a NaN (no prediction)
        becomes ``None``, a per-pixel map a nested list. A key absent from a record is a
        missing value, as in ``pd.DataFrame(records)``. Takes the fast path
        (:meth:`predict_columns`) for table models."""
        if not records:
            return []
        fast = self._fast_table()
        inputs = None if fast is None else fast.records(records)
        if inputs is not None:
            # Every feature cell was plain (no marker, no pandas conversion): encoded in one
            # pass over the rows; the id column, when sent, as the general path reads it.
            chosen = self._select(tasks)
            r = self._preference(preference)
            ids: Cells | None = None
            key = self.id_column
            if key is not None and any(key in record for record in records):
                ids = mark_missing_cells([rec.get(key) for rec in records], key, self.na_values)
            predicted = self._predict_few(inputs, len(records), chosen, r, ids)
        else:
            names = list(dict.fromkeys(k for r in records for k in r))
            columns = {k: [r.get(k) for r in records] for k in names}
            predicted = self.predict_columns(columns, tasks, source, preference)
        keys = list(predicted)
        rows = zip(*(predicted[k].tolist() for k in keys), strict=True)
        return [{k: _plain(v) for k, v in zip(keys, row, strict=True)} for row in rows]

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
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
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
            if self.groups:
                write_json(staging / "templates.json", [g.to_dict() for g in self.groups])
        return target


def _task_columns(task: Task, out: Tensor) -> dict[str, np.ndarray]:
    """The prediction columns of ``task``, decoded by its kind."""
    return task.spec.decode(task, out)


def _column_arrays(df: pd.DataFrame) -> dict[str, Any]:
    """``df``'s columns (names unique) as the frame stores them, a NumPy array or a pandas
    extension array each, without building a Series per column, which costs a one-row frame
    of 40 columns more than the network's forward pass."""
    arrays = getattr(df, "_iter_column_arrays", None)
    if arrays is None:  # a pandas without it: the public way
        return {c: df[c].array for c in df.columns}
    # The names as a list: iterating a text Index reads its pyarrow array one cell at a time.
    return dict(zip(df.columns.tolist(), arrays(), strict=True))


def _cells(values: Any) -> Cells:
    """A stored column (:func:`_column_arrays`) as ``Series.to_numpy`` gives it (read only)."""
    return values if isinstance(values, np.ndarray) else values.to_numpy()


def _frame_cells(df: pd.DataFrame, wanted: list[str]) -> dict[str, Cells]:
    """``{c: df[c].to_numpy() for c in wanted if c in df.columns}`` (``df``'s column names
    unique), read through :func:`_column_arrays`."""
    stored = _column_arrays(df)
    return {c: _cells(stored[c]) for c in wanted if c in stored}


def _frame_values(df: pd.DataFrame) -> dict[str, list[Any] | None]:
    """The cells of each column of ``df`` (names unique) as Python values, for
    :meth:`FastTable.lists`, which takes only numbers, text and missing values and sends any
    other cell to the general path; None for a column of an extension type other than text
    (``Int64`` has no NumPy twin its cells could keep). Read from the frame's blocks (one
    ``tolist`` per block of NumPy columns, one per text column), not column by column: a
    Series or array per column costs a one-row frame of 40 columns a third of the network's
    forward pass."""
    blocks = getattr(getattr(df, "_mgr", None), "blocks", None)
    names = df.columns.tolist()
    if blocks is None:  # another pandas: column by column
        return {c: _python_values(a) for c, a in _column_arrays(df).items()}
    values: list[list[Any] | None] = [None] * len(names)
    text_array = pd.arrays.ArrowStringArray
    for block in blocks:
        locs = block.mgr_locs.indexer
        array = block.values
        if isinstance(array, np.ndarray):
            if array.dtype.kind in "iufbO":
                rows = array.tolist()
            else:  # dates and bytes: tolist() writes numbers and bytes the fast path misreads
                rows = [[object()] * array.shape[1] for _ in range(array.shape[0])]
            positions = range(len(names))[locs] if isinstance(locs, slice) else locs.tolist()
            for position, row in zip(positions, rows, strict=True):
                values[position] = row
        else:
            position = locs.start if isinstance(locs, slice) else int(locs[0])
            if type(array) is text_array:  # the common case first: one C call, no checks
                values[position] = array._pa_array.to_pylist()  # type: ignore[attr-defined]
            else:
                values[position] = _python_values(array)
    return dict(zip(names, values, strict=True))


def _python_values(values: Any) -> list[Any] | None:
    """The cells of a stored column (:func:`_column_arrays`) as Python values (missing text
    as None), or None for an extension type other than text (see :func:`_frame_values`)."""
    if isinstance(values, np.ndarray):
        # Dates, durations and bytes: tolist() writes them as numbers or bytes the fast path
        # would misread; a cell it refuses (an object) sends the rows to the general path.
        return values.tolist() if values.dtype.kind in "iufbO" else [object()] * len(values)
    if not isinstance(values.dtype, pd.StringDtype):
        return None
    data = getattr(values, "_pa_array", None)  # pyarrow-backed text: one C call, not per cell
    listed: list[Any] = data.to_pylist() if data is not None else values.tolist()
    return listed


#: The dtype pandas gives a column of Python strings (``str``, pyarrow-backed in pandas 3),
#: found by asking pandas once; :func:`_output_frame` builds such columns directly.
_TEXT_DTYPE: Any = None


def _text_dtype() -> Any:
    global _TEXT_DTYPE
    if _TEXT_DTYPE is None:
        _TEXT_DTYPE = pd.Series(np.array(["a"], dtype=object)).dtype
    return _TEXT_DTYPE


def _constructed(columns: Mapping[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    frame: pd.DataFrame = pd.DataFrame(columns, index=index)
    return frame


def _output_frame(columns: Mapping[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    """``pd.DataFrame(columns, index=index)`` for a few rows, built without the constructor's
    per-column inference, which costs a one-row prediction as much as the network's forward
    pass: number columns are copied as they are and a column of labels (Python strings, no
    missing one) becomes the pyarrow-backed text array pandas would infer for it. Any other
    column (missing labels, per-pixel maps), or a pandas that infers another text type, goes
    through the constructor itself."""
    dtype = _text_dtype()
    frame_from = getattr(pd.DataFrame, "_from_arrays", None)
    if (
        frame_from is None
        or not isinstance(dtype, pd.StringDtype)
        or dtype.storage != "pyarrow"
        or not isinstance(dtype.na_value, float)  # NaN for a missing label, not pd.NA
    ):
        return _constructed(columns, index)
    arrays: list[Any] = []
    for values in columns.values():
        if not isinstance(values, np.ndarray) or values.ndim != 1:
            return _constructed(columns, index)
        if values.dtype.kind in "fiub":
            arrays.append(values.copy())  # the constructor copies a dict's arrays too
        elif (
            values.dtype.kind == "O" and pd.api.types.infer_dtype(values, skipna=False) == "string"
        ):
            text = pa.array(values.tolist(), type=pa.large_string())
            arrays.append(pd.arrays.ArrowStringArray(text, dtype=dtype))  # type: ignore[call-arg]
        else:
            return _constructed(columns, index)
    names = tuple(columns)
    labels = _COLUMN_INDEXES.get(names)
    if labels is None:  # the same few column sets again and again: inferred once each
        labels = _COLUMN_INDEXES[names] = pd.Index(list(names))
        if len(_COLUMN_INDEXES) > 64:
            _COLUMN_INDEXES.pop(next(iter(_COLUMN_INDEXES)))
    # verify_integrity=False: the arrays are what the constructor would store, checked above.
    frame: pd.DataFrame = frame_from(arrays, labels, index, verify_integrity=False)
    return frame


#: The column labels of recent few-row outputs (an Index is immutable: frames share it).
_COLUMN_INDEXES: dict[tuple[str, ...], pd.Index] = {}


def _plain(value: Any) -> Any:
    """A predicted cell as a JSON-ready Python value: NaN is None (no prediction)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _marker_sets(markers: Sequence[str]) -> tuple[set[str], list[float]]:
    """The text markers (stripped) and the markers that are numbers."""
    return {m.strip() for m in markers}, [float(m) for m in markers if _is_number(m)]


def _marked(series: pd.Series, texts: set[str], numbers: list[float]) -> pd.Series | None:
    """``series`` with its marker cells missing (see :func:`mark_missing`); None if none."""
    if pd.api.types.is_bool_dtype(series):
        return None
    hit: pd.Series | np.ndarray | None
    if pd.api.types.is_numeric_dtype(series):
        hit = series.isin(numbers) if numbers else None
    else:
        hit = _text_hits(series, texts)
    if hit is None or not bool(hit.any()):
        return None
    return series.astype(object).mask(hit, np.nan)


def _text_hits(series: pd.Series, texts: set[str]) -> np.ndarray:
    """Which cells of ``series`` are text that, stripped, is one of ``texts``: decided once
    per distinct value (``pd.factorize``; a text never shares a hash-table slot with another
    value), not per cell, which for a 100,000-row chunk of 30 text columns took seconds."""
    try:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
    except TypeError:  # unhashable cells (lists): one by one
        return series.map(lambda v: isinstance(v, str) and v.strip() in texts).to_numpy(bool)
    distinct = [isinstance(v, str) and v.strip() in texts for v in uniques]
    hits: np.ndarray = np.array([*distinct, False], dtype=bool)[codes]  # -1 (missing): no hit
    return hits


def mark_missing_cells(cells: Cells, name: str, markers: Sequence[str]) -> Cells:
    """:func:`mark_missing` of one column given as cells (see
    :meth:`Predictor.predict_columns`): a quick scan for a cell that could be a marker, and
    only then the column as pandas types it through the same rule, returned as an object
    array (the type :func:`mark_missing` leaves a marked column with)."""
    if not markers:
        return cells
    texts, numbers = _marker_sets(markers)
    if isinstance(cells, np.ndarray) and cells.dtype.kind != "O":
        suspect = (
            cells.dtype.kind in "fiu" and bool(numbers) and bool(np.isin(cells, numbers).any())
        )
    else:
        wanted = set(numbers)
        suspect = any(
            (isinstance(v, str) and v.strip() in texts)
            or (
                isinstance(v, (int, float, np.number))
                and not isinstance(v, (bool, np.bool_))
                and v in wanted
            )
            for v in cells
        )
    if not suspect:
        return cells
    marked = _marked(pd.Series(cells, name=name), texts, numbers)
    return cells if marked is None else marked.to_numpy()


def mark_missing(df: pd.DataFrame, markers: Sequence[str]) -> pd.DataFrame:
    """``df`` with every cell that holds one of the missing-value ``markers`` made missing,
    as :func:`polytask.data.tables.read_table` does when it reads a file: a text cell that
    is a marker (surrounding spaces aside), a number equal to a marker that is a number
    (``-999``). ``df`` itself is left as it is; without a hit it is returned unchanged."""
    if not markers:
        return df
    texts, numbers = _marker_sets(markers)
    changed: dict[str, pd.Series] = {}
    for column in df.columns:
        values = _marked(df[column], texts, numbers)
        if values is not None:
            changed[column] = values
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


def load(path: str | Path, *, device: str = "cpu", precision: str = "32") -> Predictor:
    """Load a model directory (or a run directory holding ``model/``) without unpickling.

    Every file is checked before anything is built (:mod:`polytask.run.model_schema`): a
    damaged or edited file is a one-line :class:`PolytaskError` naming it. The weights are
    read on the host and moved to ``device`` (``auto``, ``cpu``, ``cuda[:N]``, ``mps``: a
    GPU-trained model predicts on a CPU-only machine); ``precision`` is that of the forward
    pass (``32``, ``bf16-mixed``, ``16-mixed``)."""
    target = resolve_device(device, "device")
    check_precision(precision, target, "precision")
    directory = model_dir(path)
    files = read_model_files(directory)
    model = load_weights(directory / "model.safetensors", files).to(target)
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
        precision=precision,
        groups=read_groups(directory / "templates.json", [t.name for t in files.tasks]),
    )


def read_groups(path: Path, names: Sequence[str]) -> list[TaskGroup]:
    """The task templates of a model directory (``templates.json``, optional), checked
    against the model's tasks; a damaged file is a one-line error naming it."""
    if not os.path.lexists(path):
        return []
    data = read_json_file(path)
    if not isinstance(data, list) or len(data) > len(names):
        raise PolytaskError(f"'{path}': expected a list of at most {len(names)} templates")
    groups = [TaskGroup.from_dict(item, f"'{path}': template {i}") for i, item in enumerate(data)]
    known = set(names)
    for i, group in enumerate(groups):
        unknown = [t for t in group.tasks if t not in known]
        if unknown:
            raise PolytaskError(
                f"'{path}': template {i}: task {unknown[0]!r} is not a task of the model"
            )
    return groups
