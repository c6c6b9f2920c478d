"""Knowledge distillation into one multi-task student (``polytask distill``, ``[distill]``).

Teachers (trained polytask models: one per task, or one multi-task model) label every row of
the training table with their outputs; the student, any polytask architecture, learns from
those outputs mixed with the true labels (:mod:`polytask.studies.distill.loss`: tempered soft
targets, Hinton et al. 2015; teacher annealing, Clark et al. 2019 "BAM!"). A row without a
task's label learns that task from its teacher alone unless ``fill_missing`` is off. The
student is then compared with its teachers on the same test rows, instead of with
single-task nets trained from scratch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from polytask._version import __version__
from polytask.config import RunConfig
from polytask.data.prepare import PreparedData
from polytask.data.tensors import TensorData
from polytask.evaluate.metrics import compute_metrics
from polytask.models.model import MultiTaskModel
from polytask.run.variant import RunVariant, register_variant
from polytask.studies.distill.config import DistillConfig
from polytask.studies.distill.loss import DistillationLoss, label_weight, teacher_units
from polytask.studies.distill.teachers import (
    Teacher,
    TeacherOutputs,
    assign_teachers,
    load_teachers,
)
from polytask.tasks import Task

__all__ = [
    "Distillation",
    "DistillationLoss",
    "Teacher",
    "TeacherOutputs",
    "distillation_variant",
    "label_weight",
    "teacher_units",
]


@dataclass
class Distillation:
    """The teachers of a run and how the student learns from them."""

    settings: DistillConfig
    teachers: list[Teacher]
    outputs: TeacherOutputs

    @classmethod
    def from_config(cls, cfg: RunConfig, console: Console | None = None) -> Distillation:
        """Load the teachers of ``cfg``'s ``[distill]`` section and match them to its tasks."""
        settings = cfg.section("distill", DistillConfig)
        teachers = load_teachers([cfg.resolve(p) for p in settings.teachers])
        assignment = assign_teachers(teachers, cfg.named_tasks("distill"))
        cache = cfg.resolve(settings.cache_dir) if settings.cache_dir else None
        return cls(settings, teachers, TeacherOutputs(teachers, assignment, cache, console))

    @property
    def taught(self) -> list[str]:
        """The student's tasks that have a teacher."""
        return list(self.outputs.assignment)

    def loss(self, tasks: list[Task]) -> DistillationLoss:
        s = self.settings
        return DistillationLoss(
            tasks,
            self.taught,
            temperature=s.temperature,
            anneal=s.anneal,
            label_weight=s.label_weight,
            fill_missing=s.fill_missing,
        )

    def teacher_metrics(self, tasks: list[Task], split: TensorData) -> dict[str, dict[str, float]]:
        """Each taught task's metrics of its teacher on ``split`` (the outputs computed for
        the soft targets, so exactly the rows and labels the student is scored on)."""
        return {
            t.name: compute_metrics(
                t, split.soft[t.name], split.targets[t.name], split.masks[t.name]
            )
            for t in tasks
            if t.name in split.soft
        }

    def teacher_parameters(self) -> int:
        """Parameters of the teachers that teach the student something."""
        used = {id(t) for t in self.outputs.assignment.values()}
        return sum(t.n_parameters for t in self.teachers if id(t) in used)

    def lineage(self, data_source: str, rows: dict[str, int]) -> dict[str, Any]:
        """What ``lineage.json`` records of a distilled model."""
        s = self.settings
        return {
            "kind": "distillation",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "polytask_version": __version__,
            "teachers": [t.describe() for t in self.teachers],
            "taught_tasks": {n: str(t.directory) for n, t in self.outputs.assignment.items()},
            "temperature": s.temperature,
            "anneal": s.anneal,
            "label_weight": None if s.anneal else s.label_weight,
            "fill_missing": s.fill_missing,
            "teacher_outputs_cached": self.outputs.cache_hit,
            "data": {"source": data_source, "rows": rows},
        }


def distillation_variant(distillation: Distillation) -> RunVariant:
    """The run a distillation is: the teachers' outputs ride along with the rows, the loss
    mixes them with the labels, and the student is measured against its teachers on the same
    rows (no single-task nets); the results record both models' sizes, the model its lineage."""

    def summary(student: MultiTaskModel, teachers: dict[str, dict[str, float]]) -> dict[str, Any]:
        return {
            "teachers": teachers,
            "parameters": {
                "student": sum(p.numel() for p in student.parameters()),
                "teachers": distillation.teacher_parameters(),
            },
        }

    def lineage(data: PreparedData) -> dict[str, Any]:
        rows = {"train": len(data.train), "val": len(data.val)}
        if data.test is not None:
            rows["test"] = len(data.test)
        return distillation.lineage(data.source, rows)

    return RunVariant(
        soft_targets=distillation.outputs,
        loss=distillation.loss,
        reference_name="teachers",
        reference=distillation.teacher_metrics,
        summary=summary,
        lineage=lineage,
    )


@register_variant
def _distil_with_teachers(cfg: RunConfig, console: Console | None) -> RunVariant | None:
    """A run whose ``[distill]`` section names teachers is a distillation."""
    if not cfg.section("distill", DistillConfig).teachers:
        return None
    return distillation_variant(Distillation.from_config(cfg, console))
