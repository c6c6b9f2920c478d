"""The Gramian of the per-task gradients of the shared parameters, layer by layer, without the
K × P Jacobian.

``G[k, l] = Σ_layers ⟨∂L_k/∂θ, ∂L_l/∂θ⟩``. During the forward pass, hooks record each shared
layer's input and output; one batched backward (``is_grads_batched``) of the K tasks'
directions then gives every task's gradient ``δ_k`` at every recorded output, never a parameter
gradient. The gradient engine starts that backward at the shared representation with the
tasks' ``∂L_k/∂z`` (one cheap backward through the heads gave them), so the batched pass only
crosses the shared layers; starting from the stacked losses would push all K directions
through every head as well.
Each layer's contribution follows from its ``δ``:

* ``nn.Linear`` with input rows ``a`` (N × in): the weight gradient of task k is ``δ_kᵀ a``, so
  ``⟨δ_kᵀ a, δ_lᵀ a⟩ = Σ_{n,m} (a aᵀ)_{nm} (δ_k δ_lᵀ)_{nm}``. Whichever is cheaper is computed:
  the K small weight gradients (``K·N·in·out`` operations) or this kernel form
  (``N²·in + K·N²·out``), which wins when the layer is wide compared with the batch (a
  2048-bit fingerprint into 512 units at batch 128 is ~10× cheaper). This is the identity
  behind torchjd's autogram engine (Quinton & Rey, "Jacobian Descent for Multi-Objective
  Optimization", 2024, Section 6), specialised to dense layers; the bias adds
  ``(Σ_n δ_k)·(Σ_n δ_l)``.
* any other layer with parameters (normalisation, embeddings, convolutions): its K parameter
  gradients from ``δ`` by one batched vector-Jacobian product, then their Gram matrix. These
  layers are small or few in the encoders polytask builds.

A module called several times in one forward pass (weight tying) has its calls pooled before
the products, so the cross terms between calls are included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


@dataclass
class _Calls:
    module: nn.Module
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


class GramianRecorder:
    """Records the shared layers of one forward pass; :meth:`gramian` then returns ``J Jᵀ``.

    Use one recorder per step: create it before the forward pass, call :meth:`gramian` once the
    losses exist, and :meth:`close` (or let :meth:`gramian` do it) to remove the hooks.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self._calls: dict[int, _Calls] = {}
        #: The calls and their ``[K, ...]`` output gradients of the last :meth:`gramian`, kept
        #: for :meth:`backward`.
        self._kept: list[tuple[_Calls, list[Tensor]]] = []
        self._handles: list[RemovableHandle] = []
        seen: set[int] = set()
        for root in modules:
            for module in root.modules():
                if id(module) in seen:
                    continue
                seen.add(id(module))
                if any(p.requires_grad for p in module.parameters(recurse=False)):
                    self._handles.append(module.register_forward_hook(self._record))

    def _record(self, module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if not (isinstance(output, Tensor) and output.requires_grad):
            return
        calls = self._calls.setdefault(id(module), _Calls(module))
        calls.inputs.append(args[0] if args and isinstance(args[0], Tensor) else output)
        calls.outputs.append(output)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def gramian(self, outputs: Tensor, directions: Tensor) -> Tensor:
        """``[K, K]`` Gramian of the K vector-Jacobian products ``directions[k]ᵀ ∂outputs/∂θ``
        over the parameters of the recorded modules. For a ``[K]`` vector of losses,
        ``directions`` is the identity; for a shared representation ``z``, the tasks'
        gradients ``∂L_k/∂z`` stacked (``[K, *z.shape]``). Removes the hooks and keeps the
        graph, so the caller can still back-propagate."""
        self.close()
        calls = list(self._calls.values())
        self._calls = {}
        k = directions.shape[0]
        recorded = [o for c in calls for o in c.outputs]
        if not recorded:
            raise RuntimeError("no shared layer took part in the forward pass")
        # Under mixed precision the recorded layers ran in bfloat16/float16: the directions
        # enter in their dtype, the Gramian is accumulated in float32.
        deltas = _batched_vjp(outputs, recorded, directions.to(outputs.dtype))
        total = torch.zeros(k, k, dtype=torch.float32, device=directions.device)
        start = 0
        self._kept = []
        for c in calls:
            n = len(c.outputs)
            grads = list(deltas[start : start + n])
            start += n
            self._kept.append((c, grads))
            if isinstance(c.module, nn.Linear):
                total += _linear_gramian(c.module, c.inputs, grads)
            else:
                total += _generic_gramian(c.module, c.outputs, grads)
        return total

    def covers(self, params: list[nn.Parameter]) -> bool:
        """Whether every one of ``params`` belongs to a layer recorded by the last
        :meth:`gramian`, so :meth:`backward` can give each its gradient."""
        recorded = {id(p) for c, _ in self._kept for p in c.module.parameters(recurse=False)}
        return all(id(p) in recorded for p in params)

    def backward(self, weights: Tensor) -> None:
        """Accumulate ``Σ_k weights[k] · directions[k]ᵀ ∂outputs/∂θ`` into the ``.grad`` of the
        recorded layers' parameters, from the output gradients :meth:`gramian` kept.

        This is the weighted backward of the aggregate without a second pass through the
        shared layers: each layer's parameter gradient follows from its output gradient
        ``δ = Σ_k w_k δ_k`` alone (``δᵀ a`` and ``Σ_n δ`` for a dense layer, one vector-Jacobian
        product restricted to its own parameters otherwise), so the gradients with respect to
        the layers' inputs, which a backward from ``outputs`` would compute again, are skipped.
        Valid when each parameter is used by its own layer's calls only (the assumption the
        Gramian itself makes); the engine checks :meth:`covers` first."""
        kept, self._kept = self._kept, []
        for c, deltas in kept:
            combined = [torch.einsum("k,k...->...", weights.to(d.dtype), d) for d in deltas]
            params = [p for p in c.module.parameters(recurse=False) if p.requires_grad]
            if isinstance(c.module, nn.Linear):
                m = c.module
                a = torch.cat([x.detach().reshape(-1, m.in_features) for x in c.inputs])
                d = torch.cat([g.reshape(-1, m.out_features) for g in combined])
                # Mixed precision: the layer's input and output gradient may differ in
                # dtype (a float32 input to the first layer); the product is taken in float32.
                grads = {id(m.weight): d.float().T @ a.float()}
                if m.bias is not None:
                    grads[id(m.bias)] = d.sum(dim=0)
                found = [grads[id(p)] for p in params]
            else:
                found = list(_vjp(c.outputs, params, combined))
            for p, g in zip(params, found, strict=True):
                g = g.to(p.dtype)  # mixed precision: low-precision products, float32 gradients
                p.grad = g if p.grad is None else p.grad + g


def _vjp(
    outputs: list[Tensor], params: list[nn.Parameter], grads: list[Tensor]
) -> tuple[Tensor, ...]:
    return torch.autograd.grad(
        outputs,
        params,
        grad_outputs=grads,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )


def _linear_gramian(module: nn.Linear, inputs: list[Tensor], deltas: list[Tensor]) -> Tensor:
    a = torch.cat([x.detach().reshape(-1, module.in_features) for x in inputs]).float()
    k = deltas[0].shape[0]
    d = torch.cat([g.reshape(k, -1, module.out_features) for g in deltas], dim=1).float()
    n, d_in, d_out = a.shape[0], module.in_features, module.out_features
    g = torch.zeros(k, k, dtype=torch.float32, device=a.device)
    if module.weight.requires_grad:
        if n * n * (d_in + k * d_out) < k * n * d_in * d_out:
            kernel = a @ a.T  # [N, N]
            mixed = torch.einsum("nm,lmo->lno", kernel, d)
            g += torch.einsum("kno,lno->kl", d, mixed)
        else:
            weight_grads = torch.einsum("kno,ni->koi", d, a).reshape(k, -1)
            g += weight_grads @ weight_grads.T
    if module.bias is not None and module.bias.requires_grad:
        summed = d.sum(dim=1)
        g += summed @ summed.T
    return g


def _generic_gramian(module: nn.Module, outputs: list[Tensor], deltas: list[Tensor]) -> Tensor:
    params = [p for p in module.parameters(recurse=False) if p.requires_grad]
    grads = _batched_vjp(outputs, params, deltas)
    jac = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1).float()
    return jac @ jac.T


def _batched_vjp(
    outputs: Tensor | list[Tensor],
    inputs: list[Tensor] | list[nn.Parameter],
    directions: Tensor | list[Tensor],
) -> tuple[Tensor, ...]:
    """``directions[k]ᵀ ∂outputs/∂inputs`` for every k in one vectorised backward, keeping the
    graph (zeros for inputs the outputs do not reach)."""
    return torch.autograd.grad(
        outputs,
        inputs,
        grad_outputs=directions,
        is_grads_batched=True,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )
