"""Teachers for distillation: trained polytask models whose outputs the student learns from.

Teachers are model (or run) directories: one multi-task model, or one model per task (the
single-task nets a student replaces), or any mix, as long as no task has two teachers. Each
teacher reads the table through its own preprocessing, so a teacher trained on other
features, or on an image or text input, still teaches. Outputs are computed once for every
row of the table before training (and optionally kept in a cache keyed by the teachers'
weights and the table's contents), then travel with the rows as soft targets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch import Tensor

from polytask.console import make_console
from polytask.errors import ConfigError, DataError
from polytask.run.predictor import Predictor, load, model_dir
from polytask.state_io import atomic_directory, file_sha256, write_tensors
from polytask.tasks import Task

#: Format tag of a cached teacher-output file.
CACHE_FORMAT = "polytask.teacher_outputs/1"


@dataclass
class Teacher:
    """A loaded teacher model and where it came from."""

    directory: Path
    predictor: Predictor
    sha256: str

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.predictor.model.parameters())

    def describe(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "sha256": self.sha256,
            "tasks": self.predictor.task_names,
            "parameters": self.n_parameters,
        }


def load_teachers(paths: list[Path]) -> list[Teacher]:
    """Load every teacher (a missing or invalid directory fails with its path)."""
    teachers = []
    for path in paths:
        directory = model_dir(path).resolve()
        teachers.append(
            Teacher(directory, load(directory), file_sha256(directory / "model.safetensors"))
        )
    return teachers


def assign_teachers(teachers: list[Teacher], student: list[str]) -> dict[str, Teacher]:
    """Student task -> the teacher that predicts it (tasks no teacher predicts are absent).

    Raises when two teachers predict the same student task, or when no teacher predicts any.
    """
    owner: dict[str, Teacher] = {}
    for teacher in teachers:
        for name in teacher.predictor.task_names:
            if name not in student:
                continue
            if name in owner:
                raise ConfigError(
                    f"config error: distill.teachers: task {name!r} is predicted by two "
                    f"teachers, '{owner[name].directory}' and '{teacher.directory}'"
                )
            owner[name] = teacher
    if not owner:
        raise ConfigError(
            "config error: distill.teachers: no teacher predicts any of the tasks "
            f"{student}; the teachers predict "
            f"{sorted({n for t in teachers for n in t.predictor.task_names})}"
        )
    return owner


def check_compatible(student: Task, teacher: Task, where: Path) -> None:
    """A teacher's task must produce outputs the student's head can be compared with."""
    problem = None
    if student.kind != teacher.kind:
        problem = f"is a {teacher.kind} task there, {student.kind} here"
    else:
        problem = student.spec.teacher_mismatch(student, teacher)
    if problem is not None:
        raise ConfigError(
            f"config error: distill.teachers: task {student.name!r} {problem} (teacher '{where}')"
        )


def to_student_units(student: Task, teacher: Task, output: Tensor) -> Tensor:
    """A teacher's raw output expressed as the student's raw output: logits stay logits;
    regression values move from the teacher's standardisation to the student's."""
    return student.spec.to_student_units(student, teacher, output)


def table_fingerprint(df: pd.DataFrame, files_root: Path | None) -> str | None:
    """A hash of a table's contents (columns, values, order), or ``None`` when a column
    cannot be hashed (arrays in cells): such tables are not cached."""
    try:
        rows = pd.util.hash_pandas_object(df, index=False).to_numpy()
    except (TypeError, ValueError):
        return None
    digest = hashlib.sha256(rows.tobytes())
    digest.update(json.dumps([list(map(str, df.columns)), str(files_root)]).encode())
    return digest.hexdigest()


class TeacherOutputs:
    """Computes (or reads from the cache) the teachers' outputs as the student's soft
    targets; an instance is the ``soft_targets`` hook of :func:`polytask.data.prepare_data`."""

    def __init__(
        self,
        teachers: list[Teacher],
        assignment: dict[str, Teacher],
        cache_dir: Path | None,
        console: Console | None = None,
    ) -> None:
        self.teachers = teachers
        self.assignment = assignment
        self.cache_dir = cache_dir
        self.console = console or make_console(stderr=True)
        #: Whether the last call read the cache (for the run's record).
        self.cache_hit = False

    def _cache_path(self, df: pd.DataFrame, files_root: Path | None) -> Path | None:
        if self.cache_dir is None:
            return None
        fingerprint = table_fingerprint(df, files_root)
        if fingerprint is None:
            self.console.print(
                "distill: the table holds unhashable cells; teacher outputs are not cached",
                markup=False,
                highlight=False,
            )
            return None
        key = hashlib.sha256(fingerprint.encode())
        for name in sorted(self.assignment):
            key.update(f"{name}:{self.assignment[name].sha256}".encode())
        return self.cache_dir / key.hexdigest()[:32] / "outputs.safetensors"

    def __call__(
        self, df: pd.DataFrame, source: str, files_root: Path | None, tasks: list[Task]
    ) -> dict[str, Tensor]:
        by_name = {t.name: t for t in tasks}
        for name, teacher in self.assignment.items():
            own = next(t for t in teacher.predictor.tasks if t.name == name)
            check_compatible(by_name[name], own, teacher.directory)
        cached = self._cache_path(df, files_root)
        self.cache_hit = False
        if cached is not None and cached.is_file():
            raw = load_file(str(cached))
            if set(raw) == set(self.assignment) and all(len(v) == len(df) for v in raw.values()):
                self.cache_hit = True
                return self._converted(raw, by_name)
        raw = {}
        for teacher in self.teachers:
            mine = [n for n, t in self.assignment.items() if t is teacher]
            if not mine:
                continue
            try:
                with torch.no_grad():
                    outputs = teacher.predictor.outputs(df, source, files_root)
            except DataError as exc:
                raise DataError(f"teacher '{teacher.directory}': {exc}") from None
            raw.update({n: outputs[n].contiguous() for n in mine})
        if cached is not None:
            with atomic_directory(cached.parent) as staging:
                write_tensors(staging / cached.name, raw, {"format": CACHE_FORMAT})
        return self._converted(raw, by_name)

    def _converted(self, raw: dict[str, Tensor], by_name: dict[str, Task]) -> dict[str, Tensor]:
        out = {}
        for name, values in raw.items():
            teacher = self.assignment[name]
            own = next(t for t in teacher.predictor.tasks if t.name == name)
            out[name] = to_student_units(by_name[name], own, values).float()
        return out
