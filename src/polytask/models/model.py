"""The multi-task model: a sharing architecture whose outputs are shaped per task kind."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytask.config import ModelConfig
from polytask.models.architectures import ARCHITECTURES, Architecture
from polytask.models.encoders import ENCODERS, Encoder, InputSpec
from polytask.models.heads import HeadFactory, HeadParams, HeadSpec
from polytask.tasks import Task


class MultiTaskModel(nn.Module):
    """Maps inputs to one raw output per task: logits for classification kinds (``[B]`` for
    binary, ``[B, C]`` multiclass, ``[B, L]`` multilabel, ``[B, C, H, W]`` segmentation) and
    standardised values (``[B]`` regression, ``[B, H, W]`` dense regression)."""

    def __init__(self, architecture: Architecture, tasks: list[Task]) -> None:
        super().__init__()
        self.architecture = architecture
        # A plain list, not registered: these modules are the model's own, counted once.
        self._eval_only: list[nn.Module] = []
        # The single output channel a head produces for these kinds is dropped.
        self._squeeze_dim = {
            t.name: -1 if t.kind in ("binary", "regression") else 1
            for t in tasks
            if t.kind in ("binary", "regression", "dense_regression")
        }

    def keep_in_eval(self, modules: list[nn.Module]) -> None:
        """Keep ``modules`` in eval mode while the model trains (frozen layers: their batch-norm
        running statistics must not move and their dropout must not fire, or a frozen part
        would still change what it computes); an empty list releases them all."""
        self._eval_only = list(modules)
        self.train(self.training)

    def train(self, mode: bool = True) -> MultiTaskModel:
        super().train(mode)
        for module in self._eval_only:
            module.train(False)
        return self

    def _shape(self, task: str, raw: Tensor) -> Tensor:
        dim = self._squeeze_dim.get(task)
        return raw if dim is None else raw.squeeze(dim)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        raw = self.architecture(inputs)
        return {k: self._shape(k, v) for k, v in raw.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.architecture.shared_parameters()

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return self.architecture.task_parameters(task)

    def shared_modules(self) -> list[nn.Module]:
        return self.architecture.shared_modules()

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return self.architecture.last_shared_parameters()

    def regularizer(self) -> Tensor | None:
        """The architecture's penalty on its parameters (soft sharing's coupling), or None."""
        return self.architecture.regularizer()

    @property
    def single_representation(self) -> bool:
        return self.architecture.single_representation

    def represent(self, inputs: dict[str, Tensor]) -> Tensor:
        """The shared representation (architectures with ``single_representation`` only)."""
        return self.architecture.represent(inputs)

    def task_output(self, task: str, z: Tensor) -> Tensor:
        """Task ``task``'s output from the representation ``z``, shaped like ``forward``'s."""
        return self._shape(task, self.architecture.task_forward(task, z))


def build_model(tasks: list[Task], spec: InputSpec, cfg: ModelConfig, seed: int) -> MultiTaskModel:
    """Build the encoder(s), architecture and heads named in ``cfg``, initialised from ``seed``."""
    enc_entry = ENCODERS.get(cfg.encoder.name)
    enc_params = ENCODERS.validate_params(cfg.encoder.name, cfg.encoder.params(), "model.encoder")
    arch_entry = ARCHITECTURES.get(cfg.architecture.name)
    arch_params = ARCHITECTURES.validate_params(
        cfg.architecture.name, cfg.architecture.params(), "model.architecture"
    )

    def make_encoder() -> Encoder:
        return enc_entry.factory(spec, enc_params)

    head = HeadParams.model_validate(cfg.head.model_dump())
    specs = {t.name: HeadSpec(t.n_outputs, t.dense) for t in tasks}
    size = (spec.shape[-2], spec.shape[-1]) if spec.kind == "image" else None
    heads = HeadFactory(specs, head, size)
    with _seeded(seed):
        architecture = arch_entry.factory(make_encoder, heads, arch_params)
    return MultiTaskModel(architecture, tasks)


class _seeded:
    """Initialise parameters from ``seed`` without disturbing the caller's global RNG."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._state = torch.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._state)
