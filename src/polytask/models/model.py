"""The multi-task model: a sharing architecture whose outputs are shaped per task kind."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from polytask.data.spec import InputSpec
from polytask.models.architectures import ARCHITECTURES, Architecture
from polytask.models.conditioning import PreferenceConditioning
from polytask.models.config import ModelConfig
from polytask.models.encoders import ENCODERS, Encoder
from polytask.models.heads import CustomHead, HeadFactory, HeadParams, HeadSpec
from polytask.tasks import Task


class MultiTaskModel(nn.Module):
    """Maps inputs to one raw output per task: logits for classification kinds (``[B]`` for
    binary, ``[B, C]`` multiclass, ``[B, L]`` multilabel, ``[B, C, H, W]`` segmentation) and
    standardised values (``[B]`` regression, ``[B, H, W]`` dense regression)."""

    def __init__(
        self,
        architecture: Architecture,
        tasks: list[Task],
        conditioning: PreferenceConditioning | None = None,
    ) -> None:
        super().__init__()
        self.architecture = architecture
        #: How a preference over the tasks enters (None: the model takes none); see
        #: :mod:`polytask.models.conditioning`.
        self.conditioning = conditioning
        #: The preference the next forward passes use (``[K]`` or ``[B, K]``); None = uniform.
        #: Set by the training method each step and by the predictor; not saved.
        self.preference: Tensor | None = None
        # A plain list, not registered: these modules are the model's own, counted once.
        self._eval_only: list[nn.Module] = []
        # The single output channel a head produces for these kinds is dropped.
        self._squeeze_dim = {t.name: dim for t in tasks if (dim := t.spec.squeeze_dim) is not None}

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

    @property
    def preference_conditioned(self) -> bool:
        return self.conditioning is not None

    @contextmanager
    def preferring(self, preference: Sequence[float] | Tensor | None) -> Iterator[None]:
        """Forward passes inside the block use ``preference`` (a conditioned model only)."""
        before = self.preference
        self.preference = None if preference is None else torch.as_tensor(preference).float()
        try:
            yield
        finally:
            self.preference = before

    def _conditioned(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.conditioning is None:
            return inputs
        return self.conditioning.prepare(inputs, self.preference)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        raw = self.architecture(self._conditioned(inputs))
        return {k: self._shape(k, v) for k, v in raw.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        # The FiLM generator modulates the shared layers: its parameters are shared.
        extra = list(self.conditioning.parameters()) if self.conditioning is not None else []
        return self.architecture.shared_parameters() + extra

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return self.architecture.task_parameters(task)

    def shared_modules(self) -> list[nn.Module]:
        extra = [self.conditioning] if self.conditioning is not None else []
        return self.architecture.shared_modules() + [m for m in extra if any(m.parameters())]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return self.architecture.last_shared_parameters()

    def regularizer(self) -> Tensor | None:
        """The architecture's penalty on its parameters (soft sharing's coupling), or None."""
        return self.architecture.regularizer()

    @property
    def single_representation(self) -> bool:
        return self.architecture.single_representation

    def represent(self, inputs: dict[str, Tensor]) -> Tensor:
        """The shared representation (architectures with ``single_representation`` only),
        conditioned on :attr:`preference` for a preference-conditioned model."""
        return self.architecture.represent(self._conditioned(inputs))

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

    conditioning = None
    if cfg.preference_conditioning != "none":
        conditioning = PreferenceConditioning(cfg.preference_conditioning, len(tasks), spec)
    enc_spec = conditioning.encoder_spec(spec) if conditioning is not None else spec

    head = HeadParams.model_validate(cfg.head.model_dump())
    size = (spec.shape[-2], spec.shape[-1]) if spec.kind == "image" else None
    specs = {
        t.name: HeadSpec(t.n_outputs, t.dense, _custom_head(t, size), t.spec.token_level)
        for t in tasks
    }
    heads = HeadFactory(specs, head, size)

    def make_encoder() -> Encoder:
        encoder = enc_entry.factory(enc_spec, enc_params)
        # Architectures build an encoder before the heads that read it: the heads learn here
        # whether they read word vectors (pooled for sentence-level tasks) or one vector.
        heads.sequence = encoder.sequence
        return encoder

    with _seeded(seed):
        architecture = arch_entry.factory(make_encoder, heads, arch_params)
        if conditioning is not None:
            conditioning.attach(architecture)
    return MultiTaskModel(architecture, tasks, conditioning)


def _custom_head(task: Task, size: tuple[int, int] | None) -> CustomHead:
    """The task kind's head builder bound to ``task`` and the image input's ``size`` (it
    returns None for the standard head)."""

    def build(in_dim: int, spatial: bool, params: HeadParams) -> nn.Module | None:
        return task.spec.make_head(task, in_dim, spatial, params, size)

    return build


class _seeded:
    """Initialise parameters from ``seed`` without disturbing the caller's global RNG."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._state = torch.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._state)
