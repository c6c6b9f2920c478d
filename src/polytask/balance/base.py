"""Loss balancers: how the tasks' losses become one parameter update.

A balancer receives the losses of the tasks present in the batch and performs the backward pass
itself. Loss-level methods weight the losses and call one ``backward``; gradient-level methods
(a later addition) need per-task gradients, and doing the backward inside the balancer keeps the
trainer free of any knowledge of which kind it is running. The trainer reads only the declared
capabilities below (``needs_gradients``, ``changes_forward``), never a method's name, and never
writes into a balancer: :meth:`Balancer.backward` returns what it measured as a
:class:`BackwardResult`.

State that must survive a resume lives in buffers or parameters, so ``state_dict()`` captures it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.balance.diagnostics import TaskGramian
from polytask.config_errors import Schema
from polytask.distributed import LOCAL, Collective
from polytask.errors import ConfigError
from polytask.models.heads import stacked_outputs
from polytask.registry import Registry
from polytask.tasks import Task

if TYPE_CHECKING:
    from polytask.models.model import MultiTaskModel


@dataclass(frozen=True)
class BackwardResult:
    """What one :meth:`Balancer.backward` did: the weight applied to each present task and,
    on a step that measured the tasks' gradients (gradient-level methods at each weight
    update), their Gramian and norms, which the trainer's gradient diagnostics log."""

    weights: dict[str, float]
    #: The Gramian of the per-task gradients the step weighted (None: none measured).
    gramian: TaskGramian | None = None
    #: Norm of each task's gradient at that step (empty: none measured).
    grad_norms: dict[str, float] = field(default_factory=dict)
    #: Data parallelism: the shared parameters' gradients are already the global batch's
    #: (summed over the ranks by the method itself), so the trainer must not sum them again.
    shared_reduced: bool = False


class Balancer(nn.Module):
    """Base class: combine per-task losses and back-propagate."""

    #: Needs per-task gradients of the shared parameters (several backward passes or a Gramian).
    needs_gradients: ClassVar[bool] = False
    #: Must run the training forward pass itself (:meth:`forward`): a split at the shared
    #: representation, gradient hooks, preference conditioning. Otherwise the trainer calls
    #: the model directly.
    changes_forward: ClassVar[bool] = False
    #: Keeps state across steps (in buffers), saved in checkpoints.
    stateful: ClassVar[bool] = False

    def __init__(self, tasks: list[Task]) -> None:
        super().__init__()
        #: The registered name it was built under (set by :func:`build_balancer`; messages).
        self.name = type(self).__name__
        self.task_names = [t.name for t in tasks]
        #: float16 mixed precision: the gradient scaler's factor, set by the trainer before
        #: each backward (None otherwise). It multiplies only the backward passes that form
        #: the update (:meth:`scaled`), so the losses, gradients and Gramians a method weighs
        #: stay unscaled; the trainer divides the gradients back before clipping.
        self.grad_scale: Tensor | None = None
        #: The ranks of a data-parallel run (set by the trainer; one process by default).
        #: Losses reach :meth:`backward` as the global batch's means on every rank; a method
        #: that measures gradients itself sums them over the ranks through it.
        self.collective: Collective = LOCAL

    def forward(self, model: MultiTaskModel, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run ``model`` on a training batch. A balancer declaring ``changes_forward``
        overrides this (per-task gradient hooks, a split at the shared representation,
        preference conditioning); the trainer calls it only then."""
        outputs: dict[str, Tensor] = model(inputs)
        return outputs

    def check_model(self, model: MultiTaskModel) -> None:
        """Raise :class:`ConfigError` if this balancer cannot train ``model``."""

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover
        """Weight of each present task's loss (loss-level methods)."""
        raise NotImplementedError

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The scalar to back-propagate and the weight given to each present task."""
        weights = self.weights(losses)
        return weighted_sum(losses, torch.stack([weights[k] for k in losses])), weights

    def scaled(self, value: Tensor) -> Tensor:
        """``value`` times the float16 gradient scale (itself without one): what an update's
        backward pass starts from (:attr:`grad_scale`)."""
        return value if self.grad_scale is None else value * self.grad_scale

    def backward(self, losses: dict[str, Tensor], model: MultiTaskModel) -> BackwardResult:
        """Back-propagate the combined loss; return the weight applied to each task."""
        total, weights = self.combine(losses)
        self.scaled(total).backward()  # type: ignore[no-untyped-call]
        return BackwardResult(as_floats(weights))

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        """Called by the trainer after each epoch with the tasks' mean training losses
        (NaN for a task that had no label in the epoch). Epoch-level methods update here."""


def weighted_sum(losses: dict[str, Tensor], weights: Tensor) -> Tensor:
    """``Σ_k w_k L_k`` over ``losses``' order, ``weights`` a vector in that order.

    One stack and one product, not K products and a stack of them: with K = 100 tasks the
    per-task autograd nodes cost more than the arithmetic. The products and their sum are the
    ones ``torch.stack([w_k * L_k ...]).sum()`` computes, so the value and every gradient are
    the same bit for bit. Losses that are the rows of one vector (the stacked losses of
    :func:`polytask.losses.task_losses`) are read as that vector, not stacked again: the sum is
    then a function of the parameters through that vector, not of the K loss tensors
    (differentiate it with respect to parameters, not losses)."""
    rows = stacked_outputs(list(losses.values()))
    values = rows.whole() if rows is not None else torch.stack(list(losses.values()))
    # Weights held on the CPU (a 0-dim tensor each used to broadcast onto any device).
    return (weights.to(values.device) * values).sum()


def as_floats(weights: dict[str, Tensor]) -> dict[str, float]:
    """The (single-element) weights as Python floats, read in one transfer rather than one per
    task."""
    tensors = [w.detach().reshape(1) for w in weights.values()]
    if not tensors or any(t.device != tensors[0].device for t in tensors):
        return {k: float(t) for k, t in zip(weights, tensors, strict=True)}
    return dict(zip(weights, torch.cat(tensors).tolist(), strict=True))


BalancerFactory = Callable[[list[Task], BaseModel], Balancer]
BALANCERS: Registry[BalancerFactory] = Registry("balancer")


def build_balancer(name: str, params: dict[str, Any], tasks: list[Task]) -> Balancer:
    """The balancer ``name`` for ``tasks``; bad parameters fail naming ``balancer.<key>``."""
    validated = BALANCERS.validate_params(name, params, "balancer")
    balancer = BALANCERS.get(name).factory(tasks, validated)
    balancer.name = name
    return balancer


#: Sets of present tasks whose weight vectors :class:`StaticWeights` keeps (missing labels make
#: the set vary from batch to batch; a bound keeps memory flat whatever the data).
_CACHED_TASK_SETS = 64


class StaticParams(Schema):
    weights: dict[str, float] | None = Field(
        default=None, description="per-task weights; default: each task's own `weight`"
    )


class StaticWeights(Balancer):
    """Fixed weights: L = sum_k w_k L_k (the classic weighted-sum scalarisation)."""

    def __init__(self, tasks: list[Task], weights: dict[str, float]) -> None:
        super().__init__(tasks)
        self._w = {k: torch.tensor(float(v)) for k, v in weights.items()}
        #: Per set of present tasks (in order) and device: the weight vector, the weights as
        #: tensors and as floats. Built once: every step without missing labels has one set.
        self._by_tasks: dict[
            tuple[tuple[str, ...], torch.device],
            tuple[Tensor, dict[str, Tensor], dict[str, float]],
        ] = {}

    def weights(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: self._w[k] for k in losses}

    def _for(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], dict[str, float]]:
        device = next(iter(losses.values())).device
        key = (tuple(losses), device)
        found = self._by_tasks.get(key)
        if found is None:
            tensors = self.weights(losses)
            found = (torch.stack(list(tensors.values())).to(device), tensors, as_floats(tensors))
            # (A subclass computing its weights afresh each step is asked each step.)
            fixed = type(self).weights is StaticWeights.weights
            if fixed and len(self._by_tasks) < _CACHED_TASK_SETS:
                self._by_tasks[key] = found
        return found

    def combine(self, losses: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        vector, tensors, _ = self._for(losses)
        return weighted_sum(losses, vector), dict(tensors)

    def backward(self, losses: dict[str, Tensor], model: MultiTaskModel) -> BackwardResult:
        vector, _, floats = self._for(losses)
        self.scaled(weighted_sum(losses, vector)).backward()  # type: ignore[no-untyped-call]
        return BackwardResult(dict(floats))


@BALANCERS.register("static", params=StaticParams, summary="fixed per-task weights (default)")
def build_static(tasks: list[Task], params: BaseModel) -> Balancer:
    assert isinstance(params, StaticParams)
    weights = {t.name: t.weight for t in tasks}
    if params.weights is not None:
        unknown = sorted(set(params.weights) - set(weights))
        if unknown:
            raise ConfigError(
                f"balancer.weights: unknown task {unknown[0]!r}; tasks: {', '.join(weights)}"
            )
        weights.update(params.weights)
    return StaticWeights(tasks, weights)


@BALANCERS.register("equal", summary="every task weighted 1")
def build_equal(tasks: list[Task], params: BaseModel) -> Balancer:
    declared = [t.name for t in tasks if t.weight != 1.0]
    if declared:
        raise ConfigError(
            f"balancer 'equal' ignores task weights, but task {declared[0]!r} declares one; "
            "use balancer 'static' or drop the weight"
        )
    return StaticWeights(tasks, {t.name: 1.0 for t in tasks})
