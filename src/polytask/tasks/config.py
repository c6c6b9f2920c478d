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

    name: str = Field(min_length=1)
    kind: TaskKind
    target: str | list[str]
    classes: list[str] | None = None
    positive: str | list[str] | None = None
    loss: str | None = None
    metrics: list[str] | None = None
    primary_metric: str | None = None
    weight: float = Field(default=1.0, ge=0.0)
    pos_weight: float | list[float] | None = None
    class_weights: list[float] | None = None
    ignore_index: int | None = None
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
