"""Distillation: the loss against hand computation, the annealing schedule, a student that
reproduces its teacher, missing labels filled by the teacher, every balancer, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from conftest import run_cli, toml_text
from polytask.balance.base import BALANCERS
from polytask.config import config_from_dict
from polytask.data.tensors import Batch
from polytask.errors import ConfigError, PolytaskError
from polytask.studies.distill import DistillationLoss, label_weight
from polytask.studies.distill.teachers import to_student_units
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _bern_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


# -- the loss, by hand ---------------------------------------------------------------------


def test_annealing_schedule_endpoints() -> None:
    assert label_weight(0.0, True, 0.7) == 0.0  # teacher only at the first step
    assert label_weight(1.0, True, 0.7) == 1.0  # labels only at the last
    assert label_weight(0.25, True, 0.7) == 0.25
    assert label_weight(1.5, True, 0.7) == 1.0 and label_weight(-0.1, True, 0.7) == 0.0
    assert label_weight(0.0, False, 0.7) == 0.7 == label_weight(1.0, False, 0.7)


def _loss(tasks: list[Task], fill: bool, lam: float = 0.25, t: float = 2.0) -> DistillationLoss:
    return DistillationLoss(
        tasks,
        [x.name for x in tasks],
        temperature=t,
        anneal=False,
        label_weight=lam,
        fill_missing=fill,
    )


def test_binary_loss_matches_hand_computation() -> None:
    task = Task("b", "binary", "y", classes=["0", "1"])
    s, t, lam, temp = [0.5, -1.0], [2.0, 0.0], 0.25, 2.0
    batch = Batch(
        {"x": torch.zeros(2, 1)},
        {"b": torch.tensor([1.0, 0.0])},
        {"b": torch.tensor([True, False])},
        {"b": torch.tensor(t)},
    )
    out = {"b": torch.tensor(s)}
    label0 = -math.log(_sigmoid(s[0]))
    d = [temp**2 * _bern_kl(_sigmoid(t[i] / temp), _sigmoid(s[i] / temp)) for i in range(2)]
    unit0 = lam * label0 + (1 - lam) * d[0]
    filled = _loss([task], fill=True)(out, batch, 0.0)["b"]
    assert float(filled) == pytest.approx((unit0 + d[1]) / 2, rel=1e-5)
    labelled_only = _loss([task], fill=False)(out, batch, 0.0)["b"]
    assert float(labelled_only) == pytest.approx(unit0, rel=1e-5)


def test_multiclass_and_regression_losses_match_hand_computation() -> None:
    mc = Task("m", "multiclass", "y", classes=["a", "b", "c"])
    rg = Task("r", "regression", "z", target_mean=0.0, target_std=1.0)
    s_m, t_m, lam, temp = [1.0, 0.0, -1.0], [0.0, 2.0, 0.0], 0.25, 2.0
    batch = Batch(
        {"x": torch.zeros(2, 1)},
        {"m": torch.tensor([2, 0]), "r": torch.tensor([1.0, float("nan")])},
        {"m": torch.tensor([True, False]), "r": torch.tensor([True, False])},
        {"m": torch.tensor([t_m, t_m]), "r": torch.tensor([0.5, 0.5])},
    )
    out = {"m": torch.tensor([s_m, s_m]), "r": torch.tensor([0.0, 1.0], requires_grad=True)}
    losses = _loss([mc, rg], fill=True)(out, batch, 0.0)
    p, q = _softmax([v / temp for v in t_m]), _softmax([v / temp for v in s_m])
    d_m = temp**2 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    label_m = -math.log(_softmax(s_m)[2])
    assert float(losses["m"]) == pytest.approx((lam * label_m + (1 - lam) * d_m + d_m) / 2, 1e-5)
    # Regression: squared error to the label (1.0) and to the teacher (0.5); no temperature.
    unit0 = lam * (0.0 - 1.0) ** 2 + (1 - lam) * (0.0 - 0.5) ** 2
    assert float(losses["r"].detach()) == pytest.approx((unit0 + (1.0 - 0.5) ** 2) / 2, rel=1e-6)
    losses["r"].backward()  # the NaN placeholder label must not reach the gradient
    grad = out["r"].grad
    assert grad is not None and bool(torch.isfinite(grad).all())


def test_tasks_without_teacher_keep_the_label_loss() -> None:
    task = Task("b", "binary", "y", classes=["0", "1"])
    loss = DistillationLoss(
        [task], [], temperature=2.0, anneal=True, label_weight=0.5, fill_missing=True
    )
    batch = Batch({"x": torch.zeros(1, 1)}, {"b": torch.tensor([1.0])}, {"b": torch.tensor([True])})
    value = loss({"b": torch.tensor([0.5])}, batch, 0.0)["b"]
    assert float(value) == pytest.approx(-math.log(_sigmoid(0.5)), rel=1e-6)


def test_regression_teacher_values_move_to_the_students_scale() -> None:
    teacher = Task("r", "regression", "z", target_mean=10.0, target_std=2.0)
    student = Task("r", "regression", "z", target_mean=11.0, target_std=4.0)
    # 1.5 teacher-standardised = 13.0 in days = 0.5 student-standardised.
    moved = to_student_units(student, teacher, torch.tensor([1.5]))
    assert float(moved[0]) == pytest.approx(0.5)


# -- end to end ----------------------------------------------------------------------------


def _toy_frame(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] * x[:, 2] + x[:, 3]
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["b"] = (logit + rng.normal(0, 0.5, n) > 0).astype(int)
    frame["r"] = 3.0 * np.sin(x[:, 0]) + x[:, 4] ** 2 + rng.normal(0, 0.2, n)
    return frame


def _raw(teachers: list[str], **distill: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {"split": {"method": "random", "val": 0.2, "test": 0.2}},
        "tasks": [
            {"name": "b", "kind": "binary", "target": "b"},
            {"name": "r", "kind": "regression", "target": "r"},
        ],
        "model": {"encoder": {"name": "mlp", "widths": [32]}},
        "train": {"epochs": 25, "batch_size": 64, "lr": 3e-3, "progress": False, "patience": 25},
        "distill": {"teachers": teachers, **distill},
    }


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two single-task teachers (wider nets) trained on the toy table."""
    root = tmp_path_factory.mktemp("teachers")
    frame = _toy_frame()
    paths = {}
    for name, kind in (("b", "binary"), ("r", "regression")):
        out = root / name
        polytask.fit(
            frame,
            [Task(name, kind, name)],  # type: ignore[arg-type]
            out=out,
            baselines=False,
            data_options={"split": {"method": "random", "val": 0.2, "test": 0.2}},
            model={"encoder": {"name": "mlp", "widths": [128, 64]}},
            train={"epochs": 30, "batch_size": 64, "lr": 3e-3, "progress": False},
            quiet=True,
        )
        paths[name] = str(out / "model")
    return {"frame": frame, "paths": paths}


def test_student_reproduces_its_teachers(teachers: dict[str, Any]) -> None:
    frame, paths = teachers["frame"], teachers["paths"]
    # Teacher only (label weight 0): whatever the student learns, it learns from the teachers.
    cfg = config_from_dict(_raw(list(paths.values()), anneal=False, label_weight=0.0))
    result = polytask.run(cfg, frame=frame, quiet=True)
    test = frame.sample(n=400, random_state=1)
    student = result.predictor.predict(test)
    ref_b = polytask.load(paths["b"]).predict(test)
    ref_r = polytask.load(paths["r"]).predict(test)
    agreement = float((student["b"].astype(str) == ref_b["b"].astype(str)).mean())
    corr = float(np.corrcoef(student["r"], ref_r["r"])[0, 1])
    assert agreement > 0.93, agreement
    assert corr > 0.97, corr
    summary = result.predictor.metrics
    assert set(summary["teachers"]) == {"b", "r"}
    assert summary["comparison"]["reference"] == "teachers"
    assert summary["parameters"]["student"] < summary["parameters"]["teachers"]


def test_teacher_fills_missing_labels(teachers: dict[str, Any]) -> None:
    frame, paths = teachers["frame"].copy(), teachers["paths"]
    # 95% of the regression labels are gone: the teacher supplies the rest.
    rng = np.random.default_rng(3)
    frame["r"] = frame["r"].mask(rng.random(len(frame)) < 0.95)
    scores = {}
    for fill in (True, False):
        raw = _raw([paths["r"]], fill_missing=fill)
        raw["train"]["epochs"] = 15
        result = polytask.run(config_from_dict(raw), frame=frame, quiet=True)
        full = teachers["frame"].sample(n=600, random_state=2)
        pred = result.predictor.predict(full)
        scores[fill] = float(np.corrcoef(pred["r"], full["r"])[0, 1])
    # With the teacher filling in, the student's regression is far closer to the truth.
    assert scores[True] > 0.9, scores
    assert scores[True] > scores[False] + 0.05, scores


@pytest.mark.parametrize("balancer", sorted(BALANCERS.names()))
def test_every_balancer_distils(teachers: dict[str, Any], balancer: str) -> None:
    raw = _raw(list(teachers["paths"].values()))
    raw["train"].update(epochs=1)
    # Settings some methods cannot run without: GradDrop needs the per-example gradient
    # matrix (representation mode); EPO a preference; COSMOS a preference-conditioned model.
    needs: dict[str, dict[str, Any]] = {
        "graddrop": {"mode": "representation"},
        "epo": {"preference": [0.5, 0.5]},
    }
    raw["balancer"] = {"name": balancer, **needs.get(balancer, {})}
    if balancer == "cosmos":
        raw["model"]["preference_conditioning"] = "film"
    frame = teachers["frame"].iloc[:400]
    result = polytask.run(config_from_dict(raw), frame=frame, quiet=True)
    losses = result.fit.history[0].train_loss
    assert all(math.isfinite(v) for v in losses.values()), losses


def test_teacher_errors_are_clear(teachers: dict[str, Any], tmp_path: Path) -> None:
    frame, paths = teachers["frame"], teachers["paths"]
    with pytest.raises(PolytaskError, match=r"model directory '.*nowhere' not found"):
        polytask.run(config_from_dict(_raw([str(tmp_path / "nowhere")])), frame=frame)
    with pytest.raises(ConfigError, match="task 'b' is predicted by two teachers"):
        polytask.run(config_from_dict(_raw([paths["b"], paths["b"]])), frame=frame)
    raw = _raw([paths["b"]])
    raw["tasks"] = [{"name": "b", "kind": "regression", "target": "r"}]
    with pytest.raises(ConfigError, match="task 'b' is a binary task there, regression here"):
        polytask.run(config_from_dict(raw), frame=frame)
    raw = _raw([paths["b"]])
    raw["tasks"] = [{"name": "c", "kind": "binary", "target": "b"}]
    with pytest.raises(ConfigError, match="no teacher predicts any of the tasks"):
        polytask.run(config_from_dict(raw), frame=frame)


def test_cli_distil_with_cache_and_lineage(teachers: dict[str, Any], tmp_path: Path) -> None:
    frame, paths = teachers["frame"].iloc[:600], teachers["paths"]
    frame.to_csv(tmp_path / "train.csv", index=False)
    raw = _raw([], cache_dir=str(tmp_path / "cache"))
    raw["data"]["path"] = "train.csv"
    raw["train"]["epochs"] = 2
    raw.pop("distill")
    raw["distill"] = {"cache_dir": "cache"}
    (tmp_path / "student.toml").write_text(toml_text(raw))
    args = ["distill", tmp_path / "student.toml", "--teacher", paths["b"], "--teacher", paths["r"]]
    first = run_cli(*args, "--out", tmp_path / "s1", "-q")
    assert first.code == 0, first.err
    assert "teachers" in first.out and "parameters: student" in first.out
    lineage = json.loads((tmp_path / "s1" / "model" / "lineage.json").read_text())
    assert lineage["kind"] == "distillation" and not lineage["teacher_outputs_cached"]
    assert [len(t["sha256"]) for t in lineage["teachers"]] == [64, 64]
    second = run_cli(*args, "--out", tmp_path / "s2", "-q")
    assert second.code == 0, second.err
    again = json.loads((tmp_path / "s2" / "model" / "lineage.json").read_text())
    assert again["teacher_outputs_cached"]
    r1 = json.loads((tmp_path / "s1" / "results.json").read_text())
    r2 = json.loads((tmp_path / "s2" / "results.json").read_text())
    assert r1["multi_task"] == r2["multi_task"]  # the cache changes nothing
    assert polytask.load(tmp_path / "s2").lineage["taught_tasks"].keys() == {"b", "r"}
    # No teacher anywhere: a one-line error, nothing written.
    missing = run_cli("distill", tmp_path / "student.toml", "--out", tmp_path / "s3")
    assert missing.code == 2 and "distill.teachers is empty" in missing.err
    assert not (tmp_path / "s3").exists()
