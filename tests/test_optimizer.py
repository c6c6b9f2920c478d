"""StepFusedAdamW: torch's fused AdamW, bit for bit, with its bookkeeping done once."""

from __future__ import annotations

import copy

import pytest
import torch

from polytask.train.optimizer import StepFusedAdamW


def _params(seed: int = 1) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (1, 4), (1,), (2, 2), (5,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _groups(params: list[torch.nn.Parameter]) -> list[dict[str, object]]:
    return [{"params": params[:4]}, {"params": params[4:], "weight_decay": 0.0}]


def _grads(params: list[torch.nn.Parameter], step: int, skip: set[int]) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g)
        p.grad = None if i in skip else grad


def _run(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: range) -> None:
    for step in steps:
        # Parameters 1 and 5 miss their gradient on some steps (a task without labels in the
        # batch): their step counters fall behind, and the plan is rebuilt.
        _grads(params, step, {1} if step % 3 == 2 else ({5} if step % 4 == 1 else set()))
        opt.param_groups[0]["lr"] = 1e-2 * (1 - step / 30)  # a schedule
        opt.step()


def test_updates_equal_torch_fused_adamw_bit_for_bit() -> None:
    a, b = _params(), _params()
    reference = torch.optim.AdamW(_groups(a), lr=1e-2, weight_decay=0.1, fused=True)
    ours = StepFusedAdamW(_groups(b), lr=1e-2, weight_decay=0.1)
    _run(reference, a, range(10))
    _run(ours, b, range(10))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(reference.state[x][key], ours.state[y][key])
    steps = [float(ours.state[p]["step"]) for p in b]
    assert steps == [10.0, 7.0, 10.0, 10.0, 10.0, 8.0]


@pytest.mark.parametrize("direction", ["ours_to_torch", "torch_to_ours"])
def test_state_dict_round_trips_with_torch_adamw(direction: str) -> None:
    """A checkpoint of one resumes in the other and both continue identically."""
    a, b = _params(), _params()
    first = (
        StepFusedAdamW(_groups(a), lr=1e-2, weight_decay=0.1)
        if direction == "ours_to_torch"
        else torch.optim.AdamW(_groups(a), lr=1e-2, weight_decay=0.1, fused=True)
    )
    _run(first, a, range(5))
    state = copy.deepcopy(first.state_dict())
    with torch.no_grad():
        for x, y in zip(a, b, strict=True):
            y.copy_(x)
    second = (
        torch.optim.AdamW(_groups(b), lr=1e-2, weight_decay=0.1, fused=True)
        if direction == "ours_to_torch"
        else StepFusedAdamW(_groups(b), lr=1e-2, weight_decay=0.1)
    )
    second.load_state_dict(state)
    _run(first, a, range(5, 9))
    _run(second, b, range(5, 9))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_falls_back_to_torch_for_what_the_shortcut_does_not_cover() -> None:
    """AMSGrad and a gradient scaler's inputs take torch's own step, with its numbers."""
    a, b = _params(), _params()
    reference = torch.optim.AdamW(a, lr=1e-2, amsgrad=True, fused=True)
    ours = StepFusedAdamW(b, lr=1e-2, amsgrad=True)
    _run(reference, a, range(4))
    _run(ours, b, range(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert "max_exp_avg_sq" in ours.state[b[0]]
    c = _params()
    scaled = StepFusedAdamW(c, lr=1e-2)
    scaled.grad_scale = torch.tensor(4.0)  # type: ignore[attr-defined]  # as GradScaler sets it
    scaled.found_inf = torch.tensor(0.0)  # type: ignore[attr-defined]
    _grads(c, 0, set())
    grads = [p.grad.clone() for p in c if p.grad is not None]
    before = [p.detach().clone() for p in c]
    scaled.step()
    # The scaler's scale divides the gradients: an update of the unscaled gradient / 4.
    d = _params()
    plain = torch.optim.AdamW(d, lr=1e-2, fused=True)
    for p, g in zip(d, grads, strict=True):
        p.grad = g / 4
    plain.step()
    assert all(torch.allclose(x, y) for x, y in zip(c, d, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(c, before, strict=True))


def test_trainer_uses_it_on_the_cpu() -> None:
    from polytask.balance import build_balancer
    from polytask.data.spec import InputSpec
    from polytask.models.config import ModelConfig
    from polytask.models.model import build_model
    from polytask.tasks import Task
    from polytask.train.config import TrainConfig
    from polytask.train.trainer import Trainer

    tasks = [Task("y", "regression", target="y")]
    model = build_model(tasks, InputSpec(n_numeric=3), ModelConfig(), seed=0)
    trainer = Trainer(model, tasks, build_balancer("equal", {}, tasks), TrainConfig(), quiet=True)
    assert isinstance(trainer.optimizer, StepFusedAdamW)
