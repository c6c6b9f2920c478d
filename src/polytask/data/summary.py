"""What a run read, in a few lines printed before training (:func:`describe_data`): rows per
split and per source, the features by type, and per task its labelled rows per split, the
fraction of training rows without a label and, for classes, how many rows carry each.

Nothing here changes the data: it only counts the masks and targets :mod:`.prepare` built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from polytask.data.preprocess import TablePreprocessor
from polytask.data.tensors import TensorData
from polytask.tasks import Task

#: Feature names listed per type before the rest are counted ("... and 12 more").
NAMES_SHOWN = 6
#: Classes listed per task before the rest are counted.
CLASSES_SHOWN = 6


@dataclass
class TaskSummary:
    """One task's labels: labelled rows per split, missing fraction and class counts (train)."""

    name: str
    kind: str
    labelled: dict[str, int]
    missing_fraction: float
    class_counts: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        counts = " / ".join(f"{n:,}" for n in self.labelled.values())
        splits = "/".join(self.labelled)
        text = (
            f"  {self.name} ({self.kind}): {counts} labelled ({splits}), "
            f"{100.0 * self.missing_fraction:.1f}% of training rows missing"
        )
        if self.class_counts:
            ranked = sorted(self.class_counts.items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{k}: {v:,}" for k, v in ranked[:CLASSES_SHOWN])
            rest = len(ranked) - CLASSES_SHOWN
            text += f"; classes {shown}" + (f" and {rest} more" if rest > 0 else "")
        return text


@dataclass
class DataSummary:
    """What :func:`describe_data` found (``lines`` for the console, ``to_dict`` for JSON)."""

    source: str
    splits: dict[str, int]
    sources: dict[str, int]
    features: dict[str, list[str]]
    tasks: list[TaskSummary]

    def lines(self) -> list[str]:
        rows = ", ".join(f"{name} {n:,}" for name, n in self.splits.items())
        out = [f"data: {self.source}: {rows} rows"]
        if self.sources:
            out.append(
                "  training rows per source: "
                + ", ".join(f"{name} {n:,}" for name, n in self.sources.items())
            )
        for kind, names in self.features.items():
            shown = ", ".join(names[:NAMES_SHOWN])
            rest = len(names) - NAMES_SHOWN
            more = f" and {rest} more" if rest > 0 else ""
            out.append(f"  {kind} features ({len(names)}): {shown}{more}")
        out.append(f"tasks ({len(self.tasks)}):")
        out += [t.line() for t in self.tasks]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "splits": dict(self.splits),
            "sources": dict(self.sources),
            "features": {k: list(v) for k, v in self.features.items()},
            "tasks": [t.__dict__ for t in self.tasks],
        }


def _labelled_rows(mask: torch.Tensor) -> torch.Tensor:
    """Per row, whether it carries any label (a multilabel or per-pixel mask has many)."""
    if mask.dim() == 1:
        return mask.bool()
    return mask.reshape(mask.shape[0], -1).bool().any(dim=1)


def _class_counts(task: Task, data: TensorData) -> dict[str, int]:
    """Rows per class among the labelled training rows (binary and multiclass tasks)."""
    classes = task.classes
    target, mask = data.targets.get(task.name), data.masks.get(task.name)
    if not classes or target is None or mask is None or target.dim() != 1 or mask.dim() != 1:
        return {}
    if str(task.kind) not in ("binary", "multiclass"):
        return {}
    values = target[mask.bool()].round().long()
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= len(classes)):
        return {}
    counts = torch.bincount(values, minlength=len(classes)).tolist()
    return {str(c): int(n) for c, n in zip(classes, counts, strict=True)}


def _features(preprocessor: object) -> dict[str, list[str]]:
    if isinstance(preprocessor, TablePreprocessor):
        features: dict[str, list[str]] = {}
        if preprocessor.numeric:
            features["numeric"] = [c.name for c in preprocessor.numeric]
        for encoding in ("onehot", "embedding"):
            names = [c.name for c in preprocessor.categorical if c.encoding == encoding]
            if names:
                features[f"categorical ({encoding})"] = names
        return features
    name = str(getattr(preprocessor, "name", type(preprocessor).__name__))
    columns = getattr(preprocessor, "columns", [])
    return {f"{name} input": [str(c) for c in columns]}


def describe_data(
    tasks: list[Task],
    preprocessor: object,
    splits: dict[str, TensorData | None],
    *,
    source: str,
    train_rows: int | None = None,
    sources: dict[str, int] | None = None,
) -> DataSummary:
    """Count what was read. ``splits`` maps train/val/test to their rows (a split left
    empty is None); ``train_rows`` overrides the training split's length when its rows are
    not held as tensors (a streamed table); ``sources`` gives each source's training rows."""
    present = {name: split for name, split in splits.items() if split is not None}
    sizes = {name: len(split) for name, split in present.items()}
    if train_rows is not None:
        sizes["train"] = train_rows
    summaries = []
    for task in tasks:
        labelled = {}
        for name, split in present.items():
            mask = split.masks.get(task.name)
            labelled[name] = 0 if mask is None else int(_labelled_rows(mask).sum())
        train = present.get("train")
        n_train = len(train) if train is not None else 0
        missing = 1.0 - labelled.get("train", 0) / n_train if n_train else float("nan")
        counts = _class_counts(task, train) if train is not None else {}
        summaries.append(TaskSummary(task.name, str(task.kind), labelled, missing, counts))
    return DataSummary(source, sizes, dict(sources or {}), _features(preprocessor), summaries)


__all__ = ["DataSummary", "TaskSummary", "describe_data"]
