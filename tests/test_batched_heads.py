"""Batched heads and stacked losses (issue 18) against the one-by-one reference: the same
outputs, losses and gradients to float rounding, the same state-dict names, NaN-free masking."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from polytask.data.spec import InputSpec
from polytask.losses import TaskLoss, task_losses
from polytask.models.config import ModelConfig
from polytask.models.heads import BATCH_MIN_HEADS, HeadParams, PooledTower, Tower, run_heads
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task


def _towers(params: HeadParams, shapes: list[int], cls: type[Tower] = Tower) -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({f"t{i}": cls(16, out, params) for i, out in enumerate(shapes)})


@pytest.mark.parametrize(
    ("widths", "activation", "norm"),
    [
        ([], "relu", "none"),
        ([8], "gelu", "none"),
        ([8, 4], "leaky_relu", "none"),
        ([8], "relu", "batch"),
    ],
)
def test_run_heads_matches_each_head_called_alone(
    widths: list[int], activation: str, norm: str
) -> None:
    params = HeadParams.model_validate({"widths": widths, "activation": activation, "norm": norm})
    # Two groups batched (four and five heads), one head alone in its group.
    heads = _towers(params, [1, 1, 3, 1, 3, 3, 5, 1, 3, 3])
    z = torch.randn(10, 16, requires_grad=True)
    batched = run_heads(heads, z)
    reference = {n: h(z) for n, h in heads.items()}
    assert list(batched) == list(heads)
    for name in heads:
        torch.testing.assert_close(batched[name], reference[name], rtol=1e-6, atol=1e-6)
    # Gradients of a loss of all outputs, for the representation and every head parameter.
    probe = {n: torch.randn_like(v) for n, v in reference.items()}
    params_list = [z, *heads.parameters()]
    got = torch.autograd.grad(
        torch.stack([(batched[n] * probe[n]).sum() for n in heads]).sum(), params_list
    )
    want = torch.autograd.grad(
        torch.stack([(reference[n] * probe[n]).sum() for n in heads]).sum(), params_list
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_fewer_heads_than_the_batching_threshold_run_one_by_one_bit_for_bit() -> None:
    params = HeadParams.model_validate({"widths": [8]})
    heads = _towers(params, [1] * (BATCH_MIN_HEADS - 1))
    z = torch.randn(7, 16)
    for name, value in run_heads(heads, z).items():
        assert torch.equal(value, heads[name](z))


def test_pooled_towers_pool_once_then_run_batched() -> None:
    params = HeadParams.model_validate({"widths": []})
    heads = _towers(params, [2, 2, 2, 2], PooledTower)
    z = torch.randn(3, 16, 5, 5)
    batched = run_heads(heads, z)
    for name, head in heads.items():
        torch.testing.assert_close(batched[name], head(z), rtol=1e-6, atol=1e-6)


def test_dropout_is_drawn_per_head() -> None:
    params = HeadParams.model_validate({"widths": [32], "dropout": 0.5})
    heads = _towers(params, [1, 1, 1, 1])
    for p in heads.parameters():
        nn.init.constant_(p, 0.1)  # identical heads: only dropout can tell them apart
    heads.train()
    out = run_heads(heads, torch.ones(64, 16))
    assert not torch.equal(out["t0"], out["t1"])
    heads.eval()
    out = run_heads(heads, torch.ones(64, 16))
    assert torch.equal(out["t0"], out["t1"])
    # One head held in eval mode (frozen) among training ones: no dropout reaches it.
    heads.train()
    heads["t2"].eval()
    out = run_heads(heads, torch.ones(64, 16))
    assert torch.equal(out["t2"], heads["t2"](torch.ones(64, 16)))


def _model(k: int) -> MultiTaskModel:
    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(k)]
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "mlp", "widths": [8], "dropout": 0.0}, "head": {"widths": [4]}}
    )
    return build_model(tasks, InputSpec(n_numeric=5), cfg, seed=0)


def test_state_dict_keeps_per_head_names_and_loads_into_the_batched_model() -> None:
    model = _model(5)
    keys = set(model.state_dict())
    assert "architecture.heads.t1.hidden.0.weight" in keys
    assert "architecture.heads.t2.out.bias" in keys
    other = _model(5)
    for p in other.parameters():
        nn.init.normal_(p)
    other.load_state_dict(model.state_dict())
    x = {"numeric": torch.randn(6, 5)}
    model.eval(), other.eval()
    for name, value in model(x).items():
        assert torch.equal(value, other(x)[name])


Case = tuple[list[Task], dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]


def _loss_case(kind: str, k: int, rows: int) -> Case:
    g = torch.Generator().manual_seed(1)
    if kind == "binary":
        tasks = [
            Task(name=f"t{i}", kind="binary", target=f"y{i}", pos_weight=2.0) for i in range(k)
        ]
        targets = {t.name: torch.randint(0, 2, (rows,), generator=g).float() for t in tasks}
        outputs = {t.name: torch.randn(rows, generator=g, requires_grad=True) for t in tasks}
        masks = {t.name: torch.rand(rows, generator=g) > 0.3 for t in tasks}
    else:
        tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}", loss=kind) for i in range(k)]
        targets = {t.name: torch.randn(rows, generator=g) for t in tasks}
        outputs = {t.name: torch.randn(rows, generator=g, requires_grad=True) for t in tasks}
        masks = {t.name: torch.rand(rows, generator=g) > 0.3 for t in tasks}
    for t in tasks:  # a missing label's placeholder is NaN: it must reach neither value nor grad
        targets[t.name] = torch.where(masks[t.name], targets[t.name], math.nan)
    masks[tasks[-1].name] = torch.zeros(rows, dtype=torch.bool)  # a task absent from the batch
    return tasks, outputs, targets, masks


@pytest.mark.parametrize("kind", ["mse", "l1", "huber", "binary"])
def test_stacked_losses_match_the_per_task_losses(kind: str) -> None:
    tasks, outputs, targets, masks = _loss_case(kind, 5, 40)
    losses = {t.name: TaskLoss(t) for t in tasks}
    assert losses["t0"].stack_key is not None
    got = task_losses(losses, outputs, targets, masks)
    want = {
        n: v for n, f in losses.items() if (v := f(outputs[n], targets[n], masks[n])) is not None
    }
    assert list(got) == list(want) == [t.name for t in tasks[:-1]]
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7)
    inputs = [outputs[t.name] for t in tasks]
    grad_got = torch.autograd.grad(
        torch.stack(list(got.values())).sum(), inputs, allow_unused=True, materialize_grads=True
    )
    grad_want = torch.autograd.grad(
        torch.stack(list(want.values())).sum(), inputs, allow_unused=True, materialize_grads=True
    )
    for a, b in zip(grad_got, grad_want, strict=True):
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_tasks_with_different_weights_are_not_stacked_together() -> None:
    tasks = [
        Task(name="a", kind="binary", target="a", pos_weight=2.0),
        Task(name="b", kind="binary", target="b", pos_weight=3.0),
        Task(
            name="c",
            kind="multiclass",
            target="c",
            classes=["x", "y", "z"],
            class_weights=[1.0, 2.0, 1.0],
        ),
    ]
    losses = {t.name: TaskLoss(t) for t in tasks}
    assert losses["a"].stack_key != losses["b"].stack_key
    assert losses["c"].stack_key is None


def test_a_head_whose_task_has_no_label_gets_no_gradient() -> None:
    # AdamW skips a parameter whose grad is None; zeros would let weight decay move the head.
    model = _model(5)
    x = {"numeric": torch.randn(6, 5)}
    outputs = model(x)
    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(5)]
    losses = {t.name: TaskLoss(t) for t in tasks}
    targets = {n: torch.randn(6) for n in outputs}
    masks = {n: torch.ones(6, dtype=torch.bool) for n in outputs}
    masks["t1"] = torch.zeros(6, dtype=torch.bool)
    values = task_losses(losses, outputs, targets, masks)
    assert list(values) == ["t0", "t2", "t3", "t4"]
    torch.stack(list(values.values())).sum().backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is None for p in model.task_parameters("t1"))
    assert all(p.grad is not None for p in model.task_parameters("t0"))
    assert all(p.grad is not None for p in model.task_parameters("t2"))


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_exact_mode_matches_k_separate_backward_passes(norm: str) -> None:
    """The engine's exact mode (one batched backward of the K directions, shared-layer
    gradients from the output gradients it kept) against K ``autograd.grad`` calls: the same
    Gramian ``J Jᵀ``, shared gradients ``Jᵀ w`` and each head its own loss's gradient."""
    from polytask.balance import build_balancer

    k = 5
    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(k)]
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "mlp", "widths": [12, 10], "dropout": 0.0, "norm": norm}}
    )
    g = torch.Generator().manual_seed(3)
    x = {"numeric": torch.randn(16, 5, generator=g)}
    targets = {t.name: torch.randn(16, generator=g) for t in tasks}
    masks = {t.name: torch.ones(16, dtype=torch.bool) for t in tasks}
    losses_fn = {t.name: TaskLoss(t) for t in tasks}

    model = build_model(tasks, InputSpec(n_numeric=5), cfg, seed=0)
    balancer = build_balancer("upgrad", {"mode": "exact"}, tasks)
    result = balancer.backward(
        task_losses(losses_fn, balancer.forward(model, x), targets, masks), model
    )

    reference = build_model(tasks, InputSpec(n_numeric=5), cfg, seed=0)
    losses = task_losses(losses_fn, reference(x), targets, masks)
    shared = reference.shared_parameters()
    rows = []
    for name, loss in losses.items():
        grads = torch.autograd.grad(loss, shared, retain_graph=True)
        rows.append(torch.cat([gr.reshape(-1) for gr in grads]))
        own = reference.task_parameters(name)
        for p, gr in zip(own, torch.autograd.grad(loss, own, retain_graph=True), strict=True):
            p.grad = gr
    jac = torch.stack(rows)
    assert result.gramian is not None
    torch.testing.assert_close(result.gramian.gramian.float(), jac @ jac.T, rtol=1e-4, atol=1e-6)
    w = torch.tensor([result.weights[t.name] for t in tasks])
    got = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])  # type: ignore[union-attr]
    torch.testing.assert_close(got, w @ jac, rtol=1e-4, atol=1e-6)
    for t in tasks:
        for p, q in zip(
            model.task_parameters(t.name), reference.task_parameters(t.name), strict=True
        ):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
