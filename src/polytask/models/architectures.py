"""Sharing architectures: how the tasks' networks share parameters.

Each architecture declares which parameters are shared and which belong to each task, and
whether it computes a single shared representation (what representation-level gradient methods
need). Registered in :data:`ARCHITECTURES`; the model builder looks the name up and never
branches on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel
from torch import Tensor, nn

from polytask.models.encoders import Encoder
from polytask.models.heads import HeadParams, Tower
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


ArchitectureFactory = Callable[
    [Callable[[], Encoder], dict[str, int], HeadParams, BaseModel], Architecture
]
ARCHITECTURES: Registry[ArchitectureFactory] = Registry("architecture")


class HardSharing(Architecture):
    """Hard parameter sharing (Caruana, 1997): one shared encoder, one tower per task."""

    single_representation = True

    def __init__(self, encoder: Encoder, out_dims: dict[str, int], head: HeadParams) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(
            {name: Tower(encoder.out_dim, dim, head) for name, dim in out_dims.items()}
        )

    def represent(self, inputs: dict[str, Tensor]) -> Tensor:
        """The shared representation every head reads."""
        z: Tensor = self.encoder(inputs)
        return z

    def heads_forward(self, z: Tensor) -> dict[str, Tensor]:
        return {name: head(z) for name, head in self.heads.items()}

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
    out_dims: dict[str, int],
    head: HeadParams,
    params: BaseModel,
) -> Architecture:
    return HardSharing(make_encoder(), out_dims, head)
