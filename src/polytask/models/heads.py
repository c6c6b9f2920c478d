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

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from polytask.config_errors import Schema, Widths
from polytask.errors import ConfigError
from polytask.models.encoders import Activation, Norm, make_activation, mlp_layers


class HeadParams(Schema):
    """The tower each task gets on top of the shared representation."""

    widths: Widths = Field(default=[64])
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Norm = "none"
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
    """
    groups: dict[tuple[object, ...], list[str]] = {}
    for name, head in heads.items():
        groups.setdefault(_group_key(head), []).append(name)
    out: dict[str, Tensor] = {}
    for key, names in groups.items():
        if key[0] is None or len(names) < BATCH_MIN_HEADS:
            for name in names:
                out[name] = heads[name](z)
            continue
        towers = [heads[n] for n in names]
        assert all(isinstance(t, Tower) for t in towers)
        if _mixed_dropout_modes(towers):  # type: ignore[arg-type]
            # A frozen head held in eval mode must not get the training heads' dropout.
            for name in names:
                out[name] = heads[name](z)
            continue
        used = [False] * len(towers)
        stacked = _towers_forward(towers, z, used)  # type: ignore[arg-type]
        for i, name in enumerate(names):
            out[name] = stacked[i]
            if out[name].requires_grad:
                out[name].register_hook(partial(_mark_used, used, i))  # type: ignore[no-untyped-call]
    return {name: out[name] for name in heads}


def _mixed_dropout_modes(towers: list[Tower]) -> bool:
    modes = {m.training for t in towers for m in t.hidden if isinstance(m, nn.Dropout)}
    return len(modes) > 1


def _mark_used(used: list[bool], index: int, grad: Tensor) -> None:
    used[index] = True


class _Gather(torch.autograd.Function):
    """``torch.cat`` (``stack=False``) or ``torch.stack`` of the K heads' weight tensors whose
    backward gives ``None``, not zeros, to a head whose output received no gradient.

    One head per task: a task without a label in the batch has no loss, so its head must get no
    gradient at all (AdamW's weight decay and moments would otherwise move it). Each head's
    output has a hook that marks it used when a gradient reaches it; autograd runs those hooks
    before this node's backward, which comes later in the backward order. The backward is a
    plain split, so it is itself differentiable (GradNorm's double backward)."""

    @staticmethod
    def forward(ctx: Any, used: list[bool], stack: bool, *parts: Tensor) -> Tensor:
        ctx.used, ctx.stack = used, stack
        ctx.sizes = [p.shape[0] for p in parts]
        return torch.stack(parts) if stack else torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        pieces = grad.unbind(0) if ctx.stack else torch.split(grad, ctx.sizes)
        return (None, None, *(g if u else None for g, u in zip(pieces, ctx.used, strict=True)))


def _gather(used: list[bool], stack: bool, parts: list[Tensor]) -> Tensor:
    out: Tensor = _Gather.apply(used, stack, *parts)  # type: ignore[no-untyped-call]
    return out


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


def _towers_forward(towers: list[Tower], z: Tensor, used: list[bool]) -> Tensor:
    """``[K, *z.shape[:-1], out]``: the K towers of one group applied to ``z``."""
    if isinstance(towers[0], PooledTower):
        z = PooledTower.pool(z)
    lead, k = z.shape[:-1], len(towers)
    h = z.reshape(-1, z.shape[-1])
    first = True
    layer_lists = [[*t.hidden, t.out] for t in towers]
    for depth, layer in enumerate(layer_lists[0]):
        if not isinstance(layer, nn.Linear):
            h = layer(h)  # one activation or dropout module serves the whole group
            continue
        linears: list[nn.Linear] = [ls[depth] for ls in layer_lists]
        if first:
            # Every tower reads the same z: one product with the concatenated weights.
            weight = _gather(used, False, [m.weight for m in linears])
            if layer.bias is not None:
                bias = _gather(used, False, [m.bias for m in linears])
                wide = torch.addmm(bias, h, weight.T)
            else:
                wide = h @ weight.T
            h = wide.view(h.shape[0], k, layer.out_features).transpose(0, 1)
            first = False
        else:
            weight = _gather(used, True, [m.weight for m in linears]).transpose(1, 2)
            if layer.bias is not None:
                bias = _gather(used, True, [m.bias for m in linears]).unsqueeze(1)
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


@dataclass(frozen=True)
class HeadSpec:
    """What a task's head must produce: ``n_outputs`` values per example, or per pixel."""

    n_outputs: int
    dense: bool = False


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

    @property
    def tasks(self) -> list[str]:
        return list(self.specs)

    def build(self, task: str, in_dim: int, spatial: bool = False) -> nn.Module:
        spec = self.specs[task]
        if spec.dense:
            if not spatial or self.output_size is None:
                raise ConfigError(
                    f"config error: task {task!r} is dense (per pixel) and needs an image "
                    "encoder that keeps feature maps, e.g. model.encoder.name = 'cnn'"
                )
            return DenseDecoder(in_dim, spec.n_outputs, self.params, self.output_size)
        if spatial:
            return PooledTower(in_dim, spec.n_outputs, self.params)
        return Tower(in_dim, spec.n_outputs, self.params)
