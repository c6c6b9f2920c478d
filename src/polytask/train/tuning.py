"""A ``[finetune]`` policy applied to a model about to train: freeze, per-group learning
rates, gradual unfreezing. Used by ``polytask finetune`` and, for a model built with a
pretrained encoder (``minilm``, ``hf``, ``timm``: docs/backbones.md), by ``polytask train``
(:func:`tune_training_run`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from polytask.balance.base import Balancer
from polytask.errors import ConfigError
from polytask.models.model import MultiTaskModel
from polytask.tasks import Task
from polytask.train.config import FinetuneConfig
from polytask.train.freeze import FreezePlan, parameter_groups, plan_freeze
from polytask.train.trainer import Callback
from polytask.train.unfreeze import GradualUnfreezing

#: The [finetune] keys that shape training (the others concern a base model's tasks).
TRAINING_KEYS = (
    "freeze",
    "layers",
    "shared_lr_scale",
    "head_lr_scale",
    "layer_lr_decay",
    "unfreeze",
    "unfreeze_every",
)


@dataclass
class Tuning:
    """A freeze plan applied to a model, the optimiser groups and the unfreezing callback."""

    plan: FreezePlan
    param_groups: list[dict[str, Any]]
    unfreezing: GradualUnfreezing | None = None
    callbacks: list[Callback] = field(default_factory=list)


def tune(
    policy: FinetuneConfig,
    model: MultiTaskModel,
    tasks: list[Task],
    architecture: str,
    balancer: Balancer,
    fixed_tasks: Iterable[str] = (),
) -> Tuning:
    """Apply the ``[finetune]`` ``policy`` to ``model`` before it trains on ``tasks`` with
    ``balancer``; ``fixed_tasks`` (a base model's tasks kept but not trained) are frozen
    throughout. Every check of the policy against the model happens here, so callers run it
    before writing anything."""
    plan = plan_freeze(model, policy, architecture, fixed_tasks)
    plan.apply(model, 0)
    _check_balancer(balancer, model, policy)
    groups = parameter_groups(model, plan, policy, [t.name for t in tasks])
    if policy.unfreeze != "gradual":
        return Tuning(plan, groups)
    unfreezing = GradualUnfreezing(model, plan, policy.unfreeze_every)
    return Tuning(plan, groups, unfreezing, [unfreezing])


def _check_balancer(balancer: Balancer, model: MultiTaskModel, policy: FinetuneConfig) -> None:
    balancer.check_model(model)  # e.g. GradNorm's layer frozen: the trainer would fail later
    if balancer.needs_gradients and not any(p.requires_grad for p in model.shared_parameters()):
        raise ConfigError(
            f"config error: balancer.name: {balancer.name!r} balances the tasks' gradients "
            f"of the shared parameters, and finetune.freeze = {policy.freeze!r} freezes them "
            "all at the start; use a loss-level balancer (e.g. 'static') or freeze less"
        )


def tunes_training(policy: FinetuneConfig) -> bool:
    """Whether a training run applies ``policy``: one of its training keys differs from the
    default. (The default freezes the whole encoder, what ``polytask finetune`` does by
    default; a training run freezes nothing unless asked to, so a run that only wants the
    encoder frozen uses the encoder's own option, e.g. ``minilm``'s ``train_layers = 0``.)"""
    default = FinetuneConfig()
    return any(getattr(policy, key) != getattr(default, key) for key in TRAINING_KEYS)


def tune_training_run(
    policy: FinetuneConfig,
    model: MultiTaskModel,
    tasks: list[Task],
    architecture: str,
    balancer: Balancer,
) -> Tuning | None:
    """The ``[finetune]`` policy of a ``polytask train`` run applied to its freshly built
    ``model`` (meant for a pretrained encoder such as ``hf`` or ``timm``: freeze some layers, lower
    its learning rate, unfreeze it gradually), or None when the run sets no such option."""
    if not tunes_training(policy):
        return None
    return tune(policy, model, tasks, architecture, balancer)
