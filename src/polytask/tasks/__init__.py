"""Tasks: what each head predicts, how it is scored and how it is trained (:class:`Task`), the
task kinds as plug-ins (:data:`KINDS`, :mod:`polytask.tasks.kinds`), and preference vectors
over the tasks (:mod:`polytask.tasks.preferences`)."""

from polytask.tasks.kinds import KINDS, Kind
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
    "KINDS",
    "LOSSES",
    "METRICS",
    "TASK_KINDS",
    "Kind",
    "Task",
    "TaskKind",
    "check_unique_names",
]
