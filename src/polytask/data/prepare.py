"""From a run configuration to tensors: read the table(s), check columns, split, fit the
targets and the feature preprocessing on the training rows, and encode every split.

Every check on the user's data happens here, before anything is written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from polytask.config import RunConfig
from polytask.data.preprocess import PreprocessOptions, TablePreprocessor, infer_types
from polytask.data.split import group_split, random_split
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
    preprocessor: TablePreprocessor
    train: TensorData
    val: TensorData
    test: TensorData | None
    source: str

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.preprocessor.numeric_width, self.preprocessor.cardinalities)


def _read_sources(
    cfg: RunConfig, frame: pd.DataFrame | None
) -> tuple[pd.DataFrame, str, list[np.ndarray] | None, str | None, list[str]]:
    """The table, its name for messages, preset split indices (files), group and ignore."""
    data = cfg.data
    group, ignore = data.group, list(data.ignore)
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
        path = cfg.resolve(data.path)
        df = read_table(path, fmt=data.format, na_values=data.na_values)
        source = f"data file '{path}'"
    if data.split.method != "files":
        return df, source, None, group, ignore
    parts = [df]
    for extra in (data.split.val_path, data.split.test_path):
        if extra is not None:
            parts.append(read_table(cfg.resolve(extra), fmt=data.format, na_values=data.na_values))
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
    return combined, source, indices, group, ignore


def prepare_data(cfg: RunConfig, frame: pd.DataFrame | None = None) -> PreparedData:
    """Read, check, split, fit and encode the data of ``cfg`` (or of ``frame``)."""
    df, source, preset, group, ignore = _read_sources(cfg, frame)
    data = cfg.data
    tasks = cfg.task_objects()
    target_cols = list(dict.fromkeys(c for t in tasks for c in t.targets))
    require_columns(df, target_cols, source, "target")
    role_columns = [c for c in (group, data.id) if c is not None]
    require_columns(df, role_columns, source, "group/id")
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

    seed = data.split.seed if data.split.seed is not None else cfg.seed
    if preset is not None:
        train_idx, val_idx, test_idx = preset
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

    tasks = [fit_task(t, df, train_idx, source) for t in tasks]
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
    pre = TablePreprocessor.fit(df.iloc[train_idx], numeric, categorical, options, source)
    inputs = pre.transform(df, source)
    encoded = {t.name: encode_targets(t, df, source) for t in tasks}
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
    return PreparedData(tasks, pre, split(train_idx), split(val_idx), test, source)
