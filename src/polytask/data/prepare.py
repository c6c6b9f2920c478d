"""From a run configuration to tensors: read the table(s), check columns, split, fit the
targets and the feature preprocessing on the training rows, and encode every split.

Every check on the user's data happens here, before anything is written to disk.
"""

from __future__ import annotations

import fnmatch
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from polytask.data.arrays import resolve_path
from polytask.data.config import DataConfig, DataJob, DataRequest
from polytask.data.datasets import DATASETS, load_dataset
from polytask.data.files import read_lines, scan_folder
from polytask.data.inputs import InputProcessor
from polytask.data.inputs.base import build_input
from polytask.data.loading import FileRows, LoadedSet, LoaderOptions
from polytask.data.preprocess import PreprocessOptions, TablePreprocessor, infer_types
from polytask.data.sampling import SamplingConfig
from polytask.data.sources import Source, SourceSet, TrainingData
from polytask.data.spec import InputSpec
from polytask.data.split import (
    column_split,
    group_split,
    random_split,
    select_split,
    split_record,
)
from polytask.data.streaming import (
    ParquetStream,
    StreamingSet,
    fit_stream,
    stream_preprocessor,
)
from polytask.data.tables import (
    arrow_numeric,
    arrow_text,
    read_arrow,
    read_table,
    require_columns,
    table_format,
    table_names,
)
from polytask.data.targets import encode_targets, fit_task
from polytask.data.tensors import TensorData
from polytask.errors import ConfigError, DataError
from polytask.tasks import Task, check_unique_names
from polytask.tasks.template import (
    TaskGroup,
    TaskTemplate,
    expand_targets,
    expand_values,
    ordered_values,
    value_text,
)


@dataclass
class PreparedData:
    """Fitted tasks and preprocessing, and the three splits as tensors."""

    tasks: list[Task]
    preprocessor: TablePreprocessor | InputProcessor
    train: TensorData
    val: TensorData
    test: TensorData | None
    source: str
    #: Folder that relative file paths in the table were resolved against.
    files_root: Path | None = None
    #: With ``[[data.sources]]``: each source's training rows (``train`` stacks them all).
    sources: list[Source] | None = None
    #: With ``data.stream``: the streamed training rows (``train`` is then empty).
    stream: StreamingSet | None = None
    #: With file-backed inputs decoded batch by batch: the training rows' cells (``train``
    #: then holds their labels only).
    files: FileRows | None = None
    loader: LoaderOptions = field(default_factory=LoaderOptions)
    #: The ``[[tasks]]`` templates and the tasks each expanded to (:mod:`polytask.tasks.template`).
    groups: list[TaskGroup] = field(default_factory=list)
    #: Which rows of the table went to train, validation and test (``split_record``), for
    #: the run directory's ``splits.csv``; None for streamed tables and ``data.sources``.
    split_rows: pd.DataFrame | None = None

    def training_sources(
        self, sampling: SamplingConfig, *, pin_memory: bool = False
    ) -> TrainingData:
        """The training data as the trainer draws it: the stream, the declared sources, one
        table, or file rows decoded by ``data.workers`` processes (in page-locked memory
        with ``pin_memory``, for a GPU)."""
        if self.stream is not None:
            return self.stream
        if self.files is not None:
            options = replace(self.loader, pin_memory=pin_memory)
            return LoadedSet(self.files, self.train, sampling, options)
        if self.sources is None:
            return SourceSet.single(self.train, sampling)
        return SourceSet(self.sources, sampling)

    def training_for(
        self, names: list[str], sampling: SamplingConfig, *, pin_memory: bool = False
    ) -> TrainingData:
        """The training data of the tasks ``names`` (:meth:`training_sources`, those tasks
        only). Tasks expanded over ``data.task_column`` train on the rows of their own values
        alone, as a model of those tasks trained on its own table would: a single-task
        baseline does not spend its batches on other tasks' rows."""
        train = self.training_sources(sampling, pin_memory=pin_memory).subset_tasks(names)
        indexed = {t for g in self.groups if g.column is not None for t in g.tasks}
        if not indexed or not set(names) <= indexed or not isinstance(train, SourceSet):
            return train
        if self.sources is not None or self.files is not None or self.stream is not None:
            return train
        labelled = torch.zeros(len(self.train), dtype=torch.bool)
        for name in names:
            mask = self.train.masks[name]
            labelled |= mask if mask.dim() == 1 else mask.flatten(1).any(dim=1)
        if bool(labelled.all()):
            return train
        own = self.train.rows(torch.nonzero(labelled).flatten()).subset_tasks(names)
        return SourceSet.single(own, sampling)

    def evaluation_split(self) -> tuple[TensorData, str]:
        """The rows a trained model is scored on, and their name: the test split, or the
        validation split when the split left no test rows."""
        if self.test is not None:
            return self.test, "test"
        return self.val, "val"

    @property
    def input_spec(self) -> InputSpec:
        return self.preprocessor.input_spec


def _read_path(cfg: DataJob, path: Path) -> tuple[pd.DataFrame, str, Path]:
    """The table at ``path`` (a file, a folder of files or a text file of lines), its name
    for messages and the folder its relative file paths start from."""
    data = cfg.data
    fmt = data.format
    if fmt == "folder" or (fmt == "auto" and path.is_dir()):
        df = scan_folder(path, data.pattern, data.regex, data.path_column)
        return df, f"data folder '{path}'", path
    if fmt == "lines":
        df = read_lines(path, data.columns, data.separator, data.encoding)
    else:
        df = read_table(path, fmt=fmt, na_values=data.na_values)
    return df, f"data file '{path}'", path.parent


def _read_sources(
    cfg: DataJob, frame: pd.DataFrame | None
) -> tuple[pd.DataFrame, str, list[np.ndarray] | None, str | None, list[str], Path | None]:
    """The table, its name for messages, preset split indices (files), group, ignore and the
    folder relative file paths start from."""
    data = cfg.data
    group, ignore = data.group, list(data.ignore)
    files_root: Path | None = Path(cfg.base_dir)
    given = [x for x in (frame is not None, data.path is not None, data.dataset is not None) if x]
    if len(given) != 1:
        raise ConfigError("config error: data: give exactly one of data.path or data.dataset")
    if frame is not None:
        if len(frame) == 0:
            raise DataError("data frame: the table has no rows")
        df, source = frame.reset_index(drop=True), "data frame"
    elif data.dataset is not None:
        if data.dataset not in DATASETS:
            raise ConfigError(
                f"config error: data.dataset: unknown dataset {data.dataset!r}; "
                f"valid choices: {', '.join(sorted(DATASETS))}"
            )
        info = DATASETS[data.dataset]
        df = load_dataset(data.dataset, cfg.resolve(data.root) if data.root else None)
        source = f"dataset '{data.dataset}'"
        group = group or info.group
        # Every label column of the dataset is kept out of the features, not only the labels
        # of the tasks trained: a run on 2 of Tox21's 12 assays must not read the other 10
        # (list them in data.features to use them as inputs on purpose).
        ignore = sorted(set(ignore) | set(info.ignore) | set(info.targets))
    else:
        assert data.path is not None
        df, source, files_root = _read_path(cfg, cfg.resolve(data.path))
    if data.files_root is not None:
        files_root = cfg.resolve(data.files_root)
    df = _task_rows(_filter_rows(df, data.where, source), data, source)
    if data.split.method != "files":
        return df, source, None, group, ignore, files_root
    parts = [df]
    for extra in (data.split.val_path, data.split.test_path):
        if extra is not None:
            extra_rows = _filter_rows(_read_path(cfg, cfg.resolve(extra))[0], data.where, source)
            parts.append(_task_rows(extra_rows, data, source))
    for i, part in enumerate(parts[1:], start=1):
        missing = [c for c in parts[0].columns if c not in part.columns]
        if missing:
            name = (data.split.val_path, data.split.test_path)[i - 1]
            raise DataError(
                f"data file '{cfg.resolve(str(name))}': column '{missing[0]}' not found"
            )
    sizes = np.cumsum([0] + [len(p) for p in parts])
    indices = [np.arange(sizes[i], sizes[i + 1]) for i in range(len(parts))]
    if len(indices) == 2:
        indices.append(np.arange(0))
    combined = pd.concat([p[parts[0].columns] for p in parts], ignore_index=True)
    return combined, source, indices, group, ignore, files_root


@dataclass
class _Loaded:
    """One table read and split: rows, its name for messages, split indices, roles."""

    df: pd.DataFrame
    source: str
    splits: tuple[np.ndarray, np.ndarray, np.ndarray]
    group: str | None
    ignore: list[str]
    files_root: Path | None
    #: The feature columns, when read as Arrow (:func:`_read_arrow`; ``df`` then holds the
    #: other columns used only): the columns (handed over to be consumed), numeric and
    #: categorical names.
    arrow: tuple[dict[str, pa.ChunkedArray], list[str], list[str]] | None = None


def _read_arrow(
    cfg: DataJob,
) -> tuple[pd.DataFrame, str, Path, tuple[dict[str, pa.ChunkedArray], list[str], list[str]]] | None:
    """The table of ``data.path`` with its feature columns as Arrow columns and its other
    used columns (targets, group, id, split column) as the frame :func:`read_table` would
    give, with its name for messages, the folder its relative paths start from, and the
    features (columns, numeric names, categorical names as :func:`infer_types` splits them).

    Only for a plain CSV or Parquet file and a configuration whose every check on the
    table is on those columns: None for anything else (``data.where``, ``data.task_column``,
    split files, missing-value markers, a declared column absent from the file, text declared
    numeric, a number declared categorical in Parquet, a file pandas reads otherwise than
    pyarrow), which then goes through :func:`read_table` and pandas, so that results and
    messages stay what they were."""
    data = cfg.data
    if (
        data.path is None
        or data.dataset is not None
        or data.where
        or data.task_column is not None
        or data.split.method == "files"
        or data.na_values
    ):
        return None
    path = cfg.resolve(data.path)
    names = table_names(path, data.format)
    if names is None:
        return None
    targets = list(dict.fromkeys(c for t in cfg.task_objects() for c in t.targets))
    roles = [c for c in (data.group, data.id, data.split.column) if c is not None]
    declared = [*targets, *roles, *data.numeric, *data.categorical, *(data.features or [])]
    if not set(declared) <= set(names):
        return None  # read_table's frame, so that the message names the closest column
    excluded = set(targets) | set(data.ignore) | set(roles)
    if data.features is not None:
        features = list(data.features)
    else:
        features = [c for c in names if c not in excluded]
    frame_columns = list(dict.fromkeys([*targets, *roles]))
    if not features or set(features) & set(frame_columns):
        return None  # the messages of _feature_columns
    read = read_arrow(path, data.format, frame_columns, features)
    if read is None:
        return None
    df, columns = read
    parquet = table_format(path, data.format) == "parquet"
    numeric, categorical = [], []
    for name in features:
        kind = columns[name].type
        if name in data.categorical:
            if parquet and not arrow_text(kind):
                return None  # pandas may type the column otherwise (Int64, ...)
            categorical.append(name)
        elif name in data.numeric or arrow_numeric(kind):
            if not arrow_numeric(kind):
                return None  # text read as numbers, by pandas: as_float names a bad cell
            numeric.append(name)
        else:
            categorical.append(name)
    root = cfg.resolve(data.files_root) if data.files_root is not None else path.parent
    return df, f"data file '{path}'", root, (columns, numeric, categorical)


#: Fixed first word of the training-subset random stream (distinct from the split's stream).
_FRACTION_STREAM = 0x7261_6374


def train_subset(train_idx: np.ndarray, fraction: float, seed: int, salt: int = 0) -> np.ndarray:
    """The training rows kept by ``data.train_fraction``: ``max(1, round(fraction * n))`` of
    them, drawn at random with the run ``seed`` (and ``salt``, one stream per source), in their
    original order.

    The draw is the first rows of one seeded permutation, so for a given seed a smaller fraction
    keeps a subset of the rows a larger one keeps: a data-efficiency curve adds labels to the
    same examples rather than drawing new ones at every fraction.
    """
    if fraction >= 1.0:
        return train_idx
    keep = max(1, round(fraction * len(train_idx)))
    # A stream of its own (not the split's generator), so subsetting never moves the split.
    rng = np.random.default_rng([_FRACTION_STREAM, seed & 0xFFFFFFFFFFFFFFFF, salt])
    chosen = np.sort(rng.permutation(len(train_idx))[:keep])
    return train_idx[chosen]


def _load_and_split(
    cfg: DataJob, frame: pd.DataFrame | None, salt: int = 0, *, arrow: bool = False
) -> _Loaded:
    """The table read and split; with ``arrow``, its features as Arrow columns where
    :func:`_read_arrow` can read them so."""
    read = _read_arrow(cfg) if arrow and frame is None else None
    features = None
    files_root: Path | None
    if read is not None:
        df, source, files_root, features = read
        preset, group, ignore = None, cfg.data.group, list(cfg.data.ignore)
    else:
        df, source, preset, group, ignore, files_root = _read_sources(cfg, frame)
    data = cfg.data
    role_columns = [c for c in (group, data.id, data.split.column) if c is not None]
    require_columns(df, role_columns, source, "group/id/split")
    seed = data.split.seed if data.split.seed is not None else cfg.seed
    if preset is not None:
        train_idx, val_idx, test_idx = preset
    elif data.split.method == "column":
        assert data.split.column is not None
        train_idx, val_idx, test_idx = column_split(df[data.split.column])
    elif data.split.method == "group":
        assert group is not None
        train_idx, val_idx, test_idx = group_split(
            df[group], data.split.val, data.split.test, seed, data.split.unit
        )
    else:
        train_idx, val_idx, test_idx = random_split(len(df), data.split.val, data.split.test, seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"{source}: {len(df)} rows give an empty train or validation split; "
            "add rows or change data.split"
        )
    train_idx = train_subset(train_idx, data.train_fraction, cfg.seed, salt)
    return _Loaded(df, source, (train_idx, val_idx, test_idx), group, ignore, files_root, features)


def read_split(
    request: DataRequest,
    record: pd.DataFrame,
    split: str,
    frame: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, str, Path | None]:
    """The rows a run put in ``split`` (``record``: its ``splits.csv``), read from the table
    its configuration names, or from ``frame`` (the same table, given again), as the run read
    it (``data.where``, ``data.split.val_path``): the rows, the table's name for messages and
    the folder its relative file paths start from."""
    cfg = DataJob.of(request)
    if cfg.data.sources or cfg.data.stream:
        what = "data.sources" if cfg.data.sources else "data.stream"
        raise ConfigError(
            f"config error: {what}: the run's own rows are recorded for one table read in "
            "memory; score a labelled table instead"
        )
    if frame is not None:
        cfg = replace(cfg, data=cfg.data.model_copy(update={"path": None, "dataset": None}))
    elif cfg.data.path is None and cfg.data.dataset is None:
        raise ConfigError(
            "config error: data.path: the run was trained on a data frame; give its table "
            "as well (polytask evaluate RUN TABLE --split ...)"
        )
    df, source, _, _, _, files_root = _read_sources(cfg, frame)
    return select_split(df, record, split, cfg.data.id, source), source, files_root


def _load_sources(
    cfg: DataJob, frames: Mapping[str, pd.DataFrame]
) -> tuple[_Loaded, list[tuple[str, list[str], np.ndarray]], dict[str, np.ndarray]]:
    """Every ``[[data.sources]]`` table read, split and stacked into one; plus each source's
    training rows and, per task, the rows of the sources declaring it (its labels count
    there only: see :func:`_task_table`)."""
    tasks = cfg.task_objects()
    path_columns = [c for t in tasks if t.dense for c in t.targets]
    section = cfg.data.input_component()
    if section is not None:
        processor = build_input(section.name, section.params())
        if processor.reads_files:
            path_columns += processor.columns
    parts: list[pd.DataFrame] = []
    splits: list[list[np.ndarray]] = [[], [], []]
    train_rows: list[tuple[str, list[str], np.ndarray]] = []
    labels: dict[str, list[np.ndarray]] = {t.name: [] for t in tasks}
    offset = 0
    first: _Loaded | None = None
    for i, sc in enumerate(cfg.data.sources):
        frame = frames.get(sc.name)
        if (frame is None) == (sc.path is None and sc.dataset is None):
            raise ConfigError(
                f"config error: data.sources.{i}: give exactly one of path, dataset or "
                "(from Python) a data frame"
            )
        # Each source keeps its own data.train_fraction of its training rows.
        loaded = _load_and_split(cfg.for_source(sc), frame, zlib.crc32(sc.name.encode()))
        df = loaded.df.copy()
        for task in tasks:
            labels[task.name].append(np.full(len(df), task.name in sc.tasks))
        for col in path_columns:
            # Relative file paths are relative to each source's own folder.
            if col in df.columns and loaded.files_root is not None:
                df[col] = [_absolute(v, loaded.files_root) for v in df[col]]
        for k in range(3):
            splits[k].append(loaded.splits[k] + offset)
        train_rows.append((sc.name, list(sc.tasks), loaded.splits[0] + offset))
        offset += len(df)
        parts.append(df)
        first = first or loaded
    assert first is not None
    combined = pd.concat(parts, ignore_index=True)
    names = ", ".join(f"'{sc.name}'" for sc in cfg.data.sources)
    stacked = (np.concatenate(splits[0]), np.concatenate(splits[1]), np.concatenate(splits[2]))
    merged = _Loaded(combined, f"sources {names}", stacked, first.group, first.ignore, None)
    return merged, train_rows, {name: np.concatenate(rows) for name, rows in labels.items()}


def _task_table(df: pd.DataFrame, task: Task, labelled: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The target column(s) of ``task`` with its labels kept only on the rows of the sources
    that declare it. Per task, not per column: two sources may fill one column (``score``)
    for two tasks (``score_a`` from school a, ``score_b`` from school b), and blanking the
    column for a source that does not label one task would erase the other task's labels."""
    if task.name not in labelled:
        return df
    keep = pd.Series(labelled[task.name], index=df.index)
    table: pd.DataFrame = pd.DataFrame(
        {col: df[col].where(keep) for col in task.targets}, index=df.index
    )
    return table


def _task_rows(df: pd.DataFrame, data: DataConfig, source: str) -> pd.DataFrame:
    """A task-indexed table's rows that belong to a task: a value in ``data.task_column``,
    among ``data.task_values`` when listed, not among ``data.exclude_task_values``."""
    column = data.task_column
    if column is None:
        return df
    require_columns(df, [column], source, "task (data.task_column)")
    text = value_text(df[column])
    keep = text.notna()
    if data.task_values is not None:
        wanted = [str(v) for v in data.task_values]
        present = set(text.dropna().tolist())
        absent = [v for v in wanted if v not in present]
        if absent:
            raise DataError(
                f"{source}: data.task_values: value {absent[0]!r} not found in task column "
                f"'{column}'"
            )
        keep &= text.isin(wanted)
    if data.exclude_task_values:
        keep &= ~text.isin([str(v) for v in data.exclude_task_values])
    mask = keep.fillna(False).to_numpy(dtype=bool)
    if not mask.any():
        raise DataError(f"{source}: no row left with a task value in column '{column}'")
    kept: pd.DataFrame = df[mask].reset_index(drop=True)
    return kept


def _expand_templates(
    cfg: DataJob,
    df: pd.DataFrame,
    train_idx: np.ndarray,
    source: str,
    labelled: Mapping[str, np.ndarray],
) -> tuple[list[Task], list[TaskGroup], dict[str, np.ndarray]]:
    """Every ``[[tasks]]`` template expanded once, now that the table is read: one task per
    value of ``data.task_column`` (labelled on that value's rows only, through the masks of
    :func:`_task_table`) or per target column of a wide template."""
    data = cfg.data
    column = data.task_column
    text = value_text(df[column]) if column is not None else None
    if column is not None and data.task_values is not None:
        values = list(dict.fromkeys(str(v) for v in data.task_values))
    else:
        values = ordered_values(df[column]) if column is not None else []
    tasks: list[Task] = []
    groups: list[TaskGroup] = []
    labels = dict(labelled)
    for task in cfg.task_objects():
        template = cfg.templates.get(task.name)
        if template is None:
            tasks.append(task)
            continue
        if template.over_column:
            assert column is not None and text is not None
            if column in task.targets:
                raise ConfigError(
                    f"config error: data.task_column: '{column}' is also the target of "
                    f"task '{task.name}'"
                )
            require_columns(df, task.targets, source, "target")
            classes = _template_classes(template, df[task.targets[0]], train_idx, source)
            expanded, group = expand_values(template, column, values, classes)
            for t, value in zip(expanded, values, strict=True):
                labels[t.name] = (text == value).fillna(False).to_numpy(dtype=bool)
        else:
            targets = _wide_targets(template, df, source)
            stacked = pd.concat([df[c] for c in targets], ignore_index=True)
            rows = np.concatenate([train_idx + k * len(df) for k in range(len(targets))])
            classes = _template_classes(template, stacked, rows, source)
            expanded, group = expand_targets(template, targets, classes)
        tasks.extend(expanded)
        groups.append(group)
    check_unique_names(tasks)
    return tasks, groups, labels


def _wide_targets(template: TaskTemplate, df: pd.DataFrame, source: str) -> list[str]:
    """The target columns of a wide template: listed (each must be there) or globbed."""
    if isinstance(template.targets, str):
        matched = [str(c) for c in df.columns if fnmatch.fnmatchcase(str(c), template.targets)]
        if not matched:
            raise DataError(
                f"{source}: targets {template.targets!r} of task template "
                f"'{template.task.name}' match no column"
            )
        return matched
    assert template.targets is not None
    require_columns(df, list(template.targets), source, "target")
    return list(template.targets)


def _template_classes(
    template: TaskTemplate, labels: pd.Series, train_rows: np.ndarray, source: str
) -> list[str] | None:
    """A classification template's classes, fitted once on all of its rows: every expanded
    task gets the same classes (in the same order), so their outputs can be pooled."""
    task = template.task
    if not task.spec.accepts_classes or task.dense or task.classes is not None:
        return None
    column = task.targets[0] if template.over_column else f"{template.targets}"
    one = replace(task, target=column)
    fitted = fit_task(one, pd.DataFrame({column: labels.to_numpy()}), train_rows, source)
    return fitted.classes


def _absolute(value: object, root: Path) -> object:
    if isinstance(value, str) and value.strip():
        return str(resolve_path(value, root))
    return value


def _filter_rows(df: pd.DataFrame, where: dict[str, str | list[str]], source: str) -> pd.DataFrame:
    """The rows whose columns hold the wanted value(s), compared as text."""
    if not where:
        return df
    require_columns(df, list(where), source, "data.where")
    keep = np.ones(len(df), dtype=bool)
    for column, wanted in where.items():
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        keep &= df[column].astype("string").isin(values).fillna(False).to_numpy(dtype=bool)
    if not keep.any():
        raise DataError(f"{source}: no row matches data.where {where}")
    kept: pd.DataFrame = df[keep].reset_index(drop=True)
    return kept


#: Computes soft targets (per task, one tensor row per table row) from the whole table as
#: read, with the fitted tasks: how distillation attaches a teacher's outputs to the rows.
SoftTargets = Callable[[pd.DataFrame, str, Path | None, list[Task]], dict[str, Tensor]]


def prepare_data(
    request: DataRequest,
    frame: pd.DataFrame | None = None,
    frames: Mapping[str, pd.DataFrame] | None = None,
    *,
    preprocessor: TablePreprocessor | InputProcessor | None = None,
    fitted: Mapping[str, Task] | None = None,
    soft_targets: SoftTargets | None = None,
) -> PreparedData:
    """Read, check, split, fit and encode the data of ``cfg`` (or of ``frame``, or of the
    sources' ``frames`` by source name).

    Fine-tuning passes the base model's ``preprocessor`` (used as fitted: the inputs must
    mean what they meant to the base) and its ``fitted`` tasks (classes and target scaling
    kept); distillation passes ``soft_targets``.
    """
    cfg = DataJob.of(request)
    if cfg.data.stream:
        if frame is not None:
            raise ConfigError("config error: data.stream: streams a file, not a data frame")
        if preprocessor is not None or fitted or soft_targets is not None:
            raise ConfigError(
                "config error: data.stream: fine-tuning and distillation read tables in memory"
            )
        return _prepare_stream(cfg)
    sources: list[tuple[str, list[str], np.ndarray]] | None = None
    labelled: dict[str, np.ndarray] = {}
    if cfg.data.sources:
        if frame is not None:
            raise ConfigError("config error: data.sources: give the sources' tables, not a frame")
        loaded, sources, labelled = _load_sources(cfg, frames or {})
    else:
        # The feature columns of a CSV or Parquet file go from Arrow to the tensors, without
        # a pandas frame of the table, unless something needs that frame.
        arrow = (
            preprocessor is None
            and soft_targets is None
            and not cfg.templates
            and cfg.data.input_component() is None
        )
        loaded = _load_and_split(cfg, frame, arrow=arrow)
    df, source, files_root = loaded.df, loaded.source, loaded.files_root
    train_idx, val_idx, test_idx = loaded.splits
    data = cfg.data
    tasks = cfg.task_objects()
    groups: list[TaskGroup] = []
    if cfg.templates:
        tasks, groups, labelled = _expand_templates(cfg, df, train_idx, source, labelled)
    target_cols = list(dict.fromkeys(c for t in tasks for c in t.targets))
    require_columns(df, target_cols, source, "target")
    roles = (loaded.group, data.id, data.split.column, data.task_column)
    role_columns = [c for c in roles if c is not None]
    known = dict(fitted or {})
    tasks = [
        known.get(t.name)
        or fit_task(t, _task_table(df, t, labelled), train_idx, source, files_root)
        for t in tasks
    ]
    # Every split's rows in one block, train then validation then test: the splits are
    # views of it rather than copies (the copies were a third of the peak memory).
    order = np.concatenate([train_idx, val_idx, test_idx]).astype(np.int64)
    pre: TablePreprocessor | InputProcessor
    inputs: dict[str, Tensor] | None = None
    if preprocessor is not None:
        pre = preprocessor
    elif (section := data.input_component()) is not None:
        processor = build_input(section.name, section.params())
        role = "data.inputs" if data.inputs else f"data.input '{section.name}'"
        require_columns(df, processor.columns, source, role)
        processor.fit(df.iloc[train_idx], source, files_root)
        pre = processor
    elif loaded.arrow is not None:
        columns, numeric, categorical = loaded.arrow
        loaded.arrow = None  # the columns are consumed (freed) as they are encoded
        pre, inputs = TablePreprocessor.fit_transform_arrow(
            columns, numeric, categorical, _options(cfg), source, train_idx, order
        )
        del columns
    else:
        features = _feature_columns(cfg, df, source, target_cols, loaded.ignore, role_columns)
        pre, inputs = _fit_table(cfg, df, features, train_idx, order, source)
    n_train, n_val = len(train_idx), len(val_idx)
    files = _file_rows(cfg, pre, df, train_idx, source, files_root, sources is not None)
    # With file rows the training inputs are decoded batch by batch (polytask.data.loading):
    # only the validation and test rows are decoded now.
    start = n_train if files is not None else 0
    index = torch.from_numpy(order)
    if inputs is None:
        inputs = {
            k: v.index_select(0, index[start:]) if files is None else v
            for k, v in pre.transform(
                df if files is None else df.iloc[order[start:]], source, files_root
            ).items()
        }
    encoded = {
        t.name: encode_targets(t, _task_table(df, t, labelled), source, files_root) for t in tasks
    }
    soft = soft_targets(df, source, files_root, tasks) if soft_targets is not None else {}
    labels = TensorData(
        {},
        {k: v[0].index_select(0, index) for k, v in encoded.items()},
        {k: v[1].index_select(0, index) for k, v in encoded.items()},
        {k: v.index_select(0, index) for k, v in soft.items()},
    )
    tail = labels.slice(start, len(order))
    full = TensorData(inputs, tail.targets, tail.masks, tail.soft)
    train = labels.slice(0, n_train) if files is not None else full.slice(0, n_train)
    val = full.slice(n_train - start, n_train + n_val - start)
    test = full.slice(n_train + n_val - start, len(order) - start) if len(test_idx) else None
    train_sources = None
    if sources is not None:
        # Where each table row landed in the block.
        position = np.empty(len(df), dtype=np.int64)
        position[order] = np.arange(len(order))
        train_sources = [
            Source(name, labelled, full.rows(torch.from_numpy(position[rows])))
            for name, labelled, rows in sources
        ]
    return PreparedData(
        tasks,
        pre,
        train,
        val,
        test,
        source,
        files_root,
        train_sources,
        files=files,
        loader=LoaderOptions(data.workers, data.prefetch),
        groups=groups,
        split_rows=None
        if sources is not None
        else split_record(loaded.splits, df[data.id] if data.id is not None else None),
    )


def _file_rows(
    cfg: DataJob,
    pre: TablePreprocessor | InputProcessor,
    df: pd.DataFrame,
    train_idx: np.ndarray,
    source: str,
    files_root: Path | None,
    has_sources: bool,
) -> FileRows | None:
    """The training rows' undecoded input cells, when they are to be decoded batch by batch:
    file-backed inputs with ``data.workers`` or augmentation, one table."""
    if not isinstance(pre, InputProcessor) or not pre.reads_files or has_sources:
        return None
    if not (cfg.data.workers or pre.augments):
        return None
    # Original row labels are kept, so that a bad file is named by its row as before. Plain
    # Python objects, not Arrow-backed text: workers are forked, and Arrow's allocator and
    # thread pool are not safe to use in a forked child.
    cells = df[pre.columns].iloc[train_idx].astype(object)
    return FileRows(cells, pre, source, files_root, cfg.seed)


def _feature_columns(
    cfg: DataJob,
    df: pd.DataFrame,
    source: str,
    target_cols: list[str],
    ignore: list[str],
    role_columns: list[str],
) -> list[str]:
    """The table's feature columns: declared, or every column not otherwise used."""
    data = cfg.data
    require_columns(df, data.numeric + data.categorical, source, "feature")
    excluded = set(target_cols) | set(ignore) | set(role_columns)
    if data.features is not None:
        require_columns(df, data.features, source, "feature")
        clash = sorted(set(data.features) & set(target_cols))
        if clash:
            raise ConfigError(f"config error: data.features: '{clash[0]}' is also a target")
        features = list(data.features)
    else:
        features = [c for c in df.columns if c not in excluded]
    if not features:
        raise DataError(f"{source}: no feature columns left after targets, ignore and id/group")
    return features


def _fit_table(
    cfg: DataJob,
    df: pd.DataFrame,
    features: list[str],
    train_idx: np.ndarray,
    order: np.ndarray,
    source: str,
) -> tuple[TablePreprocessor, dict[str, Tensor]]:
    """The table's preprocessing fitted on the training rows, and the rows ``order`` encoded."""
    data = cfg.data
    numeric, categorical = infer_types(df, features, data.numeric, data.categorical)
    return TablePreprocessor.fit_transform(
        df, numeric, categorical, _options(cfg), source, train_idx, order
    )


def _options(cfg: DataJob) -> PreprocessOptions:
    return PreprocessOptions.of(cfg.data)


def _prepare_stream(cfg: DataJob) -> PreparedData:
    """A Parquet table streamed in chunks: one pass fits the preprocessing and collects the
    validation and test rows; training rows are read again every epoch."""
    data = cfg.data
    assert data.path is not None
    path = cfg.resolve(data.path)
    stream = ParquetStream(path, data.stream_chunk)
    source = f"data file '{path}'"
    tasks = cfg.task_objects()
    target_cols = list(dict.fromkeys(c for t in tasks for c in t.targets))
    head = next(stream.chunks([0]))[1] if stream.n_groups else pd.DataFrame()
    if len(head) == 0:
        raise DataError(f"{source}: the table has no rows")
    require_columns(head, target_cols, source, "target")
    role_columns = [c for c in (data.group, data.id) if c is not None]
    features = _feature_columns(cfg, head, source, target_cols, list(data.ignore), role_columns)
    numeric, categorical = infer_types(head, features, data.numeric, data.categorical)
    seed = data.split.seed if data.split.seed is not None else cfg.seed
    fit = fit_stream(
        stream,
        numeric,
        categorical,
        val=data.split.val,
        test=data.split.test,
        seed=seed,
        sample_rows=data.stream_sample,
        source=source,
    )
    assert fit.sample is not None
    sample_rows = np.arange(len(fit.sample))
    tasks = [fit_task(t, fit.sample, sample_rows, source) for t in tasks]
    pre = stream_preprocessor(fit, numeric, categorical, _options(cfg), source)

    def encode(parts: list[pd.DataFrame]) -> TensorData | None:
        if not parts:
            return None
        frame = pd.concat(parts, ignore_index=True)
        encoded = {t.name: encode_targets(t, frame, source) for t in tasks}
        return TensorData(
            pre.transform(frame, source),
            {k: v[0] for k, v in encoded.items()},
            {k: v[1] for k, v in encoded.items()},
        )

    val = encode(fit.val_parts)
    if val is None:
        raise DataError(f"{source}: the split left no validation row; raise data.split.val")
    streaming = StreamingSet(
        stream,
        pre,
        tasks,
        n_train=fit.n_train,
        val=data.split.val,
        test=data.split.test,
        seed=seed,
        buffer_rows=data.stream_buffer,
    )
    empty = val.rows(torch.arange(0))
    return PreparedData(
        tasks, pre, empty, val, encode(fit.test_parts), source, path.parent, None, streaming
    )
