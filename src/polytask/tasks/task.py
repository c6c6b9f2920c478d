"""Task specifications: what each head predicts, how it is scored and how it is trained.

A :class:`Task` is declared by the user (name, kind, target column(s), optional loss, metrics,
weights) and completed when the training data is seen (class labels, regression target scale).
The completed task is stored as JSON beside the model weights so that predictions come back in
the user's own labels and units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from polytask.errors import ConfigError

TaskKind = Literal[
    "binary", "multiclass", "multilabel", "regression", "segmentation", "dense_regression"
]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
#: Kinds predicted per pixel of an image input (their targets are arrays, one per example).
DENSE_KINDS: tuple[str, ...] = ("segmentation", "dense_regression")

#: Losses each kind accepts; the first one is the default.
LOSSES: dict[str, tuple[str, ...]] = {
    "binary": ("bce",),
    "multiclass": ("cross_entropy",),
    "multilabel": ("bce",),
    "regression": ("mse", "l1", "huber"),
    "segmentation": ("cross_entropy",),
    "dense_regression": ("l1", "mse", "huber"),
}

#: Metrics each kind offers; the first one is the default primary metric.
METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auroc", "accuracy", "f1", "average_precision"),
    "multiclass": ("accuracy", "f1", "auroc"),
    "multilabel": ("auroc", "f1", "accuracy"),
    "regression": ("mae", "rmse", "r2"),
    "segmentation": ("miou", "pixel_accuracy"),
    "dense_regression": ("abs_rel", "mae", "rmse"),
}


@dataclass
class Task:
    """One prediction target of a multi-task model.

    Args:
        name: unique task name (used in configs, logs and prediction columns).
        kind: ``binary``, ``multiclass``, ``multilabel`` or ``regression``; for image inputs
            also the per-pixel kinds ``segmentation`` (a class per pixel) and
            ``dense_regression`` (a value per pixel, e.g. depth).
        target: the label column; for ``multilabel`` a list of 0/1 columns, one per label; for
            the per-pixel kinds a column of arrays (or of ``.npy`` / image file paths).
        classes: class labels. Binary: ``[negative, positive]``; multiclass: every class. Inferred
            from the training table when omitted; labels outside declared classes are an error.
        positive: for binary targets with non-obvious labels, the label meaning "positive".
        loss: loss name (see ``LOSSES``); the kind's default when omitted.
        metrics: metric names (see ``METRICS``); all of the kind's metrics when omitted.
        primary_metric: the metric used for early stopping and Δm; the kind's default if omitted.
        weight: static weight of this task's loss in the combined loss.
        pos_weight: binary/multilabel: weight of positive examples in the loss (as in
            ``torch.nn.BCEWithLogitsLoss``); a single value or one per label.
        class_weights: multiclass: one weight per class (as in ``torch.nn.CrossEntropyLoss``).
        target_mean, target_std: regression only; the training split's target scale. The model
            learns the standardised target and reports predictions in the original unit.
        ignore_index: segmentation only: the pixel value marking unlabelled pixels (masked
            out of loss and metrics, as ``ignore_index`` in ``nn.CrossEntropyLoss``).
    """

    name: str
    kind: TaskKind
    target: str | list[str]
    classes: list[str] | None = None
    positive: str | None = None
    loss: str | None = None
    metrics: list[str] | None = None
    primary_metric: str | None = None
    weight: float = 1.0
    pos_weight: float | list[float] | None = None
    class_weights: list[float] | None = None
    target_mean: float | None = None
    target_std: float | None = None
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    # -- declared properties -------------------------------------------------------------
    @property
    def targets(self) -> list[str]:
        """The target column(s) as a list."""
        return [self.target] if isinstance(self.target, str) else list(self.target)

    @property
    def loss_name(self) -> str:
        return self.loss or LOSSES[self.kind][0]

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics) if self.metrics else list(METRICS[self.kind])

    @property
    def primary(self) -> str:
        return self.primary_metric or self.metric_names[0]

    @property
    def dense(self) -> bool:
        """True for the per-pixel kinds."""
        return self.kind in DENSE_KINDS

    @property
    def n_outputs(self) -> int:
        """Width of this task's head output (logits or values), per pixel for dense kinds."""
        if self.kind in ("multiclass", "segmentation"):
            if not self.classes:
                raise ConfigError(f"task {self.name!r}: classes are not known yet")
            return len(self.classes)
        if self.kind == "multilabel":
            return len(self.targets)
        return 1

    def validate(self) -> None:
        """Check the declaration; raise :class:`ConfigError` naming the bad field."""
        where = f"task {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("task name must be a non-empty string")
        if self.kind not in TASK_KINDS:
            raise ConfigError(
                f"{where}: unknown kind {self.kind!r}; valid choices: {', '.join(TASK_KINDS)}"
            )
        if self.kind == "multilabel":
            if isinstance(self.target, str) or len(self.target) < 1:
                raise ConfigError(f"{where}: a multilabel target is a list of 0/1 columns")
        elif not isinstance(self.target, str):
            raise ConfigError(f"{where}: a {self.kind} target is one column name")
        if self.loss is not None and self.loss not in LOSSES[self.kind]:
            raise ConfigError(
                f"{where}: loss {self.loss!r} does not fit kind {self.kind!r}; "
                f"valid choices: {', '.join(LOSSES[self.kind])}"
            )
        for m in self.metric_names:
            if m not in METRICS[self.kind]:
                raise ConfigError(
                    f"{where}: metric {m!r} does not fit kind {self.kind!r}; "
                    f"valid choices: {', '.join(METRICS[self.kind])}"
                )
        if self.primary not in self.metric_names:
            raise ConfigError(
                f"{where}: primary_metric {self.primary!r} is not among its metrics "
                f"({', '.join(self.metric_names)})"
            )
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"{where}: weight must be a finite number >= 0 (got {self.weight})")
        if self.pos_weight is not None and self.kind not in ("binary", "multilabel"):
            raise ConfigError(f"{where}: pos_weight applies to binary and multilabel tasks only")
        if isinstance(self.pos_weight, list) and len(self.pos_weight) != len(self.targets):
            raise ConfigError(
                f"{where}: pos_weight has {len(self.pos_weight)} values for "
                f"{len(self.targets)} label columns"
            )
        if self.class_weights is not None:
            if self.kind not in ("multiclass", "segmentation"):
                raise ConfigError(
                    f"{where}: class_weights apply to multiclass and segmentation tasks only"
                )
            if self.classes is not None and len(self.class_weights) != len(self.classes):
                raise ConfigError(
                    f"{where}: class_weights has {len(self.class_weights)} values for "
                    f"{len(self.classes)} classes"
                )
        if self.classes is not None:
            if len(set(self.classes)) != len(self.classes):
                raise ConfigError(f"{where}: classes contain duplicates")
            if self.kind == "binary" and len(self.classes) != 2:
                raise ConfigError(f"{where}: a binary task has exactly 2 classes")
            if self.kind in ("regression", "multilabel", "dense_regression"):
                raise ConfigError(f"{where}: classes do not apply to {self.kind} tasks")
            if self.kind == "segmentation" and not all(_is_int(c) for c in self.classes):
                raise ConfigError(
                    f"{where}: segmentation classes are the integer pixel values of the masks "
                    f"(got {self.classes[:3]})"
                )
        if self.ignore_index is not None and self.kind != "segmentation":
            raise ConfigError(f"{where}: ignore_index applies to segmentation tasks only")
        if self.positive is not None and self.kind != "binary":
            raise ConfigError(f"{where}: positive applies to binary tasks only")

    # -- JSON round trip -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"task: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}"
            )
        return cls(**data)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def check_unique_names(tasks: list[Task]) -> None:
    """Task names must be unique: they key outputs, losses and prediction columns."""
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise ConfigError(f"task name {t.name!r} is used twice")
        seen.add(t.name)
    if not tasks:
        raise ConfigError("at least one task must be declared")
