"""What a feature built on the plain run changes: :class:`RunVariant`.

Distillation and fine-tuning are runs like any other, with a few named differences: the
rows carry soft targets, the step's loss mixes them in, the model is measured against another
reference than single-task nets, the results and the model directory record more. The pipeline
reads those differences from a variant and never asks which feature it is running.

A study that changes every run of a config section (``[distill]`` with teachers makes
``polytask train`` distil) registers a provider with :func:`register_variant`; the pipeline asks
the providers for the variant of a configuration it was not given one for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from polytask.config import RunConfig
from polytask.data.prepare import PreparedData, SoftTargets
from polytask.data.tensors import TensorData
from polytask.losses import BatchLoss
from polytask.models.model import MultiTaskModel
from polytask.tasks import Task

#: The reference a plain run's model is compared with.
SINGLE_TASK_REFERENCE = "single-task"


@dataclass
class RunVariant:
    """The differences from a plain run (every field's default is the plain run).

    Attributes:
        soft_targets: computes per-row outputs (a teacher's) that ride along with the rows.
        loss: the step's loss for the run's tasks (default: the masked label loss).
        reference_name: what the model is compared with in ``results.json``.
        reference: the reference's metrics of the tasks on the evaluation split; None trains
            single-task baselines (when the run asks for them).
        summary: extra ``results.json`` entries, from the trained model and the reference's
            metrics.
        lineage: what ``lineage.json`` records of the model's origin, from the prepared data.
    """

    soft_targets: SoftTargets | None = None
    loss: Callable[[list[Task]], BatchLoss] | None = None
    reference_name: str = SINGLE_TASK_REFERENCE
    reference: Callable[[list[Task], TensorData], dict[str, dict[str, float]]] | None = None
    summary: Callable[[MultiTaskModel, dict[str, dict[str, float]]], dict[str, Any]] | None = None
    lineage: Callable[[PreparedData], dict[str, Any]] | None = None


#: ``(config, console) -> variant or None``: a study's rule for the runs it changes.
VariantProvider = Callable[[RunConfig, Console | None], RunVariant | None]
_PROVIDERS: list[VariantProvider] = []


def register_variant(provider: VariantProvider) -> VariantProvider:
    """Register a provider; usable as a decorator. Providers are asked in registration order
    and the first variant returned wins."""
    _PROVIDERS.append(provider)
    return provider


def variant_for(cfg: RunConfig, console: Console | None = None) -> RunVariant:
    """The variant the registered providers make of ``cfg``: the plain run when none does."""
    for provider in _PROVIDERS:
        variant = provider(cfg, console)
        if variant is not None:
            return variant
    return RunVariant()
