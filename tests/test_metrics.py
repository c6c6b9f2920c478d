"""Per-task metrics against scikit-learn, metric directions, and relative change / Δm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from polytask.evaluate.delta import delta_m, relative_change
from polytask.evaluate.metrics import compute_metrics, higher_is_better
from polytask.evaluate.reference import against_reference
from polytask.tasks import METRICS, Task
from polytask.tasks.kinds import KINDS

N = 400


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.random(shape) < 0.75


def test_binary_metrics_match_sklearn(rng: np.random.Generator) -> None:
    y = (rng.random(N) < 0.4).astype(np.float32)
    logits = (2.0 * y - 1.0 + rng.normal(0, 1.5, N)).astype(np.float32)
    mask = _mask(rng, (N,))
    task = Task("b", "binary", "y", classes=["0", "1"])
    got = compute_metrics(
        task, torch.from_numpy(logits), torch.from_numpy(y), torch.from_numpy(mask)
    )
    yv = y[mask].astype(int)
    p = 1.0 / (1.0 + np.exp(-logits[mask].astype(np.float64)))
    hard = (p >= 0.5).astype(int)
    assert set(got) == set(METRICS["binary"])
    assert got["auroc"] == pytest.approx(roc_auc_score(yv, p), abs=1e-6)
    assert got["accuracy"] == pytest.approx(accuracy_score(yv, hard), abs=1e-6)
    assert got["f1"] == pytest.approx(f1_score(yv, hard), abs=1e-6)
    assert got["average_precision"] == pytest.approx(average_precision_score(yv, p), abs=1e-5)
    # The masked rows were really left out: scoring every row gives a different AUROC.
    assert abs(got["auroc"] - roc_auc_score(y.astype(int), logits)) > 1e-4


def test_multiclass_metrics_match_sklearn(rng: np.random.Generator) -> None:
    k = 4
    y = rng.integers(0, k, N)
    logits = rng.normal(0, 1, (N, k)).astype(np.float32)
    logits[np.arange(N), y] += 1.0
    mask = _mask(rng, (N,))
    task = Task("m", "multiclass", "y", classes=["a", "b", "c", "d"])
    got = compute_metrics(
        task, torch.from_numpy(logits), torch.from_numpy(y), torch.from_numpy(mask)
    )
    yv, xv = y[mask], logits[mask].astype(np.float64)
    proba = np.exp(xv) / np.exp(xv).sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(accuracy_score(yv, pred), abs=1e-6)
    assert got["f1"] == pytest.approx(f1_score(yv, pred, average="macro"), abs=1e-6)
    assert got["auroc"] == pytest.approx(
        roc_auc_score(yv, proba, multi_class="ovr", average="macro"), abs=1e-5
    )


def test_multilabel_metrics_skip_masked_entries(rng: np.random.Generator) -> None:
    n_labels = 3
    y = (rng.random((N, n_labels)) < 0.5).astype(np.float32)
    logits = (2.0 * y - 1.0 + rng.normal(0, 1.5, y.shape)).astype(np.float32)
    mask = _mask(rng, y.shape)
    task = Task("l", "multilabel", ["a", "b", "c"])
    got = compute_metrics(
        task, torch.from_numpy(logits), torch.from_numpy(y), torch.from_numpy(mask)
    )
    aurocs, f1s = [], []
    for j in range(n_labels):
        m = mask[:, j]
        aurocs.append(roc_auc_score(y[m, j], logits[m, j]))
        f1s.append(f1_score(y[m, j], (logits[m, j] >= 0).astype(int)))
    correct = ((logits >= 0) == (y == 1))[mask]
    assert got["auroc"] == pytest.approx(np.mean(aurocs), abs=1e-5)
    assert got["f1"] == pytest.approx(np.mean(f1s), abs=1e-5)
    assert got["accuracy"] == pytest.approx(correct.mean(), abs=1e-6)


def test_regression_metrics_in_original_units(rng: np.random.Generator) -> None:
    mean, std = 50.0, 12.0
    y = rng.normal(mean, std, N)
    pred = y + rng.normal(0, 5.0, N)
    mask = _mask(rng, (N,))
    task = Task("r", "regression", "y", target_mean=mean, target_std=std)
    # The network sees and emits standardised values.
    out = torch.from_numpy(((pred - mean) / std).astype(np.float32))
    tgt = torch.from_numpy(((y - mean) / std).astype(np.float32))
    tgt[~torch.from_numpy(mask)] = 0.0
    got = compute_metrics(task, out, tgt, torch.from_numpy(mask))
    yv, pv = y[mask], pred[mask]
    assert got["mae"] == pytest.approx(mean_absolute_error(yv, pv), rel=1e-4)
    assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(yv, pv)), rel=1e-4)
    assert got["r2"] == pytest.approx(r2_score(yv, pv), abs=1e-4)
    # In standardised units the MAE would be 12 times smaller: make sure that is not reported.
    assert got["mae"] > 3.0


def test_binary_auroc_nan_with_one_class(rng: np.random.Generator) -> None:
    task = Task("b", "binary", "y", classes=["0", "1"])
    y = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    mask = torch.tensor([True, True, False, True, False])  # the valid labels are all positive
    got = compute_metrics(task, torch.tensor([0.3, -0.2, 1.0, 2.0, -1.0]), y, mask)
    assert math.isnan(got["auroc"])
    assert math.isnan(got["average_precision"])
    assert got["accuracy"] == pytest.approx(2 / 3)


def test_all_masked_gives_nan() -> None:
    task = Task("r", "regression", "y", target_mean=0.0, target_std=1.0)
    got = compute_metrics(task, torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.bool))
    assert set(got) == {"mae", "rmse", "r2"}
    assert all(math.isnan(v) for v in got.values())


EXPECTED_DIRECTION = {
    ("binary", "auroc"): True,
    ("binary", "accuracy"): True,
    ("binary", "f1"): True,
    ("binary", "average_precision"): True,
    ("multiclass", "accuracy"): True,
    ("multiclass", "f1"): True,
    ("multiclass", "auroc"): True,
    ("multilabel", "auroc"): True,
    ("multilabel", "f1"): True,
    ("multilabel", "accuracy"): True,
    ("regression", "mae"): False,
    ("regression", "rmse"): False,
    ("regression", "r2"): True,
    ("segmentation", "miou"): True,
    ("segmentation", "pixel_accuracy"): True,
    ("dense_regression", "abs_rel"): False,
    ("dense_regression", "mae"): False,
    ("dense_regression", "rmse"): False,
    ("token_classification", "accuracy"): True,
    ("token_classification", "span_f1"): True,
    ("dependency", "las"): True,
    ("dependency", "uas"): True,
    ("detection", "map"): True,
    ("detection", "map_50"): True,
}


def _task_of(kind: str) -> Task:
    if kind == "multiclass":
        return Task("t", kind, "y", classes=["a", "b", "c"])
    if kind == "segmentation":
        return Task("t", kind, "y", classes=["0", "1", "2"])
    if kind == "multilabel":
        return Task("t", kind, ["a", "b"])
    if kind in ("dependency", "detection", "token_classification"):
        # Kinds whose declarations differ more: the one their property-suite example uses.
        declared, _ = KINDS.get(kind).example(np.random.default_rng(0), 4)
        return Task("t", kind, **declared)  # type: ignore[arg-type]
    return Task("t", kind, "y")  # type: ignore[arg-type]


def test_every_metric_has_its_direction() -> None:
    declared = {(kind, m) for kind, names in METRICS.items() for m in names}
    assert declared == set(EXPECTED_DIRECTION)
    for (kind, name), up in EXPECTED_DIRECTION.items():
        assert higher_is_better(_task_of(kind), name) is up, (kind, name)


def test_direction_known_before_the_classes_are() -> None:
    # A comparison summarises multiclass tasks declared in a config (classes inferred later
    # from the data); asking for a metric's direction must not need them.
    for kind in ("multiclass", "segmentation"):
        bare = Task("t", kind, "y")
        for name in METRICS[kind]:
            assert higher_is_better(bare, name) is EXPECTED_DIRECTION[(kind, name)]


def test_relative_change_signs() -> None:
    # Lower is better: an AUROC going 0.80 -> 0.84 is a 5% improvement, i.e. -0.05.
    assert relative_change(0.84, 0.80, True) == pytest.approx(-0.05)
    assert relative_change(0.76, 0.80, True) == pytest.approx(0.05)
    # An MAE going 10 -> 8 is a 20% improvement (-0.2); 10 -> 12 a 20% loss.
    assert relative_change(8.0, 10.0, False) == pytest.approx(-0.2)
    assert relative_change(12.0, 10.0, False) == pytest.approx(0.2)
    # The reference's sign does not flip the direction (R² can be negative).
    assert relative_change(-0.5, -1.0, True) == pytest.approx(-0.5)
    assert math.isnan(relative_change(math.nan, 1.0, True))


def test_delta_m_worked_example() -> None:
    values = {"risk": 0.84, "stay": 12.0, "other": math.nan}
    refs = {"risk": 0.80, "stay": 10.0, "other": 0.5}
    hib = {"risk": True, "stay": False, "other": True}
    # mean(-5%, +20%) over the tasks with finite changes = +7.5% (multi-task worse).
    assert delta_m(values, refs, hib) == pytest.approx(7.5)
    assert math.isnan(delta_m({"risk": 0.84}, {}, {"risk": True}))  # no reference at all
    better = delta_m({"risk": 0.84, "stay": 8.0}, refs, hib)
    assert better == pytest.approx(100 * (-0.05 - 0.2) / 2)


def test_compare_uses_primary_metric_and_direction() -> None:
    tasks = [
        Task("risk", "binary", "y", classes=["0", "1"]),
        Task("stay", "regression", "d", primary_metric="rmse"),
    ]
    multi = {"risk": {"auroc": 0.84, "f1": 0.1}, "stay": {"mae": 1.0, "rmse": 12.0}}
    single = {"risk": {"auroc": 0.80}, "stay": {"rmse": 10.0, "mae": 100.0}}
    result = against_reference(tasks, multi, single, "test")
    rows = {r.task: r for r in result.rows}
    assert rows["risk"].metric == "auroc" and rows["risk"].higher_is_better
    assert rows["stay"].metric == "rmse" and not rows["stay"].higher_is_better
    assert rows["risk"].relative_change_pct == pytest.approx(-5.0)
    assert rows["stay"].relative_change_pct == pytest.approx(20.0)
    assert result.delta_m_pct == pytest.approx(7.5)
    assert math.isnan(against_reference(tasks, multi, {}, "test").delta_m_pct)


def test_segmentation_metrics_match_a_confusion_matrix_reference(rng: np.random.Generator) -> None:
    k, n, h, w = 3, 6, 5, 7
    y = rng.integers(0, k, (n, h, w))
    logits = rng.normal(0, 1, (n, k, h, w)).astype(np.float32)
    logits[:, 1] += 0.8 * (y == 1)  # some skill on class 1
    mask = _mask(rng, (n, h, w))
    task = Task("seg", "segmentation", "m", classes=["0", "1", "2"])
    got = compute_metrics(
        task, torch.from_numpy(logits), torch.from_numpy(y), torch.from_numpy(mask)
    )
    pred = logits.argmax(axis=1)[mask]
    true = y[mask]
    conf = np.zeros((k, k))
    np.add.at(conf, (true, pred), 1)
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf))
    assert got["miou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert got["pixel_accuracy"] == pytest.approx((pred == true).mean(), abs=1e-6)


def test_dense_regression_metrics_in_original_units(rng: np.random.Generator) -> None:
    n, h, w = 4, 6, 6
    depth = rng.uniform(1.0, 10.0, (n, h, w)).astype(np.float32)
    pred = depth * rng.uniform(0.8, 1.2, depth.shape).astype(np.float32)
    mask = _mask(rng, (n, h, w))
    task = Task("depth", "dense_regression", "d", target_mean=5.0, target_std=2.0)
    std = lambda a: torch.from_numpy((a - 5.0) / 2.0)  # noqa: E731 - the learned scale
    got = compute_metrics(task, std(pred), std(depth), torch.from_numpy(mask))
    p, t = pred[mask].astype(np.float64), depth[mask].astype(np.float64)
    assert got["abs_rel"] == pytest.approx(np.mean(np.abs(p - t) / t), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(p - t)), rel=1e-5)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((p - t) ** 2)), rel=1e-5)
