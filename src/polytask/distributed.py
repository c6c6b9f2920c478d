"""Data parallelism on ``torch.distributed``: the process group, and the few collectives the
trainer, the balancers and the evaluation need.

A run launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) joins a process group in
:func:`launched` — gloo on the CPU, NCCL on CUDA GPUs, one process per device — and every layer
reaches it through :func:`collective`. Without a group, :func:`collective` returns
:data:`LOCAL`, whose operations are identities, so single-process code paths never branch on
"am I distributed?" beyond asking for the world size.

The contract, stated in ``docs/distributed.md`` and tested against one process: a run over W
ranks with a global batch of B rows computes what one process computes on those B rows, up to
float rounding. Every rank draws the same global batch (same seed, same generators) and keeps
its contiguous share of the rows (:meth:`Collective.share`); per-task losses are means over the
*global* count of valid labels; gradients are summed, not averaged, because each rank's loss is
already its share of the global mean.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor, nn

from polytask.config_errors import Schema

#: Gradients travel in buckets of at most this many bytes (one all-reduce each).
DEFAULT_BUCKET_BYTES = 25 * 2**20


class DistributedConfig(Schema):
    """``[distributed]``: how a run launched by ``torchrun`` shares its work (ignored by a
    single process)."""

    gramian: Literal["exact", "local"] = Field(
        default="exact",
        description="gradient balancers: exact = all-reduce the K per-task gradients and form "
        "the global Gramian (K x P numbers travel); local = average each rank's own Gramian "
        "(K x K numbers; a biased approximation whose error grows as the per-rank batch shrinks)",
    )
    sync_batchnorm: bool = Field(
        default=True,
        description="batch norm over the global batch (as one process computes it) rather than "
        "each rank's rows",
    )
    bucket_mb: float = Field(
        default=25.0, gt=0.0, le=4096.0, description="gradient all-reduce bucket size, MiB"
    )
    timeout_s: float = Field(
        default=1800.0, gt=0.0, le=86400.0, description="how long a collective waits for a rank"
    )

    @property
    def bucket_bytes(self) -> int:
        return int(self.bucket_mb * 2**20)


class Collective:
    """One process: every collective is the identity. :class:`ProcessGroup` overrides them."""

    rank: int = 0
    world_size: int = 1
    #: The run's ``[distributed]`` settings (defaults for one process).
    settings: DistributedConfig = DistributedConfig()
    #: Bytes reduced by this process so far (the benchmark's communication count).
    bytes_reduced: int = 0

    @property
    def active(self) -> bool:
        """Whether other ranks take part (the only question single-process code asks)."""
        return self.world_size > 1

    @property
    def writes(self) -> bool:
        """Whether this rank writes files (checkpoints, logs, the model directory): rank 0."""
        return self.rank == 0

    def share(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[start, stop)`` of ``n`` rows: sizes differ by at
        most one, larger shares first (``numpy.array_split``'s rule)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def sum_(self, tensors: Sequence[Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        """Replace every tensor by its sum over the ranks, in place."""

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        """Replace every tensor by rank 0's, in place."""

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` (picklable) on every rank."""
        return value

    def gather_rows(self, tensor: Tensor) -> Tensor:
        """Every rank's rows of ``tensor`` (its :meth:`share`), concatenated in rank order."""
        return tensor

    def first_error(self, message: str | None) -> str | None:
        """The message of the lowest rank that failed (``message`` not None), on every rank,
        so all of them stop with the same line instead of some waiting forever."""
        return message


#: The single-process collective.
LOCAL = Collective()


class ProcessGroup(Collective):
    """The collectives of an initialised ``torch.distributed`` process group."""

    def __init__(self, device: torch.device, settings: DistributedConfig) -> None:
        self.settings = settings
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        #: Where collectives run: the rank's GPU under NCCL, the CPU under gloo.
        self.device = device
        self.bytes_reduced = 0

    def sum_(self, tensors: Sequence[Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        for bucket in _buckets(list(tensors), bucket_bytes):
            if len(bucket) == 1 and bucket[0].is_contiguous():
                flat = bucket[0]
                dist.all_reduce(flat)
            else:
                flat = torch.cat([t.reshape(-1) for t in bucket])
                dist.all_reduce(flat)
                offset = 0
                for t in bucket:
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                    offset += t.numel()
            self.bytes_reduced += flat.numel() * flat.element_size()

    def broadcast_(self, tensors: Sequence[Tensor]) -> None:
        for t in tensors:
            dist.broadcast(t, src=0)

    def broadcast_object(self, value: Any) -> Any:
        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def gather_rows(self, tensor: Tensor) -> Tensor:
        sizes = torch.tensor([tensor.shape[0]], device=tensor.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.world_size)]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s) for s in all_sizes]
        longest = max(counts)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])

    def first_error(self, message: str | None) -> str | None:
        failed = torch.tensor([0 if message is None else 1], device=self.device)
        dist.all_reduce(failed)
        if int(failed) == 0:
            return None
        messages: list[str | None] = [None] * self.world_size
        dist.all_gather_object(messages, message)
        for rank, found in enumerate(messages):
            if found is not None:
                return found if rank == 0 else f"{found} (on rank {rank})"
        return None  # pragma: no cover - the flag said one rank failed

    def _object_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def _buckets(tensors: list[Tensor], limit: int) -> Iterator[list[Tensor]]:
    """``tensors`` in runs of one dtype and device of at most ``limit`` bytes (a larger tensor
    travels alone)."""
    bucket: list[Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (
            size + nbytes > limit or t.dtype != bucket[0].dtype or t.device != bucket[0].device
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


_current: Collective = LOCAL


def collective() -> Collective:
    """The process group this process belongs to (:data:`LOCAL` when there is none)."""
    return _current


def launched_world_size() -> int:
    """The ``WORLD_SIZE`` a launcher (``torchrun``) set, 1 without one."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(int(raw), 1)
    except ValueError:
        return 1


@contextmanager
def launched(
    device: str = "auto", settings: DistributedConfig | None = None
) -> Iterator[Collective]:
    """Join the process group ``torchrun`` describes in the environment for the duration of a
    command (nothing when ``WORLD_SIZE`` is 1 or unset).

    NCCL when the run's device is a CUDA GPU (each process takes the GPU of its
    ``LOCAL_RANK``), gloo otherwise. ``settings.timeout_s`` bounds how long a collective waits
    for a rank that stopped: long enough for a slow validation pass, short enough that a lost
    node ends the run.
    """
    global _current
    settings = settings or DistributedConfig()
    if launched_world_size() == 1:
        yield _current
        return
    if dist.is_initialized():  # a command inside a launched block: its own settings apply
        previous, _current.settings = _current.settings, settings
        try:
            yield _current
        finally:
            _current.settings = previous
        return
    use_gpu = device != "cpu" and device != "mps" and torch.cuda.is_available()
    if use_gpu:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        where = torch.device("cuda", local)
    else:
        where = torch.device("cpu")
    dist.init_process_group(
        backend="nccl" if use_gpu else "gloo", timeout=timedelta(seconds=settings.timeout_s)
    )
    _current = ProcessGroup(where, settings)
    try:
        yield _current
        # Every rank leaves together, rather than one tearing down its connections while rank
        # 0 still writes the run directory (a rank was seen to abort at exit, std::terminate,
        # without this).
        dist.barrier()
    finally:
        _current = LOCAL
        dist.destroy_process_group()


@contextmanager
def joined(group: Collective) -> Iterator[Collective]:
    """Make ``group`` the current collective for a block (tests that start their own group)."""
    global _current
    previous, _current = _current, group
    try:
        yield group
    finally:
        _current = previous


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation over the rows of every rank: the batch mean and variance are those
    of the global batch (sums all-reduced, differentiably), as one process computes them. The
    CPU's answer to ``nn.SyncBatchNorm``, which runs on GPUs only; the state dict is a plain
    batch norm's, so a model trained this way loads anywhere."""

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or _current.world_size == 1:
            return super().forward(input)
        self._check_input_dim(input)  # type: ignore[no-untyped-call]
        dims = [0, *range(2, input.dim())]
        count = torch.tensor(
            [input.numel() / max(input.shape[1], 1)], dtype=torch.float64, device=input.device
        )
        x = input.double()
        packed = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        # Differentiable: the backward sums every rank's gradient of the statistics.
        packed = _all_reduce_sum(packed)
        c = input.shape[1]
        n = packed[-1]
        mean = packed[:c] / n
        var = (packed[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var))
        shape = [1, c] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        out = out.to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


class _SumOverRanks(torch.autograd.Function):
    """``Σ_ranks x``, differentiable: the gradient of every rank's sum is the sum of the
    gradients reaching it on every rank."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    result: Tensor = _SumOverRanks.apply(tensor)  # type: ignore[no-untyped-call]
    return result


def global_batchnorm(module: nn.Module) -> int:
    """Make every batch norm in ``module`` normalise over the global batch (in place: the
    parameters and buffers stay the same objects); returns how many were converted."""
    converted = 0
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, GlobalBatchNorm):
            base = type(m)
            m.__class__ = _global_class(base)
            converted += 1
    return converted


_GLOBAL_CLASSES: dict[type, type] = {}


def _global_class(base: type) -> type:
    if base not in _GLOBAL_CLASSES:
        _GLOBAL_CLASSES[base] = type(f"Global{base.__name__}", (GlobalBatchNorm, base), {})
    return _GLOBAL_CLASSES[base]
