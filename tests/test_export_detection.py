"""``polytask export`` of a detection task: the graph decodes the CenterNet outputs (peaks,
top-k, threshold, boxes, class-wise NMS) as :meth:`Detection.decode` does, and
:class:`OnnxPredictor` gives :meth:`Predictor.predict`'s columns, beside a segmentation and a
count task on the same backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]  # (ships no type information)
import pandas as pd
import pytest
import torch
from onnx import TensorProto, helper

import polytask
from polytask.export import OnnxPredictor, export_onnx
from polytask.export.detection import MAX_DETECTIONS, detection_outputs, prediction_columns
from polytask.export.graph import Builder
from polytask.tasks import Task
from polytask.tasks.centernet import decode_detections

pytestmark = pytest.mark.usefixtures("torch_single_thread")

#: Boxes in input pixels: the network's outputs differ between torch and onnxruntime by
#: float rounding (~1e-6), times the stride.
BOX_TOL = 1e-3
SCORE_TOL = 1e-5


# -- the decoding nodes alone --------------------------------------------------------------
def _decoder(task: Task) -> Any:
    """An onnxruntime session of the detection decoding alone: ``raw`` in, three outputs."""
    b = Builder("d/")
    outs = detection_outputs(b, task, "raw")
    nodes = [*b.nodes, *(helper.make_node("Identity", [v], [k]) for k, v in outs.items())]
    width = len(task.classes or []) + 4
    graph = helper.make_graph(
        nodes,
        "decode",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["B", width, "h", "w"])],
        [helper.make_empty_tensor_value_info(k) for k in outs],
        initializer=b.initializers,
    )
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    )
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda raw: dict(zip(outs, session.run(list(outs), {"raw": raw}), strict=True))


def _assert_same_detections(expected: pd.DataFrame, got: pd.DataFrame, name: str) -> int:
    """Same rows without a prediction, same classes in the same order, boxes within
    :data:`BOX_TOL` and scores within :data:`SCORE_TOL`; returns the number of boxes."""
    found = 0
    for want, have, want_s, have_s in zip(
        expected[name], got[name], expected[f"{name}_score"], got[f"{name}_score"], strict=True
    ):
        assert (want is None) == (have is None) and (want_s is None) == (have_s is None)
        if want is None:
            continue
        assert [b[4] for b in have] == [b[4] for b in want]
        if want:
            np.testing.assert_allclose(
                np.array([b[:4] for b in have]), np.array([b[:4] for b in want]), atol=BOX_TOL
            )
            np.testing.assert_allclose(have_s, want_s, atol=SCORE_TOL)
        found += len(want)
    return found


def test_onnx_decoding_equals_the_torch_decoder() -> None:
    task = Task("det", "detection", "boxes", classes=["a", "b", "c"])
    decode = _decoder(task)
    rng = torch.Generator().manual_seed(0)
    raw = torch.randn(5, 7, 8, 9, generator=rng) * 2
    raw[:, 5:] = raw[:, 5:].abs() * 3  # sizes of 0-10 cells: many overlapping boxes
    raw[2, 0, 3, 3] = float("nan")  # a row without a prediction
    raw[3, :3] = -10.0  # an image without a detection: an empty list
    # Image 4: two peaks of class 0 two cells apart with 32 px boxes (IoU 0.6: NMS drops
    # the lower one), and a class-1 peak on the first one's cell (kept: NMS is per class).
    raw[4, :3] = -10.0
    raw[4, 0, 2, 2], raw[4, 0, 2, 4], raw[4, 1, 2, 2] = 3.0, 2.0, 1.0
    raw[4, 3:, 2, 2] = raw[4, 3:, 2, 4] = torch.tensor([0.5, 0.5, 8.0, 8.0])
    out = decode(raw.numpy())
    k = MAX_DETECTIONS
    assert out["det_boxes"].shape == (5, k, 4) and out["det_classes"].dtype == np.int64
    cols = prediction_columns(task, out["det_boxes"], out["det_scores"], out["det_classes"])
    expected = task.spec.decode(task, raw)
    boxes = _assert_same_detections(pd.DataFrame(expected), pd.DataFrame(cols), "det")
    assert boxes > 50  # (about 30 in each random image, 2 in image 4)
    assert cols["det"][2] is None and cols["det"][3] == []
    assert [b[4] for b in cols["det"][4]] == ["a", "b"]
    assert cols["det"][4][0][:4] == pytest.approx([-6.0, -6.0, 26.0, 26.0])
    # Padding: kept detections first; then score 0, class -1, a zero box; NaN when undefined.
    n = len(cols["det"][4])
    assert (out["det_classes"][4, n:] == -1).all() and (out["det_scores"][4, n:] == 0).all()
    assert (out["det_boxes"][4, n:] == 0).all() and np.isnan(out["det_scores"][2]).all()
    # Without NMS the random images hold more boxes: the NMS of the graph did drop some.
    unsuppressed = decode_detections(raw.nan_to_num(), 3, iou_threshold=1.0)
    assert sum(len(s) for _, s, _ in unsuppressed) > boxes


# -- a trained model, exported -------------------------------------------------------------
SIZE = 32
CLASSES = {"hi": 250, "lo": 120}


def _scenes(n: int, seed: int) -> pd.DataFrame:
    """Canvases with 0-2 squares of 6-10 px, bright ("hi") or dim ("lo"): their boxes, a
    segmentation mask (0 background, 1 hi, 2 lo) and their count."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        image = rng.integers(0, 30, (SIZE, SIZE)).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), dtype=np.int64)
        boxes: list[list[Any]] = []
        for _ in range(int(rng.integers(0, 3))):
            side = int(rng.integers(6, 11))
            x, y = (int(v) for v in rng.integers(0, SIZE - side, 2))
            if mask[max(y - 2, 0) : y + side + 2, max(x - 2, 0) : x + side + 2].any():
                continue
            label = "hi" if rng.random() < 0.5 else "lo"
            image[y : y + side, x : x + side] = CLASSES[label]
            mask[y : y + side, x : x + side] = 1 if label == "hi" else 2
            boxes.append([x, y, x + side, y + side, label])
        rows.append({"image": image, "boxes": boxes, "mask": mask, "count": float(len(boxes))})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Detection, segmentation and counting on one small CNN (trained briefly), exported."""
    root = tmp_path_factory.mktemp("export_detection")
    polytask.fit(
        _scenes(200, seed=0),
        [
            Task("det", "detection", "boxes"),
            Task("pixels", "segmentation", "mask"),
            Task("count", "regression", "count"),
        ],
        out=root / "run",
        baselines=False,
        data_options={"input": {"name": "image"}, "split": {"val": 0.1, "test": 0.1}},
        model={
            "encoder": {"name": "cnn", "widths": [8, 16, 16]},
            "head": {"widths": [16], "decoder_channels": [16]},
        },
        train={"epochs": 6, "batch_size": 32, "lr": 1e-2, "patience": None, "progress": False},
        quiet=True,
    )
    model = root / "run" / "model"
    return model, export_onnx(model, root / "m.onnx", exporter="torchscript")


def test_exported_detection_predicts_as_torch(exported: tuple[Path, Path]) -> None:
    model, path = exported
    rows = _scenes(24, seed=7)
    rows.at[3, "image"] = np.zeros((SIZE, SIZE), dtype=np.uint8)  # a blank canvas
    expected = polytask.load(model).predict(rows)
    got = OnnxPredictor(path).predict(rows)
    assert list(got.columns) == list(expected.columns)
    assert {"det", "det_score", "pixels", "count"} <= set(got.columns)
    found = _assert_same_detections(expected, got, "det")
    truth = sum(len(b) for b in rows["boxes"])
    assert found >= truth // 2, (found, truth)  # a trained model: real detections compared
    for want, have in zip(expected["pixels"], got["pixels"], strict=True):
        assert np.array_equal(want, have)
    np.testing.assert_allclose(got["count"], expected["count"], rtol=1e-5, atol=1e-5)


def test_metadata_documents_the_detection_outputs(exported: tuple[Path, Path]) -> None:
    _, path = exported
    graph = onnx.load(path)
    meta = {p.key: p.value for p in graph.metadata_props}
    outputs = json.loads(meta["polytask.outputs"])
    assert {"det_boxes", "det_scores", "det_classes", "pixels", "count"} == set(outputs)
    assert outputs["det_classes"].startswith("int64[B, K]")
    assert json.loads(meta["polytask.classes"])["det"] == ["hi", "lo"]
    ops = {node.op_type for node in graph.graph.node}
    assert {"MaxPool", "TopK", "NonMaxSuppression", "GatherND"} <= ops
    shapes = {
        o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
        for o in graph.graph.output
    }
    assert len(shapes["det_boxes"]) == 3 and shapes["det_boxes"][2] == 4
