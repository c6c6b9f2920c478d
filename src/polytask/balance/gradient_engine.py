"""The per-task gradient engine behind every gradient-level balancing method.

Gradient-level methods (MGDA, PCGrad, CAGrad, UPGrad, Nash-MTL, ...) look at the tasks' gradients
of the shared parameters, not only at their losses. Almost all of them need only the K × K Gramian
``G = J Jᵀ`` of the task Jacobian ``J`` (one row per task): they turn ``G`` into task weights
``w`` and the update of the shared parameters is ``Jᵀ w``, which one ordinary backward pass of
``Σ_k w_k L_k`` produces. The engine therefore never builds the K × P Jacobian for them:

``exact``
    ``G`` over the shared parameters, accumulated layer by layer from the tasks' gradients at
    each shared layer's output (:mod:`polytask.balance.gramian`, the identity behind torchjd's
    autogram engine): one batched backward of the K directions through the layers' inputs
    only, no per-task weight gradient where the kernel form is cheaper, no K × P matrix. The
    update ``Jᵀ w`` is then formed layer by layer from the same output gradients
    (:meth:`GramianRecorder.backward`), not by a second backward through the shared layers.
``representation``
    ``G`` of the gradients with respect to the shared representation ``z`` (the MGDA-UB upper
    bound of Sener & Koltun, NeurIPS 2018): each head reads its own detached copy of ``z``, so a
    single backward through the heads yields every task's ``∂L_k/∂z``; the trunk then receives
    one backward of the aggregated gradient. Needs an architecture with a single shared
    representation; :meth:`GradientBalancer.check_model` rejects the others at build time.

Options common to every method: ``update_every`` recomputes the weights every T steps and reuses
them in between (one plain weighted backward on those steps), and ``task_subset`` draws S of the
present tasks per step (the others sit the step out), which bounds the cost for many tasks.

Task-specific parameters always receive the plain gradient of their own task's loss, as in the
methods' papers and in torchjd's ``mtl_backward``; only the shared parameters get ``Jᵀ w``.
A task without a valid label in the batch is simply not in ``losses`` and takes no part.

Data parallelism (``torchrun``; :mod:`polytask.distributed`). Each rank's loss is its share of
the global batch's mean, so the global Jacobian is the *sum* of the ranks' Jacobians, and its
Gramian is not the average of the ranks' Gramians (that misses every cross-rank term: it is
biased, and its weights change with the number of ranks). ``distributed.gramian``:

``exact`` (default)
    In ``exact`` mode each rank computes its K per-task gradients of the shared parameters,
    one all-reduce sums them (K × P numbers instead of the P of plain data parallelism), and
    the global Gramian and the update ``Jᵀ w`` both come from the summed matrix: no second
    all-reduce. (The layer-wise Gramian of one process is not used here: its cross-rank terms
    ``⟨δ_{k,r}ᵀ a_r, δ_{l,s}ᵀ a_s⟩`` would need every rank's layer inputs and output
    gradients.) In ``representation`` mode the representations of different ranks are
    different coordinates, so the global Gramian *is* the sum of the ranks' K × K Gramians:
    exact at K² numbers of communication.
``local``
    ``exact`` mode's Gramian from each rank's own gradients, rescaled to the global loss and
    averaged over the ranks (K² numbers): a named approximation whose bias
    ``benchmarks/run_distributed.py`` measures.

Every rank computes the weights; a solver that fails on any rank stops all of them with the
same line, and rank 0's weights are broadcast so the ranks cannot drift apart.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from polytask.balance.base import BackwardResult, Balancer
from polytask.balance.diagnostics import TaskGramian, task_jacobian
from polytask.balance.gramian import GramianRecorder
from polytask.config_errors import Schema, Steps
from polytask.distributed import GlobalBatchNorm
from polytask.errors import ConfigError, PolytaskError
from polytask.tasks import Task

if TYPE_CHECKING:
    from polytask.models.model import MultiTaskModel

GradientMode = Literal["exact", "representation"]
GRADIENT_MODES: tuple[GradientMode, ...] = ("exact", "representation")


class EngineParams(Schema):
    """How per-task gradients are obtained; every gradient-level method accepts these keys."""

    mode: GradientMode = Field(
        default="exact",
        description="exact: Gramian over shared parameters; representation: over the shared "
        "representation (MGDA-UB style, cheaper)",
    )
    update_every: Steps = Field(
        default=1, description="recompute the weights every T steps, reuse in between"
    )
    task_subset: int | None = Field(
        default=None, ge=1, description="draw this many present tasks per step (default: all)"
    )


class GramianWeighting(nn.Module):
    """Turns the Gramian of the present tasks' gradients into their weights.

    ``forward(gramian, losses, tasks)``: ``gramian`` is ``[k, k]``, ``losses`` the present tasks'
    detached losses ``[k]`` and ``tasks`` their indices in the full task list (for methods that
    keep per-task state). Returns ``[k]`` weights.
    """

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


class MatrixAggregator(nn.Module):
    """A method that needs the gradient matrix itself (``[k, n]``), not only its Gramian, and
    returns the aggregated ``[n]`` vector (GradDrop). Only practical in ``representation``
    mode, where ``n`` is the size of the representation, not of the network."""

    def forward(self, matrix: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


class GradientBalancer(Balancer):
    """A gradient-level balancing method run by the engine described in the module docstring."""

    needs_gradients = True
    #: The forward pass sets up the step's per-task gradients (hooks or a split at ``z``).
    changes_forward = True
    steps: Tensor
    cached: Tensor

    def __init__(
        self,
        tasks: list[Task],
        method: GramianWeighting | MatrixAggregator,
        engine: EngineParams,
        name: str,
    ) -> None:
        super().__init__(tasks)
        if isinstance(method, MatrixAggregator) and engine.mode != "representation":
            raise ConfigError(
                f"balancer {name!r} needs the gradient matrix, which only mode 'representation' "
                f"provides; set balancer.mode = 'representation' (got {engine.mode!r})"
            )
        self.method = method
        self.engine = engine
        self.name = name
        self._index = {n: i for i, n in enumerate(self.task_names)}
        #: This step takes the global per-task gradients of a data-parallel ``exact`` run.
        self._jacobian_step = False
        #: Number of backward calls so far (drives ``update_every``); saved with the state.
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        #: Last computed weight per task (NaN = never computed), reused between updates.
        self.register_buffer("cached", torch.full((len(tasks),), math.nan, dtype=torch.float64))
        self._recorder: GramianRecorder | None = None
        self._representation: Tensor | None = None
        self._task_inputs: dict[str, Tensor] = {}

    # -- build-time checks -------------------------------------------------------------------
    def check_model(self, model: MultiTaskModel) -> None:
        """Reject a model or mode this method cannot serve, naming the valid choices."""
        if self.collective.active and isinstance(self.method, MatrixAggregator):
            raise ConfigError(
                f"balancer {self.name!r} combines the gradient matrix coordinate by coordinate "
                "with random draws, which a data-parallel run cannot reproduce from its ranks' "
                "shares; use a Gramian-based balancer (e.g. 'upgrad', 'mgda') under torchrun"
            )
        if not model.shared_parameters():
            arch = type(getattr(model, "architecture", model)).__name__
            raise ConfigError(
                f"balancer {self.name!r} balances the tasks' gradients of shared parameters, "
                f"and {arch} shares none; use a loss-level balancer (e.g. 'static')"
            )
        if self.engine.mode == "representation" and not getattr(
            model, "single_representation", False
        ):
            arch = type(getattr(model, "architecture", model)).__name__
            raise ConfigError(
                f"balancer.mode 'representation' needs an architecture with a single shared "
                f"representation, and {arch} has none; use balancer.mode 'exact'"
            )

    # -- the step ----------------------------------------------------------------------------
    def _computes_now(self) -> bool:
        return int(self.steps) % self.engine.update_every == 0

    def forward(self, model: MultiTaskModel, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run the model so that this step's per-task gradients can be taken."""
        if self._recorder is not None:  # a step without any label never reached backward
            self._recorder.close()
        self._recorder, self._representation, self._task_inputs = None, None, {}
        self._jacobian_step = False
        if not (torch.is_grad_enabled() and self._computes_now()):
            return super().forward(model, inputs)
        group = self.collective
        if group.active and self.engine.mode == "exact" and group.settings.gramian == "exact":
            # The global Jacobian needs each rank's K gradients themselves (module docstring).
            self._jacobian_step = True
            return super().forward(model, inputs)
        if self.engine.mode == "exact":
            # Hooks on the shared layers for this forward pass only: reuse steps and
            # evaluation run untracked.
            self._recorder = GramianRecorder(model.shared_modules())
        if not model.single_representation:
            return super().forward(model, inputs)
        z = model.represent(inputs)
        self._representation = z
        outputs = {}
        for name in self.task_names:
            # A separate leaf per task: one backward through the heads gives every ∂L_k/∂z.
            leaf = z.detach().requires_grad_()
            self._task_inputs[name] = leaf
            outputs[name] = model.task_output(name, leaf)
        return outputs

    def backward(self, losses: dict[str, Tensor], model: MultiTaskModel) -> BackwardResult:
        """The weighted backward; on a step that computed weights, the result carries the
        Gramian that was weighted and the tasks' gradient norms."""
        names = self._draw_subset(list(losses))
        stacked = torch.stack([losses[n] for n in names])
        idx = [self._index[n] for n in names]
        recorder, self._recorder = self._recorder, None
        jacobian_step, self._jacobian_step = self._jacobian_step, False
        computing = recorder is not None or self._representation is not None or jacobian_step
        self.steps += 1
        if jacobian_step:
            return self._jacobian_backward(stacked, names, idx, model)
        if not computing:
            reused = self._weighted_backward(stacked, names, self._reused_weights(idx), model)
            return BackwardResult(reused)
        if self._representation is not None:
            return self._split_backward(stacked, names, idx, model, recorder)
        assert recorder is not None  # exact mode on an architecture without one representation
        eye = torch.eye(len(names), dtype=stacked.dtype, device=stacked.device)
        gramian = self._reduced(recorder.gramian(stacked, eye), exact=False)
        weights, measured = self._weigh(gramian, stacked, idx)
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        if self.grad_scale is None and recorder.covers(shared):
            # As in _split_backward: the shared layers' gradients from the output gradients
            # the Gramian already needed; the heads then get their own task's gradient.
            # (Under float16 those output gradients come from the unscaled losses, so the
            # update takes the scaled backward below, where small gradients cannot underflow.)
            recorder.backward(self.scaled(weights))
            own = [p for n in names for p in model.task_parameters(n) if p.requires_grad]
            if own:
                torch.autograd.backward(self.scaled(stacked.sum()), inputs=own)
            applied = {n: float(w) for n, w in zip(names, weights, strict=True)}
        else:
            applied = self._weighted_backward(stacked, names, weights, model)
        return BackwardResult(applied, measured.gramian, measured.grad_norms)

    def _reduced(self, gramian: Tensor, *, exact: bool) -> Tensor:
        """The global Gramian from this rank's: the sum over the ranks when the ranks'
        gradients are different coordinates (representation mode, ``exact``); otherwise the
        ``local`` approximation, each rank's Gramian rescaled from its share of the loss to the
        whole (× W²) and averaged."""
        group = self.collective
        if not group.active:
            return gramian
        gramian = gramian.detach().clone()
        group.sum_([gramian])
        return gramian if exact else gramian * group.world_size

    def _jacobian_backward(
        self, stacked: Tensor, names: list[str], idx: list[int], model: MultiTaskModel
    ) -> BackwardResult:
        """A data-parallel ``exact`` step: the K per-task gradients of the shared parameters
        summed over the ranks (one bucketed all-reduce), the Gramian and the update ``Jᵀ w``
        both from that matrix; task-specific parameters get their own task's share, which the
        trainer sums with the rest."""
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        # Under float16 the gradients are taken from the scaled losses (no underflow) and
        # divided back, so the method weighs the true Jacobian.
        scale = self.grad_scale
        # One vectorised backward of the K directions, unless a batch norm over the global
        # batch puts a collective in the graph (vmap cannot cross it): then K backward passes.
        batched = not any(isinstance(m, GlobalBatchNorm) for m in model.modules())
        jacobian = task_jacobian(
            [self.scaled(stacked[i]) for i in range(len(names))],
            shared,
            self.collective,
            batched=batched,
        )
        if scale is not None:
            jacobian = jacobian / scale
        gramian = jacobian.double() @ jacobian.double().T
        weights, measured = self._weigh(gramian, stacked, idx)
        update = self.scaled(weights.to(jacobian.dtype)) @ jacobian
        offset = 0
        for p in shared:
            g = update[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            p.grad = g.clone() if p.grad is None else p.grad + g
        own = [p for n in names for p in model.task_parameters(n) if p.requires_grad]
        if own:
            torch.autograd.backward(self.scaled(stacked.sum()), inputs=own)
        applied = {n: float(w) for n, w in zip(names, weights, strict=True)}
        return BackwardResult(applied, measured.gramian, measured.grad_norms, shared_reduced=True)

    def _draw_subset(self, present: list[str]) -> list[str]:
        s = self.engine.task_subset
        if s is None or len(present) <= s:
            return present
        # Global RNG: seeded and checkpointed by the trainer, so runs replay exactly.
        chosen = torch.randperm(len(present))[:s].sort().values.tolist()
        return [present[i] for i in chosen]

    def _weigh(
        self, gramian: Tensor, stacked: Tensor, idx: list[int]
    ) -> tuple[Tensor, BackwardResult]:
        """The weights from ``gramian``, and the measurement (Gramian, norms) to report."""
        assert isinstance(self.method, GramianWeighting)
        gramian = gramian.detach()
        diag = gramian.diagonal().clamp_min(0).sqrt()
        names = [self.task_names[i] for i in idx]
        norms = {n: float(v) for n, v in zip(names, diag, strict=True)}
        measured = BackwardResult({}, TaskGramian(names, gramian.double()), norms)
        group = self.collective
        weights = torch.zeros(len(idx), dtype=stacked.dtype, device=stacked.device)
        failure: str | None = None
        try:
            found = self.method(gramian, stacked.detach(), idx)
            weights = torch.as_tensor(found).detach().to(stacked.device, stacked.dtype)
        except Exception as exc:  # solver failures surface here, never as equal weights
            if not group.active:
                raise PolytaskError(
                    f"balancer {self.name!r} failed at step {int(self.steps)}: {exc}"
                ) from exc
            failure = f"balancer {self.name!r} failed at step {int(self.steps)}: {exc}"
        if group.active:
            # Every rank stops with the same line, or every rank takes rank 0's weights.
            failure = group.first_error(failure)
            if failure is not None:
                raise PolytaskError(failure)
            group.broadcast_([weights])
        if not bool(torch.isfinite(weights).all()):
            raise PolytaskError(
                f"balancer {self.name!r} produced non-finite weights at step {int(self.steps)} "
                f"(gradient norms {[round(float(v), 6) for v in diag]})"
            )
        self.cached[idx] = weights.to(self.cached.dtype)
        return weights, measured

    def _reused_weights(self, idx: list[int]) -> Tensor:
        cached = self.cached[idx]
        known = self.cached[~torch.isnan(self.cached)]
        # A task never weighted yet (absent at the last update) gets the mean known weight.
        fill = known.mean() if known.numel() else torch.tensor(1.0, dtype=torch.float64)
        return torch.where(torch.isnan(cached), fill, cached).float()

    def _weighted_backward(
        self, stacked: Tensor, names: list[str], weights: Tensor, model: MultiTaskModel
    ) -> dict[str, float]:
        shared = [p for p in model.shared_parameters() if p.requires_grad]
        own = [p for n in names for p in model.task_parameters(n) if p.requires_grad]
        # The update's backward passes carry the float16 gradient scale (Balancer.scaled).
        weights = weights.to(stacked.device)
        torch.autograd.backward(
            stacked, grad_tensors=self.scaled(weights), inputs=shared, retain_graph=True
        )
        if own:
            torch.autograd.backward(self.scaled(stacked.sum()), inputs=own)
        return {n: float(w) for n, w in zip(names, weights, strict=True)}

    def _split_backward(
        self,
        stacked: Tensor,
        names: list[str],
        idx: list[int],
        model: MultiTaskModel,
        recorder: GramianRecorder | None,
    ) -> BackwardResult:
        z, leaves = self._representation, [self._task_inputs[n] for n in names]
        assert z is not None
        self._representation, self._task_inputs = None, {}
        own = [p for n in names for p in model.task_parameters(n) if p.requires_grad]
        # One backward through the heads: each leaf collects its own task's ∂L_k/∂z and the
        # heads accumulate their own task's gradient.
        # (Scaled under float16, as the heads' gradients are part of the update; ∂L_k/∂z is
        # divided back, so the method weighs the true directions.)
        torch.autograd.backward(self.scaled(stacked.sum()), inputs=[*leaves, *own])
        dz = torch.stack([leaf.grad for leaf in leaves])  # type: ignore[misc]
        if self.grad_scale is not None:
            dz = dz / self.grad_scale
        matrix = dz.reshape(len(names), -1)
        if isinstance(self.method, MatrixAggregator):
            norms = matrix.norm(dim=1)
            measured = BackwardResult(
                {},
                TaskGramian(names, (matrix @ matrix.T).detach().double()),
                {n: float(v) for n, v in zip(names, norms, strict=True)},
            )
            direction = self.method(matrix).reshape(z.shape)
            weights = torch.ones(len(names))
        else:
            # exact: the Gramian over the shared parameters, from the K directions at z;
            # representation: the Gramian of the directions themselves (MGDA-UB).
            gramian = recorder.gramian(z, dz) if recorder is not None else matrix @ matrix.T
            gramian = self._reduced(gramian, exact=recorder is None)
            weights, measured = self._weigh(gramian, stacked, idx)
            shared = [p for p in model.shared_parameters() if p.requires_grad]
            if recorder is not None and recorder.covers(shared):
                # Exact mode: the shared layers' gradients straight from the output gradients
                # the Gramian already needed, not from a second backward through the trunk.
                recorder.backward(self.scaled(weights))
                applied = {n: float(w) for n, w in zip(names, weights, strict=True)}
                return BackwardResult(applied, measured.gramian, measured.grad_norms)
            direction = torch.einsum("k,k...->...", weights.to(dz.dtype), dz)
        z.backward(self.scaled(direction))  # type: ignore[no-untyped-call]
        applied = {n: float(w) for n, w in zip(names, weights, strict=True)}
        return BackwardResult(applied, measured.gramian, measured.grad_norms)
