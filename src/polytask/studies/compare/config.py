"""The ``[compare]`` section: configurations, fractions, seeds and the tuning grid of
``polytask compare``; and the seeded-section base that ``[pareto]`` shares."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from polytask.config import register_section
from polytask.config_errors import Schema, Seed

#: The name of the single-task baselines in a comparison; no configuration may take it.
SINGLE_TASK = "single-task"


def _fixed_by_compare(key: str) -> bool:
    """Keys a comparison sets for every run (seeds, split, training fraction): a configuration
    or the grid changing them would change what is compared, not how a model is trained."""
    fixed = ("seed", "out", "baselines", "compare", "data.split", "data.train_fraction")
    key = key.strip()
    return any(key == f or key.startswith(f + ".") for f in fixed)


class CompareConfiguration(Schema):
    """One ``[[compare.configurations]]`` entry: a multi-task set-up, written as ``--set``
    overrides of the run configuration."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$",
        description="label in tables and the run directory name (letters, digits, _ . + = -)",
    )
    set: list[str] = Field(
        default_factory=list,
        description="key=value overrides, as on the command line: model.architecture.name=mmoe",
    )


class SeededConfig(Schema):
    """A section that repeats its runs over seeds (``[compare]``, ``[pareto]``)."""

    seeds: int | list[Seed] = Field(
        default=5,
        description="a number of seeds (counting up from the config's seed) or the seeds",
    )

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int):
            if value < 1:
                raise ValueError("give at least 1 seed")
        elif not value or len(set(value)) != len(value):
            raise ValueError("give a non-empty list of distinct seeds")
        return value

    def seed_list(self, first: int) -> list[int]:
        """The seeds: the list given, or ``first, first + 1, ...``."""
        if isinstance(self.seeds, int):
            return list(range(first, first + self.seeds))
        return list(self.seeds)


class CompareConfig(SeededConfig):
    """``[compare]``: what ``polytask compare`` trains (the other sections are the set-up every
    run starts from)."""

    configurations: list[CompareConfiguration] = Field(
        default_factory=list,
        description="multi-task set-ups to compare; default: one, the config as written",
    )
    fractions: list[float] = Field(
        default_factory=lambda: [1.0],
        min_length=1,
        description="fractions of the training rows to compare at (data efficiency)",
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="key -> values tried for every model alike (train.lr = [1e-3, 3e-3]); the "
        "best point is chosen on validation for each configuration and seed",
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0, description="level of the verdict test")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0, description="interval coverage")

    @field_validator("configurations")
    @classmethod
    def _check_configurations(cls, value: list[CompareConfiguration]) -> list[CompareConfiguration]:
        names = [c.name for c in value]
        if SINGLE_TASK in names:
            raise ValueError(f"{SINGLE_TASK!r} names the baselines; pick another name")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"configuration name {twice[0]!r} is used twice")
        for conf in value:
            for text in conf.set:
                if _fixed_by_compare(text.partition("=")[0]):
                    raise ValueError(
                        f"configuration {conf.name!r}: {text!r} sets a key the comparison fixes"
                    )
        return value

    @field_validator("fractions")
    @classmethod
    def _check_fractions(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"fractions must be in (0, 1], got {bad[0]}")
        if len(set(value)) != len(value):
            raise ValueError("fractions must be distinct")
        return value

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if _fixed_by_compare(key):
                raise ValueError(f"grid key {key!r} is set by the comparison; it cannot be tuned")
        return value


register_section("compare", CompareConfig)
