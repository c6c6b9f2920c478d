"""Real multi-task datasets: registry, offline loading and explicit, verified fetching."""

from polytask.data.datasets.registry import (
    DATASETS,
    DatasetInfo,
    RemoteFile,
    data_available,
    fetch_dataset,
    load_dataset,
)
from polytask.data.datasets.root import resolve_data_root

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "RemoteFile",
    "data_available",
    "fetch_dataset",
    "load_dataset",
    "resolve_data_root",
]
