"""The ``[[tasks]]`` section: one entry per task, the fields of :class:`polytask.Task`."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from polytask.config_errors import Schema
from polytask.tasks.kinds import KINDS
from polytask.tasks.task import Task, TaskKind


class TaskConfig(Schema):
    """One ``[[tasks]]`` entry: the declared fields of :class:`polytask.Task` (all but
    :data:`~polytask.tasks.task.FITTED_FIELDS`), with the bounds pydantic checks and names in
    its messages; ``Task.validate`` then checks what spans fields. A test holds the two field
    lists and defaults equal."""

    name: str = Field(
        min_length=1, description="the task's name (metrics, predictions, per-task settings)"
    )
    kind: TaskKind = Field(
        description="the task kind (polytask list: kinds): binary, multiclass, multilabel, "
        "regression, ..."
    )
    target: str | list[str] = Field(
        description="the label column (a list of columns for multilabel)"
    )
    classes: list[str] | None = Field(
        default=None,
        description="the labels in order (default: the sorted training labels); others are "
        "an error",
    )
    positive: str | list[str] | None = Field(
        default=None,
        description="binary: the label (or labels) counted positive; every other label is "
        "negative (one-vs-rest)",
    )
    loss: str | None = Field(
        default=None, description="the loss (polytask list: losses); default: the kind's"
    )
    metrics: list[str] | None = Field(
        default=None,
        description="metrics reported (default: the kind's); the first is the primary "
        "unless primary_metric",
    )
    primary_metric: str | None = Field(
        default=None, description="the metric early stopping and Δm use for this task"
    )
    weight: float = Field(
        default=1.0, ge=0.0, description="static balancer: this task's loss weight"
    )
    pos_weight: float | list[float] | None = Field(
        default=None,
        description="binary / multilabel: weight of positive labels in the loss (per label "
        "for multilabel)",
    )
    class_weights: list[float] | None = Field(
        default=None, description="multiclass: a loss weight per class, in classes order"
    )
    ignore_index: int | None = Field(
        default=None, description="segmentation: the mask value that marks unlabelled pixels"
    )
    missing: list[str | int | float] | None = Field(
        default=None,
        description="label values that mean 'no label' for this task only (masked, like "
        "a blank cell)",
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        """One of the registered kinds (plug-ins included), with pydantic's own wording."""
        if kind not in KINDS:
            names = [repr(n) for n in KINDS.names()]
            expected = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": expected}
            )
        return kind

    def to_task(self) -> Task:
        return Task(**self.model_dump())
