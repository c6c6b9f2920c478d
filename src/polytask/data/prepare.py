"""From a run configuration to tensors: read the table(s), check columns, split, fit the
targets and the feature preprocessing on the training rows, and encode every split.

Every check on the user's data happens here, before anything is written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polytask.config import RunConfig
from polytask.data.files import read_lines, scan_folder
from polytask.data.inputs import InputProcessor
from polytask.data.inputs.base import build_input
from polytask.data.preprocess import PreprocessOptions, TablePreprocessor, infer_types
from polytask.data.split import column_split, group_split, random_split
from polytask.data.tables import read_table, require_columns
from polytask.data.targets import encode_targets, fit_task
from polytask.data.tensors import TensorData
from polytask.errors import ConfigError, DataError
from polytask.models.encoders import InputSpec
from polytask.tasks import Task


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

    @property
    def input_spec(self) -> InputSpec:
        return self.preprocessor.input_spec


def _read_path(cfg: RunConfig, path: Path) -> tuple[pd.DataFrame, str, Path]:
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
    cfg: RunConfig, frame: pd.DataFrame | None
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
        from polytask.data.datasets import DATASETS, load_dataset

        if data.dataset not in DATASETS:
            raise ConfigError(
                f"config error: data.dataset: unknown dataset {data.dataset!r}; "
                f"valid choices: {', '.join(sorted(DATASETS))}"
            )
        info = DATASETS[data.dataset]
        df = load_dataset(data.dataset, cfg.resolve(data.root) if data.root else None)
        source = f"dataset '{data.dataset}'"
        group = group or info.group
        ignore = sorted(set(ignore) | set(info.ignore))
    else:
        assert data.path is not None
        df, source, files_root = _read_path(cfg, cfg.resolve(data.path))
    if data.files_root is not None:
        files_root = cfg.resolve(data.files_root)
    if data.split.method != "files":
        return df, source, None, group, ignore, files_root
    parts = [df]
    for extra in (data.split.val_path, data.split.test_path):
        if extra is not None:
            parts.append(_read_path(cfg, cfg.resolve(extra))[0])
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


def prepare_data(cfg: RunConfig, frame: pd.DataFrame | None = None) -> PreparedData:
    """Read, check, split, fit and encode the data of ``cfg`` (or of ``frame``)."""
    df, source, preset, group, ignore, files_root = _read_sources(cfg, frame)
    data = cfg.data
    tasks = cfg.task_objects()
    target_cols = list(dict.fromkeys(c for t in tasks for c in t.targets))
    require_columns(df, target_cols, source, "target")
    role_columns = [c for c in (group, data.id, data.split.column) if c is not None]
    require_columns(df, role_columns, source, "group/id/split")
    processor = None
    if data.input is not None:
        processor = build_input(data.input.name, data.input.params())
        require_columns(df, processor.columns, source, f"data.input '{data.input.name}'")
        features: list[str] = []
    else:
        features = _feature_columns(cfg, df, source, target_cols, ignore, role_columns)

    seed = data.split.seed if data.split.seed is not None else cfg.seed
    if preset is not None:
        train_idx, val_idx, test_idx = preset
    elif data.split.method == "column":
        assert data.split.column is not None
        train_idx, val_idx, test_idx = column_split(df[data.split.column])
    elif data.split.method == "group":
        assert group is not None
        train_idx, val_idx, test_idx = group_split(df[group], data.split.val, data.split.test, seed)
    else:
        train_idx, val_idx, test_idx = random_split(len(df), data.split.val, data.split.test, seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"{source}: {len(df)} rows give an empty train or validation split; "
            "add rows or change data.split"
        )

    tasks = [fit_task(t, df, train_idx, source, files_root) for t in tasks]
    pre: TablePreprocessor | InputProcessor
    if processor is not None:
        processor.fit(df.iloc[train_idx], source, files_root)
        pre = processor
    else:
        pre = _fit_table(cfg, df, features, train_idx, source)
    inputs = pre.transform(df, source, files_root)
    encoded = {t.name: encode_targets(t, df, source, files_root) for t in tasks}
    full = TensorData(
        inputs,
        {k: v[0] for k, v in encoded.items()},
        {k: v[1] for k, v in encoded.items()},
    )

    def split(rows: np.ndarray) -> TensorData:
        index = torch.from_numpy(rows.astype(np.int64))
        batch = full.take(index)
        return TensorData(batch.inputs, batch.targets, batch.masks)

    test = split(test_idx) if len(test_idx) else None
    return PreparedData(tasks, pre, split(train_idx), split(val_idx), test, source, files_root)


def _feature_columns(
    cfg: RunConfig,
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
    cfg: RunConfig, df: pd.DataFrame, features: list[str], train_idx: np.ndarray, source: str
) -> TablePreprocessor:
    data = cfg.data
    numeric, categorical = infer_types(df, features, data.numeric, data.categorical)
    options = PreprocessOptions(
        categorical_encoding=data.categorical_encoding,
        onehot_max_categories=data.onehot_max_categories,
        max_categories=data.max_categories,
        min_frequency=data.min_frequency,
        unseen=data.unseen,
        missing_numeric=data.missing_numeric,
        missing_indicator=data.missing_indicator,
        scale_binary=data.scale_binary,
    )
    return TablePreprocessor.fit(df.iloc[train_idx], numeric, categorical, options, source)
