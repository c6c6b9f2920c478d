"""What a Pareto sweep trains: its runs (preference points, the conditioned model, balancers)
and the plan holding them, shared by the driver that trains them and the summary that reads
them back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from polytask.config import RunConfig
from polytask.studies.compare.plan import RunSpec
from polytask.studies.pareto.config import ParetoConfig

RunKind = Literal["sweep", "conditioned", "balancer"]


@dataclass(frozen=True)
class SweepRun:
    """One training run of the sweep."""

    spec: RunSpec
    #: The set of points the run belongs to: the sweep, the conditioned model, or a balancer.
    group: str
    kind: RunKind
    #: The sweep run's preference (None for the other kinds).
    preference: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SweepPlan:
    cfg: RunConfig
    section: ParetoConfig
    seeds: list[int]
    preferences: list[list[float]]
    runs: list[SweepRun]


def sweep_name(method: str) -> str:
    return f"{method} sweep"
