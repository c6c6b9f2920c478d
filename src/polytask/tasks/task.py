"""Task specifications: what each head predicts, how it is scored and how it is trained.

A :class:`Task` is declared by the user (name, kind, target column(s), optional loss, metrics,
weights) and completed when the training data is seen (class labels, regression target scale).
The completed task is stored as JSON beside the model weights so that predictions come back in
the user's own labels and units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from polytask.errors import ConfigError, PolytaskError
from polytask.tasks.kinds import KINDS, Kind

#: A kind name: one of ``KINDS.names()`` (plug-ins may add kinds, so this is ``str``).
TaskKind = str

# Tables of the built-in kinds, derived from the registry when this module is imported; kinds
# added later by plug-ins are in ``KINDS`` only (look kinds up there, not in these tables).
#: The built-in kind names, in registration order.
TASK_KINDS: tuple[str, ...] = tuple(KINDS.names())
#: Kinds predicted per pixel of an image input (their targets are arrays, one per example).
DENSE_KINDS: tuple[str, ...] = tuple(k.name for k in KINDS if k.dense)
#: Losses each kind accepts; the first one is the default.
LOSSES: dict[str, tuple[str, ...]] = {k.name: k.losses for k in KINDS}
#: Metrics each kind offers; the first one is the default primary metric.
METRICS: dict[str, tuple[str, ...]] = {k.name: k.metrics for k in KINDS}


#: The fields of a :class:`Task` completed from the training data, never declared by the user.
FITTED_FIELDS = ("target_mean", "target_std")


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
        positive: binary only: the label meaning "positive" when the labels are not obvious
            (``yes``/``no``, ``0``/``1``); on a column of more than two labels, or given as a
            list of labels, the task is one-vs-rest: rows holding one of these labels are
            positive, rows holding any other label negative, and the classes become
            ``["not <30", "<30"]`` (a list: ``["not (a | b)", "a | b"]``).
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
        missing: label values that mean "no label" for this task only (a stray ``3`` in a
            0/1 column, ``"unknown"``), compared as text like class labels; those rows are
            masked out of this task's loss and metrics, other tasks keep them.
    """

    name: str
    kind: TaskKind
    target: str | list[str]
    classes: list[str] | None = None
    positive: str | list[str] | None = None
    loss: str | None = None
    metrics: list[str] | None = None
    primary_metric: str | None = None
    weight: float = 1.0
    pos_weight: float | list[float] | None = None
    class_weights: list[float] | None = None
    target_mean: float | None = None
    target_std: float | None = None
    ignore_index: int | None = None
    missing: list[str | int | float] | None = None

    def __post_init__(self) -> None:
        self.validate()

    # -- declared properties -------------------------------------------------------------
    @property
    def targets(self) -> list[str]:
        """The target column(s) as a list."""
        return [self.target] if isinstance(self.target, str) else list(self.target)

    @property
    def spec(self) -> Kind:
        """The task's kind (see :mod:`polytask.tasks.kinds`)."""
        return KINDS.get(self.kind)

    @property
    def loss_name(self) -> str:
        return self.loss or self.spec.losses[0]

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics) if self.metrics else list(self.spec.default_metrics)

    @property
    def primary(self) -> str:
        return self.primary_metric or self.metric_names[0]

    @property
    def dense(self) -> bool:
        """True for the per-pixel kinds."""
        return self.spec.dense

    @property
    def n_outputs(self) -> int:
        """Width of this task's head output (logits or values), per pixel for dense kinds."""
        return self.spec.n_outputs(self)

    def validate(self) -> None:
        """Check the declaration; raise :class:`ConfigError` naming the bad field."""
        where = f"task {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("task name must be a non-empty string")
        if self.kind not in KINDS:
            raise ConfigError(
                f"{where}: unknown kind {self.kind!r}; valid choices: {', '.join(KINDS.names())}"
            )
        self.spec.validate(self, where)
        if self.missing is not None and self.dense:
            raise ConfigError(f"{where}: missing applies to label columns, not {self.kind} targets")

    # -- JSON round trip -----------------------------------------------------------------
    def declared(self) -> dict[str, Any]:
        """What a user declares of this task (a ``[[tasks]]`` entry): the set fields, less
        the fitted ones."""
        return {k: v for k, v in self.to_dict().items() if v is not None and k not in FITTED_FIELDS}

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


def select_tasks(tasks: list[Task], names: Sequence[str] | None) -> list[Task]:
    """The tasks named in ``names`` (all of them when None or empty), in the model's order;
    an unknown name is a one-line error listing what the model predicts."""
    if not names:
        return tasks
    known = [t.name for t in tasks]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PolytaskError(f"unknown task {unknown[0]!r}; this model predicts: {', '.join(known)}")
    return [t for t in tasks if t.name in names]


def check_unique_names(tasks: list[Task]) -> None:
    """Task names must be unique: they key outputs, losses and prediction columns."""
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise ConfigError(f"task name {t.name!r} is used twice")
        seen.add(t.name)
    if not tasks:
        raise ConfigError("at least one task must be declared")
