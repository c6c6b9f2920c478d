"""Shared encoders: map a batch's inputs to one representation vector per example.

Registered in :data:`ENCODERS`; each entry is built from an :class:`InputSpec` (what the data
provides) and its own validated parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.config_errors import Width, Widths
from polytask.data.spec import InputSpec
from polytask.models.tabular import NumericBlock, NumericEmbeddingParams, TabMBackbone, TabMParams
from polytask.registry import Registry


class Encoder(nn.Module):
    """Base class: ``forward(inputs) -> Tensor[B, out_dim]``, or ``[B, out_dim, h, w]`` feature
    maps when ``spatial`` (image-like encoders, whose maps dense heads decode), or ``[B, T',
    out_dim]`` word vectors when ``sequence`` (token encoders: ``T'`` the batch's longest
    sentence, exact zeros past each sentence's end; token-level heads read every word,
    sentence-level heads the mean of the non-zero positions; see
    :mod:`polytask.models.sequence`)."""

    out_dim: int
    spatial: bool = False
    sequence: bool = False

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters of the last layer with a weight matrix (what GradNorm measures gradients
        at); normalisation layers after it hold only per-feature scales and are skipped."""
        layers = [
            m
            for m in self.modules()
            if isinstance(w := getattr(m, "weight", None), nn.Parameter) and w.dim() >= 2
        ]
        if not layers:
            raise ValueError(f"{type(self).__name__} has no layer with a weight matrix")
        return list(layers[-1].parameters(recurse=False))

    def layer_blocks(self) -> list[str]:
        """Names (relative to the encoder) of submodules that each form one layer for freezing,
        layer-wise learning rates and gradual unfreezing (:mod:`polytask.train.freeze`), in
        forward order. The default, none, leaves the grouping to the module structure (each
        ``nn.ModuleList`` element is a block already); a pretrained backbone whose stages sit in
        other containers names them."""
        return []


EncoderFactory = Callable[[InputSpec, BaseModel], Encoder]
ENCODERS: Registry[EncoderFactory] = Registry("encoder")

Activation = Literal["relu", "gelu", "silu", "tanh", "leaky_relu"]
Norm = Literal["none", "batch", "layer"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def mlp_layers(
    in_dim: int, widths: list[int], activation: str, dropout: float, norm: str
) -> nn.Sequential:
    """Linear -> norm -> activation -> dropout, once per width."""
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Linear(in_dim, width))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(width))
        elif norm == "layer":
            layers.append(nn.LayerNorm(width))
        layers.append(make_activation(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


class MLPParams(NumericEmbeddingParams):
    """Parameters of the tabular MLP encoder (numeric embeddings: polytask.models.tabular)."""

    widths: Widths = Field(
        default=[256, 128], min_length=1, description="hidden layer widths, input to representation"
    )
    activation: Activation = Field(
        default="relu", description="non-linearity after each hidden layer"
    )
    dropout: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="dropout after each hidden layer (training only)"
    )
    norm: Norm = Field(
        default="batch", description="normalisation of each hidden layer: batch, layer or none"
    )
    embedding_dim: Width | None = Field(
        default=None, description="embedding width; default min(32, 1.6 * n^0.56)"
    )


def embedding_width(cardinality: int, cap: int | None) -> int:
    """Embedding width for a vocabulary: the fast.ai rule of thumb 1.6 n^0.56, capped at 32."""
    if cap is not None:
        return cap
    return max(2, min(32, round(1.6 * math.pow(cardinality, 0.56))))


class MLPEncoder(Encoder):
    """Multi-layer perceptron over standardised numbers, one-hot blocks and embeddings."""

    def __init__(self, spec: InputSpec, params: MLPParams) -> None:
        super().__init__()
        spec.require("table", "mlp")
        embeddings = [
            nn.Embedding(card, embedding_width(card, params.embedding_dim))
            for card in spec.cardinalities
        ]
        self.embeddings = nn.ModuleList(embeddings)
        # The numeric columns embedded (an option; none: the dense block as it is).
        self.numeric = NumericBlock(spec, params)
        in_dim = self.numeric.out_dim + sum(e.embedding_dim for e in embeddings)
        if in_dim == 0:
            raise ValueError("the MLP encoder needs at least one input feature")
        self.body = mlp_layers(
            in_dim, params.widths, params.activation, params.dropout, params.norm
        )
        self.out_dim = params.widths[-1]
        # N(0, 1) embeddings dwarf the standardised numbers they are concatenated with.
        for emb in embeddings:
            nn.init.normal_(emb.weight, std=1.0 / math.sqrt(emb.embedding_dim))

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        out: Tensor = self.body(table_features(inputs, self.numeric, self.embeddings))
        return out


def table_features(
    inputs: dict[str, Tensor], numeric: nn.Module, embeddings: nn.ModuleList
) -> Tensor:
    """A table's one flat feature vector: the (embedded) dense block, then each categorical
    column's embedding."""
    parts = [numeric(inputs["numeric"])] if inputs["numeric"].shape[1] else []
    cats = inputs.get("categorical")
    if embeddings and cats is not None:
        parts.extend(emb(cats[:, i]) for i, emb in enumerate(embeddings))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@ENCODERS.register("mlp", params=MLPParams, summary="tabular MLP with categorical embeddings")
def build_mlp(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, MLPParams)
    return MLPEncoder(spec, params)


class TabMEncoder(Encoder):
    """TabM (Gorishniy et al., ICLR 2025) over a table: numbers (optionally embedded) and
    categorical embeddings into k parameter-efficient ensemble members, whose mean
    representation the heads read (polytask.models.tabular says why the mean)."""

    def __init__(self, spec: InputSpec, params: TabMParams) -> None:
        super().__init__()
        spec.require("table", "tabm")
        self.numeric = NumericBlock(spec, params)
        embeddings = [
            nn.Embedding(card, embedding_width(card, params.embedding_dim))
            for card in spec.cardinalities
        ]
        self.embeddings = nn.ModuleList(embeddings)
        widths = self.numeric.feature_widths if spec.n_numeric else []
        widths = widths + [e.embedding_dim for e in embeddings]
        if not widths:
            raise ValueError("the TabM encoder needs at least one input feature")
        for emb in embeddings:  # as the MLP's: on the scale of standardised numbers
            nn.init.normal_(emb.weight, std=1.0 / math.sqrt(emb.embedding_dim))
        self.ensemble = TabMBackbone(sum(widths), widths, params)
        self.out_dim = self.ensemble.out_dim

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        out: Tensor = self.ensemble(table_features(inputs, self.numeric, self.embeddings))
        return out


@ENCODERS.register(
    "tabm", params=TabMParams, summary="TabM: parameter-efficient ensemble MLP for tables"
)
def build_tabm(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, TabMParams)
    return TabMEncoder(spec, params)
