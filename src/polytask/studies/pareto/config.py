"""The ``[pareto]`` section of ``polytask pareto``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from polytask.config import register_section
from polytask.config_errors import Epochs, Seed
from polytask.studies.compare.config import SeededConfig


class ParetoConfig(SeededConfig):
    """``[pareto]``: what ``polytask pareto`` trains to map the trade-off between the tasks
    (:mod:`polytask.studies.pareto`): one run per preference vector (and seed), plus, when the
    balancer is ``cosmos``, one preference-conditioned run evaluated at the same preferences."""

    seeds: int | list[Seed] = Field(
        default=1,
        description="a number of seeds (counting up from the config's seed) or the seeds",
    )
    n_points: int = Field(
        default=11,
        ge=2,
        description="preference vectors: a grid on the simplex for 2-3 tasks (at most this "
        "many points), quasi-random (Halton) points for more",
    )
    method: Literal["static", "epo"] = Field(
        default="static",
        description="static: weights = preference (weighted sum); epo: exact Pareto optimal "
        "search on the preference ray (Mahapatra & Rajan 2020)",
    )
    min_weight: float = Field(
        default=0.05,
        ge=0.0,
        lt=0.5,
        description="smallest weight of any task in a preference (a weight of 0 leaves a "
        "task's head untrained); the grid is shrunk onto [min_weight, 1]",
    )
    balancers: list[str] = Field(
        default_factory=list,
        description="balancing methods also trained once per seed, each giving one point",
    )
    conditioned_epochs: Epochs | None = Field(
        default=None,
        description="train.epochs of the conditioned (cosmos) run; default: train.epochs. One "
        "model for every preference may need a longer budget than one run for one preference",
    )
    budget_control: bool = Field(
        default=True,
        description="when conditioned_epochs differs from train.epochs: also train equal "
        "weights for conditioned_epochs (one point per seed), so a conditioned model that beats "
        "the sweep only because it trained longer shows it",
    )
    reference: dict[str, float] | None = Field(
        default=None,
        description="hypervolume reference point in metric units, per task; default: the "
        "worst value over every evaluated point, moved out by `margin` of the range",
    )
    margin: float = Field(
        default=0.1, ge=0.0, description="default reference: nadir + margin * (nadir - ideal)"
    )
    workers: int = Field(default=1, ge=1, description="runs trained in parallel processes")


register_section("pareto", ParetoConfig)
