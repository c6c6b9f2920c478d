"""Tasks: what each head predicts, how it is scored and how it is trained (:class:`Task`), and
preference vectors over the tasks (:mod:`polytask.tasks.preferences`)."""

from polytask.tasks.task import (
    DENSE_KINDS,
    LOSSES,
    METRICS,
    TASK_KINDS,
    Task,
    TaskKind,
    check_unique_names,
)

__all__ = [
    "DENSE_KINDS",
    "LOSSES",
    "METRICS",
    "TASK_KINDS",
    "Task",
    "TaskKind",
    "check_unique_names",
]
