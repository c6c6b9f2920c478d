"""The ``[model]`` section: the encoder, the sharing architecture, the heads and preference
conditioning; the encoder and architecture name registered components."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from polytask.config_errors import Schema
from polytask.models.architectures import ARCHITECTURES
from polytask.models.encoders import ENCODERS
from polytask.models.heads import HeadParams
from polytask.registry import ComponentConfig, with_default_name


class ModelConfig(Schema):
    """``[model]``: what the network is made of."""

    encoder: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="mlp"))
    architecture: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="hard"))
    head: HeadParams = Field(default_factory=HeadParams)
    preference_conditioning: Literal["none", "input", "film"] = Field(
        default="none",
        description="a model that takes a preference over the tasks (balancer 'cosmos'; "
        "predict --preference): input = appended to the input features (COSMOS), film = FiLM "
        "of the shared representation (polytask.models.conditioning)",
    )

    @field_validator("encoder", "architecture", mode="before")
    @classmethod
    def _default_component(cls, value: Any, info: ValidationInfo) -> Any:
        return with_default_name(value, "mlp" if info.field_name == "encoder" else "hard")


def check_model_config(model: ModelConfig) -> None:
    """The encoder's and architecture's names and their own parameters."""
    ENCODERS.check_section(model.encoder, "model.encoder")
    ARCHITECTURES.check_section(model.architecture, "model.architecture")
