"""Task heads: a tower of layers on the shared representation, ending in the task's outputs.

Three shapes of head, chosen from the task and the representation, never by the user:

* a vector representation ``[B, D]`` feeds a :class:`Tower` (hidden layers, linear output);
* a feature map ``[B, C, h, w]`` feeding an image-level task is average-pooled first
  (:class:`PooledTower`), as in ResNet's classifier;
* a feature map feeding a dense (per-pixel) task goes through a :class:`DenseDecoder`:
  3x3 conv layers, a 1x1 conv to the task's channels and bilinear upsampling to the input
  resolution, the light decoder of the FCN family (Long, Shelhamer & Darrell, "Fully
  Convolutional Networks for Semantic Segmentation", CVPR 2015).

Heads of the same shape run as one batched operation (:func:`run_heads`): with K tasks, K
separate tower calls cost K times the per-call overhead, which dominates small towers; stacking
their weights at forward time turns them into one matrix product per layer while each head
keeps its own ``nn.Parameter`` (and its state-dict names), so saved models load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.weak import WeakTensorKeyDictionary

from polytask.config_errors import Schema, Widths
from polytask.errors import ConfigError
from polytask.models.encoders import Activation, Norm, make_activation, mlp_layers


class HeadParams(Schema):
    """The tower each task gets on top of the shared representation."""

    widths: Widths = Field(
        default=[64],
        description="hidden layer widths of each task's tower ([] = a linear head on the "
        "representation)",
    )
    activation: Activation = Field(
        default="relu", description="non-linearity after each hidden layer of a tower"
    )
    dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="dropout after each hidden layer of a tower (training only)",
    )
    norm: Norm = Field(
        default="none",
        description="normalisation of each hidden layer of a tower: batch, layer or none",
    )
    decoder_channels: Widths = Field(
        default=[64], description="dense tasks: channels of the decoder's 3x3 conv layers"
    )


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


class PooledTower(Tower):
    """Global average pooling of a feature map, then a :class:`Tower`."""

    def forward(self, z: Tensor) -> Tensor:
        return super().forward(self.pool(z))

    @staticmethod
    def pool(z: Tensor) -> Tensor:
        return z.mean(dim=(2, 3))


def masked_mean_words(z: Tensor) -> Tensor:
    """The mean over the words of a sequence encoder's ``[B, T', D]`` output: its padding
    positions are exact zeros (:attr:`polytask.models.encoders.Encoder.sequence`), so they add
    nothing to the sum and are left out of the count; a sentence of no words gives zeros."""
    words = (z != 0).any(dim=-1, keepdim=True)
    return z.sum(dim=1) / words.sum(dim=1).clamp(min=1).to(z.dtype)


class SequencePooledTower(nn.Module):
    """A sentence-level task on a sequence encoder: the mean of the sentence's word vectors
    (:func:`masked_mean_words`), then a :class:`Tower`. Not a ``Tower`` subclass, so
    :func:`run_heads` never batches it with towers that read ``z`` as it is."""

    def __init__(self, in_dim: int, out_dim: int, params: HeadParams) -> None:
        super().__init__()
        self.tower = Tower(in_dim, out_dim, params)

    def forward(self, z: Tensor) -> Tensor:
        out: Tensor = self.tower(masked_mean_words(z))
        return out


#: Fewest same-shape towers :func:`run_heads` batches. Below it the K calls cost about what the
#: gathering of their weights does, and the heads keep computing exactly what one call each
#: computes (batched products may round differently, so small-K runs stay bit-identical to
#: the unbatched code and its recorded golden weights).
BATCH_MIN_HEADS = 4


def run_heads(heads: nn.ModuleDict, z: Tensor) -> dict[str, Tensor]:
    """Every head's output on the one representation ``z`` they all read, in ``heads``' order.

    Towers of the same layer shapes (and the same pooling) run together: the first layer's
    weights are concatenated into one ``[K·H, D]`` matrix (one ``addmm`` on ``z``), later
    layers as one ``baddbmm`` over the stacked ``[K, out, in]`` weights. The sums are the ones
    each ``nn.Linear`` computes, though the BLAS kernel may take them in another order, so
    results agree to float rounding, not always bit for bit. Normalised towers (batch
    statistics, per-task running buffers) and dense decoders run one by one; so do the towers
    of a group smaller than :data:`BATCH_MIN_HEADS`.

    A batched group's outputs are the rows of one ``[K, B, out]`` tensor, handed out as views
    by a single autograd node (:class:`_Split`) rather than K indexing nodes with a gradient
    hook each (at K = 100 those nodes cost more than the heads' arithmetic). The node learns
    which rows received a gradient, so a head whose task had no loss still gets ``None``, not
    zeros. :func:`stacked_outputs` hands the ``[K, B, out]`` tensor back to a caller that
    would otherwise stack the rows again (:func:`polytask.losses.task_losses`).
    """
    groups, in_order = _plan(heads)
    out: dict[str, Tensor] = {}
    for group in groups:
        if group.dropout_depths is None:
            out[group.names[0]] = group.heads[0](z)
            continue
        # Re-read each step (dict lookups, no module walk): a layer replaced after the plan
        # was made is used, never a stale one.
        layers = [_layers(t) for t in group.heads]
        by_depth: list[list[nn.Module]] = [list(d) for d in zip(*layers, strict=True)]
        if any(len({m.training for m in by_depth[d]}) > 1 for d in group.dropout_depths):
            # A frozen head held in eval mode must not get the training heads' dropout.
            for name, head in zip(group.names, group.heads, strict=True):
                out[name] = head(z)
            continue
        used = [False] * len(group.names)
        stacked = _towers_forward(by_depth, group.pooled, z, used)
        if stacked.requires_grad:
            out.update(zip(group.names, _split(used, None, stacked), strict=True))
        else:  # no gradient to track (inference, or every head frozen)
            out.update(zip(group.names, stacked.unbind(0), strict=True))
    return out if in_order else {name: out[name] for name in heads}


@dataclass(frozen=True)
class _Group:
    """Same-shape towers that run as one batched pass, or one head alone."""

    names: list[str]
    heads: list[nn.Module]
    #: Depths of the towers' dropout layers (their train/eval modes must agree across the
    #: group); None: a head that runs alone.
    dropout_depths: list[int] | None
    pooled: bool = False


def _plan(heads: nn.ModuleDict) -> tuple[list[_Group], bool]:
    """The groups :func:`run_heads` runs and whether they list the heads in ``heads``' order,
    cached on ``heads`` while it holds the same named head modules (grouping K towers by their
    layer shapes each step would cost more than the batching saves at small K)."""
    key = tuple(heads.items())
    cached: tuple[tuple[tuple[str, nn.Module], ...], list[_Group], bool] | None = (
        heads.__dict__.get("_head_plan")
    )
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    by_key: dict[tuple[object, ...], list[str]] = {}
    for name, head in heads.items():
        by_key.setdefault(_group_key(head), []).append(name)
    groups: list[_Group] = []
    for group_key, names in by_key.items():
        members = [heads[n] for n in names]
        if group_key[0] is None or len(names) < BATCH_MIN_HEADS:
            groups += [_Group([n], [h], None) for n, h in zip(names, members, strict=True)]
            continue
        # The key lists the layers after the tower class: ("dropout", p) marks a dropout.
        depths = [i for i, layer in enumerate(group_key[1:]) if _is_dropout_key(layer)]
        groups.append(_Group(names, members, depths, isinstance(members[0], PooledTower)))
    in_order = [n for g in groups for n in g.names] == list(heads)
    heads.__dict__["_head_plan"] = (key, groups, in_order)
    return groups, in_order


def _layers(tower: nn.Module) -> tuple[nn.Module, ...]:
    """A tower's layers in order, read from the module dicts directly (iterating the
    ``nn.Sequential`` goes through Python-level ``__iter__``/``__len__``: K towers a step)."""
    hidden = tower._modules["hidden"]
    assert hidden is not None
    return (*hidden._modules.values(), tower._modules["out"])  # type: ignore[arg-type]


def _is_dropout_key(layer: object) -> bool:
    return isinstance(layer, tuple) and bool(layer) and layer[0] == "dropout"


@dataclass(frozen=True)
class _Stack:
    """A tensor whose rows were handed out as separate views by :func:`_split`: row ``i``
    belongs to the head whose flag is ``used[flags[i]]`` (``flags`` None: ``used[i]``)."""

    value: Tensor
    used: list[bool]
    flags: list[int] | None


#: The stacks of the live forward passes, by the tensor their row views are views of
#: (``Tensor._base``), so :func:`stacked_outputs` can recognise those rows. Weak: an entry goes
#: with its graph.
_STACKS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _root(t: Tensor) -> Tensor:
    return t if t._base is None else t._base


@dataclass(frozen=True)
class StackedOutputs:
    """Several rows handed out by :func:`run_heads` (a batched group's outputs) or by
    :meth:`split` (values computed from them, e.g. the tasks' losses), as the one
    ``[n, *row shape]`` tensor they are rows of."""

    #: Row ``i`` is the ``i``-th tensor asked for. Its gradient flows back as the rows' own
    #: gradients would, but does not by itself tell the heads which rows received one: pass
    #: per-row results through :meth:`split`, or use :meth:`whole`.
    value: Tensor
    _used: list[bool]
    _flags: list[int]

    def split(self, per_row: Tensor) -> tuple[Tensor, ...]:
        """``per_row`` (``[n, ...]``, one entry per row of :attr:`value`, e.g. each task's
        loss) as ``n`` separate tensors. A head counts as having received a gradient when its
        entry does (a task whose loss a balancer leaves out keeps ``None`` gradients), and the
        entries are themselves rows :func:`stacked_outputs` recognises."""
        return _split(self._used, self._flags, per_row)

    def whole(self) -> Tensor:
        """:attr:`value` for a consumer of every row (a weighted sum of all the losses): a
        gradient reaching it marks every row's head as having received one, as the rows'
        own gradients would have."""
        out: Tensor = _MarkUsed.apply(self._used, self._flags, self.value)  # type: ignore[no-untyped-call]
        return out


def stacked_outputs(rows: Sequence[Tensor]) -> StackedOutputs | None:
    """``torch.stack(rows)`` without the copy or the per-row autograd nodes, when every
    tensor in ``rows`` is a row handed out by :func:`run_heads` or :meth:`StackedOutputs.split`
    from one stack of this forward pass (or a view of one dropping size-1 dimensions, as
    :meth:`MultiTaskModel._shape <polytask.models.model.MultiTaskModel._shape>` squeezes);
    None otherwise (the caller stacks). Rows are recognised by where they sit in the stack's
    storage, so any other tensor, a detached or a copied one included, gives None."""
    if not rows:
        return None
    first = rows[0]
    root = first._base
    stack: _Stack | None = _STACKS.get(root) if root is not None else None  # type: ignore[no-untyped-call]
    if stack is None:
        return None
    value = stack.value
    offset, step, k = int(value.storage_offset()), value.stride(0), value.shape[0]
    row = [(s, st) for s, st in zip(value.shape[1:], value.stride()[1:], strict=True) if s != 1]
    if [(s, st) for s, st in zip(first.shape, first.stride(), strict=True) if s != 1] != row:
        return None
    shape, stride = first.shape, first.stride()
    picked: list[int] = []
    for t in rows:
        index, rest = divmod(int(t.storage_offset()) - offset, step)
        if (
            t._base is not root
            or rest
            or not 0 <= index < k
            or t.grad_fn is None
            or t.shape != shape
            or t.stride() != stride
        ):
            return None
        picked.append(index)
    flags = picked if stack.flags is None else [stack.flags[i] for i in picked]
    if picked != list(range(k)):  # some rows, or in another order: a gather
        value = value[torch.tensor(picked, device=value.device)]
    return StackedOutputs(value.reshape(len(picked), *shape), stack.used, flags)


class _Split(torch.autograd.Function):
    """``stacked.unbind(0)`` as one autograd node that records, in ``used``, which rows
    received a gradient (``flags[i]``: the flag of output ``i``; None: ``i`` itself).

    Gradients are not materialised: an output outside the backward pass arrives as ``None``,
    which is how a head whose task had no loss is told apart from one whose gradient happens
    to be zero (weight 0, a perfect prediction). The backward is a plain stack, itself
    differentiable (GradNorm's double backward)."""

    @staticmethod
    def forward(
        ctx: Any, used: list[bool], flags: list[int] | None, stacked: Tensor
    ) -> tuple[Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.used, ctx.flags = used, flags
        return stacked.unbind(0)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        used, flags = ctx.used, ctx.flags
        some: Tensor | None = None
        for i, g in enumerate(grads):
            if g is not None:
                used[i if flags is None else flags[i]] = True
                some = g
        if some is None:
            return None, None, None
        if all(g is not None for g in grads):
            return None, None, torch.stack(grads)  # type: ignore[arg-type]
        zero = torch.zeros_like(some)
        return None, None, torch.stack([zero if g is None else g for g in grads])


def _split(used: list[bool], flags: list[int] | None, stacked: Tensor) -> tuple[Tensor, ...]:
    """:class:`_Split`, its stack recorded for :func:`stacked_outputs`."""
    out: tuple[Tensor, ...] = _Split.apply(used, flags, stacked)  # type: ignore[no-untyped-call]
    _STACKS[_root(stacked)] = _Stack(stacked, used, flags)
    return out


class _MarkUsed(torch.autograd.Function):
    """The identity, whose backward marks the heads of every row used (``flags``: their
    indices in ``used``) when a gradient reaches it; see :meth:`StackedOutputs.whole`."""

    @staticmethod
    def forward(ctx: Any, used: list[bool], flags: list[int], value: Tensor) -> Tensor:
        ctx.used, ctx.flags = used, flags
        return value.view_as(value)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        for i in ctx.flags:
            ctx.used[i] = True
        return None, None, grad


def _gather(used: list[bool], stack: bool, parts: list[Tensor]) -> Tensor:
    """``torch.cat`` (``stack=False``) or ``torch.stack`` of the K heads' weight tensors, after
    whose backward a head whose output received no gradient still has a ``None`` gradient,
    not zeros.

    One head per task: a task without a label in the batch has no loss, so its head must get no
    gradient at all (AdamW's weight decay and moments would otherwise move it). The native
    ``cat`` gives every part a gradient, zeros for the unused heads; a hook on its output,
    which autograd calls once the group's :class:`_Split` nodes have marked the heads that
    received a gradient (they all sit between the losses and this tensor), arranges for the
    unused heads' gradients to be put back to ``None`` when the backward pass ends. A native
    node and one hook, rather than an autograd Function of K inputs: at K = 100 passing the
    K parts through Python cost about a millisecond a step. The backward is the native one, so
    it is itself differentiable (GradNorm's double backward)."""
    out = torch.stack(parts) if stack else torch.cat(parts)
    if out.requires_grad:
        out.register_hook(_UnusedStayNone(used, parts))  # type: ignore[no-untyped-call]
    return out


@dataclass(frozen=True)
class _UnusedStayNone:
    """The hook :func:`_gather` puts on its output (see there)."""

    used: list[bool]
    parts: list[Tensor]

    def __call__(self, grad: Tensor) -> None:
        if all(self.used):
            return
        # Parts with no gradient before this pass: the rest keep the (unchanged) sum to which
        # the zeros were added, as an accumulating gradient should.
        fresh = [p for p, u in zip(self.parts, self.used, strict=True) if not u and p.grad is None]
        if fresh:
            torch.autograd.Variable._execution_engine.queue_callback(lambda: _clear(fresh))


def _clear(parts: list[Tensor]) -> None:
    for p in parts:
        p.grad = None


def _group_key(head: nn.Module) -> tuple[object, ...]:
    """Towers with equal keys can run as one batched operation; ``(None, id)`` for a head that
    runs alone (dense decoders, normalised towers)."""
    if not isinstance(head, Tower):
        return (None, id(head))
    # Computed once per tower: its layer shapes are fixed when it is built, and walking every
    # layer of K towers each step would cost more than the batching saves at small K.
    key: tuple[object, ...] | None = head.__dict__.get("_batch_key")
    if key is None:
        key = _tower_key(head)
        head.__dict__["_batch_key"] = key
    return key


def _tower_key(head: Tower) -> tuple[object, ...]:
    layers: list[object] = [type(head)]
    for layer in [*head.hidden, head.out]:
        if isinstance(layer, nn.Linear):
            layers.append(("linear", layer.in_features, layer.out_features, layer.bias is not None))
        elif isinstance(layer, nn.Dropout):
            layers.append(("dropout", layer.p))
        elif isinstance(layer, nn.LeakyReLU):
            layers.append(("leaky_relu", layer.negative_slope))
        elif isinstance(layer, nn.ReLU | nn.GELU | nn.SiLU | nn.Tanh):
            # Stateless, parameter-free activations (GELU keeps its approximation flag).
            layers.append((type(layer), getattr(layer, "approximate", None)))
        else:
            return (None, id(head))
    return tuple(layers)


def _params(linears: list[nn.Module], name: str) -> list[Tensor]:
    # ``_parameters`` directly: ``Module.__getattr__`` for 2K tensors a step is measurable.
    return [m._parameters[name] for m in linears]  # type: ignore[misc]


def _towers_forward(
    by_depth: list[list[nn.Module]], pooled: bool, z: Tensor, used: list[bool]
) -> Tensor:
    """``[K, *z.shape[:-1], out]``: one group's K towers (their layers listed per depth)
    applied to ``z``."""
    if pooled:
        z = PooledTower.pool(z)
    lead, k = z.shape[:-1], len(by_depth[0])
    h = z.reshape(-1, z.shape[-1])
    first = True
    for linears in by_depth:
        layer = linears[0]
        if not isinstance(layer, nn.Linear):
            h = layer(h)  # one activation or dropout module serves the whole group
            continue
        has_bias = layer.bias is not None
        if first:
            # Every tower reads the same z: one product with the concatenated weights.
            weight = _gather(used, False, _params(linears, "weight"))
            if has_bias:
                bias = _gather(used, False, _params(linears, "bias"))
                wide = torch.addmm(bias, h, weight.T)
            else:
                wide = h @ weight.T
            h = wide.view(h.shape[0], k, layer.out_features).transpose(0, 1)
            first = False
        else:
            weight = _gather(used, True, _params(linears, "weight")).transpose(1, 2)
            if has_bias:
                bias = _gather(used, True, _params(linears, "bias")).unsqueeze(1)
                h = torch.baddbmm(bias, h, weight)
            else:
                h = torch.bmm(h, weight)
    return h.reshape(k, *lead, h.shape[-1])


class DenseDecoder(nn.Module):
    """Per-pixel outputs ``[B, out_dim, H, W]`` from a feature map ``[B, C, h, w]``."""

    def __init__(
        self, in_dim: int, out_dim: int, params: HeadParams, size: tuple[int, int]
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for ch in params.decoder_channels:
            layers += [
                nn.Conv2d(in_dim, ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(ch),
                make_activation(params.activation),
            ]
            in_dim = ch
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Conv2d(in_dim, out_dim, 1)
        self.size = size

    def forward(self, z: Tensor) -> Tensor:
        # Upsample the features before the 1x1 output conv: interpolating logits instead
        # would blur class boundaries into mixtures no class owns.
        h = F.interpolate(self.hidden(z), size=self.size, mode="bilinear", align_corners=False)
        out: Tensor = self.out(h)
        return out


#: A task kind's own head builder: ``(in_dim, spatial, params) -> module`` or ``None`` for the
#: standard head (see :meth:`polytask.tasks.kinds.base.Kind.make_head`).
CustomHead = Callable[[int, bool, "HeadParams"], nn.Module | None]


@dataclass(frozen=True)
class HeadSpec:
    """What a task's head must produce: ``n_outputs`` values per example, or per pixel; a kind
    with a head of its own supplies ``custom``."""

    n_outputs: int
    dense: bool = False
    custom: CustomHead | None = None
    #: Predicted per word (a token-level kind): needs a sequence encoder.
    tokens: bool = False


class HeadFactory:
    """Builds each task's head for the representation it reads; architectures call it once
    per task with their representation's width and whether it is a feature map."""

    def __init__(
        self,
        specs: dict[str, HeadSpec],
        params: HeadParams,
        output_size: tuple[int, int] | None = None,
    ) -> None:
        self.specs = specs
        self.params = params
        self.output_size = output_size
        #: Whether the heads read a sequence encoder's ``[B, T', D]`` word vectors
        #: (:attr:`polytask.models.encoders.Encoder.sequence`); set by
        #: :func:`polytask.models.model.build_model` when the encoder is built, before any head.
        self.sequence = False

    @property
    def tasks(self) -> list[str]:
        return list(self.specs)

    def build(self, task: str, in_dim: int, spatial: bool = False) -> nn.Module:
        spec = self.specs[task]
        if spec.tokens and not self.sequence:
            raise ConfigError(
                f"config error: task {task!r} is token-level (a prediction per word) and needs "
                "a sequence encoder: data.input.name = 'tokens' and model.encoder.name = 'tokens'"
            )
        own = spec.custom(in_dim, spatial, self.params) if spec.custom is not None else None
        if own is not None:
            return own
        if spec.dense:
            if not spatial or self.output_size is None:
                raise ConfigError(
                    f"config error: task {task!r} is dense (per pixel) and needs an image "
                    "encoder that keeps feature maps, e.g. model.encoder.name = 'cnn'"
                )
            return DenseDecoder(in_dim, spec.n_outputs, self.params, self.output_size)
        if spatial:
            return PooledTower(in_dim, spec.n_outputs, self.params)
        if self.sequence and not spec.tokens:
            return SequencePooledTower(in_dim, spec.n_outputs, self.params)
        return Tower(in_dim, spec.n_outputs, self.params)
