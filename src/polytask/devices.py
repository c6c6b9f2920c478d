"""Where tensors live and in which precision the forward pass runs: ``train.device`` and
``train.precision`` for training, ``polytask.load(..., device=, precision=)`` and
``polytask predict --device`` for inference, so every path resolves and applies them the same
way.

Mixed precision follows PyTorch's automatic mixed precision (``torch.autocast``; Micikevicius
et al., "Mixed Precision Training", ICLR 2018): the forward pass runs eligible operations in
bfloat16 or float16 while the weights and the optimiser state stay float32. float16 needs
dynamic loss scaling (``torch.amp.GradScaler``, which also works on the CPU) so that small
gradients do not underflow; bfloat16 has float32's exponent range and needs none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch
from torch import Tensor

from polytask.errors import ConfigError

#: ``train.precision``: full float32, or mixed precision with bfloat16 / float16 compute.
Precision = Literal["32", "bf16-mixed", "16-mixed"]
PRECISIONS: tuple[str, ...] = ("32", "bf16-mixed", "16-mixed")
#: ``train.device`` / ``--device``: a name :func:`resolve_device` accepts.
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)$"
_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The device ``name`` stands for: ``auto`` is the first CUDA GPU when one is present,
    else Apple's MPS, else the CPU; ``cuda``, ``cuda:N`` and ``mps`` must exist (a one-line
    :class:`ConfigError` naming ``key`` otherwise), never silently replaced by the CPU."""
    if not re.match(DEVICE_PATTERN, name):
        raise ConfigError(
            f"config error: {key}: expected auto, cpu, cuda, cuda:N or mps, found {name!r}"
        )
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if _mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"config error: {key}: {name!r} asked, but no CUDA GPU is available "
                f"(torch {torch.__version__}); use 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"config error: {key}: {name!r} asked, but only {count} CUDA GPU(s) are "
                f"available (cuda:0 to cuda:{count - 1})"
            )
    if device.type == "mps" and not _mps_available():
        raise ConfigError(
            f"config error: {key}: 'mps' asked, but Apple's MPS backend is not available; "
            "use 'cpu' or 'auto'"
        )
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_precision(precision: str, device: torch.device, key: str = "train.precision") -> None:
    """Reject a precision the device cannot run: float16 autocast on the CPU needs a torch
    with CPU float16 kernels (2.3 and later have them), bfloat16 on CUDA a card that has it."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"config error: {key}: expected one of {', '.join(PRECISIONS)}, found {precision!r}"
        )
    if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"config error: {key}: 'bf16-mixed' asked, but {torch.cuda.get_device_name(device)} "
            "has no bfloat16 support; use '16-mixed' or '32'"
        )


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """The context in which a forward pass (and its losses) run under ``precision``: a
    ``torch.autocast`` region for the mixed precisions, nothing for ``"32"``."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """The dynamic loss scaler float16 training needs (None for the other precisions): its
    scale multiplies only the backward pass that forms the update; ``unscale_`` divides the
    gradients back before clipping, and steps whose gradients overflowed are skipped while the
    scale halves (PyTorch AMP's defaults: initial scale 2**16, growth every 2000 steps)."""
    if precision != "16-mixed":
        return None
    return torch.amp.GradScaler(device.type)


def to_device(tensors: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """``tensors`` on ``device``; a copy from pinned host memory to a GPU does not wait."""
    return {k: v.to(device, non_blocking=True) for k, v in tensors.items()}


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for one without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def to_cpu(value: Any) -> Any:
    """``value`` (nested dicts, lists and tuples of tensors) with every tensor on the CPU:
    what checkpoints hold, so they load on any machine."""
    if isinstance(value, Tensor):
        return value if value.device.type == "cpu" else value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


def compiled(module: torch.nn.Module) -> Callable[..., Any]:
    """``module``'s forward pass through ``torch.compile`` (TorchInductor; Ansel et al.,
    "PyTorch 2", ASPLOS 2024). Balancers and the gradient diagnostics back-propagate through
    one forward pass more than once (``retain_graph``), which AOTAutograd's donated buffers
    forbid; the backward graph compiles lazily at the first backward, so donation is turned
    off for the process (it only saves memory) rather than around the call."""
    from torch._functorch import config as functorch_config  # only needed when compiling

    functorch_config.donated_buffer = False
    forward: Callable[..., Any] = torch.compile(module)
    return forward
