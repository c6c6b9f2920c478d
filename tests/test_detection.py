"""The ``detection`` kind (CenterNet head, COCO mAP) and the MNIST detection generator."""

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
from polytask import ConfigError, DataError, Task, fit
from polytask.config import config_from_dict
from polytask.data.spec import InputSpec
from polytask.data.targets import encode_targets, fit_task
from polytask.data.tensors import Batch
from polytask.evaluate.metrics import compute_metrics
from polytask.losses import TaskLoss
from polytask.models.config import ModelConfig
from polytask.models.model import build_model
from polytask.run.pipeline import RunResult
from polytask.studies.distill import DistillationLoss
from polytask.tasks.centernet import (
    STRIDE,
    CenterNetHead,
    decode_detections,
    focal_terms,
    gaussian_radius,
    heatmap_targets,
    nms,
)
from polytask.tasks.kinds.detection import coco_map

SOURCE = "t.csv"


def _fitted(cells: list[Any], classes: list[str] | None = None) -> tuple[Task, Any, Any]:
    column = np.empty(len(cells), dtype=object)
    column[:] = cells
    table = pd.DataFrame({"boxes": column})
    task = fit_task(
        Task("det", "detection", "boxes", classes=classes), table, np.arange(len(cells)), SOURCE
    )
    y, m = encode_targets(task, table, SOURCE)
    return task, y, m


# -- encoding and decoding -------------------------------------------------------------------
def test_encoding_layout_and_round_trip_through_a_perfect_output() -> None:
    cells = [
        json.dumps([[4, 8, 20, 24, "7"], [30, 2, 44, 30, 1]]),  # a JSON cell from a CSV
        [],  # an image without objects: labelled
        None,  # unlabelled
        [[0.0, 0.0, 10.0, 12.0, 10.0]],  # a float class 10.0 reads as "10"
        "[[2.0, 2.0, 6.0, 6.0, '7']]",  # a predictions CSV's cell (pandas writes a list repr)
    ]
    task, y, m = _fitted(cells)
    assert task.classes == ["1", "7", "10"]  # numeric order, not "10" < "7"
    assert task.n_outputs == 3 + 4
    assert y.shape == m.shape == (5, 1 + 5 * 2)
    assert m[:, 0].tolist() == [True, True, False, True, True]
    assert m.sum(dim=1).tolist() == [11, 1, 0, 6, 6]
    assert y[0].tolist() == [2, 4, 8, 20, 24, 1, 30, 2, 44, 30, 0]
    assert y[3, 5].item() == 2  # class "10" is index 2

    decoded = task.spec.decode(task, task.spec.perfect_output(task, y))
    assert decoded["det"][0] == [[4.0, 8.0, 20.0, 24.0, "7"], [30.0, 2.0, 44.0, 30.0, "1"]]
    assert decoded["det"][1] == [] and decoded["det"][3] == [[0.0, 0.0, 10.0, 12.0, "10"]]
    assert decoded["det"][4] == [[2.0, 2.0, 6.0, 6.0, "7"]]
    assert decoded["det_score"][0] == pytest.approx([1.0, 1.0])


def test_malformed_cells_name_the_column_and_the_row() -> None:
    for cell, expected in [
        ("[[1, 2, 3]", r"column 'boxes', row 1: .* is not a list of \[x1, y1, x2, y2, class\]"),
        ("__import__('os')", r"row 1: .* is not a list of"),  # literals only, never code
        ([[1, 2, 3, 4]], r"column 'boxes', row 1: box \[1, 2, 3, 4\] is not \[x1, y1, x2"),
        ([[5, 2, 3, 4, 0]], r"column 'boxes', row 1: box .* needs finite corners with x2 > x1"),
        ([["a", 2, 3, 4, 0]], r"column 'boxes', row 1: box .* has non-numeric corners"),
        (7, r"column 'boxes', row 1: 7 is not a list"),
    ]:
        with pytest.raises(DataError, match=expected):
            _fitted([[[0, 0, 4, 4, 0]], cell])
    with pytest.raises(DataError, match=r"row 1: box class '9' is not among the classes"):
        column = pd.Series([[[0, 0, 4, 4, 0]], [[0, 0, 4, 4, 9]]], name="boxes")
        task = Task("det", "detection", "boxes", classes=["0"])
        task.spec.encode(task, pd.DataFrame({"boxes": column}), SOURCE, lambda s: (s, s))
    with pytest.raises(DataError, match=r"outside the declared classes \['0'\]: \['9'\]"):
        _fitted([[[0, 0, 4, 4, 0]], [[0, 0, 4, 4, 9]]], classes=["0"])
    with pytest.raises(DataError, match="column 'boxes' has no box in the training rows"):
        _fitted([[], None])


# -- CenterNet targets, loss and decoding ---------------------------------------------------
def test_gaussian_targets_peak_at_the_centre_cell_with_the_cornernet_radius() -> None:
    # A 24 x 16 px box (6 x 4 cells): CornerNet's radius, smallest of its three cases.
    h, w = torch.tensor([4.0]), torch.tensor([6.0])
    r = float(gaussian_radius(h, w))
    b3 = -2 * 0.7 * 10.0
    c3 = -0.3 * 24.0
    assert r == pytest.approx((b3 + math.sqrt(b3**2 - 4 * 2.8 * c3)) / 2)
    assert r == pytest.approx(1.3162, abs=1e-3)  # < the other two cases (9.56, 18.4)
    boxes = torch.tensor([[[8.0, 12.0, 32.0, 28.0]]])  # centre (20, 20) px = cell (5, 5)
    heat = heatmap_targets(boxes, torch.tensor([[1]]), torch.tensor([[True]]), 2, (10, 10))
    assert heat.shape == (1, 2, 10, 10)
    assert heat[0, 0].abs().sum() == 0  # other class untouched
    assert heat[0, 1, 5, 5] == 1.0 and int((heat == 1).sum()) == 1
    sigma = (2 * math.floor(r) + 1) / 6
    assert float(heat[0, 1, 5, 6]) == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)
    assert float(heat[0, 1, 5, 7]) == 0.0  # beyond the radius (1 cell)


def test_focal_loss_terms_match_the_paper_formula() -> None:
    logits = torch.tensor([0.0, 0.0, 2.0])
    heat = torch.tensor([1.0, 0.5, 0.0])
    pos, neg = focal_terms(logits, heat)
    # Positive at p = 0.5: -(1 - p)^2 log p; negative: -(1 - Y)^4 p^2 log(1 - p).
    assert pos.tolist() == pytest.approx([0.25 * math.log(2), 0.0, 0.0])
    p = 1 / (1 + math.exp(-2.0))
    assert neg.tolist() == pytest.approx(
        [0.0, 0.0625 * 0.25 * math.log(2), p**2 * -math.log(1 - p)]
    )


def test_nms_keeps_the_best_of_overlapping_boxes_per_class() -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0], [0, 0, 10, 9]]
    )
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])
    # IoU(0, 1) = 81 / 119 = 0.68 > 0.5: box 0 goes; box 3 overlaps box 1 by 72 / 118 = 0.61.
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]
    out = torch.full((1, 2 + 4, 4, 4), -30.0)
    out[0, 0, 1, 1] = out[0, 1, 1, 1] = 5.0  # two classes on one cell: both kept
    out[0, 2:, 1, 1] = torch.tensor([0.5, 0.5, 2.0, 2.0])
    (found,) = decode_detections(out, 2)
    assert found[2].tolist() == [0, 1]
    assert found[0].tolist() == [[2.0, 2.0, 10.0, 10.0]] * 2


def test_map_against_a_hand_computed_case() -> None:
    # Image 0: one digit found (0.9) and one false alarm (0.8); image 1: one digit found
    # (0.7). Ranked: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1. COCO's
    # 101-point interpolated AP: recall 0 .. 0.50 (51 points) at precision 1, 0.51 .. 1
    # (50 points) at 2/3.
    truth = np.array([[0, 0, 0, 10, 10, 0], [1, 5, 5, 15, 15, 0]], dtype=float)
    preds = np.array(
        [[0, 0, 0, 10, 10, 0.9, 0], [0, 20, 20, 30, 30, 0.8, 0], [1, 5, 5, 15, 15, 0.7, 0]],
        dtype=float,
    )
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    stats = coco_map(preds, truth)
    assert stats["map"] == pytest.approx(expected, abs=1e-6)
    assert stats["map_50"] == pytest.approx(expected, abs=1e-6)
    # Shifted by 2 px the found boxes have IoU 64/136 = 0.47: below every threshold.
    shifted = preds.copy()
    shifted[[0, 2], 1:5] += 2
    assert coco_map(shifted, truth) == {"map": 0.0, "map_50": 0.0}
    assert math.isnan(coco_map(preds, truth[:0])["map"])


def test_unlabelled_images_are_masked_in_loss_and_metrics() -> None:
    task, y, m = _fitted([[[0, 0, 8, 8, 0], [8, 8, 16, 16, 1]], None, [[4, 4, 12, 12, 1]], []])
    out = task.spec.perfect_output(task, y) + 0.3 * torch.randn(4, 6, 4, 4)
    loss = TaskLoss(task)
    scrambled = out.clone()
    scrambled[1] = torch.randn(6, 4, 4) * 100  # the unlabelled image's outputs
    assert float(loss(out, y, m)) == float(loss(scrambled, y, m))
    assert compute_metrics(task, out, y, m) == compute_metrics(task, scrambled, y, m)
    # The loss is the mean over the valid units: 4 headers... 3 labelled images + 3 boxes x 5.
    units = task.spec.unit_losses(loss, out, y)
    assert float(loss(out, y, m)) == pytest.approx(float(units[m].sum()) / (3 + 15))


def test_a_vector_representation_is_refused_in_one_line() -> None:
    task, _, _ = _fitted([[[0, 0, 4, 4, 0]]])
    spec = InputSpec(kind="table", shape=[3], n_numeric=3)
    with pytest.raises(ConfigError, match=r"^config error: task 'det' is a detection task and "):
        build_model([task], spec, ModelConfig(), seed=0)
    head = CenterNetHead(8, 3, 4, (30, 18))
    assert head(torch.randn(2, 8, 4, 4)).shape == (2, 7, 8, 5)  # ceil(30/4) x ceil(18/4)
    assert STRIDE == 4


# -- end to end ------------------------------------------------------------------------------
SIZE = 32


def _squares(n: int, seed: int) -> pd.DataFrame:
    """Canvases with 1-2 squares of 6-10 px: bright ones (class "hi") or dim ones ("lo")."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image = rng.integers(0, 30, (SIZE, SIZE)).astype(np.uint8)
        boxes: list[list[Any]] = []
        for _ in range(int(rng.integers(1, 3))):
            side = int(rng.integers(6, 11))
            x, y = (int(v) for v in rng.integers(0, SIZE - side, 2))
            if any(
                x < b[2] + 2 and b[0] < x + side + 2 and y < b[3] + 2 and b[1] < y + side + 2
                for b in boxes
            ):
                continue
            bright = bool(rng.random() < 0.5)
            image[y : y + side, x : x + side] = 250 if bright else 120
            boxes.append([x, y, x + side, y + side, "hi" if bright else "lo"])
        rows.append({"image": image, "boxes": boxes if i % 10 else None})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def learned() -> RunResult:
    return fit(
        _squares(300, seed=0),
        [Task("det", "detection", "boxes")],
        data_options={"input": {"name": "image"}, "split": {"val": 0.15, "test": 0.15}},
        model={
            "encoder": {"name": "cnn", "widths": [8, 16, 16]},
            "head": {"decoder_channels": [16]},
        },
        train={"epochs": 12, "batch_size": 32, "lr": 1e-2, "patience": None, "progress": False},
        baselines=False,
        quiet=True,
    )


def test_a_tiny_detection_task_is_learned_end_to_end(learned: RunResult) -> None:
    m = learned.metrics["det"]
    # Untrained, the heat-map's peaks are noise (mAP@.5 ~0); this seed reaches ~0.9.
    assert m["map_50"] > 0.6, m
    assert 0 < m["map"] <= m["map_50"], m


def test_predict_from_a_saved_model_directory(learned: RunResult, tmp_path: Path) -> None:
    frame = _squares(8, seed=5)
    learned.predictor.save(tmp_path / "model")
    predicted = polytask.load(tmp_path / "model").predict(frame)
    assert {"det", "det_score"} <= set(predicted.columns)
    before = learned.predictor.predict(frame)
    hits = 0
    for boxes, scores, truth in zip(
        predicted["det"], predicted["det_score"], frame["boxes"], strict=True
    ):
        assert len(boxes) == len(scores) and all(s >= 0.3 for s in scores)
        assert all(len(b) == 5 and b[4] in ("hi", "lo") for b in boxes)
        hits += sum(any(b[4] == t[4] and abs(b[0] - t[0]) < 2 for b in boxes) for t in truth or [])
    assert list(before["det"]) == list(predicted["det"])
    assert hits >= 0.6 * sum(len(t or []) for t in frame["boxes"])


# -- distillation ----------------------------------------------------------------------------
def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _qfl(s: float, t: float, temp: float) -> float:
    """T² times the Quality Focal Loss of student logit ``s`` against teacher logit ``t``:
    the focal factor untempered, the cross-entropy tempered."""
    q, y = _sigmoid(s / temp), _sigmoid(t / temp)
    focal = abs(_sigmoid(t) - _sigmoid(s)) ** 2
    return focal * -(y * math.log(q) + (1 - y) * math.log(1 - q)) * temp**2


def _teacher_case() -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """One class on a 1 x 3 grid. Image 0: the teacher peaks at cell 0 (0.88 >= 0.3; cell 1
    is no peak, cell 2 scores 0.05); image 1: a teacher without a detection. The student's
    heat-map is 0 (p = 0.5) and its offsets and sizes (0, 0, 1, 1) everywhere."""
    teacher = torch.zeros(2, 5, 1, 3)
    teacher[0, 0, 0] = torch.tensor([2.0, -1.0, -3.0])
    teacher[1, 0, 0] = torch.tensor([-4.0, -4.0, -4.0])
    teacher[:, 1:] = 9.0  # regression channels away from a detection: not taught
    teacher[0, 1:, 0, 0] = torch.tensor([0.5, 0.25, 3.0, 2.0])
    student = torch.zeros(2, 5, 1, 3)
    student[:, 3:] = 1.0
    temp = 2.0
    heat = [sum(_qfl(0.0, float(t), temp) for t in teacher[i, 0, 0]) for i in range(2)]
    # L1 at the teacher's detection: offsets weigh 1, sizes 0.1 (the labels' box loss).
    box = 0.5 + 0.25 + 0.1 * (3.0 - 1.0) + 0.1 * (2.0 - 1.0)
    return student, teacher, [heat[0] + box, heat[1]]


def test_teacher_units_match_a_hand_computed_case() -> None:
    task, _, _ = _fitted([[[0, 0, 4, 4, "x"]]])
    student, teacher, expected = _teacher_case()
    d = task.spec.teacher_units(student, teacher, 2.0)
    assert d.shape == (2, 1)
    assert d[:, 0].tolist() == pytest.approx(expected, rel=1e-5)
    assert float(task.spec.teacher_units(teacher, teacher, 2.0).abs().max()) < 1e-6
    with pytest.raises(DataError, match=r"detection teacher's outputs \[5, 2, 3\] .* \[5, 1, 3\]"):
        task.spec.teacher_units(student, teacher.repeat(1, 1, 2, 1), 2.0)


def test_distillation_loss_counts_an_image_without_boxes_once() -> None:
    # Image 0: one box (5 units and its header); image 1: no box (its header only: the
    # teacher teaches it where there is nothing); image 2: unlabelled.
    task, y, m = _fitted([[[0, 0, 8, 4, "x"]], [], None])
    assert m.sum(dim=1).tolist() == [6, 1, 0]
    student, teacher, d = _teacher_case()
    student, teacher = torch.cat([student, student[:1]]), torch.cat([teacher, teacher[1:]])
    d = [*d, d[1]]
    lam = 0.25
    batch = Batch({"image": torch.zeros(3, 1)}, {"det": y}, {"det": m}, {"det": teacher})
    units = task.spec.unit_losses(TaskLoss(task), student, y)
    labelled = lam * float(units[m].sum()) + (1 - lam) * (d[0] + d[1])
    for fill, expected, count in [
        (False, labelled / 7, 7),
        (True, (labelled + d[2]) / 8, 8),  # the unlabelled image: its teacher loss only
    ]:
        loss = DistillationLoss(
            [task], ["det"], temperature=2.0, anneal=False, label_weight=lam, fill_missing=fill
        )
        assert float(loss({"det": student}, batch, 0.0)["det"]) == pytest.approx(expected, 1e-5)
        assert float(loss.denominators({"det": student}, batch)["det"]) == count


def test_a_smaller_student_learns_from_the_detection_teacher(
    learned: RunResult, tmp_path: Path
) -> None:
    learned.predictor.save(tmp_path / "teacher")
    raw = {
        "seed": 0,
        "baselines": False,
        "data": {"input": {"name": "image"}, "split": {"val": 0.15, "test": 0.15}},
        "tasks": [{"name": "det", "kind": "detection", "target": "boxes"}],
        "model": {
            "encoder": {"name": "cnn", "widths": [4, 8, 8]},
            "head": {"decoder_channels": [8]},
        },
        "train": {"epochs": 12, "batch_size": 32, "lr": 1e-2, "patience": None, "progress": False},
        "distill": {"teachers": [str(tmp_path / "teacher")]},
    }
    student = polytask.run(config_from_dict(raw), frame=_squares(300, seed=0), quiet=True)
    m = student.metrics["det"]
    summary = student.predictor.metrics
    assert summary["parameters"]["student"] < summary["parameters"]["teachers"] / 2
    # Measured on these 45 test images: the teacher map 0.78 (map_50 1.0); this student, at
    # half its width, 0.73 (1.0), and 0.64 (0.95) trained on the labels alone.
    assert m["map_50"] > 0.8 and m["map"] > 0.5, m


# -- the MNIST detection generator -----------------------------------------------------------
def test_mnist_detection_canvases(require_data: Any) -> None:
    from polytask.data.datasets.mnist_detection import load_mnist_detection

    root = require_data("mnist_detection")
    frame = load_mnist_detection(root, {"train": 30, "val": 5, "test": 5})
    assert frame["split"].value_counts().to_dict() == {"train": 30, "val": 5, "test": 5}
    again = load_mnist_detection(root, {"train": 30, "val": 5, "test": 5})
    assert all(np.array_equal(a, b) for a, b in zip(frame["image"], again["image"], strict=True))
    for image, boxes, count, mask in frame[["image", "boxes", "count", "mask"]].itertuples(
        index=False
    ):
        assert image.shape == mask.shape == (64, 64) and 1 <= count <= 5 and len(boxes) == count
        for x1, y1, x2, y2, digit in boxes:
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            # MNIST digits are 20 px tall in their 28 px frame: 16-32 px frames ink 11-23 px.
            assert 10 <= max(x2 - x1, y2 - y1) <= 26
            # The digit owns some pixels of its box, and every owned pixel is inked.
            assert (mask[int(y1) : int(y2), int(x1) : int(x2)] == 1 + digit).any()
        assert set(np.unique(mask)) <= {0} | {1 + b[4] for b in boxes}
        assert (image[mask > 0] >= 128).all()
