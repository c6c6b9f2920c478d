"""Masked per-task losses against hand-written float64 references."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from polytask.balance.base import BALANCERS
from polytask.data.spec import InputSpec
from polytask.losses import TaskLoss, task_losses
from polytask.models.config import ModelConfig
from polytask.models.model import build_model
from polytask.tasks import Task


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _bce_terms(x: np.ndarray, y: np.ndarray, pos_weight: np.ndarray | float) -> np.ndarray:
    p = _sigmoid(x)
    return -(pos_weight * y * np.log(p) + (1.0 - y) * np.log(1.0 - p))


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _mask(rng: np.random.Generator, shape: tuple[int, ...], p_valid: float = 0.7) -> torch.Tensor:
    mask = rng.random(shape) < p_valid
    mask.flat[0] = True
    return torch.from_numpy(mask)


@pytest.mark.parametrize("pos_weight", [None, 3.5])
def test_binary_matches_reference(rng: np.random.Generator, pos_weight: float | None) -> None:
    task = Task("t", "binary", "y", pos_weight=pos_weight)
    out = torch.from_numpy(rng.normal(0, 2, 50)).float()
    tgt = torch.from_numpy((rng.random(50) < 0.4).astype(np.float32))
    mask = _mask(rng, (50,))
    loss = TaskLoss(task)(out, tgt, mask)
    assert loss is not None
    m = mask.numpy()
    pw = 1.0 if pos_weight is None else pos_weight
    expected = _bce_terms(_f64(out)[m], _f64(tgt)[m], pw).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_binary_pos_weight_changes_loss(rng: np.random.Generator) -> None:
    out = torch.zeros(4)
    tgt = torch.tensor([1.0, 1.0, 0.0, 0.0])
    mask = torch.ones(4, dtype=torch.bool)
    plain = TaskLoss(Task("t", "binary", "y"))(out, tgt, mask)
    weighted = TaskLoss(Task("t", "binary", "y", pos_weight=3.0))(out, tgt, mask)
    assert plain is not None and weighted is not None
    # At logit 0 every term is log 2; positives count three times: (3 + 3 + 1 + 1) / 4.
    assert float(plain) == pytest.approx(math.log(2), rel=1e-6)
    assert float(weighted) == pytest.approx(2 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("class_weights", [None, [0.5, 2.0, 1.0, 4.0]])
def test_multiclass_matches_reference(
    rng: np.random.Generator, class_weights: list[float] | None
) -> None:
    task = Task("t", "multiclass", "y", classes=["a", "b", "c", "d"], class_weights=class_weights)
    out = torch.from_numpy(rng.normal(0, 2, (60, 4))).float()
    tgt = torch.from_numpy(rng.integers(0, 4, 60))
    mask = _mask(rng, (60,))
    loss = TaskLoss(task)(out, tgt, mask)
    assert loss is not None
    m = mask.numpy()
    x, y = _f64(out)[m], tgt.numpy()[m]
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    w = np.ones(4) if class_weights is None else np.asarray(class_weights)
    expected = (w[y] * nll).sum() / w[y].sum()  # weighted mean, as nn.CrossEntropyLoss
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    if class_weights is not None:
        reference = torch.nn.CrossEntropyLoss(weight=torch.tensor(class_weights))
        assert float(loss) == pytest.approx(float(reference(out[mask], tgt[mask])), rel=1e-6)
        assert abs(expected - nll.mean()) > 1e-3  # the weights really matter here


@pytest.mark.parametrize("pos_weight", [None, [1.0, 4.0, 0.25]])
def test_multilabel_per_entry_mask(
    rng: np.random.Generator, pos_weight: list[float] | None
) -> None:
    task = Task("t", "multilabel", ["a", "b", "c"], pos_weight=pos_weight)
    out = torch.from_numpy(rng.normal(0, 2, (40, 3))).float()
    tgt = torch.from_numpy((rng.random((40, 3)) < 0.5).astype(np.float32))
    mask = _mask(rng, (40, 3), p_valid=0.6)
    loss = TaskLoss(task)(out, tgt, mask)
    assert loss is not None
    m = mask.numpy()
    pw = np.ones(3) if pos_weight is None else np.asarray(pos_weight)
    terms = _bce_terms(_f64(out), _f64(tgt), pw[None, :])
    assert float(loss) == pytest.approx(terms[m].mean(), rel=1e-5)


def _huber(d: np.ndarray) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < 1.0, 0.5 * d**2, a - 0.5)


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("mse", lambda d: d**2),
        ("l1", np.abs),
        ("huber", _huber),
        (None, lambda d: d**2),  # the default regression loss is mse
    ],
)
def test_regression_matches_reference(rng: np.random.Generator, name: str | None, ref) -> None:
    task = Task("t", "regression", "y", loss=name)
    out = torch.from_numpy(rng.normal(0, 2, 80)).float()
    tgt = torch.from_numpy(rng.normal(0, 2, 80)).float()
    mask = _mask(rng, (80,))
    loss = TaskLoss(task)(out, tgt, mask)
    assert loss is not None
    m = mask.numpy()
    expected = ref(_f64(out)[m] - _f64(tgt)[m]).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)


KINDS = [
    Task("b", "binary", "y", pos_weight=2.0),
    Task("m", "multiclass", "y", classes=["a", "b", "c"], class_weights=[1.0, 2.0, 3.0]),
    Task("r", "regression", "y", loss="huber"),
]


@pytest.mark.parametrize("task", KINDS, ids=lambda t: t.kind)
def test_masked_rows_equal_dropped_rows(rng: np.random.Generator, task: Task) -> None:
    n = 30
    width = task.n_outputs
    out = torch.from_numpy(rng.normal(0, 1, (n, width) if width > 1 else n)).float()
    if task.kind == "multiclass":
        tgt_valid = torch.from_numpy(rng.integers(0, 3, n))
    else:
        tgt_valid = torch.from_numpy((rng.random(n) < 0.5).astype(np.float32))
    mask = _mask(rng, (n,), p_valid=0.5)
    tgt = tgt_valid.clone()
    if tgt.is_floating_point():
        tgt[~mask] = float("nan")  # whatever sits in a masked row must not matter
    else:
        tgt[~mask] = 99  # an out-of-range class index
    out.requires_grad_(True)
    loss_fn = TaskLoss(task)
    masked = loss_fn(out, tgt, mask)
    dropped = loss_fn(out[mask], tgt_valid[mask], torch.ones(int(mask.sum()), dtype=torch.bool))
    assert masked is not None and dropped is not None
    assert float(masked.detach()) == pytest.approx(float(dropped.detach()), rel=1e-6)
    masked.backward()
    assert out.grad is not None
    assert torch.isfinite(out.grad).all()
    assert (out.grad[~mask] == 0).all()


def test_multilabel_nan_entries_masked(rng: np.random.Generator) -> None:
    out = torch.from_numpy(rng.normal(0, 1, (20, 2))).float().requires_grad_(True)
    tgt = torch.from_numpy((rng.random((20, 2)) < 0.5).astype(np.float32))
    mask = _mask(rng, (20, 2), p_valid=0.5)
    noisy = tgt.clone()
    noisy[~mask] = float("nan")
    loss_fn = TaskLoss(Task("t", "multilabel", ["a", "b"], pos_weight=[2.0, 0.5]))
    loss = loss_fn(out, noisy, mask)
    clean = loss_fn(out, tgt, mask)
    assert loss is not None and clean is not None
    assert float(loss.detach()) == float(clean.detach())
    loss.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    assert (out.grad[~mask] == 0).all()


@pytest.mark.parametrize(
    "task",
    [*KINDS, Task("l", "multilabel", ["a", "b"]), Task("r2", "regression", "y", loss="l1")],
    ids=lambda t: f"{t.kind}-{t.loss_name}",
)
def test_no_valid_label_returns_none(task: Task) -> None:
    n = 8
    shape = (n, task.n_outputs) if task.kind in ("multiclass", "multilabel") else (n,)
    out = torch.randn(shape)
    tgt = torch.zeros(shape if task.kind != "multiclass" else (n,))
    if task.kind == "multiclass":
        tgt = tgt.long()
    mask = torch.zeros(tgt.shape, dtype=torch.bool)
    assert TaskLoss(task)(out, tgt, mask) is None


def _two_task_model() -> tuple[list[Task], torch.nn.Module]:
    tasks = [Task("cls", "binary", "y", classes=["0", "1"]), Task("reg", "regression", "z")]
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "mlp", "widths": [8], "dropout": 0.0}, "head": {"widths": [4]}}
    )
    return tasks, build_model(tasks, InputSpec(5), cfg, seed=0)


def test_unlabelled_task_gets_no_gradient_in_a_step() -> None:
    tasks, model = _two_task_model()
    g = torch.Generator().manual_seed(0)
    inputs = {"numeric": torch.randn(16, 5, generator=g), "categorical": torch.zeros(16, 0).long()}
    targets = {"cls": (torch.rand(16, generator=g) < 0.5).float(), "reg": torch.randn(16)}
    masks = {"cls": torch.zeros(16, dtype=torch.bool), "reg": torch.ones(16, dtype=torch.bool)}
    losses = task_losses({t.name: TaskLoss(t) for t in tasks}, model(inputs), targets, masks)
    assert set(losses) == {"reg"}
    balancer = BALANCERS.get("static").factory(
        tasks, BALANCERS.validate_params("static", {}, "balancer")
    )
    model.zero_grad(set_to_none=True)
    weights = balancer.backward(losses, model).weights
    assert weights == {"reg": 1.0}
    for p in model.task_parameters("cls"):
        assert p.grad is None or bool((p.grad == 0).all())
    reg_grads = [p.grad for p in model.task_parameters("reg")]
    assert all(g is not None for g in reg_grads)
    assert sum(float(g.abs().sum()) for g in reg_grads if g is not None) > 0
    shared = [p.grad for p in model.shared_parameters() if p.grad is not None]
    assert shared and sum(float(g.abs().sum()) for g in shared) > 0


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny matrices: a second intra-op thread only adds synchronisation (slow on a busy CPU).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_unlabelled_task_head_unchanged_by_training() -> None:
    """Through the real trainer (AdamW with weight decay): a head with no label never moves."""
    from polytask.data.tensors import TensorData
    from polytask.train.config import TrainConfig
    from polytask.train.trainer import Trainer

    tasks, model = _two_task_model()
    g = torch.Generator().manual_seed(1)
    n = 64
    x = torch.randn(n, 5, generator=g)
    data = TensorData(
        {"numeric": x, "categorical": torch.zeros(n, 0).long()},
        {"cls": torch.zeros(n), "reg": x[:, 0] - x[:, 1]},
        {"cls": torch.zeros(n, dtype=torch.bool), "reg": torch.ones(n, dtype=torch.bool)},
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    balancer = BALANCERS.get("static").factory(
        tasks, BALANCERS.validate_params("static", {}, "balancer")
    )
    cfg = TrainConfig(epochs=2, batch_size=16, weight_decay=0.1, progress=False, patience=None)
    fit = Trainer(model, tasks, balancer, cfg, quiet=True).fit(data, data)
    after = model.state_dict()
    cls_keys = [k for k in before if ".heads.cls." in k]
    reg_keys = [k for k in before if ".heads.reg." in k]
    assert cls_keys and reg_keys
    assert all(torch.equal(before[k], after[k]) for k in cls_keys)
    assert any(not torch.equal(before[k], after[k]) for k in reg_keys)
    assert all(math.isnan(r.train_loss["cls"]) for r in fit.history)
    assert all(r.examples["cls"] == 0 and r.examples["reg"] == n for r in fit.history)
