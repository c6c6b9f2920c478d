"""The ``[distill]`` section: teachers, temperature, annealing, the teacher cache."""

from __future__ import annotations

from pydantic import Field

from polytask.config import register_section
from polytask.config_errors import Schema


class DistillConfig(Schema):
    """``[distill]``: train the run's model (the student) on teachers' outputs as well as the
    labels (:mod:`polytask.studies.distill`; ``polytask distill``). Without teachers, no
    distillation."""

    teachers: list[str] = Field(
        default_factory=list,
        description="teacher model (or run) directories: one multi-task model, or one per task",
    )
    temperature: float = Field(
        default=2.0, gt=0.0, description="softening of classification outputs (Hinton et al.)"
    )
    anneal: bool = Field(
        default=True,
        description="teacher annealing (Clark et al., BAM!): the labels' weight rises linearly "
        "from 0 (teacher only) to 1 (labels only) over training; false: label_weight throughout",
    )
    label_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="the labels' share of the loss when not annealing"
    )
    fill_missing: bool = Field(
        default=True,
        description="rows without a task's label learn that task from the teacher alone; "
        "false: only labelled rows count",
    )
    cache_dir: str | None = Field(
        default=None,
        description="keep the teachers' outputs here (keyed by teacher weights and data) so "
        "later students skip the teachers' forward passes; default: no cache",
    )


register_section("distill", DistillConfig)
