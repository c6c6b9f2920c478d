"""Sharing architectures: how the tasks' networks share parameters.

Each architecture declares which parameters are shared and which belong to each task, and
whether it computes a single shared representation (what representation-level gradient methods
need). A parameter belongs to task ``t`` when only task ``t``'s loss reaches it; every other
parameter is shared, so the two sets are disjoint and cover the architecture. Registered in
:data:`ARCHITECTURES`; the model builder looks the name up and never branches on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.config_errors import Layers, Schema, Widths
from polytask.errors import ConfigError, PolytaskError
from polytask.models.encoders import Encoder, MLPEncoder, mlp_layers
from polytask.models.heads import HeadFactory, run_heads
from polytask.registry import NoParams, Registry


class Architecture(nn.Module):
    """Base class of sharing architectures: inputs -> one raw output per task."""

    #: True when every task reads the same representation ``represent(inputs)``.
    single_representation: ClassVar[bool] = False

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def shared_parameters(self) -> list[nn.Parameter]:  # pragma: no cover - abstract
        raise NotImplementedError

    def task_parameters(self, task: str) -> list[nn.Parameter]:  # pragma: no cover - abstract
        raise NotImplementedError

    def shared_modules(self) -> list[nn.Module]:  # pragma: no cover - abstract
        """Modules holding every shared parameter, none a child of another (for Gramians)."""
        raise NotImplementedError

    def last_shared_parameters(self) -> list[nn.Parameter]:  # pragma: no cover - abstract
        """Parameters of the last shared layer, where GradNorm compares gradient norms."""
        raise NotImplementedError

    def represent(self, inputs: dict[str, Tensor]) -> Tensor:
        """The single shared representation; only when ``single_representation``."""
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation")

    def task_forward(self, task: str, z: Tensor) -> Tensor:
        """Task ``task``'s raw output from the shared representation ``z``."""
        raise NotImplementedError(f"{type(self).__name__} has no single shared representation")

    def regularizer(self) -> Tensor | None:
        """A penalty the trainer adds to the training objective outside the balancer's
        weights (soft sharing's coupling), or None."""
        return None


ArchitectureFactory = Callable[[Callable[[], Encoder], HeadFactory, BaseModel], Architecture]
ARCHITECTURES: Registry[ArchitectureFactory] = Registry("architecture")


class HardSharing(Architecture):
    """Hard parameter sharing (Caruana, 1997): one shared encoder, one tower per task."""

    single_representation = True

    def __init__(self, encoder: Encoder, heads: HeadFactory) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(
            {name: heads.build(name, encoder.out_dim, encoder.spatial) for name in heads.tasks}
        )

    def represent(self, inputs: dict[str, Tensor]) -> Tensor:
        """The shared representation every head reads."""
        z: Tensor = self.encoder(inputs)
        return z

    def heads_forward(self, z: Tensor) -> dict[str, Tensor]:
        # Same-shape towers as one batched product: K separate calls dominate at many tasks.
        return run_heads(self.heads, z)

    def task_forward(self, task: str, z: Tensor) -> Tensor:
        out: Tensor = self.heads[task](z)
        return out

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.heads_forward(self.represent(inputs))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())

    def shared_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return self.encoder.last_layer_parameters()


@ARCHITECTURES.register("hard", params=NoParams, summary="hard sharing: shared encoder + heads")
def build_hard(
    make_encoder: Callable[[], Encoder],
    heads: HeadFactory,
    params: BaseModel,
) -> Architecture:
    return HardSharing(make_encoder(), heads)


# -- shared helpers ---------------------------------------------------------------------------


def _params(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def _input_stem(make_encoder: Callable[[], Encoder]) -> tuple[nn.Module, int]:
    """A module mapping the inputs to the features a gate reads, and their width.

    For the MLP encoder this is its input layer alone (numbers and its own embeddings, the
    body replaced by the identity), so a gate is linear in the inputs as in the MMoE paper;
    an encoder that exposes no input layer is used whole (a gate network of its own).
    """
    encoder = make_encoder()
    if encoder.sequence:
        # Gates mix experts per example; a vector per word has no such example-level input.
        raise ConfigError(
            "config error: model.architecture: gated experts (mmoe, ple) read one vector per "
            "example, but the encoder gives a vector per word; use architecture 'hard' or 'soft'"
        )
    if isinstance(encoder, MLPEncoder):
        first = next(m for m in encoder.body if isinstance(m, nn.Linear))
        encoder.body = nn.Sequential()  # an empty Sequential returns its input
        return encoder, first.in_features
    if encoder.spatial:
        return _Pooled(encoder), encoder.out_dim
    return encoder, encoder.out_dim


class _Pooled(nn.Module):
    """An encoder's feature maps averaged over positions: what a gate reads from an image."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        out: Tensor = self.encoder(inputs).mean(dim=(2, 3))
        return out


def _mlp_columns(make_encoder: Callable[[], Encoder], arch: str) -> tuple[nn.Module, nn.ModuleList]:
    """One MLP column: its input layer (embeddings) and its body cut into layer blocks, each
    block a Linear and the normalisation, activation and dropout after it."""
    encoder = make_encoder()
    if not isinstance(encoder, MLPEncoder):
        raise ConfigError(
            f"architecture {arch!r} needs per-layer access to the encoder, which only the 'mlp' "
            f"encoder gives (got {type(encoder).__name__})"
        )
    blocks: list[list[nn.Module]] = []
    for layer in encoder.body:
        if isinstance(layer, nn.Linear):
            blocks.append([])
        blocks[-1].append(layer)
    encoder.body = nn.Sequential()
    return encoder, nn.ModuleList(nn.Sequential(*b) for b in blocks)


class _Gate(nn.Module):
    """Softmax over ``n`` experts of a linear map of the gate's input."""

    def __init__(self, in_dim: int, n: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, n)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def _mix(weights: Tensor, experts: list[Tensor]) -> Tensor:
    """``Σ_e weights[:, e] · experts[e]``: ``[B, E]`` x E of ``[B, D]`` -> ``[B, D]``."""
    return torch.einsum("be,eb...->b...", weights, torch.stack(experts))


# -- soft parameter sharing -------------------------------------------------------------------


class SoftParams(Schema):
    """Parameters of soft sharing."""

    penalty_weight: float = Field(
        default=1e-3,
        ge=0.0,
        description="λ of the coupling penalty: λ Σ_pairs ‖θ_i − θ_j‖² (l2) or λ Σ ‖[θ_1..θ_K]‖_* "
        "(trace_norm)",
    )
    penalty: Literal["l2", "trace_norm"] = Field(
        default="l2",
        description="l2: squared distances between the encoders' copies; trace_norm: nuclear "
        "norm of the copies stacked per parameter (Yang & Hospedales 2017, last-axis flattening)",
    )


class SoftSharing(Architecture):
    """Soft parameter sharing (Duong, Cohn, Bird & Cook, "Low Resource Dependency Parsing:
    Cross-lingual Parameter Sharing in a Neural Network Parser", ACL 2015; Yang & Hospedales,
    "Trace Norm Regularised Deep Multi-Task Learning", ICLR workshop 2017).

    Every task has its own encoder and tower; nothing is shared, the encoders are instead pulled
    together by a penalty over their corresponding parameters (each parameter of the encoder,
    one copy per task):

    * ``"l2"`` (Duong et al.): ``λ Σ_{i<j} ‖θ_i − θ_j‖²``, computed as
      ``K Σ_i ‖d_i‖² − ‖Σ_i d_i‖²`` with ``d_i = θ_i − θ_1`` (the same sum, linear in the number
      of tasks).
    * ``"trace_norm"`` (Yang & Hospedales): ``λ Σ_groups ‖W‖_*`` where ``W`` is the ``[K, numel]``
      matrix of the group's K flattened copies and ``‖·‖_*`` the nuclear norm (sum of singular
      values), a convex surrogate of its rank: the copies are pushed towards a low-dimensional
      subspace rather than towards one point, so tasks may keep scaled or partly different
      weights. This is the paper's "Last Axis Flattening" (LAF) variant, the trace norm of the
      task-mode unfolding of the stacked tensor ``[d_1, ..., d_n, K]`` (``W`` is its transpose,
      same singular values). LAF is the variant that penalises sharing *across tasks* only,
      needs no per-mode weights and costs one small SVD (rank ≤ K) per parameter; the paper's
      Tucker (sum over every mode's unfolding) and Tensor-Train variants also penalise the rank
      within a layer, and are not implemented.

    The penalty is returned by :meth:`regularizer` and added by the trainer outside the
    balancer's weights. The encoders start from independent initialisations, as separate
    networks would.
    """

    def __init__(
        self,
        make_encoder: Callable[[], Encoder],
        heads: HeadFactory,
        params: SoftParams,
    ) -> None:
        super().__init__()
        self.penalty_weight = params.penalty_weight
        self.penalty = params.penalty
        encoders = {name: make_encoder() for name in heads.tasks}
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict(
            {name: heads.build(name, enc.out_dim, enc.spatial) for name, enc in encoders.items()}
        )

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: self.heads[name](enc(inputs)) for name, enc in self.encoders.items()}

    def regularizer(self) -> Tensor | None:
        if self.penalty_weight == 0 or len(self.encoders) < 2:
            return None
        columns = [list(enc.parameters()) for enc in self.encoders.values()]
        k = len(columns)
        terms = []
        for group in zip(*columns, strict=True):  # one parameter, every task's copy
            if self.penalty == "trace_norm":
                terms.append(_nuclear_norm(torch.stack([p.reshape(-1) for p in group])))
                continue
            # Offsets from the first copy: identical encoders give exactly 0, which the
            # mean-centred form K Σ‖θ_i − θ̄‖² misses by rounding.
            d = torch.stack(group[1:]) - group[0]
            terms.append(k * d.pow(2).sum() - d.sum(dim=0).pow(2).sum())
        return self.penalty_weight * torch.stack(terms).sum()

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return _params(self.encoders[task], self.heads[task])

    def shared_modules(self) -> list[nn.Module]:
        return []

    def last_shared_parameters(self) -> list[nn.Parameter]:
        raise PolytaskError(
            "architecture 'soft' shares no parameters: it has no last shared layer "
            "(GradNorm needs one; use 'hard', 'cross_stitch', 'mmoe' or 'ple')"
        )


def _nuclear_norm(w: Tensor) -> Tensor:
    """``‖w‖_*`` (sum of singular values) with its minimum-norm subgradient.

    Autograd through ``svdvals`` is finite even for rank-deficient ``w`` (its backward is
    ``U diag(∂/∂σ) Vᴴ``, no division by gaps between singular values), but it returns
    ``U Vᴴ`` over *all* singular vectors, including those of the (numerically) zero singular
    values, whose directions are arbitrary. That is a valid subgradient of ``‖·‖_*``, yet a
    step along it raises the rank: copies that start identical across tasks (BatchNorm gains
    and shifts, or towers copied from one another) would be pushed apart by the very penalty
    meant to tie them. Masking the singular values below the usual rank tolerance
    (``σ_max · max(shape) · eps``, as ``numpy.linalg.matrix_rank``) keeps the value and gives
    the minimum-norm subgradient ``U_r V_rᵀ`` over the nonzero ones only.
    """
    s: Tensor = torch.linalg.svdvals(w)
    tol = s.detach().max() * max(w.shape) * torch.finfo(w.dtype).eps
    return torch.where(s.detach() > tol, s, torch.zeros_like(s)).sum()


# -- cross-stitch networks --------------------------------------------------------------------


class CrossStitchParams(Schema):
    """Parameters of cross-stitch networks."""

    alpha_same: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="initial weight of a column's own activations; the others share 1 - it",
    )


class CrossStitchUnit(nn.Module):
    """``h'_t = Σ_s α[t, s] h_s`` over the K columns' activations ``[K, B, D]``."""

    def __init__(self, k: int, alpha_same: float) -> None:
        super().__init__()
        # One task: nothing to stitch, the unit starts as the identity.
        other = (1.0 - alpha_same) / (k - 1) if k > 1 else 0.0
        same = alpha_same if k > 1 else 1.0
        init = torch.full((k, k), other) + torch.eye(k) * (same - other)
        self.alpha = nn.Parameter(init)

    def forward(self, stacked: Tensor) -> Tensor:
        return torch.einsum("ts,sb...->tb...", self.alpha, stacked)


class CrossStitch(Architecture):
    """Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for
    Multi-task Learning", CVPR 2016).

    One MLP column per task, each a copy of the encoder's layers; after every layer block a
    cross-stitch unit mixes the columns' activations with a learned K × K matrix (initialised
    to ``alpha_same`` on the diagonal and ``(1 − alpha_same)/(K − 1)`` elsewhere, the paper's
    favoured 0.9/0.1 for two tasks), and each task's tower reads its column's last output.

    Ownership follows the gradient, as for every architecture here: through the stitches,
    every task's loss reaches every column, so the columns are shared together with the stitch
    matrices, and only the towers are the tasks' own. (Declaring a column its task's own would
    hand it the other tasks' gradients unbalanced, outside the balancing methods' view.)
    """

    def __init__(
        self,
        make_encoder: Callable[[], Encoder],
        heads: HeadFactory,
        params: CrossStitchParams,
    ) -> None:
        super().__init__()
        self.tasks = heads.tasks
        stems, columns = {}, {}
        for name in self.tasks:
            stems[name], columns[name] = _mlp_columns(make_encoder, "cross_stitch")
        self.stems = nn.ModuleDict(stems)
        self.columns = nn.ModuleDict(columns)
        n_blocks = len(columns[self.tasks[0]])
        self.stitches = nn.ModuleList(
            CrossStitchUnit(len(self.tasks), params.alpha_same) for _ in range(n_blocks)
        )
        out_dim = _column_width(columns[self.tasks[0]])
        self.heads = nn.ModuleDict({name: heads.build(name, out_dim) for name in self.tasks})

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        hs = [self.stems[name](inputs) for name in self.tasks]
        for i, stitch in enumerate(self.stitches):
            blocks = [cast(nn.ModuleList, self.columns[name])[i] for name in self.tasks]
            mixed = stitch(torch.stack([block(h) for block, h in zip(blocks, hs, strict=True)]))
            hs = list(mixed.unbind(0))
        return {name: self.heads[name](h) for name, h in zip(self.tasks, hs, strict=True)}

    def shared_parameters(self) -> list[nn.Parameter]:
        return _params(*self.shared_modules())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())

    def shared_modules(self) -> list[nn.Module]:
        return [self.stems, self.columns, self.stitches]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer of every column (the stitch after it only mixes their outputs)."""
        return [p for column in self.columns.values() for p in _last_layer(column)]


def _column_width(blocks: nn.ModuleList) -> int:
    """Width of the last Linear in a column's blocks."""
    last = [m for m in blocks.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


# -- mixture of experts -----------------------------------------------------------------------


def _last_layer(module: nn.Module) -> list[nn.Parameter]:
    """Parameters of the last layer with a weight matrix in ``module``."""
    if isinstance(module, Encoder):
        return module.last_layer_parameters()
    layers = [
        m
        for m in module.modules()
        if isinstance(w := getattr(m, "weight", None), nn.Parameter) and w.dim() >= 2
    ]
    return list(layers[-1].parameters(recurse=False))


class MMoEParams(Schema):
    """Parameters of MMoE."""

    n_experts: Layers = Field(default=4, description="expert encoders shared by every task")


class MMoE(Architecture):
    """Multi-gate mixture-of-experts, MMoE (Ma, Zhao, Yi, Chen, Hong & Chi, "Modeling Task
    Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018).

    ``n_experts`` encoders (each built like the configured encoder) are shared; each task mixes
    their outputs with its own softmax gate ``g_t(x) = softmax(W_t x)`` and reads the mixture
    through its tower. As in the paper the gates are linear in the input ``x``: for the MLP
    encoder, ``x`` is one extra copy of its input layer (numbers and embeddings of its own,
    shared by the gates); an encoder without a separable input layer is used whole as the
    gates' input network. Experts and gate input are shared, each gate and tower is its task's.
    """

    def __init__(
        self,
        make_encoder: Callable[[], Encoder],
        heads: HeadFactory,
        params: MMoEParams,
    ) -> None:
        super().__init__()
        experts = [make_encoder() for _ in range(params.n_experts)]
        self.experts = nn.ModuleList(experts)
        self.gate_input, gate_dim = _input_stem(make_encoder)
        self.gates = nn.ModuleDict(
            {name: _Gate(gate_dim, params.n_experts) for name in heads.tasks}
        )
        self.heads = nn.ModuleDict(
            {
                name: heads.build(name, experts[0].out_dim, experts[0].spatial)
                for name in heads.tasks
            }
        )

    def gate_weights(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each task's ``[B, n_experts]`` mixture weights."""
        x = self.gate_input(inputs)
        return {name: gate(x) for name, gate in self.gates.items()}

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        experts = [expert(inputs) for expert in self.experts]
        weights = self.gate_weights(inputs)
        return {name: self.heads[name](_mix(w, experts)) for name, w in weights.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return _params(*self.shared_modules())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return _params(self.gates[task], self.heads[task])

    def shared_modules(self) -> list[nn.Module]:
        return [self.experts, self.gate_input]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer of every expert: the layers whose outputs the gates mix."""
        return [p for expert in self.experts for p in _last_layer(expert)]


class PLEParams(Schema):
    """Parameters of CGC / PLE."""

    shared_experts: Layers = Field(default=1, description="shared experts per level")
    task_experts: Layers = Field(default=1, description="experts of each task per level")
    levels: Layers = Field(default=1, description="extraction levels; 1 is CGC")
    upper_widths: Widths | None = Field(
        default=None,
        min_length=1,
        description="hidden widths of the experts of levels 2 and up, which read the previous "
        "level's output (default: one layer as wide as the encoder's output)",
    )


class _Level(nn.Module):
    """One extraction level: shared experts, each task's experts, a gate per task over its own
    and the shared experts, and (below the top level) a shared gate over every expert."""

    def __init__(
        self,
        make_expert: Callable[[], nn.Module],
        tasks: list[str],
        params: PLEParams,
        gate_dim: int,
        top: bool,
    ) -> None:
        super().__init__()
        self.shared = nn.ModuleList(make_expert() for _ in range(params.shared_experts))
        self.own = nn.ModuleDict(
            {t: nn.ModuleList(make_expert() for _ in range(params.task_experts)) for t in tasks}
        )
        per_task = params.task_experts + params.shared_experts
        self.gates = nn.ModuleDict({t: _Gate(gate_dim, per_task) for t in tasks})
        every = params.task_experts * len(tasks) + params.shared_experts
        self.shared_gate = None if top else _Gate(gate_dim, every)


class PLE(Architecture):
    """Customized gate control (CGC) and progressive layered extraction (PLE) (Tang, Liu, Zhao
    & Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
    Personalized Recommendations", RecSys 2020).

    Each level holds shared experts and experts of each task. Task ``t``'s gate mixes its own
    and the shared experts; below the top level a shared gate mixes every expert and feeds the
    next level's shared experts, while task ``t``'s mixture feeds its next experts and gate.
    ``levels = 1`` is CGC. First-level experts are built like the configured encoder and gate on
    the input (as in :class:`MMoE`); higher-level experts are MLPs (``upper_widths``, ReLU) on
    the previous level's output, which their gates read too.

    Parameter ownership follows the gradient: a task's experts feed the shared gate below the
    top level, so they are shared there; a task's gate is its own at the top two levels only.
    """

    def __init__(
        self,
        make_encoder: Callable[[], Encoder],
        heads: HeadFactory,
        params: PLEParams,
    ) -> None:
        super().__init__()
        self.tasks = heads.tasks
        self.gate_input, gate_dim = _input_stem(make_encoder)
        levels = [_Level(make_encoder, self.tasks, params, gate_dim, params.levels == 1)]
        first = cast(Encoder, levels[0].shared[0])
        width, spatial = first.out_dim, first.spatial
        if spatial and params.levels > 1:
            raise ConfigError(
                "config error: model.architecture.levels: PLE levels above the first are MLPs "
                "on vectors; with a feature-map encoder use levels = 1 (CGC)"
            )
        upper = params.upper_widths or [width]
        for i in range(1, params.levels):
            in_dim = width if i == 1 else upper[-1]

            def make_expert(in_dim: int = in_dim) -> nn.Module:
                return mlp_layers(in_dim, upper, "relu", 0.0, "none")

            top = i == params.levels - 1
            levels.append(_Level(make_expert, self.tasks, params, in_dim, top))
        self.levels = nn.ModuleList(levels)
        out_width = width if params.levels == 1 else upper[-1]
        self.heads = nn.ModuleDict(
            {name: heads.build(name, out_width, spatial) for name in self.tasks}
        )

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        gate_x = self.gate_input(inputs)
        task_x: dict[str, object] = {t: inputs for t in self.tasks}
        task_gate_x = {t: gate_x for t in self.tasks}
        shared_x: object = inputs
        shared_gate_x = gate_x
        for level in self._typed_levels():
            shared_out = [expert(shared_x) for expert in level.shared]
            own_out = {
                t: [expert(task_x[t]) for expert in cast(nn.ModuleList, level.own[t])]
                for t in self.tasks
            }
            mixed = {
                t: _mix(level.gates[t](task_gate_x[t]), own_out[t] + shared_out) for t in self.tasks
            }
            if level.shared_gate is not None:
                every = [o for t in self.tasks for o in own_out[t]] + shared_out
                shared_x = shared_gate_x = _mix(level.shared_gate(shared_gate_x), every)
            task_x, task_gate_x = dict(mixed), mixed
        return {t: self.heads[t](task_gate_x[t]) for t in self.tasks}

    def _typed_levels(self) -> list[_Level]:
        return [level for level in self.levels if isinstance(level, _Level)]

    def _task_modules(self, task: str) -> list[nn.Module]:
        levels = self._typed_levels()
        # Top level: the task's experts and gate reach only its tower. One level down, the
        # task's gate feeds only the top level's task experts and gate.
        modules: list[nn.Module] = [self.heads[task], levels[-1].own[task], levels[-1].gates[task]]
        if len(levels) > 1:
            modules.append(levels[-2].gates[task])
        return modules

    def shared_parameters(self) -> list[nn.Parameter]:
        return _params(*self.shared_modules())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return _params(*self._task_modules(task))

    def shared_modules(self) -> list[nn.Module]:
        levels = self._typed_levels()
        modules: list[nn.Module] = [self.gate_input]
        for i, level in enumerate(levels):
            modules.append(level.shared)
            if level.shared_gate is not None:
                modules.append(level.shared_gate)
            for t in self.tasks:
                if i < len(levels) - 1:
                    modules.append(level.own[t])
                if i < len(levels) - 2:
                    modules.append(level.gates[t])
        return modules

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer of the top level's shared experts."""
        return [p for expert in self._typed_levels()[-1].shared for p in _last_layer(expert)]


def _from_encoder_factory(cls: type[Any]) -> ArchitectureFactory:
    """Factory of an architecture built as ``cls(make_encoder, heads, params)``."""

    def build(
        make_encoder: Callable[[], Encoder],
        heads: HeadFactory,
        params: BaseModel,
    ) -> Architecture:
        built: Architecture = cls(make_encoder, heads, params)
        return built

    return build


for _name, _schema, _cls, _summary in (
    ("soft", SoftParams, SoftSharing, "soft sharing: one encoder per task, L2/trace-norm-coupled"),
    ("cross_stitch", CrossStitchParams, CrossStitch, "cross-stitch units between task columns"),
    ("mmoe", MMoEParams, MMoE, "MMoE: shared experts, gate per task"),
    ("ple", PLEParams, PLE, "CGC/PLE: shared + task experts per level"),
):
    ARCHITECTURES.register(_name, params=_schema, summary=_summary)(_from_encoder_factory(_cls))
