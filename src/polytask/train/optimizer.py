"""AdamW for many small parameters: torch's fused kernel without the per-parameter bookkeeping.

A multi-task net with K heads has about 2K more parameter tensors than a single-task one. The
update of each is tiny, but ``torch.optim.AdamW(fused=True)`` still does per-tensor work in
Python and on the CPU before its one fused kernel: it walks every parameter's state to build
the kernel's lists, and it adds 1 to every parameter's step counter as a separate tensor
operation. At K = 100 linear heads that bookkeeping cost more than the kernel itself (2.0 ms
against 0.6 ms a step, 1 CPU thread), and it is most of why a step grew with K.

:class:`StepFusedAdamW` is ``torch.optim.AdamW`` (Loshchilov & Hutter, "Decoupled Weight
Decay Regularization", ICLR 2019) whose ``step`` keeps, per parameter group, the lists it
hands the fused kernel between steps (rebuilt whenever the set of parameters with a gradient
changes, or after ``load_state_dict``), and keeps the group's step counters as the entries of
one tensor, so counting a step is one operation. It calls the very kernel torch's fused path
calls, with the same arguments, so the updates are bit for bit torch's (tests compare them),
and its state dict is torch's, loadable by ``torch.optim.AdamW`` and back.

Anything the shortcut does not cover takes torch's own ``step``: a closure, AMSGrad,
``maximize``, a tensor learning rate, the gradient scaler's ``grad_scale``/``found_inf``
(float16 training), a group that is not fused, or parameters of several devices or dtypes in
one group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class _Plan:
    """One group's kernel arguments for a given set of parameters with gradients."""

    params: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    #: Each parameter's ``state["step"]``: the 0-d entries of :attr:`counter`.
    steps: list[Tensor]
    counter: Tensor


class StepFusedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with ``fused=True``, its per-parameter bookkeeping done once
    (see the module docstring); same constructor, same numbers, same state dict."""

    def __init__(self, params: Iterable[Any], **kwargs: Any) -> None:
        kwargs["fused"] = True
        super().__init__(params, **kwargs)
        self._plans: dict[int, _Plan] = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._plans = {}  # the state's tensors are new ones
        super().load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.__dict__.setdefault("_plans", {}).clear()
        super().add_param_group(param_group)

    def _fast(self) -> bool:
        """Whether every group can take the shortcut this step."""
        if getattr(self, "grad_scale", None) is not None:
            return False
        if getattr(self, "found_inf", None) is not None:
            return False
        return all(
            g["fused"]
            and not (g["amsgrad"] or g["maximize"] or g["differentiable"] or g["capturable"])
            and not isinstance(g["lr"], Tensor)
            for g in self.param_groups
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if closure is not None or not self._fast():
            return self._torch_step(closure)
        plans: list[tuple[dict[str, Any], _Plan, list[Tensor]]] = []
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            plan = self._plan(index, params)
            if plan is None:  # a group the kernel cannot take in one call
                return self._torch_step(None)
            plans.append((group, plan, [p.grad for p in params]))
        for group, plan, grads in plans:
            plan.counter.add_(1)
            beta1, beta2 = group["betas"]
            torch._fused_adamw_(
                plan.params,
                grads,
                plan.exp_avgs,
                plan.exp_avg_sqs,
                [],
                plan.steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )
        return None

    def _torch_step(self, closure: Callable[[], float] | None) -> float | None:
        """torch's own ``AdamW.step``, without its step hooks: this ``step`` is itself wrapped
        by them (``Optimizer`` wraps every subclass's ``step``), so they already ran."""
        method: Callable[..., float | None] = torch.optim.AdamW.step
        if getattr(method, "hooked", False):
            method = method.__wrapped__  # type: ignore[attr-defined]
        out = method(self, closure)
        return out

    def _plan(self, index: int, params: list[Tensor]) -> _Plan | None:
        """The cached plan of group ``index`` if it is for ``params``, else a new one: missing
        state created as torch creates it, the step counters gathered into one tensor whose
        entries become the parameters' ``state["step"]``. None: parameters of several devices
        or dtypes, a sparse or non-float gradient (torch's step handles or rejects those)."""
        plan = self._plans.get(index)
        if (
            plan is not None
            and len(plan.params) == len(params)
            and all(a is b for a, b in zip(plan.params, params, strict=True))
        ):
            return plan
        first = params[0]
        for p in params:
            grad = p.grad
            assert grad is not None
            if (
                p.device != first.device
                or p.dtype != first.dtype
                or not p.is_floating_point()
                or grad.is_sparse
                or grad.dtype != p.dtype
            ):
                return None
        states = [self.state[p] for p in params]
        for p, state in zip(params, states, strict=True):
            if not state:  # as torch's _init_group does for a fused group
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        counter = torch.stack([s["step"] for s in states])
        steps = list(counter.unbind(0))
        for state, step in zip(states, steps, strict=True):
            state["step"] = step
        plan = _Plan(
            params,
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            steps,
            counter,
        )
        self._plans[index] = plan
        return plan
