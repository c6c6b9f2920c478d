"""A detection task's decoding as ONNX nodes: the CenterNet decoding of
:func:`polytask.tasks.centernet.decode_detections` (Zhou, Wang & Krähenbühl, "Objects as
Points", 2019) with the settings of :meth:`polytask.tasks.kinds.detection.Detection.decode`,
from the raw output ``[B, C + 4, h, w]`` to a fixed number ``K`` of detections per image.

The nodes, in the torch decoder's order:

1. ``Sigmoid`` of the heat-map channels; peaks where the heat equals its 3x3 ``MaxPool``
   (stride 1, padding 1: the paper's max-pool NMS), other cells set to 0;
2. ``Transpose``/``Reshape`` to ``[B, h·w·C]`` in cell-major, class-minor order, and ``TopK``
   of ``K = min(100, h·w·C)`` (ties to the lower index, as the torch decoder's stable sort);
3. class ``= index mod C``, cell ``= index div C``, row and column of the cell; the offset
   and size channels at the cell (``GatherND`` with ``batch_dims = 1``); the box
   ``(col + dx) · S ± max(width, 0) · S / 2`` (and the same in y), ``S`` the stride;
4. scores below the prediction threshold set to -1; class-wise ``NonMaxSuppression`` (each
   box scored in its own class only; a box is dropped when its IoU with a kept, higher-scored
   box of its class exceeds the threshold, as :func:`polytask.tasks.centernet.nms`);
5. the kept detections moved to the front in score order (a second ``TopK``), the rest padding:
   score 0, class -1, box ``[0, 0, 0, 0]``. A row whose raw output is not all finite (no
   prediction in the torch predictor) has every score NaN and every class -1.

The graph outputs of a task ``t`` (:func:`output_names`): ``t_boxes`` (``float[B, K, 4]``,
``x1, y1, x2, y2`` in input pixels), ``t_scores`` (``float[B, K]``) and ``t_classes``
(``int64[B, K]``, the index into the task's classes).

Operator semantics: https://onnx.ai/onnx/operators/ (``TopK``, ``MaxPool``, ``GatherND``,
``NonMaxSuppression``, ``ScatterND``; opset 18).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from polytask.tasks import Task
from polytask.tasks.centernet import STRIDE
from polytask.tasks.kinds.detection import NMS_IOU, PREDICT_SCORE_THRESHOLD, PREDICT_TOP_K

#: Most detections per image: the torch predictor's ``top_k`` (COCO's 100).
MAX_DETECTIONS = PREDICT_TOP_K


class GraphBuilder(Protocol):
    """What the decoding needs of :class:`polytask.export.graph.Builder` (named structurally:
    the graph module imports this one)."""

    nodes: list[Any]

    def name(self, hint: str) -> str: ...

    def const(self, value: Any, dtype: Any, hint: str = "c") -> str: ...

    def op(
        self, op_type: str, inputs: list[str], hint: str, domain: str = "", **attrs: Any
    ) -> str: ...

    def finite(self, x: str) -> str: ...

    def all_rows(self, mask: str) -> str: ...

    def unsqueeze(self, x: str, axes: list[int]) -> str: ...


def output_names(task: Task) -> dict[str, str]:
    """The graph outputs of a detection task and what each holds (the metadata's words)."""
    n = task.name
    k = f"K = min({MAX_DETECTIONS}, cells x classes)"
    return {
        f"{n}_boxes": f"float[B, K, 4]: x1, y1, x2, y2 in input pixels, {k}; padding 0",
        f"{n}_scores": (
            "float[B, K]: detection scores, kept detections first by decreasing score; "
            f"padding 0 (at least {PREDICT_SCORE_THRESHOLD} otherwise); NaN: row undefined"
        ),
        f"{n}_classes": "int64[B, K]: class index into the task's classes (-1: padding)",
    }


def _top_k(b: GraphBuilder, x: str, k: str, hint: str) -> tuple[str, str]:
    """``TopK`` (largest, sorted) along axis 1: values and int64 indices."""
    from onnx import helper  # optional dependency (polytask[export]): see export.network

    values, indices = b.name(f"{hint}_values"), b.name(f"{hint}_indices")
    b.nodes.append(
        helper.make_node(
            "TopK", [x, k], [values, indices], name=b.name(hint), axis=1, largest=1, sorted=1
        )
    )
    return values, indices


def _float_type() -> int:
    from onnx import TensorProto  # optional dependency (polytask[export])

    value: int = TensorProto.FLOAT
    return value


def _bool_type() -> int:
    from onnx import TensorProto  # optional dependency (polytask[export])

    value: int = TensorProto.BOOL
    return value


def detection_outputs(b: GraphBuilder, task: Task, raw: str) -> dict[str, str]:
    """Output name → value name of a detection task's outputs from its raw output ``raw``
    (``float[B, C + 4, h, w]``); see the module docstring."""
    assert task.classes is not None
    n_classes = len(task.classes)
    f32, i64 = np.float32, np.int64
    finite = b.finite(raw)
    known = b.all_rows(finite)
    # Rows with a non-finite output give no prediction; zeros keep their arithmetic quiet.
    clean = b.op("Where", [finite, raw, b.const(0.0, f32, "zero")], "clean")
    one = b.const([1], i64, "step")

    def channels(start: int, stop: int, hint: str) -> str:
        bounds = [b.const([start], i64, "start"), b.const([stop], i64, "stop")]
        return b.op("Slice", [clean, *bounds, one], hint)

    # 1. Peaks of the heat-map.
    heat = b.op("Sigmoid", [channels(0, n_classes, "heat_logits")], "heat")
    pooled = b.op(
        "MaxPool", [heat], "pooled", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]
    )
    peaks = b.op("Equal", [heat, pooled], "peaks")
    peak_heat = b.op("Where", [peaks, heat, b.const(0.0, f32, "zero")], "peak_heat")
    # 2. Top-k over cells x classes, cell-major.
    cells_last = b.op("Transpose", [peak_heat], "cells_last", perm=[0, 2, 3, 1])
    flat = b.op("Reshape", [cells_last, b.const([0, -1], i64, "shape")], "flat")
    width = b.op("Shape", [flat], "candidates", start=1, end=2)
    k = b.op("Min", [width, b.const([MAX_DETECTIONS], i64, "top_k")], "k")
    scores, index = _top_k(b, flat, k, "top")
    # 3. Class, cell and box of each candidate.
    classes = b.op("Mod", [index, b.const(n_classes, i64, "n_classes")], "class")
    cell = b.op("Div", [index, b.const(n_classes, i64, "n_classes")], "cell")
    grid_w = b.op("Shape", [raw], "grid_w", start=3, end=4)
    row = b.op("Cast", [b.op("Div", [cell, grid_w], "row")], "row_f", to=_float_type())
    col = b.op("Cast", [b.op("Mod", [cell, grid_w], "col")], "col_f", to=_float_type())
    reg = channels(n_classes, n_classes + 4, "regression")
    per_cell = b.op(
        "Transpose",
        [b.op("Reshape", [reg, b.const([0, 4, -1], i64, "shape")], "reg_flat")],
        "reg_cells",
        perm=[0, 2, 1],
    )
    at = b.op("GatherND", [per_cell, b.unsqueeze(cell, [2])], "reg_at", batch_dims=1)

    def component(i: int) -> str:
        return b.op("Gather", [at, b.const(i, i64, "component")], "component", axis=2)

    stride = b.const(float(STRIDE), f32, "stride")
    two = b.const(2.0, f32, "two")
    # As the torch decoder: (col + dx) * S and max(width, 0) * S / 2, in float32.
    cx = b.op("Mul", [b.op("Add", [col, component(0)], "cx_cells"), stride], "cx")
    cy = b.op("Mul", [b.op("Add", [row, component(1)], "cy_cells"), stride], "cy")
    half_w = b.op(
        "Div", [b.op("Mul", [b.op("Relu", [component(2)], "w"), stride], "w_px"), two], "hw"
    )
    half_h = b.op(
        "Div", [b.op("Mul", [b.op("Relu", [component(3)], "h"), stride], "h_px"), two], "hh"
    )
    corners = [
        b.op("Sub", [cx, half_w], "x1"),
        b.op("Sub", [cy, half_h], "y1"),
        b.op("Add", [cx, half_w], "x2"),
        b.op("Add", [cy, half_h], "y2"),
    ]
    boxes = b.op("Concat", [b.unsqueeze(c, [2]) for c in corners], "boxes", axis=2)
    # 4. Score threshold, then class-wise NMS: each box scored in its own class only.
    minus_one = b.const(-1.0, f32, "minus_one")
    passing = b.op(
        "GreaterOrEqual", [scores, b.const(PREDICT_SCORE_THRESHOLD, f32, "threshold")], "passing"
    )
    candidates = b.op("Where", [passing, scores, minus_one], "candidates")
    own = b.op(
        "Equal",
        [
            b.unsqueeze(classes, [1]),
            b.const(np.arange(n_classes).reshape(1, n_classes, 1), i64, "classes"),
        ],
        "own_class",
    )
    class_scores = b.op("Where", [own, b.unsqueeze(candidates, [1]), minus_one], "class_scores")
    selected = b.op(
        "NonMaxSuppression",
        [
            boxes,
            class_scores,
            k,
            b.const([NMS_IOU], f32, "iou"),
            # Scores are >= the threshold (> 0) or -1: those below -0.5 are no candidates.
            b.const([-0.5], f32, "score_floor"),
        ],
        "nms",
        center_point_box=0,
    )
    where_kept = b.op("Gather", [selected, b.const([0, 2], i64, "batch_box")], "kept_at", axis=1)
    n_kept = b.op("Shape", [selected], "n_kept", start=0, end=1)
    ones = b.op("ConstantOfShape", [n_kept], "ones", value=_tensor(np.ones(1, f32)))
    blank = b.op("ConstantOfShape", [b.op("Shape", [scores], "scores_shape")], "blank")
    kept = b.op("ScatterND", [blank, where_kept, ones], "kept")
    kept_mask = b.op("Cast", [kept], "kept_mask", to=_bool_type())
    # 5. Kept detections first, in score order; the rest padding.
    ranked = b.op("Where", [kept_mask, candidates, minus_one], "ranked")
    final, order = _top_k(b, ranked, k, "order")
    present = b.op("GreaterOrEqual", [final, b.const(0.0, f32, "zero")], "present")
    present_known = b.op("And", [present, b.unsqueeze(known, [1])], "present_known")
    boxes_sorted = b.op("GatherND", [boxes, b.unsqueeze(order, [2])], "boxes_sorted", batch_dims=1)
    classes_sorted = b.op("GatherElements", [classes, order], "classes_sorted", axis=1)
    score_out = b.op("Where", [present, final, b.const(0.0, f32, "zero")], "score_padded")
    return {
        f"{task.name}_boxes": b.op(
            "Where",
            [b.unsqueeze(present_known, [2]), boxes_sorted, b.const(0.0, f32, "zero")],
            "det_boxes",
        ),
        f"{task.name}_scores": b.op(
            "Where",
            [b.unsqueeze(known, [1]), score_out, b.const(np.nan, f32, "nan")],
            "det_scores",
        ),
        f"{task.name}_classes": b.op(
            "Where", [present_known, classes_sorted, b.const(-1, i64, "minus_one")], "det_classes"
        ),
    }


def _tensor(value: np.ndarray) -> Any:
    from onnx import numpy_helper  # optional dependency (polytask[export])

    return numpy_helper.from_array(value)


def prediction_columns(
    task: Task, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray
) -> dict[str, np.ndarray]:
    """The columns :meth:`Detection.decode` gives (``{task}``: per image its boxes
    ``[x1, y1, x2, y2, class label]``; ``{task}_score``: their scores; ``None`` for an
    undefined row) from the graph outputs ``{task}_boxes``, ``_scores`` and ``_classes``."""
    assert task.classes is not None
    labels = task.classes
    rows = len(scores)
    out_boxes = np.empty(rows, dtype=object)
    out_scores = np.empty(rows, dtype=object)
    for i in range(rows):
        if bool(np.isnan(scores[i]).any()):
            continue  # the network's output was not finite: no prediction, as in torch
        kept = classes[i] >= 0
        out_boxes[i] = [
            [*(float(v) for v in box), labels[int(c)]]
            for box, c in zip(boxes[i][kept].tolist(), classes[i][kept].tolist(), strict=True)
        ]
        out_scores[i] = [float(v) for v in scores[i][kept].tolist()]
    return {task.name: out_boxes, f"{task.name}_score": out_scores}
