"""The ``[affinity]`` section of ``polytask affinity``."""

from __future__ import annotations

from pydantic import Field

from polytask.config import register_section
from polytask.config_errors import Epochs, Schema, Steps
from polytask.studies.affinity.grouping import SearchMethod


class AffinityConfig(Schema):
    """``[affinity]``: how ``polytask affinity`` measures lookahead task affinity and suggests a
    grouping (:mod:`polytask.studies.affinity.study`). The command's options override these keys;
    an unset key takes the default of :func:`polytask.studies.affinity.study.affinity`."""

    every: Steps | None = Field(
        default=None,
        description="measure every N training steps; default: 1 in a probe, else 5",
    )
    lr: float | None = Field(
        default=None,
        gt=0.0,
        description="lookahead step size; default: the optimiser's learning rate at that step",
    )
    max_groups: int | None = Field(
        default=None, ge=1, description="budget of groups (models); default min(tasks, 3)"
    )
    probe_epochs: Epochs | None = Field(
        default=None, description="training epochs of a probe (--probe); default 1"
    )
    search: SearchMethod = Field(
        default="auto", description="grouping search; auto: exhaustive, exact DP, beam by size"
    )
    alone_score: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="score of a task served by a group of one (0.0 = no transfer); default: "
        "not allowed, every task shares a model (the paper's rule)",
    )


register_section("affinity", AffinityConfig)
