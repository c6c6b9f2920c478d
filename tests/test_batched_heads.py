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
from polytask.models.heads import (
    BATCH_MIN_HEADS,
    HeadParams,
    PooledTower,
    Tower,
    run_heads,
    stacked_outputs,
)
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


# -- the batched path against the per-head computation, mixed kinds (issue 18) ----------------
def _mixed_tasks() -> list[Task]:
    """Regression and binary heads share one head shape (one output) but not a loss group;
    multiclass heads (three classes) are a second group, one of them class-weighted (its loss
    computed on its own, from its head's row)."""
    classes = ["x", "y", "z"]
    tasks = [Task(name=f"r{i}", kind="regression", target=f"r{i}") for i in range(5)]
    tasks += [Task(name=f"b{i}", kind="binary", target=f"b{i}", pos_weight=2.0) for i in range(4)]
    tasks += [
        Task(name=f"m{i}", kind="multiclass", target=f"m{i}", classes=classes) for i in range(3)
    ]
    tasks.append(
        Task(name="mw", kind="multiclass", target="mw", classes=classes, class_weights=[1, 2, 1])
    )
    assert len(tasks) >= 3 * BATCH_MIN_HEADS
    return tasks


def _mixed_batch(
    tasks: list[Task], rows: int, absent: set[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(5)
    x = {"numeric": torch.randn(rows, 6, generator=g)}
    targets: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for t in tasks:
        if t.kind == "regression":
            targets[t.name] = torch.randn(rows, generator=g)
        elif t.kind == "binary":
            targets[t.name] = torch.randint(0, 2, (rows,), generator=g).float()
        else:
            targets[t.name] = torch.randint(0, 3, (rows,), generator=g)
        masks[t.name] = torch.rand(rows, generator=g) > 0.25
        if t.name in absent:
            masks[t.name] = torch.zeros(rows, dtype=torch.bool)
    return x, targets, masks


def _mixed_model(tasks: list[Task], widths: list[int]) -> MultiTaskModel:
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "mlp", "widths": [12], "dropout": 0.0}, "head": {"widths": widths}}
    )
    return build_model(tasks, InputSpec(n_numeric=6), cfg, seed=0)


@pytest.mark.parametrize("widths", [[], [8]])
def test_batched_heads_stacked_losses_and_equal_weights_match_the_per_head_step(
    widths: list[int],
) -> None:
    from polytask.balance import build_balancer

    tasks = _mixed_tasks()
    absent = {"r3", "b1", "m2"}  # one absent task in each loss group
    x, targets, masks = _mixed_batch(tasks, 24, absent)
    losses_fn = {t.name: TaskLoss(t) for t in tasks}

    model = _mixed_model(tasks, widths)
    outputs = model(x)
    # The fast path is the one under test: the heads ran batched and the losses read the
    # batched output and came out as rows of one vector per loss group.
    assert stacked_outputs([outputs[f"r{i}"] for i in range(5)]) is not None
    assert stacked_outputs([outputs[f"m{i}"] for i in range(3)]) is not None
    losses = task_losses(losses_fn, outputs, targets, masks)
    assert stacked_outputs([losses[n] for n in ("r0", "r1", "r2", "r4")]) is not None
    balancer = build_balancer("equal", {}, tasks)
    weights = balancer.backward(losses, model).weights

    reference = _mixed_model(tasks, widths)
    z = reference.represent(x)
    ref_out = {t.name: reference.task_output(t.name, z) for t in tasks}
    ref_losses = {
        n: v for n, f in losses_fn.items() if (v := f(ref_out[n], targets[n], masks[n])) is not None
    }
    torch.stack(list(ref_losses.values())).sum().backward()  # type: ignore[no-untyped-call]

    assert list(losses) == list(ref_losses) == [t.name for t in tasks if t.name not in absent]
    assert weights == dict.fromkeys(losses, 1.0)
    for name in outputs:
        torch.testing.assert_close(outputs[name], ref_out[name], rtol=1e-5, atol=1e-6)
    for name in losses:
        torch.testing.assert_close(losses[name], ref_losses[name], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        task = name.split(".")[2] if name.startswith("architecture.heads.") else None
        if task in absent:
            assert p.grad is None and q.grad is None, name
            continue
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_present_task_left_out_of_the_backward_keeps_none_gradients() -> None:
    # Task scheduling drops a present task's loss after it was computed: its head must get no
    # gradient (None), though its loss was a row of the same stacked vector as the others'.
    from polytask.balance import build_balancer

    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(6)]
    model = _mixed_model(tasks, [4])
    x, targets, masks = _mixed_batch(tasks, 10, set())
    losses = task_losses({t.name: TaskLoss(t) for t in tasks}, model(x), targets, masks)
    chosen = {k: v for k, v in losses.items() if k not in ("t1", "t4")}
    build_balancer("equal", {}, tasks).backward(chosen, model)
    for t in tasks:
        grads = [p.grad for p in model.task_parameters(t.name)]
        if t.name in ("t1", "t4"):
            assert all(g is None for g in grads), t.name
        else:
            assert all(g is not None and bool(g.abs().sum() > 0) for g in grads), t.name


def test_a_head_with_zero_weight_gets_zero_gradients_not_none() -> None:
    # Received a gradient (of zero) is not "had no loss": as on the per-head path, AdamW's
    # weight decay applies to a head whose task was weighted 0.
    from polytask.balance import build_balancer

    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(5)]
    model = _mixed_model(tasks, [])
    x, targets, masks = _mixed_batch(tasks, 10, set())
    losses = task_losses({t.name: TaskLoss(t) for t in tasks}, model(x), targets, masks)
    weights = {f"t{i}": 1.0 for i in range(5)} | {"t2": 0.0}
    build_balancer("static", {"weights": weights}, tasks).backward(losses, model)
    grads = [p.grad for p in model.task_parameters("t2")]
    assert all(g is not None and not g.any() for g in grads)


def test_equal_weighting_of_stacked_losses_is_bit_identical_to_per_task_products() -> None:
    from polytask.balance import build_balancer

    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(7)]
    model = _mixed_model(tasks, [])
    x, targets, masks = _mixed_batch(tasks, 16, {"t5"})
    losses = task_losses({t.name: TaskLoss(t) for t in tasks}, model(x), targets, masks)
    balancer = build_balancer("static", {"weights": {"t0": 0.5, "t3": 2.0}}, tasks)
    total, weights = balancer.combine(losses)
    expected = torch.stack([weights[k] * losses[k] for k in losses]).sum()
    assert torch.equal(total, expected)
    # The total reads the losses' stacked vector (not the K loss tensors): the same gradients
    # reach every parameter, bit for bit; an absent task's head gets none either way.
    params = list(model.parameters())
    got = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(expected, params, retain_graph=True, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        assert a is None or torch.equal(a, b)
    # The absent task's head: no gradient to follow (zeros from the functional form); what
    # an optimizer reads, ``.grad`` after ``backward``, stays None.
    absent = {id(p) for p in model.task_parameters("t5")}
    assert len(absent) == 2
    for g, p in zip(got, params, strict=True):
        if id(p) in absent:
            assert g is None or not g.any()
    total.backward()  # type: ignore[no-untyped-call]
    assert all(p.grad is None for p in model.task_parameters("t5"))
    assert all(p.grad is not None for p in model.task_parameters("t0"))


def test_double_backward_through_the_batched_heads_matches_the_per_head_one() -> None:
    # GradNorm differentiates a gradient norm: the batched path's nodes are differentiable.
    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(5)]
    x, targets, masks = _mixed_batch(tasks, 12, {"t3"})
    losses_fn = {t.name: TaskLoss(t) for t in tasks}

    def penalty(model: MultiTaskModel, per_head: bool) -> Tensor:
        z = model.represent(x)
        if per_head:
            outputs = {t.name: model.task_output(t.name, z) for t in tasks}
        else:
            outputs = model.architecture.heads_forward(z)  # type: ignore[operator]
            outputs = {k: model._shape(k, v) for k, v in outputs.items()}
        losses = task_losses(losses_fn, outputs, targets, masks)
        total = torch.stack(list(losses.values())).sum()
        (grad,) = torch.autograd.grad(total, z, create_graph=True)
        return grad.pow(2).sum()

    model, reference = _mixed_model(tasks, [6]), _mixed_model(tasks, [6])
    penalty(model, False).backward()  # type: ignore[no-untyped-call]
    penalty(reference, True).backward()  # type: ignore[no-untyped-call]
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.task_parameters("t3"))


def test_stacked_outputs_refuses_what_is_not_a_row_of_one_batched_pass() -> None:
    model = _model(5)
    outputs = model({"numeric": torch.randn(6, 5)})
    rows = [outputs[f"t{i}"] for i in range(5)]
    found = stacked_outputs(rows)
    assert found is not None and torch.equal(found.value, torch.stack(rows))
    reordered = stacked_outputs([rows[3], rows[0]])
    assert reordered is not None and torch.equal(reordered.value, torch.stack([rows[3], rows[0]]))
    assert stacked_outputs([rows[0].detach(), rows[1]]) is None
    assert stacked_outputs([rows[0].clone(), rows[1]]) is None
    assert stacked_outputs([rows[0], rows[1] * 1.0]) is None
    assert stacked_outputs([rows[0][:3], rows[1][:3]]) is None  # part of a row
    with torch.no_grad():
        assert stacked_outputs(list(model({"numeric": torch.randn(6, 5)}).values())) is None
    small = _model(BATCH_MIN_HEADS - 1)  # run one by one: nothing to recognise
    assert stacked_outputs(list(small({"numeric": torch.randn(6, 5)}).values())) is None
