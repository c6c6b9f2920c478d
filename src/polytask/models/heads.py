"""Task heads: a small tower of layers ending in the task's outputs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from polytask.models.encoders import Activation, Norm, mlp_layers


class HeadParams(BaseModel):
    """The tower each task gets on top of the shared representation."""

    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field(default=[64])
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Norm = "none"


class Tower(nn.Module):
    """``widths`` hidden layers then a linear output of ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, params: HeadParams) -> None:
        super().__init__()
        self.hidden = mlp_layers(
            in_dim, params.widths, params.activation, params.dropout, params.norm
        )
        self.out = nn.Linear(params.widths[-1] if params.widths else in_dim, out_dim)

    def forward(self, z: Tensor) -> Tensor:
        out: Tensor = self.out(self.hidden(z))
        return out
