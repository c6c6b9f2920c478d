"""The ``residual_mlp`` encoder: a tabular MLP whose hidden layers are residual blocks.

An input projection to ``width``, then ``blocks`` blocks ``x + Linear(act(Linear(norm(x))))``
(pre-normalisation, as in Gorishniy et al., "Revisiting Deep Learning Models for Tabular Data",
NeurIPS 2021), then a final normalisation. Categorical columns are embedded as by polytask's
``mlp`` encoder.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from polytask.data.spec import InputSpec
from polytask.models.encoders import ENCODERS, Encoder, embedding_width, make_activation


class ResidualMLPParams(BaseModel):
    """Parameters of ``residual_mlp`` (checked when the config is loaded)."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(default=64, ge=1, description="width of every block")
    blocks: int = Field(default=2, ge=1, description="number of residual blocks")
    activation: Literal["relu", "gelu", "silu"] = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    embedding_dim: int | None = Field(default=None, ge=1, description="embedding width")


class ResidualBlock(nn.Module):
    def __init__(self, width: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, width)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.down = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.down(self.drop(self.act(self.up(self.norm(x)))))
        return out


class ResidualMLPEncoder(Encoder):
    """``forward(inputs) -> Tensor[B, width]`` over a table's numbers and categorical codes."""

    def __init__(self, spec: InputSpec, params: ResidualMLPParams) -> None:
        super().__init__()
        spec.require("table", "residual_mlp")  # a clear config error for image/text inputs
        self.embeddings = nn.ModuleList(
            nn.Embedding(card, embedding_width(card, params.embedding_dim))
            for card in spec.cardinalities
        )
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=1.0 / math.sqrt(emb.embedding_dim))
        in_dim = spec.n_numeric + sum(e.embedding_dim for e in self.embeddings)
        if in_dim == 0:
            raise ValueError("the residual_mlp encoder needs at least one input feature")
        self.project = nn.Linear(in_dim, params.width)
        self.blocks = nn.Sequential(
            *(
                ResidualBlock(params.width, params.activation, params.dropout)
                for _ in range(params.blocks)
            )
        )
        self.norm = nn.LayerNorm(params.width)
        self.out_dim = params.width  # what the heads are built for

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        parts = [inputs["numeric"]] if inputs["numeric"].shape[1] else []
        cats = inputs.get("categorical")
        if cats is not None:
            parts.extend(emb(cats[:, i]) for i, emb in enumerate(self.embeddings))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        out: Tensor = self.norm(self.blocks(self.project(x)))
        return out


@ENCODERS.register(
    "residual_mlp", params=ResidualMLPParams, summary="tabular MLP of residual blocks"
)
def build_residual_mlp(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, ResidualMLPParams)
    return ResidualMLPEncoder(spec, params)
