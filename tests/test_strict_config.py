"""Strict config types and ranges: no silent coercion, finite floats, bounded sizes, valid
loss weights; every refusal is one line naming the key (issue 17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from conftest import clinical_config, run_cli, toml_text
from polytask.balance import BALANCERS
from polytask.config import config_from_dict, load_config, registered_sections
from polytask.config_errors import MAX_EPOCHS, MAX_SEED, MAX_WIDTH, Schema
from polytask.data.inputs import INPUTS
from polytask.errors import ConfigError
from polytask.models.architectures import ARCHITECTURES
from polytask.models.encoders import ENCODERS
from polytask.registry import ComponentConfig


def _error(overrides: list[str], raw: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw if raw is not None else clinical_config(), overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # Strings, booleans and floats are never turned into integers.
        (
            'train.epochs="5"',
            "config error: train.epochs: Input should be a valid integer (got '5')",
        ),
        (
            "train.epochs=true",
            "config error: train.epochs: Input should be a valid integer (got True)",
        ),
        ("seed=1e3", "config error: seed: Input should be a valid integer (got 1000.0)"),
        (
            "train.batch_size=64.0",
            "config error: train.batch_size: Input should be a valid integer",
        ),
        ("train.lr=true", "config error: train.lr: Input should be a valid number (got True)"),
        ('train.progress="yes"', "config error: train.progress: Input should be a valid boolean"),
        ("data.split.val='0.2'", "config error: data.split.val: Input should be a valid number"),
        # Floats are finite.
        ("train.lr=inf", "config error: train.lr: Input should be a finite number (got inf)"),
        ("train.lr=nan", "config error: train.lr: Input should be a finite number (got nan)"),
        ("train.weight_decay=-inf", "config error: train.weight_decay: Input should be a finite"),
        ("tasks.risk.weight=nan", "config error: tasks.0.weight: Input should be a finite number"),
        (
            "tasks.risk.pos_weight=[1.0, nan]",
            "config error: tasks.0.pos_weight.1: Input should be a finite number (got nan)",
        ),
        # Bounded sizes and seeds.
        ("seed=-1", "config error: seed: Input should be greater than or equal to 0 (got -1)"),
        (
            f"seed={MAX_SEED + 1}",
            f"config error: seed: Input should be less than or equal to {MAX_SEED} "
            f"(got {MAX_SEED + 1})",
        ),
        (
            f"train.epochs={MAX_EPOCHS + 1}",
            f"config error: train.epochs: Input should be less than or equal to {MAX_EPOCHS}",
        ),
        ("train.batch_size=10000000000", "config error: train.batch_size: Input should be less"),
        (
            f"model.encoder.widths=[8, {MAX_WIDTH + 1}]",
            f"config error: model.encoder.widths.1: Input should be less than or equal to "
            f"{MAX_WIDTH} (got {MAX_WIDTH + 1})",
        ),
        ("model.encoder.embedding_dim=100000", "config error: model.encoder.embedding_dim: Input"),
        ("model.head.widths=[0]", "config error: model.head.widths.0: Input should be greater"),
        ("data.split.seed=1.5", "config error: data.split.seed: Input should be a valid integer"),
        # Registered components' parameters are strict too.
        (
            "model.architecture={name='mmoe', n_experts='4'}",
            "config error: model.architecture.n_experts: Input should be a valid integer (got '4')",
        ),
        (
            "model.architecture={name='mmoe', n_experts=100000}",
            "config error: model.architecture.n_experts: Input should be less than or equal to",
        ),
        (
            "balancer={name='dwa', temperature=inf}",
            "config error: balancer.temperature: Input should be a finite number (got inf)",
        ),
        (
            "balancer={name='static', weights={risk=nan}}",
            "config error: balancer.weights.risk: Input should be a finite number (got nan)",
        ),
        # Studies' sections too.
        ("compare.seeds=[1, -2]", "config error: compare.seeds.1: Input should be greater than"),
        ("pareto.n_points='5'", "config error: pareto.n_points: Input should be a valid integer"),
    ],
)
def test_bad_type_or_range_is_one_line_naming_the_key(override: str, expected: str) -> None:
    assert _error([override]).startswith(expected)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["tasks.risk.pos_weight=-1"],
            "task 'risk': pos_weight must be a finite number > 0 (got -1.0)",
        ),
        (
            ["tasks.risk.pos_weight=0"],
            "task 'risk': pos_weight must be a finite number > 0 (got 0.0)",
        ),
        (
            ["tasks.risk.kind=multiclass", "tasks.risk.class_weights=[1.0, -0.5]"],
            "task 'risk': class_weights must be finite numbers >= 0, at least one > 0 (got -0.5)",
        ),
        (
            ["tasks.risk.kind=multiclass", "tasks.risk.class_weights=[0, 0]"],
            "task 'risk': class_weights must be finite numbers >= 0, at least one > 0 (all are 0)",
        ),
    ],
)
def test_loss_weights_must_be_positive(overrides: list[str], expected: str) -> None:
    assert _error(overrides) == expected


def test_python_task_is_held_to_the_same_weight_rules() -> None:
    from polytask import Task

    with pytest.raises(ConfigError, match="pos_weight must be a finite number > 0"):
        Task("risk", "binary", "readmitted", pos_weight=-2.0)
    with pytest.raises(ConfigError, match="class_weights must be finite numbers >= 0"):
        Task("ward", "multiclass", "ward", class_weights=[1.0, float("inf")])


def test_lax_values_that_are_still_valid() -> None:
    """An int where a float is wanted is fine, as are zero class weights beside a positive one
    and the largest seed numpy and torch accept."""
    cfg = config_from_dict(
        clinical_config(),
        [
            "train.lr=1",
            f"seed={MAX_SEED}",
            "tasks.risk.pos_weight=2",
            "tasks.stay.weight=0",
            "data.split.val=0.25",
        ],
    )
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.seed == MAX_SEED and cfg.tasks[0].pos_weight == 2.0
    raw = clinical_config()
    raw["tasks"][0] = {
        "name": "risk",
        "kind": "multiclass",
        "target": "ward",
        "classes": ["icu", "medicine", "surgery"],
        "class_weights": [0, 1, 2.5],
    }
    assert config_from_dict(raw).tasks[0].class_weights == [0.0, 1.0, 2.5]


def test_toml_file_with_string_epochs_fails_in_the_cli(tmp_path: Path) -> None:
    raw = clinical_config()
    raw["train"]["epochs"] = "5"
    (tmp_path / "c.toml").write_text(toml_text(raw))
    result = run_cli("train", tmp_path / "c.toml", "--out", tmp_path / "run")
    assert result.code == 2
    assert result.err.strip() == (
        "error: config error: train.epochs: Input should be a valid integer (got '5')"
    )
    # The same value as a TOML integer, from --set, is fine.
    cfg = load_config(tmp_path / "c.toml", ["train.epochs=5"])
    assert cfg.train.epochs == 5


def test_plugin_parameters_are_validated_strictly() -> None:
    """A plug-in's schema may be a plain BaseModel; the registry still validates strictly."""
    from pydantic import ConfigDict

    from polytask.registry import Registry

    class LaxParams(BaseModel):
        model_config = ConfigDict(extra="forbid")
        depth: int = 1

    registry: Registry[object] = Registry("widget")
    registry.register("w", params=LaxParams)(object())
    assert registry.validate_params("w", {"depth": 3}, "widget").depth == 3  # type: ignore[attr-defined]
    with pytest.raises(
        ConfigError,
        match=r"^config error: widget.depth: Input should be a valid integer \(got '3'\)$",
    ):
        registry.validate_params("w", {"depth": "3"}, "widget")
    with pytest.raises(ConfigError, match=r"balancer\.temperature: Input should be a valid number"):
        BALANCERS.validate_params("dwa", {"temperature": "2"}, "balancer")


def _schemas() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [ComponentConfig]
    stack: list[type[BaseModel]] = [
        *(e.params for r in (ENCODERS, ARCHITECTURES, BALANCERS, INPUTS) for e in r),
        *registered_sections().values(),
    ]
    from polytask.config import RunConfig

    stack.append(RunConfig)
    while stack:
        schema = stack.pop()
        if schema in found:
            continue
        found.append(schema)
        for field in schema.model_fields.values():
            for arg in _types(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    stack.append(arg)
    return found


def _types(annotation: Any) -> list[Any]:
    out = [annotation]
    for arg in getattr(annotation, "__args__", ()):
        out += _types(arg)
    return out


def test_every_schema_is_strict() -> None:
    """Every section, nested section and component parameter schema derives from the one
    strict base, so a new schema cannot quietly go back to coercion."""
    # Plug-ins' schemas (tests/plugins) are validated with strict=True by the registry instead.
    schemas = [s for s in _schemas() if s.__module__.startswith("polytask.")]
    assert len(schemas) > 30
    lax = [s.__name__ for s in schemas if not issubclass(s, Schema)]
    assert lax == []
    for schema in schemas:
        assert schema.model_config.get("strict") is True, schema.__name__
        assert schema.model_config.get("allow_inf_nan") is False, schema.__name__
