"""The ``[[tasks]]`` section: one entry per task, the fields of :class:`polytask.Task`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from polytask.tasks.task import Task, TaskKind


class TaskConfig(BaseModel):
    """One ``[[tasks]]`` entry; the fields of :class:`polytask.Task`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: TaskKind
    target: str | list[str]
    classes: list[str] | None = None
    positive: str | None = None
    loss: str | None = None
    metrics: list[str] | None = None
    primary_metric: str | None = None
    weight: float = Field(default=1.0, ge=0.0)
    pos_weight: float | list[float] | None = None
    class_weights: list[float] | None = None
    ignore_index: int | None = None

    def to_task(self) -> Task:
        return Task(**self.model_dump())
