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
  the K small weight gradients (``K·N·in·out`` multiply-adds, one batched product) or this
  kernel form (``N²·in + K·N²·out``, of which only the block upper triangle of the symmetric
  ``a aᵀ`` is multiplied, see :func:`_kernel_form`), which wins when the layer is wide
  compared with the batch (512 → 512 at batch 256: 2.4× fewer multiply-adds; a 2048-bit
  fingerprint into 512 units at batch 128: ~10×). This is the identity behind torchjd's
  autogram engine (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
  Section 6), specialised to dense layers; the bias adds ``(Σ_n δ_k)·(Σ_n δ_l)``.
* any other layer with parameters (normalisation, embeddings, convolutions): its K parameter
  gradients from ``δ`` by one batched vector-Jacobian product, then their Gram matrix. These
  layers are small or few in the encoders polytask builds.

A module called several times in one forward pass (weight tying) has its calls pooled before
the products, so the cross terms between calls are included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


@dataclass
class _Calls:
    module: nn.Module
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


@dataclass
class _Kept:
    """What :meth:`GramianRecorder.backward` needs of one recorded layer: its calls, their
    ``[K, ...]`` output gradients and, for a dense layer, the float32 rows the Gramian used
    (input ``a`` ``[N, in]``, output gradients ``d`` ``[K, N, out]``)."""

    calls: _Calls
    grads: list[Tensor]
    a: Tensor | None = None
    d: Tensor | None = None


class GramianRecorder:
    """Records the shared layers of one forward pass; :meth:`gramian` then returns ``J Jᵀ``.

    Use one recorder per step: create it before the forward pass, call :meth:`gramian` once the
    losses exist, and :meth:`close` (or let :meth:`gramian` do it) to remove the hooks.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self._calls: dict[int, _Calls] = {}
        #: The calls and their ``[K, ...]`` output gradients of the last :meth:`gramian`, kept
        #: for :meth:`backward`.
        self._kept: list[_Kept] = []
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
            kept = _Kept(c, list(deltas[start : start + n]))
            start += n
            self._kept.append(kept)
            if isinstance(c.module, nn.Linear):
                total += _linear_gramian(c.module, kept)
            else:
                total += _generic_gramian(c.module, c.outputs, kept.grads)
        return total

    def covers(self, params: list[nn.Parameter]) -> bool:
        """Whether the layers recorded by the last :meth:`gramian` hold exactly ``params`` (of
        those that require a gradient), so :meth:`backward` gives each of them its gradient
        and no other parameter one."""
        recorded = {
            id(p)
            for e in self._kept
            for p in e.calls.module.parameters(recurse=False)
            if p.requires_grad
        }
        return recorded == {id(p) for p in params if p.requires_grad}

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
        for e in kept:
            params = [p for p in e.calls.module.parameters(recurse=False) if p.requires_grad]
            m = e.calls.module
            if isinstance(m, nn.Linear) and e.d is not None:
                # float32 products (mixed precision: the input of the first layer and its
                # output gradient may differ in dtype).
                w = weights.to(e.d.dtype)
                d = torch.einsum("k,knj->nj", w, e.d)
                grads: dict[int, Tensor] = {id(m.bias): d.sum(dim=0)} if m.bias is not None else {}
                if m.weight.requires_grad:
                    assert e.a is not None
                    grads[id(m.weight)] = d.T @ e.a
                found = [grads[id(p)] for p in params]
            else:
                combined = [torch.einsum("k,k...->...", weights.to(g.dtype), g) for g in e.grads]
                found = list(_vjp(e.calls.outputs, params, combined))
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


#: Rows per block of the kernel form's symmetric product (see :func:`_kernel_form`): blocks of
#: fewer rows make matrix products too small to run at full speed.
_MIN_BLOCK_ROWS = 128
_MAX_BLOCKS = 4


def _rows(tensors: list[Tensor], width: int) -> Tensor:
    """The calls' tensors as one float32 ``[N, width]`` matrix of rows (no copy for one call)."""
    rows = [t.detach().reshape(-1, width) for t in tensors]
    return (rows[0] if len(rows) == 1 else torch.cat(rows)).float()


def _delta_rows(deltas: list[Tensor], width: int) -> Tensor:
    """The calls' ``[K, ...]`` output gradients as one float32 ``[K, N, width]`` tensor."""
    k = deltas[0].shape[0]
    rows = [g.reshape(k, -1, width) for g in deltas]
    return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)).float()


def _block_rows(n: int) -> int:
    return max(_MIN_BLOCK_ROWS, math.ceil(n / _MAX_BLOCKS))


def _weight_gramian(a: Tensor, d: Tensor) -> Tensor:
    """``G[k, l] = ⟨d_kᵀ a, d_lᵀ a⟩`` for a dense layer's weight, input rows ``a`` ``[N, in]`` and
    output gradients ``d`` ``[K, N, out]``, by whichever form costs fewer multiply-adds."""
    k, n, d_out = d.shape
    d_in = a.shape[1]
    blocks = math.ceil(n / _block_rows(n))
    share = (blocks + 1) / (2 * blocks)  # of the full N × N products, see _kernel_form
    kernel_cost = share * n * n * (d_in + k * d_out) + k * k * n * d_out
    weight_cost = k * n * d_in * d_out + k * k * d_in * d_out
    if kernel_cost < weight_cost:
        return _kernel_form(a, d)
    # The K weight gradients d_kᵀ a in one batched product; the transpose stays a view (BLAS
    # reads it transposed), copying it would cost as much as the product.
    per_task = torch.matmul(d.transpose(1, 2), a)  # [K, out, in]
    flat = per_task.reshape(k, -1)
    return flat @ flat.T


def _kernel_form(a: Tensor, d: Tensor, batched: bool | None = None) -> Tensor:
    """``G[k, l] = tr(d_kᵀ (a aᵀ) d_l)`` without any weight gradient, sparing part of the work by
    the symmetry of the kernel ``a aᵀ``.

    With ``U`` the block upper triangle of ``a aᵀ`` (row blocks of :func:`_block_rows` rows, the
    diagonal blocks halved), ``a aᵀ = U + Uᵀ``, so with ``S[k, l] = tr(d_kᵀ U d_l)`` the Gramian
    is ``S + Sᵀ`` (``tr(d_kᵀ Uᵀ d_l) = S[l, k]``). Only the blocks of ``U`` on and above the
    diagonal are formed and multiplied: ``(B + 1) / 2B`` of the full products for ``B`` blocks,
    part of the saving of a triangular matrix product (BLAS ``trmm``, which torch does not
    expose) in plain matrix products large enough to run at full speed. Measured on one CPU
    thread (K = 8, 512 → 512; thread time against one unblocked product): 0.9× at 256 rows
    (two blocks), 0.75-0.8× at 512 rows (four). ``batched`` (default: on an accelerator) takes
    each block's K products as one broadcast product instead of K calls."""
    if batched is None:
        batched = d.device.type != "cpu"
    k, n, _ = d.shape
    d = d.contiguous()
    y = torch.empty(d.shape, dtype=d.dtype, device=d.device)
    step = _block_rows(n)
    for start in range(0, n, step):
        stop = min(start + step, n)
        kernel = a[start:stop] @ a[start:].T  # rows start:stop of a aᵀ, columns start:
        kernel[:, : stop - start] *= 0.5
        if batched:  # an accelerator: one launch, not K
            y[:, start:stop] = torch.matmul(kernel, d[:, start:])
        else:
            # One product per task, written in place: y keeps d's [K, N, out] layout, so the
            # contraction below needs no transposed copy of either (on a CPU, memory
            # traffic, not multiply-adds, is what a copy of K × N × out numbers costs).
            for task in range(k):
                torch.mm(kernel, d[task, start:], out=y[task, start:stop])
    s = d.reshape(k, -1) @ y.view(k, -1).T
    return s + s.T


def _linear_gramian(module: nn.Linear, kept: _Kept) -> Tensor:
    """A dense layer's share of the Gramian, from its input rows and output gradients (module
    docstring); records on ``kept`` what :meth:`GramianRecorder.backward` reuses."""
    a = _rows(kept.calls.inputs, module.in_features)
    d = _delta_rows(kept.grads, module.out_features)
    kept.a, kept.d = a, d
    k = d.shape[0]
    g = torch.zeros(k, k, dtype=torch.float32, device=a.device)
    if module.weight.requires_grad:
        g += _weight_gramian(a, d)
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
