"""Preference conditioning: one network that serves every trade-off between the tasks.

A preference-conditioned model takes, besides its inputs, a preference ``r`` (one weight per
task, on the simplex) and is trained by a method that samples a new ``r`` every step and weights
the losses by it (COSMOS, Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
Multi-Objective Learning", ICDM 2021; :mod:`polytask.balance.preference_methods`). At prediction
time the user picks ``r`` and gets the model of that trade-off, with no retraining.

Two ways to feed ``r`` in, chosen by ``model.preference_conditioning``:

``input``
    ``r`` is appended to the inputs, as in the COSMOS paper: to the numeric feature block of a
    table, or as ``K`` constant channels of an image (the paper upsamples ``r`` with a learned
    transposed convolution instead; constant planes keep the model free of extra parameters).
    The encoder is built ``K`` features (channels) wider. Any architecture works.
``film``
    Feature-wise linear modulation (Perez et al., "FiLM: Visual Reasoning with a General
    Conditioning Layer", AAAI 2018) after every normalisation layer of the shared part of the
    network, the paper's placement: ``h' = (1 + γ_l(r)) ⊙ h + β_l(r)`` for the output ``h`` of
    normalisation layer ``l``. A small MLP of ``r`` gives every ``γ_l, β_l``; its output layers
    start at zero, so the untrained model is the unconditioned one. Works for every input kind
    and architecture whose shared part normalises (batch, layer or group norm).

Why the preference must enter *inside* the shared layers: the trade-off between tasks of a
shared network is the allocation of its shared capacity, so a model that serves several
trade-offs must compute different shared features for different ``r``. Modulating only the
final shared representation cannot do that (each head could undo it), and its front collapses
towards one point.

Batch normalisation is fine for both as long as a training batch mixes preferences as the
running statistics do: balancer ``cosmos`` draws one preference per example by default (see
:class:`polytask.balance.preference_methods.COSMOS`).

Without a preference set (:attr:`MultiTaskModel.preference` is ``None``) the uniform preference
``1/K`` is used: validation during training and prediction without ``--preference`` see the
model of equal weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from polytask.data.spec import InputSpec
from polytask.errors import ConfigError

if TYPE_CHECKING:
    from polytask.models.architectures import Architecture

ConditioningMode = Literal["input", "film"]

#: Hidden width of the FiLM generator's shared trunk (r has only K entries; this is ample).
FILM_HIDDEN = 64

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _norm_width(module: nn.Module) -> tuple[int, int]:
    """Number of features a normalisation layer outputs, and their dimension (1 or -1)."""
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1]), -1
    if isinstance(module, nn.GroupNorm):
        return int(module.num_channels), 1
    assert isinstance(module, nn.modules.batchnorm._BatchNorm)
    return int(module.num_features), 1


def batch_preference(preference: Tensor | None, n_tasks: int, rows: int) -> Tensor:
    """``preference`` as a ``[rows, K]`` float tensor (uniform when ``None``)."""
    if preference is None:
        return torch.full((rows, n_tasks), 1.0 / n_tasks)
    r = preference.float()
    if r.dim() == 1:
        r = r.unsqueeze(0).expand(rows, -1)
    if r.shape != (rows, n_tasks):
        raise ValueError(f"preference of shape {tuple(r.shape)}; expected [{n_tasks}] or [B, K]")
    return r


class PreferenceConditioning(nn.Module):
    """How a :class:`~polytask.models.model.MultiTaskModel` reads its preference (see the
    module docstring). Built by :func:`~polytask.models.model.build_model` in two steps:
    :meth:`encoder_spec` widens the inputs the encoder is built for (``input`` mode), then
    :meth:`attach` checks the built architecture and, in ``film`` mode, creates the generator
    of ``γ, β`` and hooks it onto the shared normalisation layers. Before each forward pass the
    model calls :meth:`prepare` with the batch and its preference."""

    def __init__(self, mode: ConditioningMode, n_tasks: int, spec: InputSpec) -> None:
        super().__init__()
        self.mode = mode
        self.n_tasks = n_tasks
        self.input_kind = spec.kind
        if mode == "input" and spec.kind not in ("table", "image"):
            raise ConfigError(
                f"config error: model.preference_conditioning: 'input' appends the preference "
                f"to table features or image channels, and the data gives {spec.kind} inputs; "
                "use 'film'"
            )
        self.trunk: nn.Module | None = None
        self.film = nn.ModuleList()
        #: The current batch's preference ``[B, K]`` (film mode), read by the hooks.
        self._rows: Tensor | None = None
        self._hooks: list[RemovableHandle] = []

    def encoder_spec(self, spec: InputSpec) -> InputSpec:
        """The input spec the encoder is built for: ``K`` more features or channels."""
        if self.mode != "input":
            return spec
        if spec.kind == "table":
            return dataclasses.replace(spec, n_numeric=spec.n_numeric + self.n_tasks)
        shape = list(spec.shape)
        shape[0] += self.n_tasks
        return dataclasses.replace(spec, shape=shape)

    def attach(self, architecture: Architecture) -> None:
        """Check ``architecture`` can be conditioned this way; in ``film`` mode build the
        generator and hook it onto the shared normalisation layers."""
        arch = type(architecture).__name__
        if self.mode == "input":
            return
        seen: set[int] = set()
        points: list[nn.Module] = []
        for root in architecture.shared_modules():
            for m in root.modules():
                if isinstance(m, _NORMS) and id(m) not in seen:
                    seen.add(id(m))
                    points.append(m)
        if not points:
            raise ConfigError(
                "config error: model.preference_conditioning: 'film' modulates the outputs of "
                f"the shared normalisation layers, and {arch} has none; use 'input' (or set "
                "model.encoder.norm = 'batch' or 'layer')"
            )
        self.trunk = nn.Sequential(nn.Linear(self.n_tasks, FILM_HIDDEN), nn.ReLU())
        for index, module in enumerate(points):
            width, dim = _norm_width(module)
            out = nn.Linear(FILM_HIDDEN, 2 * width)
            # Zero output layer: γ = β = 0, so training starts from the unconditioned network.
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.film.append(out)
            self._hooks.append(module.register_forward_hook(self._modulate_hook(index, dim)))

    def prepare(self, inputs: dict[str, Tensor], preference: Tensor | None) -> dict[str, Tensor]:
        """The inputs the architecture reads for this batch: with the preference appended
        (``input``), or unchanged with the preference stored for the hooks (``film``)."""
        rows = next(iter(inputs.values())).shape[0]
        r = batch_preference(preference, self.n_tasks, rows)
        if self.mode == "film":
            self._rows = r
            return inputs
        key = "numeric" if self.input_kind == "table" else "image"
        x = inputs[key]
        r = r.to(x.dtype)
        if self.input_kind == "image":
            r = r[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return {**inputs, key: torch.cat([x, r], dim=1)}

    def _modulate_hook(self, index: int, dim: int) -> Callable[[nn.Module, Any, Tensor], Tensor]:
        def hook(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            if self._rows is None or self.trunk is None:
                raise RuntimeError("a FiLM-conditioned layer ran without a prepared preference")
            r = self._rows.to(output.dtype)
            params: Tensor = self.film[index](self.trunk(r))
            gamma, beta = params.chunk(2, dim=1)
            # [B, C] -> broadcast over the positions of a feature map or a sequence.
            shape = [output.shape[0]] + [1] * (output.dim() - 1)
            axis = 1 if dim == 1 else output.dim() - 1
            shape[axis] = gamma.shape[1]
            return (1.0 + gamma.reshape(shape)) * output + beta.reshape(shape)

        return hook
