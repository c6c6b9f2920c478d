"""Training diagnostics logged for every run: gradient cosines, conflicts and dominance.

Constructed two-task cases with known gradients (exactly identical, exactly opposite) pin the
logged numbers; pipeline runs check the log format, that the shares sum to 1, and that a resume
(also mid-epoch, for a method that measures every step) logs exactly what an uninterrupted run
logs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from conftest import run_interrupted_and_resumed, synthetic_raw
from polytask import config_from_dict, run
from polytask.balance import build_balancer
from polytask.balance.diagnostics import TaskGramian, task_gradient_gramian
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.data.tensors import TensorData
from polytask.models.architectures import Architecture
from polytask.models.model import MultiTaskModel
from polytask.state_io import load_state
from polytask.tasks import Task
from polytask.train.config import TrainConfig
from polytask.train.trainer import EpochRecord, Trainer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TASKS = [Task("a", "binary", target="y"), Task("b", "binary", target="y")]
N, D = 64, 3


class _Mirror(Architecture):
    """One shared weight vector θ (zero at start), no task parameters: task a's logit is θᵀx and
    task b's is ``sign · θᵀx``, both with the same labels. With ``sign = +1`` the two losses are
    the same function, so their gradients are identical at every θ; with ``sign = -1`` at θ = 0
    the logits are 0 for both and ``∇L_b = −(σ(0) − y) x = −∇L_a`` exactly."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.shared = nn.Linear(D, 1, bias=False)
        nn.init.zeros_(self.shared.weight)
        self.sign = sign

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        u = self.shared(inputs["numeric"])
        return {"a": u, "b": self.sign * u}

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []

    def shared_modules(self) -> list[nn.Module]:
        return [self.shared]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return self.shared_parameters()


def _data(seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    y = (torch.rand(N, generator=g) < 0.3).float()  # unbalanced: σ(0) − y is not symmetric
    ones = torch.ones(N, dtype=torch.bool)
    return TensorData({"numeric": x}, {"a": y, "b": y}, {"a": ones, "b": ones})


def _train(
    sign: float, balancer: str, params: dict[str, Any], epochs: int = 1
) -> list[EpochRecord]:
    model = MultiTaskModel(_Mirror(sign), TASKS)
    bal = build_balancer(balancer, params, TASKS)
    cfg = TrainConfig(epochs=epochs, batch_size=16, progress=False, patience=None, lr=0.05)
    trainer = Trainer(model, TASKS, bal, cfg, quiet=True)
    return trainer.fit(_data(), _data(1)).history


def test_identical_gradients_log_cosine_one_no_conflict_and_weight_shares() -> None:
    # Loss level (static weights 2 and 1): measured on the first batch of each epoch.
    for record in _train(+1.0, "static", {"weights": {"a": 2.0, "b": 1.0}}, epochs=2):
        assert record.grad_cosines == {"a|b": pytest.approx(1.0, abs=1e-12)}
        assert record.conflicts == {"a|b": 0.0}
        # Identical gradients: each task's share is its weight's share, 2/3 and 1/3.
        assert record.dominance == pytest.approx({"a": 2 / 3, "b": 1 / 3}, abs=1e-12)
    # Gradient level (every step measured): still identical at every θ the run visits.
    for record in _train(+1.0, "upgrad", {}, epochs=2):
        assert record.grad_cosines == {"a|b": pytest.approx(1.0, abs=1e-12)}
        assert record.conflicts == {"a|b": 0.0}
        assert math.fsum(record.dominance.values()) == pytest.approx(1.0, abs=1e-12)


def test_opposite_gradients_log_cosine_minus_one_full_conflict_and_negative_share() -> None:
    # Weights 2 and 1 on g and −g: the update is g, task a's share is 2 and task b's −1
    # (it points against the update); the shares still sum to 1.
    (record,) = _train(-1.0, "static", {"weights": {"a": 2.0, "b": 1.0}})
    assert record.grad_cosines == {"a|b": pytest.approx(-1.0, abs=1e-12)}
    assert record.conflicts == {"a|b": 1.0}
    assert record.dominance == pytest.approx({"a": 2.0, "b": -1.0}, abs=1e-9)
    # MGDA's min-norm combination of g and −g is 0: θ never leaves 0, so every measured step
    # sees exactly opposite gradients, and with no update there is no share to log.
    for record in _train(-1.0, "mgda", {}, epochs=2):
        assert record.grad_cosines == {"a|b": pytest.approx(-1.0, abs=1e-12)}
        assert record.conflicts == {"a|b": 1.0}
        assert record.dominance == {}
        assert record.grad_norms["a"] == pytest.approx(record.grad_norms["b"], rel=1e-12)


def test_gramian_quantities_against_explicit_vectors() -> None:
    g = torch.tensor([[3.0, 0.0, 4.0], [0.0, 2.0, 0.0], [-3.0, 0.0, -4.0]], dtype=torch.float64)
    gram = TaskGramian(["p", "q", "r"], g @ g.T)
    assert gram.norms() == pytest.approx({"p": 5.0, "q": 2.0, "r": 5.0})
    assert gram.cosines() == pytest.approx({("p", "q"): 0.0, ("p", "r"): -1.0, ("q", "r"): 0.0})
    w = {"p": 1.0, "q": 0.5, "r": 0.25}
    combined = 1.0 * g[0] + 0.5 * g[1] + 0.25 * g[2]  # (0.75·(3,0,4)) + (0,1,0)
    expected = {
        n: float(w[n] * g[i] @ combined / (combined @ combined)) for i, n in enumerate("pqr")
    }
    assert gram.dominance(w) == pytest.approx(expected)
    assert math.fsum(expected.values()) == pytest.approx(1.0)
    assert expected["r"] < 0  # r opposes the update
    # Zero combined gradient: no shares.
    assert TaskGramian(["p", "r"], (g[[0, 2]] @ g[[0, 2]].T)).dominance({"p": 1, "r": 1}) is None


def test_task_gradient_gramian_matches_materialised_gradients() -> None:
    torch.manual_seed(0)
    layer, head = nn.Linear(4, 3), nn.Linear(3, 2)
    x = torch.randn(8, 4)
    out = head(torch.tanh(layer(x)))
    losses = {"u": out[:, 0].pow(2).mean(), "v": (out[:, 1] - 1).abs().mean()}
    params = list(layer.parameters())
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])
        for loss in losses.values()
    ]
    jac = torch.stack(rows).double()
    measured = task_gradient_gramian(losses, params)
    torch.testing.assert_close(measured.gramian, jac @ jac.T, rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in params)  # .grad untouched


# -- through the pipeline ------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_mmoe_synthetic(600, 0.5, n_features=6, seed=0)


def _log(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


@pytest.mark.parametrize("balancer", ["static", "pcgrad"])
def test_every_run_logs_diagnostics_and_resume_logs_the_same(
    balancer: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    raw = synthetic_raw(
        balancer=balancer, widths=(8,), epochs=3, batch_size=64, patience=None, threads=1
    )
    run_interrupted_and_resumed(raw, frame, tmp_path)
    rows = _log(tmp_path / "full")
    assert _log(tmp_path / "cut") == rows
    for row in rows:
        assert set(row["grad_cosines"]) == {"value|label"} == set(row["conflicts"])
        assert -1.0 <= row["grad_cosines"]["value|label"] <= 1.0
        assert 0.0 <= row["conflicts"]["value|label"] <= 1.0
        assert set(row["dominance"]) == {"value", "label"}
        assert math.fsum(row["dominance"].values()) == pytest.approx(1.0, abs=1e-9)
    if balancer == "pcgrad":
        # Measured at every step: the conflict fraction is a count over the epoch's steps.
        for row in rows:
            steps = math.ceil(row["examples"]["value"] / 64)
            assert steps == 7
            count = row["conflicts"]["value|label"] * steps
            assert count == pytest.approx(round(count), abs=1e-9)


class _Cut(Exception):
    pass


def test_mid_epoch_resume_logs_the_same_diagnostics(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = synthetic_raw(
        balancer="upgrad", widths=(8,), epochs=2, batch_size=64, patience=None, threads=1
    )
    raw["train"]["checkpoint_every"] = 3
    cfg = config_from_dict(raw)
    run(cfg, frame=frame, out=tmp_path / "full", quiet=True)
    original = Trainer._step
    calls = {"n": 0}

    def cut_after_11_steps(self: Trainer, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 11:  # 7 steps per epoch: inside the second epoch
            raise _Cut
        original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_step", cut_after_11_steps)
    with pytest.raises(_Cut):
        run(cfg, frame=frame, out=tmp_path / "cut", quiet=True)
    monkeypatch.setattr(Trainer, "_step", original)
    point = load_state(tmp_path / "cut" / "checkpoints" / "last")
    assert point["partial"]["step_in_epoch"] == 3
    assert point["partial"]["stats"]["cos_count"]["value|label"] == 3
    run(cfg, frame=frame, out=tmp_path / "cut", resume=True, quiet=True)
    assert _log(tmp_path / "cut") == _log(tmp_path / "full")
