"""The fusion encoder: several inputs per example (``[data.inputs]``) into one representation.

Each input gets its own encoder, built from its own :class:`InputSpec` (``[model.encoder.inputs
.<name>]``, by default the usual encoder of its modality: ``mlp`` for table columns, ``cnn``
for images, ``audio_cnn`` for recordings, ``embedding_bag`` for texts). Feature maps are
average-pooled to vectors. The per-input vectors ``v_i`` are then fused into one vector
``z`` ``[B, D]``, so every architecture that reads one shared representation (hard sharing,
MMoE, PLE, soft sharing) and every balancer works on it unchanged:

* ``concat``: ``z = [v_1; ...; v_K]`` (then a linear layer and ReLU to ``dim`` if set). A
  missing input contributes a learnt "missing" embedding ``m_i`` in place of ``v_i``, so the
  model knows the input is absent rather than seeing a zero vector that also means "small".
* ``gated``: Gated Multimodal Units (Arevalo, Solorio, Montes-y-Gómez & González, "Gated
  Multimodal Units for Information Fusion", ICLR 2017 workshop), with one gate per input:
  ``h_i = tanh(W_i v_i)``, ``g_i = σ(U_i [v_1; ...; v_K])``, ``z = Σ_i p_i g_i ⊙ h_i``, where
  ``p_i`` is 1 when the input is present. The gates read every input (missing ones as their
  ``m_i``), so each input's weight depends on the others, as in the paper's bimodal unit.
* ``attention``: a learnt query ``q`` attends over the projected inputs ``h_i = tanh(W_i v_i)``:
  ``α = softmax_i(q·h_i / √D)`` over the present inputs only (missing ones are masked out of
  the softmax), ``z = Σ_i α_i h_i``; a row with no input at all gets ``z = 0``.

Missing inputs: the multi-input processor (:mod:`polytask.data.inputs.multi`) gives zeros and
``"<input>.present" = False`` for a row without the input. The input's encoder still runs on
the whole batch (one batched call, static shapes for ONNX export), and its output for absent
rows is replaced as above, so nothing an absent row holds reaches ``z``. ``input_dropout``
treats each present input of a training example as missing with that probability (ModDrop:
Neverova, Wolf, Taylor & Nebout, "ModDrop: adaptive multi-modal gesture recognition", TPAMI
2016), which trains the missing embeddings and keeps the model from leaning on one input.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.config_errors import Schema, Width
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.models.encoders import ENCODERS, Encoder
from polytask.registry import ComponentConfig

#: The encoder an input gets when ``model.encoder.inputs`` names none, by its modality.
DEFAULT_ENCODERS: dict[str, str] = {
    "table": "mlp",
    "image": "cnn",
    "audio": "audio_cnn",
    "text": "embedding_bag",
}
#: Key of an input's presence mask after its name (as :mod:`polytask.data.inputs.multi`).
PRESENT = "present"

FusionMode = Literal["concat", "gated", "attention"]


class FusionParams(Schema):
    """Parameters of the fusion encoder."""

    fusion: FusionMode = Field(
        default="concat",
        description="concat (with learnt missing-input embeddings), gated (a sigmoid gate per "
        "input, Arevalo et al. 2017) or attention (a learnt query over the inputs)",
    )
    dim: Width | None = Field(
        default=None,
        description="width of the fused representation; default: concat, the inputs' widths "
        "summed (no projection); gated/attention, the widest input's",
    )
    input_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="training: treat each present input of an example as missing with this "
        "probability (ModDrop), so the model copes with missing inputs",
    )
    inputs: dict[str, ComponentConfig] = Field(
        default_factory=dict,
        description="each input's encoder by input name ([model.encoder.inputs.<name>]); "
        "default: mlp (table), cnn (image), audio_cnn (audio), embedding_bag (text)",
    )


def check_fusion_inputs(encoder: ComponentConfig, inputs: list[str]) -> None:
    """The fusion encoder against the declared inputs (``data.inputs``), before any data is
    read: it needs them, and each input it names an encoder for must exist."""
    if encoder.name != "fusion":
        if inputs:
            raise ConfigError(
                f"config error: model.encoder.name: data.inputs declares inputs "
                f"({', '.join(inputs)}), which the 'fusion' encoder reads; got "
                f"{encoder.name!r}"
            )
        return
    if not inputs:
        raise ConfigError(
            "config error: model.encoder: 'fusion' fuses the inputs declared in "
            "[data.inputs.<name>], and there are none"
        )
    params = ENCODERS.check_section(encoder, "model.encoder")
    assert isinstance(params, FusionParams)
    _check_names(params, inputs)
    for name, section in params.inputs.items():
        _check_section(name, section)


def _check_section(name: str, section: ComponentConfig) -> BaseModel:
    """Input ``name``'s encoder section: a registered encoder other than fusion itself, with
    valid parameters (checked here, not by :class:`FusionParams`: a message names the key
    under ``model.encoder.inputs.<name>``)."""
    where = f"model.encoder.inputs.{name}"
    if section.name == "fusion":
        raise ConfigError(f"config error: {where}.name: an input's encoder cannot be fusion itself")
    return ENCODERS.check_section(section, where)


def _check_names(params: FusionParams, inputs: list[str]) -> None:
    unknown = [n for n in params.inputs if n not in inputs]
    if unknown:
        raise ConfigError(
            f"config error: model.encoder.inputs.{unknown[0]}: no input {unknown[0]!r} in "
            f"data.inputs (declared: {', '.join(inputs)})"
        )


def _pooled(x: Tensor) -> Tensor:
    """A feature map ``[B, C, ...]`` averaged over its positions; a vector as it is."""
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


class _Slot(nn.Module):
    """One input: its encoder, pooled, with the learnt embedding that stands for it when it is
    missing. Its output ``[B, d]`` is ``v_i`` for present rows and ``m_i`` for the others."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.missing = nn.Parameter(torch.zeros(encoder.out_dim))

    def forward(self, inputs: dict[str, Tensor], present: Tensor) -> Tensor:
        v = _pooled(self.encoder(inputs))
        return torch.where(present.unsqueeze(1), v, self.missing.to(v.dtype))


class FusionEncoder(Encoder):
    """Per-input encoders and a fusion into one representation ``[B, out_dim]``."""

    def __init__(self, spec: InputSpec, params: FusionParams) -> None:
        super().__init__()
        spec.require("multi", "fusion")
        _check_names(params, list(spec.parts))
        self.mode: FusionMode = params.fusion
        self.input_dropout = params.input_dropout
        self.names = list(spec.parts)
        slots: dict[str, _Slot] = {}
        for name, part in spec.parts.items():
            slots[name] = _Slot(_input_encoder(name, part, params.inputs.get(name)))
        self.slots = nn.ModuleDict(slots)
        widths = [slot.encoder.out_dim for slot in slots.values()]
        total = sum(widths)
        self.project: nn.Module | None = None
        if self.mode == "concat":
            if params.dim is not None:
                self.project = nn.Sequential(nn.Linear(total, params.dim), nn.ReLU())
            self.out_dim = params.dim if params.dim is not None else total
            return
        dim = params.dim if params.dim is not None else max(widths)
        self.out_dim = dim
        #: h_i = tanh(W_i v_i): every input in the same D-dimensional space.
        self.values = nn.ModuleDict(
            {n: nn.Linear(w, dim) for n, w in zip(slots, widths, strict=True)}
        )
        if self.mode == "gated":
            #: g_i = σ(U_i [v_1; ...; v_K]): one gate per input, reading all of them.
            self.gates = nn.ModuleDict({n: nn.Linear(total, dim) for n in slots})
        else:
            self.query = _Query(dim)

    def _presence(self, inputs: dict[str, Tensor], batch: int, device: torch.device) -> Tensor:
        """``[B, K]`` bool: which inputs each row has (after ``input_dropout`` in training)."""
        columns = []
        for name in self.names:
            given = inputs.get(f"{name}.{PRESENT}")
            columns.append(
                given.to(device=device, dtype=torch.bool)
                if given is not None
                else torch.ones(batch, dtype=torch.bool, device=device)
            )
        present = torch.stack(columns, dim=1)
        if self.training and self.input_dropout > 0:
            kept = torch.rand(present.shape, device=device) >= self.input_dropout
            present = present & kept
        return present

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        first = next(iter(inputs.values()))
        present = self._presence(inputs, first.shape[0], first.device)
        vectors = []
        for i, name in enumerate(self.names):
            prefix = f"{name}."
            own = {k[len(prefix) :]: v for k, v in inputs.items() if k.startswith(prefix)}
            vectors.append(self.slots[name](own, present[:, i]))
        if self.mode == "concat":
            z = torch.cat(vectors, dim=1)
            return self.project(z) if self.project is not None else z
        h = torch.stack(
            [torch.tanh(self.values[n](v)) for n, v in zip(self.names, vectors, strict=True)], dim=1
        )  # [B, K, D]
        weight = present.to(h.dtype).unsqueeze(2)  # [B, K, 1]
        if self.mode == "gated":
            joint = torch.cat(vectors, dim=1)
            gates = torch.stack([torch.sigmoid(self.gates[n](joint)) for n in self.names], dim=1)
            out: Tensor = (weight * gates * h).sum(dim=1)
            return out
        alpha: Tensor = self.query(h, present)
        fused: Tensor = (alpha.unsqueeze(2) * h).sum(dim=1)
        return fused


class _Query(nn.Module):
    """Attention weights of a learnt query over ``K`` inputs, missing ones masked out."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, h: Tensor, present: Tensor) -> Tensor:
        scores = (h @ self.query.to(h.dtype)) * self.scale  # [B, K]
        # The lowest finite value, not -inf: a row with no input gets uniform weights (no
        # NaN), which the presence mask then zeroes.
        scores = scores.masked_fill(~present, torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores, dim=1) * present.to(scores.dtype)
        return alpha


def _input_encoder(name: str, spec: InputSpec, section: ComponentConfig | None) -> Encoder:
    """Input ``name``'s encoder: the one configured, or its modality's default."""
    where = f"model.encoder.inputs.{name}"
    if section is None:
        default = DEFAULT_ENCODERS.get(spec.kind)
        if default is None:
            raise ConfigError(
                f"config error: {where}: no default encoder for {spec.kind} inputs; name one"
            )
        section = ComponentConfig(name=default)
    params = _check_section(name, section)
    entry = ENCODERS.get(section.name)
    try:
        return entry.factory(spec, params)
    except ConfigError as exc:
        # The encoder speaks of model.encoder; here it is this input's encoder.
        message = str(exc).removeprefix("config error: ").removeprefix("model.encoder: ")
        raise ConfigError(f"config error: {where}: {message}") from None


@ENCODERS.register(
    "fusion",
    params=FusionParams,
    summary="several inputs (data.inputs): an encoder per input, fused by concat, gated "
    "units or attention",
)
def build_fusion(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, FusionParams)
    return FusionEncoder(spec, params)
