"""The task-kind plug-in interface (:class:`Kind`) and the :data:`KINDS` registry.

A kind ("binary", "regression", "segmentation", ...) owns everything that depends on what a
task predicts: which declarations are valid, the losses and metrics it offers, the width and
shape of its head's output, how target columns are fitted and encoded, its loss, how metrics
read its outputs, how predictions are decoded into the user's labels and units, and how a
teacher's outputs are compared with a student's in distillation. The rest of polytask looks
the kind up (``KINDS.get(task.kind)`` or ``task.spec``) and calls it, never branching on the
kind's name. Adding a kind is one module with a :class:`Kind` subclass plus one
``KINDS.register(...)`` line in :mod:`polytask.tasks.kinds`.

Kinds see a task through :class:`TaskLike` (the fields and derived properties of
:class:`polytask.tasks.Task`) so that this package sits below the ``Task`` dataclass.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError, DataError

if TYPE_CHECKING:
    from torchmetrics import Metric

#: Builds a torchmetrics object from the task's output width (classes, labels; 1 otherwise).
MetricFactory = Callable[[int], "Metric"]
#: Reads an array-valued target column (images, ``.npy`` files): the stacked ``[N, *shape]``
#: arrays and a boolean array of the rows holding one. Supplied by :mod:`polytask.data`.
LoadArrays = Callable[[pd.Series], tuple[np.ndarray, np.ndarray]]


def torchmetric(module: str, name: str) -> type[Metric]:
    """The torchmetrics class ``torchmetrics.<module>.<name>``, imported when a metric is built:
    importing torchmetrics (scipy, transformers, matplotlib behind it) costs seconds of CPU,
    which ``polytask list``, config checks and prediction must not pay. Metric factories call
    this, so listing or registering a kind imports nothing of torchmetrics."""
    cls: type[Metric] = getattr(importlib.import_module(f"torchmetrics.{module}"), name)
    return cls


@functools.cache
def count_score_metric() -> type[Metric]:
    """A torchmetrics ``Metric`` base for a score in [0, 1], higher better, computed from counts
    summed over batches and ranks (attachment scores, span F1): the kinds' own metrics
    subclass it and add their states, ``update`` and ``compute``. Built on first use, like
    :func:`torchmetric`: torchmetrics costs seconds to import."""
    base: Any = importlib.import_module("torchmetrics").Metric

    class CountScore(base):  # type: ignore[misc]
        higher_is_better = True
        is_differentiable = False
        full_state_update = False
        plot_lower_bound = 0.0
        plot_upper_bound = 1.0

    return CountScore


class TaskLike(Protocol):
    """What a kind reads of a task: the fields and properties of :class:`polytask.Task`."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def target(self) -> str | list[str]: ...
    @property
    def classes(self) -> list[str] | None: ...
    @property
    def positive(self) -> str | list[str] | None: ...
    @property
    def loss(self) -> str | None: ...
    @property
    def weight(self) -> float: ...
    @property
    def pos_weight(self) -> float | list[float] | None: ...
    @property
    def class_weights(self) -> list[float] | None: ...
    @property
    def target_mean(self) -> float | None: ...
    @property
    def target_std(self) -> float | None: ...
    @property
    def ignore_index(self) -> int | None: ...
    @property
    def missing(self) -> list[str | int | float] | None: ...
    @property
    def targets(self) -> list[str]: ...
    @property
    def metric_names(self) -> list[str]: ...
    @property
    def primary(self) -> str: ...


class LossState(Protocol):
    """What a kind's loss reads of :class:`polytask.losses.TaskLoss`: the loss name and the
    weight tensors built once per task."""

    @property
    def name(self) -> str: ...
    @property
    def pos_weight(self) -> Tensor | None: ...
    @property
    def class_weights(self) -> Tensor | None: ...


class Kind:
    """One task kind. Subclasses set the class attributes and override the methods that
    differ from these defaults (which suit a single-column, one-value-per-row target)."""

    #: The name used in ``Task.kind`` and in configs.
    name: ClassVar[str]
    #: Losses the kind accepts; the first one is the default.
    losses: ClassVar[tuple[str, ...]]
    #: Metric name -> torchmetrics factory; the first one is the default primary metric.
    metric_factories: ClassVar[Mapping[str, MetricFactory]]
    #: Predicted per pixel of an image input (targets are arrays, one per example).
    dense: ClassVar[bool] = False
    #: Predicted per word of a sentence: targets are ``[N, T]`` list columns and the head
    #: reads a sequence encoder's ``[B, T', D]`` words (see :mod:`polytask.tasks.kinds.tokens`).
    token_level: ClassVar[bool] = False
    #: The head's single output channel is squeezed out along this dim (None: kept).
    squeeze_dim: ClassVar[int | None] = None
    #: The loss is the plain mean of :meth:`unit_losses` over the valid units (elementwise
    #: units, no weighted mean): tasks of the kind sharing a loss state can then be computed
    #: stacked, in one vectorised pass (:func:`polytask.losses.task_losses`).
    mean_of_units: ClassVar[bool] = False
    #: Which optional declaration fields apply to the kind.
    accepts_classes: ClassVar[bool] = False
    accepts_pos_weight: ClassVar[bool] = False
    accepts_class_weights: ClassVar[bool] = False
    accepts_ignore_index: ClassVar[bool] = False
    accepts_positive: ClassVar[bool] = False
    #: A teacher's outputs of the kind can teach a student (:meth:`teacher_units`); a kind
    #: that sets False refuses in :meth:`teacher_mismatch` with the reason.
    distillable: ClassVar[bool] = True
    #: :meth:`teacher_units` gives one unit per row (``[B, 1]``) while the label mask has
    #: finer units that a teacher's output does not give one by one (detection: an image's
    #: header slot and its boxes' slots); the distillation loss carries a row's teacher loss
    #: on its first label unit.
    teacher_per_row: ClassVar[bool] = False

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metrics the kind offers; the first one is the default primary metric."""
        return tuple(self.metric_factories)

    @property
    def default_metrics(self) -> tuple[str, ...]:
        """Metrics a task reports when it declares none: all of :attr:`metrics` unless the
        kind offers one that suits some of its tasks only (span F1 for BIO tags)."""
        return self.metrics

    def __repr__(self) -> str:
        return f"<task kind {self.name!r}>"

    # -- declaration ---------------------------------------------------------------------
    def validate(self, task: TaskLike, where: str) -> None:
        """Check ``task``'s declaration against this kind; raise :class:`ConfigError`."""
        self.check_target(task, where)
        if task.loss is not None and task.loss not in self.losses:
            raise ConfigError(
                f"{where}: loss {task.loss!r} does not fit kind {self.name!r}; "
                f"valid choices: {', '.join(self.losses)}"
            )
        for m in task.metric_names:
            if m not in self.metrics:
                raise ConfigError(
                    f"{where}: metric {m!r} does not fit kind {self.name!r}; "
                    f"valid choices: {', '.join(self.metrics)}"
                )
        if task.primary not in task.metric_names:
            raise ConfigError(
                f"{where}: primary_metric {task.primary!r} is not among its metrics "
                f"({', '.join(task.metric_names)})"
            )
        if not (math.isfinite(task.weight) and task.weight >= 0):
            raise ConfigError(f"{where}: weight must be a finite number >= 0 (got {task.weight})")
        if task.pos_weight is not None and not self.accepts_pos_weight:
            raise ConfigError(
                f"{where}: pos_weight applies to {_kinds_accepting('pos_weight')} tasks only"
            )
        if isinstance(task.pos_weight, list) and len(task.pos_weight) != len(task.targets):
            raise ConfigError(
                f"{where}: pos_weight has {len(task.pos_weight)} values for "
                f"{len(task.targets)} label columns"
            )
        # Checked here rather than in the [[tasks]] schema so that a Task built in Python and
        # a tasks.json read back are held to the same rule: a weight <= 0 or not finite makes
        # the loss negative, zero or NaN and trains to nonsense without an error.
        pw = task.pos_weight
        for value in pw if isinstance(pw, list) else [] if pw is None else [pw]:
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"{where}: pos_weight must be a finite number > 0 (got {value!r})"
                )
        if task.class_weights is not None:
            if not self.accepts_class_weights:
                raise ConfigError(
                    f"{where}: class_weights apply to {_kinds_accepting('class_weights')} "
                    "tasks only"
                )
            if task.classes is not None and len(task.class_weights) != len(task.classes):
                raise ConfigError(
                    f"{where}: class_weights has {len(task.class_weights)} values for "
                    f"{len(task.classes)} classes"
                )
            cw = task.class_weights
            bad = [v for v in cw if not (_is_number(v) and math.isfinite(v) and v >= 0)]
            if bad or not any(v > 0 for v in cw):
                got = f"got {bad[0]!r}" if bad else "all are 0"
                raise ConfigError(
                    f"{where}: class_weights must be finite numbers >= 0, at least one > 0 ({got})"
                )
        if task.classes is not None:
            if len(set(task.classes)) != len(task.classes):
                raise ConfigError(f"{where}: classes contain duplicates")
            self.check_classes(task, task.classes, where)
        if task.ignore_index is not None and not self.accepts_ignore_index:
            raise ConfigError(
                f"{where}: ignore_index applies to {_kinds_accepting('ignore_index')} tasks only"
            )
        if task.positive is not None and not self.accepts_positive:
            raise ConfigError(
                f"{where}: positive applies to {_kinds_accepting('positive')} tasks only"
            )

    def check_target(self, task: TaskLike, where: str) -> None:
        """The target is one column name (a kind reading several columns overrides this)."""
        if not isinstance(task.target, str):
            raise ConfigError(f"{where}: a {self.name} target is one column name")

    def check_classes(self, task: TaskLike, classes: list[str], where: str) -> None:
        """Check declared (distinct) ``classes``; by default a kind takes none."""
        if not self.accepts_classes:
            raise ConfigError(f"{where}: classes do not apply to {self.name} tasks")

    def n_outputs(self, task: TaskLike) -> int:
        """Width of the task's head output (logits or values), per pixel for dense kinds."""
        return 1

    def make_head(
        self,
        task: TaskLike,
        in_dim: int,
        spatial: bool,
        params: Any,
        input_size: tuple[int, int] | None = None,
    ) -> nn.Module | None:
        """The kind's own head on a representation of width ``in_dim`` (a feature map when
        ``spatial``), built with the run's head parameters ``params`` (a
        :class:`polytask.models.heads.HeadParams`) and told the image input's ``(H, W)``
        (``input_size``; None for other inputs), or ``None`` for the standard head that
        :class:`polytask.models.heads.HeadFactory` chooses (tower, pooled tower, dense
        decoder). Kinds whose output is not a plain linear read-out (a biaffine arc scorer,
        a detection head whose heat-map sits at a fixed stride of the input pixels) return
        their module here; it is called as ``head(z)`` and its output is the task's raw
        output."""
        return None

    # -- data ----------------------------------------------------------------------------
    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        """The fields of ``task`` completed from data (class labels from the whole table,
        scale from the train rows); an empty dict when nothing changes."""
        raise NotImplementedError

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        """Label tensor and validity mask of ``task`` for every row of ``table``."""
        raise NotImplementedError

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        """A small synthetic declaration (``Task`` keyword arguments besides ``name`` and
        ``kind``) and table of ``n`` rows with some missing labels, for the shared property
        suite of the kinds (``tests/test_task_kinds.py``) and for examples."""
        raise NotImplementedError

    # -- loss ----------------------------------------------------------------------------
    def pos_weight_tensor(self, task: TaskLike) -> Tensor | None:
        """``task.pos_weight`` as the tensor the loss uses (one value per label)."""
        pw = task.pos_weight
        if pw is None:
            return None
        values = pw if isinstance(pw, list) else [pw] * len(task.targets)
        return torch.tensor(values, dtype=torch.float32)

    def loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor | None:
        """Mean loss over the valid labels of a batch, or ``None`` if there are none."""
        if not bool(mask.any()):
            return None
        return self.masked_loss(state, output, target, mask)

    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Mean loss over the valid labels (at least one)."""
        raise NotImplementedError

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        """The loss of every unit of a batch (row; row and label; pixel), unreduced and
        unmasked (see :func:`polytask.losses.unit_losses`)."""
        raise NotImplementedError

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        """Raw outputs of a model predicting the encoded ``target`` exactly (confidently,
        for logits); used by the property suite."""
        raise NotImplementedError

    # -- evaluation and prediction -------------------------------------------------------
    def make_metric(self, task: TaskLike, name: str) -> Metric:
        """The torchmetrics object computing metric ``name`` for ``task``."""
        return self.metric_factories[name](self.n_outputs(task))

    def metric_for_direction(self, task: TaskLike, name: str) -> Metric:
        """Metric ``name`` built even before the data is read (for its direction)."""
        return self.make_metric(task, name)

    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Predictions and targets the metrics read, valid labels only."""
        raise NotImplementedError

    def degenerate(self, name: str, target: Tensor) -> bool:
        """Metric ``name`` is undefined on these (non-empty, valid) targets."""
        return False

    def to_original_units(self, task: TaskLike, values: Tensor) -> Tensor:
        """Outputs or targets in the user's unit (identity unless the kind standardises)."""
        return values

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        """Prediction columns (name -> one value per row) from raw outputs."""
        raise NotImplementedError

    # -- distillation --------------------------------------------------------------------
    def teacher_mismatch(self, student: TaskLike, teacher: TaskLike) -> str | None:
        """Why a teacher's task of this kind cannot teach ``student`` (None: it can)."""
        return None

    def to_student_units(self, student: TaskLike, teacher: TaskLike, output: Tensor) -> Tensor:
        """A teacher's raw output expressed as the student's raw output."""
        return output

    def teacher_units(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """The teacher loss of every unit (see :mod:`polytask.studies.distill.loss`):
        squared error by default."""
        return (student - teacher) ** 2


class ClassIndexed(Kind):
    """A kind whose head scores each of the task's classes (one logit per class, per example
    or per pixel): its width is the class count, its teacher a softmax over the same classes."""

    def n_outputs(self, task: TaskLike) -> int:
        if not task.classes:
            raise ConfigError(f"task {task.name!r}: classes are not known yet")
        return len(task.classes)

    def metric_for_direction(self, task: TaskLike, name: str) -> Metric:
        # The direction does not depend on the classes: two placeholders when unknown.
        return self.metric_factories[name](len(task.classes) if task.classes else 2)

    def teacher_mismatch(self, student: TaskLike, teacher: TaskLike) -> str | None:
        return classes_mismatch(student, teacher)

    def teacher_units(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        return softmax_teacher_units(student, teacher, temperature)


class Sigmoid(Kind):
    """A kind whose head gives one logit per label (binary, multilabel): binary cross-entropy,
    a tempered Bernoulli per output for distillation."""

    mean_of_units = True

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        pw = state.pos_weight
        return F.binary_cross_entropy_with_logits(output, target, pos_weight=pw, reduction="none")

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        return (target.float() * 2.0 - 1.0) * 30.0

    def teacher_units(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        return bernoulli_teacher_units(student, teacher, temperature)


class KindRegistry:
    """Task kinds by name, in registration order (the order configs and messages list)."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}

    def register(self, kind: Kind) -> Kind:
        if kind.name in self._kinds:
            raise ValueError(f"task kind {kind.name!r} is registered twice")
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: str) -> Kind:
        """The kind called ``name``; a :class:`ConfigError` naming the choices otherwise."""
        try:
            return self._kinds[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown task kind {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._kinds)

    def __iter__(self) -> Iterator[Kind]:
        return iter(list(self._kinds.values()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._kinds

    def __len__(self) -> int:
        return len(self._kinds)


#: Every task kind; see :mod:`polytask.tasks.kinds` for the registrations.
KINDS = KindRegistry()


def _is_number(value: object) -> bool:
    """A real number, not a bool (``True`` is an int to Python, not a weight to a user)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kinds_accepting(field: str) -> str:
    """``"binary and multilabel"``: the kinds whose declarations may set ``field``."""
    names = [k.name for k in KINDS if getattr(k, f"accepts_{field}")]
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


# -- helpers shared by several kinds ------------------------------------------------------
def value_loss(name: str, out: Tensor, tgt: Tensor) -> Tensor:
    """Mean of a regression loss (``mse``, ``l1``, ``huber``)."""
    if name == "l1":
        return F.l1_loss(out, tgt)
    if name == "huber":
        return F.huber_loss(out, tgt)
    return F.mse_loss(out, tgt)


def value_unit_losses(name: str, out: Tensor, tgt: Tensor) -> Tensor:
    """Unreduced regression loss (``mse``, ``l1``, ``huber``)."""
    if name == "l1":
        return F.l1_loss(out, tgt, reduction="none")
    if name == "huber":
        return F.huber_loss(out, tgt, reduction="none")
    return F.mse_loss(out, tgt, reduction="none")


def bernoulli_teacher_units(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · KL`` between tempered Bernoullis, one per output."""
    t = temperature
    # KL between Bernoullis = cross-entropy to the teacher minus the teacher's entropy.
    target = torch.sigmoid(teacher / t)
    cross = F.binary_cross_entropy_with_logits(student / t, target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher / t, target, reduction="none")
    return (cross - entropy) * t * t


def softmax_teacher_units(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · KL`` between tempered softmax distributions over dim 1."""
    t = temperature
    log_p = F.log_softmax(teacher / t, dim=1)
    log_q = F.log_softmax(student / t, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1) * t * t


def classes_mismatch(student: TaskLike, teacher: TaskLike) -> str | None:
    """A teacher of a class-label kind must use the student's classes, in order."""
    if list(map(str, teacher.classes or [])) != list(map(str, student.classes or [])):
        return f"has classes {teacher.classes} there, {student.classes} in this data"
    return None


#: Largest magnitude of a regression-like target. Predictions and metrics are computed in
#: float32, where a squared error of a 1e20 target is already infinite; 1e15 keeps the error,
#: its square summed over millions of rows and the scale all finite.
MAX_TARGET_MAGNITUDE = 1e15


def check_magnitude(values: np.ndarray, where: str, column: str) -> None:
    """A :class:`DataError` naming ``column`` when a finite value is too large to standardise
    (beyond :data:`MAX_TARGET_MAGNITUDE`); infinite values are missing labels, not checked."""
    finite = np.abs(values[np.isfinite(values)])
    if finite.size and float(finite.max()) > MAX_TARGET_MAGNITUDE:
        raise DataError(
            f"{where}: column '{column}' holds values too large to standardise "
            f"(max |x| = {float(finite.max()):.3g}; at most {MAX_TARGET_MAGNITUDE:g})"
        )


def fitted_scale(values: np.ndarray, where: str, column: str, what: str) -> dict[str, Any]:
    """``target_mean`` and ``target_std`` of the finite training ``values`` (a std of 0 is
    taken as 1); a :class:`DataError` naming the column when none is finite or one is too
    large to standardise."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise DataError(f"{where}: column '{column}' has no valid {what} in train")
    check_magnitude(values, where, column)
    std = float(values.std())
    return {"target_mean": float(values.mean()), "target_std": std or 1.0}


def _scale(task: TaskLike) -> tuple[float, float]:
    mean = task.target_mean if task.target_mean is not None else 0.0
    std = task.target_std if task.target_std is not None else 1.0
    return mean, std


def from_standard(task: TaskLike, values: Tensor) -> Tensor:
    """Undo the standardisation of a regression-like target."""
    mean, std = _scale(task)
    return values * std + mean


def to_standard(task: TaskLike, values: Tensor) -> Tensor:
    """Standardise values in the original unit with ``task``'s scale."""
    mean, std = _scale(task)
    return (values - mean) / std


def probabilities(output: Tensor, to_proba: Callable[[Tensor], Tensor]) -> np.ndarray:
    """``to_proba(output)`` as float64, NaN wherever the output is not finite: a logit of inf
    (an overflow) gives a probability of 1 that nothing supports."""
    proba = to_proba(output).double().numpy()
    finite = torch.isfinite(output).numpy()
    return np.where(finite, proba, np.nan) if not finite.all() else proba


def labelled_where(labels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``labels`` with no label (``None``) where ``known`` is False: a class is never attached
    to a NaN probability. Unchanged (same dtype) when every row is known."""
    if bool(known.all()):
        return labels
    out = labels.astype(object)
    out[~known] = None
    return out


def finite_or_nan(values: np.ndarray) -> np.ndarray:
    """``values`` with NaN for every infinity: an overflowed prediction is no value."""
    return np.where(np.isfinite(values), values, np.nan)


def per_row_column(maps: np.ndarray) -> np.ndarray:
    """One array per row, as an object column."""
    column = np.empty(len(maps), dtype=object)
    column[:] = list(maps)
    return column
