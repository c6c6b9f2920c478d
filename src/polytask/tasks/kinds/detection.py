"""``detection``: boxes with classes per image, found by a CenterNet head on the shared
feature map (Zhou, Wang & Krähenbühl, "Objects as Points", 2019; see
:mod:`polytask.tasks.centernet`) and scored by COCO mAP (torchmetrics
``MeanAveragePrecision``).

The target column holds, per image, a list of boxes ``[x1, y1, x2, y2, class]`` in input
pixels (a JSON string in a CSV cell, or a Python list literal as pandas writes a list, such as
``polytask predict``'s CSV output; a list in a Parquet or data-frame cell). An empty list is
an image with no objects (labelled: every cell of its heat-map is background); a missing cell
is an unlabelled image (masked).

Encoding. One row of ``1 + 5·M`` floats per image, ``M`` the most boxes an image of the table
holds: slot 0 holds the image's box count, slots ``1 + 5j .. 5 + 5j`` box ``j`` (corners, then
its class index), zeros after the last box. The mask has the same shape: slot 0 marks a
labelled image, a box's five slots its presence. A flat row rather than ``[M, 5]`` plus a
per-image mask because the rest of polytask reads a task's labels as a tensor and a mask of
one shape whose rows say which examples are labelled (``mask.flatten(1).any(1)``): the slot 0
keeps an image with no boxes labelled.

Loss. The paper's ``L_k + 0.1·L_size + L_off`` as a mean over the mask's valid units, the
convention every kind follows (a data-parallel run then divides by the global unit count):
slot 0 of an image carries the focal loss of its background cells, a box's class slot the
focal loss at its centre, its ``x1``/``y1`` slots the L1 error of the centre offset and its
``x2``/``y2`` slots 0.1 times the L1 error of its width and height (in heat-map cells). The
paper divides the same sum by the number of objects; here the divisor is the number of valid
units (1 per image plus 5 per box), a constant factor of about 5-6 for the MNIST benchmark's
1-5 digits per image.

Distillation. One teacher unit per image (:meth:`Detection.teacher_units`: the teacher's
heat-map as soft targets under a Quality Focal Loss, and its detections' offsets and sizes as
regression targets), carried by the image's slot 0 (``teacher_per_row``): a labelled image
costs ``λ`` times its label units plus ``1 - λ`` times its teacher unit, an image without boxes
one unit, an unlabelled one its teacher unit alone (with ``fill_missing``).

Export. :mod:`polytask.export.detection` builds the same decoding as ONNX nodes.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import math
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from polytask.errors import ConfigError, DataError
from polytask.tasks.centernet import (
    SIZE_WEIGHT,
    STRIDE,
    CenterNetHead,
    centre_cells,
    decode_detections,
    focal_terms,
    heatmap_targets,
    peak_cells,
    quality_focal_terms,
)
from polytask.tasks.kinds.base import (
    Kind,
    LoadArrays,
    LossState,
    MetricFactory,
    TaskLike,
    classes_mismatch,
)

if TYPE_CHECKING:
    from torchmetrics import Metric

#: A parsed box: corners in input pixels and the class label as text.
Box = tuple[float, float, float, float, str]
#: Values per box in the encoded row: x1, y1, x2, y2, class index.
BOX = 5
#: Predictions the metrics read: COCO's evaluation keeps at most 100 per image, and a low
#: score threshold, so that the precision-recall curve reaches low-confidence detections.
METRIC_TOP_K = 100
METRIC_SCORE_THRESHOLD = 0.05
#: Predictions ``polytask predict`` writes: the detections CenterNet's demo shows, at most
#: COCO's 100 per image (the ONNX export's fixed number, :mod:`polytask.export.detection`).
PREDICT_SCORE_THRESHOLD = 0.3
PREDICT_TOP_K = 100
#: Class-wise IoU above which the lower-scored of two boxes of one class is dropped.
NMS_IOU = 0.5
#: Logit magnitude of a confident heat-map cell in :meth:`Detection.perfect_output`.
CONFIDENT = 30.0


def _map_factory(key: str) -> MetricFactory:
    def build(n_outputs: int) -> Metric:
        return _detection_map_class()(key)

    return build


class Detection(Kind):
    """Boxes ``[x1, y1, x2, y2, class]`` per image; ``[B, C + 4, h, w]`` CenterNet outputs
    on a grid of stride :data:`polytask.tasks.centernet.STRIDE` input pixels."""

    name = "detection"
    losses = ("centernet",)
    metric_factories: ClassVar[dict[str, MetricFactory]] = {
        "map": _map_factory("map"),
        "map_50": _map_factory("map_50"),
    }
    accepts_classes = True
    #: A row's label units are its header and its boxes, which a teacher's heat-map does not
    #: give one by one: the teacher loss is one per image (:meth:`teacher_units`), carried
    #: by the image's header unit.
    teacher_per_row = True

    def check_classes(self, task: TaskLike, classes: list[str], where: str) -> None:
        """Any distinct labels (digits, names)."""

    def n_outputs(self, task: TaskLike) -> int:
        if not task.classes:
            raise ConfigError(f"task {task.name!r}: classes are not known yet")
        return len(task.classes) + 4

    def make_metric(self, task: TaskLike, name: str) -> Metric:
        # The metric does not depend on the class count (labels are read per box).
        return self.metric_factories[name](0)

    def make_head(
        self,
        task: TaskLike,
        in_dim: int,
        spatial: bool,
        params: Any,
        input_size: tuple[int, int] | None = None,
    ) -> nn.Module | None:
        if not spatial or input_size is None:
            raise ConfigError(
                f"config error: task {task.name!r} is a detection task and needs an image "
                "encoder that keeps feature maps (model.encoder.name = 'cnn'), not a vector "
                "representation"
            )
        assert task.classes is not None
        channels = params.decoder_channels[0] if params.decoder_channels else in_dim
        return CenterNetHead(in_dim, len(task.classes), channels, input_size)

    # -- data ----------------------------------------------------------------------------
    def fit(
        self,
        task: TaskLike,
        table: pd.DataFrame,
        train_rows: np.ndarray,
        source: str,
        load_arrays: LoadArrays,
    ) -> dict[str, Any]:
        """The box classes seen in the table (unless declared), in numeric order when every
        label is a number."""
        where = f"{source}: task '{task.name}'"
        column = task.targets[0]
        rows = parse_boxes(table[column], where)
        seen = {label for boxes in rows if boxes is not None for *_, label in boxes}
        train = [rows[i] for i in train_rows]
        if not any(boxes for boxes in train if boxes is not None):
            raise DataError(f"{where}: column '{column}' has no box in the training rows")
        if task.classes is not None:
            outside = sorted(seen - set(task.classes))
            if outside:
                raise DataError(
                    f"{where}: column '{column}' has box classes outside the declared classes "
                    f"{task.classes}: {outside[:5]}"
                )
            return {}
        return {"classes": sorted(seen, key=_class_order)}

    def encode(
        self, task: TaskLike, table: pd.DataFrame, source: str, load_arrays: LoadArrays
    ) -> tuple[Tensor, Tensor]:
        where = f"{source}: task '{task.name}'"
        column = task.targets[0]
        if task.classes is None:
            raise ValueError(f"task {task.name!r} was not fitted: classes unknown")
        index = {label: k for k, label in enumerate(task.classes)}
        rows = parse_boxes(table[column], where)
        most = max((len(b) for b in rows if b is not None), default=0)
        target = np.zeros((len(rows), 1 + BOX * most), dtype=np.float32)
        mask = np.zeros(target.shape, dtype=bool)
        for i, boxes in enumerate(rows):
            if boxes is None:
                continue
            mask[i, 0] = True
            target[i, 0] = len(boxes)
            for j, (x1, y1, x2, y2, label) in enumerate(boxes):
                if label not in index:
                    raise DataError(
                        f"{where}: column '{column}', row {table.index[i]}: box class "
                        f"{label!r} is not among the classes {task.classes}"
                    )
                start = 1 + BOX * j
                target[i, start : start + BOX] = (x1, y1, x2, y2, index[label])
                mask[i, start : start + BOX] = True
        return torch.from_numpy(target), torch.from_numpy(mask)

    def example(self, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], pd.DataFrame]:
        # Boxes inside a 4 x 5 image (the property suite's image size), at most one centre
        # per heat-map cell (1 x 2 cells at stride 4) so a perfect output holds them all.
        left = [[0.0, 0.0, 3.0, 4.0], [1.0, 1.0, 3.0, 3.0]]
        right = [[3.0, 1.0, 5.0, 3.0], [4.0, 0.0, 5.0, 4.0]]
        cells: list[object] = []
        for i in range(n):
            if i == 1 or rng.random() < 0.15:
                cells.append(None)  # an unlabelled image
                continue
            boxes = []
            if i == 2 or rng.random() < 0.6:
                boxes.append([*left[int(rng.integers(2))], int(rng.integers(3))])
            if i == 0 or rng.random() < 0.6:
                boxes.append([*right[int(rng.integers(2))], int(rng.integers(3))])
            cells.append(boxes)  # i == 3 may be empty: an image without objects
        cells[3] = []
        cells[0] = [[0.0, 0.0, 3.0, 4.0, 0], [3.0, 1.0, 5.0, 3.0, 2]]
        column = np.empty(n, dtype=object)
        column[:] = cells
        return {"target": "boxes"}, pd.DataFrame({"boxes": column})

    # -- loss ----------------------------------------------------------------------------
    def masked_loss(self, state: LossState, output: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        units = self.unit_losses(state, output, torch.where(mask, target, 0.0))
        return units[mask].mean()

    def unit_losses(self, state: LossState, output: Tensor, target: Tensor) -> Tensor:
        """The loss of every slot of the encoded rows (see the module docstring); padding
        and unlabelled rows (zeros, or any placeholder) cost 0 in their box slots."""
        n_classes = output.shape[1] - 4
        grid = (output.shape[2], output.shape[3])
        boxes, classes, valid = _unpack(target)
        heat = heatmap_targets(boxes, classes, valid, n_classes, grid)
        positive, negative = focal_terms(output[:, :n_classes].float(), heat)
        col, row, cx, cy = centre_cells(boxes, grid)
        b = torch.arange(boxes.shape[0], device=output.device).unsqueeze(1).expand_as(col)
        reg = output[:, n_classes:].float().permute(0, 2, 3, 1)[b, row, col]  # [B, M, 4]
        want = torch.stack(
            [
                cx - col.to(cx.dtype),
                cy - row.to(cy.dtype),
                (boxes[..., 2] - boxes[..., 0]) / STRIDE,
                (boxes[..., 3] - boxes[..., 1]) / STRIDE,
            ],
            dim=-1,
        )
        l1 = (reg - want).abs() * reg.new_tensor([1.0, 1.0, SIZE_WEIGHT, SIZE_WEIGHT])
        peak = positive[b, classes.clamp(0, n_classes - 1), row, col]  # [B, M]
        per_box = torch.cat([l1, peak.unsqueeze(-1)], dim=-1)
        per_box = torch.where(valid.unsqueeze(-1), per_box, torch.zeros_like(per_box))
        header = negative.flatten(1).sum(dim=1, keepdim=True)
        return torch.cat([header, per_box.flatten(1)], dim=1)

    def perfect_output(self, task: TaskLike, target: Tensor) -> Tensor:
        """Confident peaks at the boxes' centres with their exact offsets and sizes, on the
        smallest grid covering every box (the suite's images end where their boxes do)."""
        n_classes = len(task.classes or [])
        boxes, classes, valid = _unpack(target)
        far = boxes[valid] if bool(valid.any()) else boxes.new_ones(1, 4)
        grid = (
            max(1, math.ceil(float(far[:, 3].max()) / STRIDE)),
            max(1, math.ceil(float(far[:, 2].max()) / STRIDE)),
        )
        out = torch.zeros(target.shape[0], n_classes + 4, *grid)
        out[:, :n_classes] = -CONFIDENT
        col, row, cx, cy = centre_cells(boxes, grid)
        for i, j in torch.nonzero(valid).tolist():
            r, c = int(row[i, j]), int(col[i, j])
            out[i, int(classes[i, j]), r, c] = CONFIDENT
            out[i, n_classes:, r, c] = torch.stack(
                [
                    cx[i, j] - c,
                    cy[i, j] - r,
                    (boxes[i, j, 2] - boxes[i, j, 0]) / STRIDE,
                    (boxes[i, j, 3] - boxes[i, j, 1]) / STRIDE,
                ]
            )
        return out

    # -- evaluation and prediction -------------------------------------------------------
    def metric_inputs(
        self, task: TaskLike, output: Tensor, target: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Detections ``[K, 7]`` (image, x1, y1, x2, y2, score, class) and ground-truth boxes
        ``[L, 6]`` (image, x1, y1, x2, y2, class) of the labelled images, numbered 0.. in
        order; the adapter of :func:`_detection_map_class` regroups them per image."""
        labelled = torch.nonzero(mask[:, 0]).flatten()
        out, tgt = output[labelled], target[labelled]
        n_classes = output.shape[1] - 4
        found = decode_detections(
            out,
            n_classes,
            top_k=METRIC_TOP_K,
            score_threshold=METRIC_SCORE_THRESHOLD,
            iou_threshold=NMS_IOU,
        )
        preds = [
            torch.cat(
                [
                    torch.full((len(s), 1), float(i)),
                    bx.cpu(),
                    s.cpu().unsqueeze(1),
                    c.cpu().float().unsqueeze(1),
                ],
                dim=1,
            )
            for i, (bx, s, c) in enumerate(found)
        ]
        boxes, classes, valid = _unpack(tgt.cpu())
        image = torch.arange(len(tgt)).unsqueeze(1).expand_as(classes)
        truth = torch.cat(
            [image[valid].float().unsqueeze(1), boxes[valid], classes[valid].float().unsqueeze(1)],
            dim=1,
        )
        return torch.cat(preds) if preds else torch.zeros(0, 7), truth

    def decode(self, task: TaskLike, output: Tensor) -> dict[str, np.ndarray]:
        """Per image, its boxes ``[x1, y1, x2, y2, class]`` (input pixels, the user's class
        labels: the target column's own format) in column ``{task}`` and their scores in
        ``{task}_score``, by decreasing score; no value for an image whose outputs are not
        all finite."""
        assert task.classes is not None
        classes = task.classes
        known = torch.isfinite(output).flatten(1).all(dim=1).tolist()
        found = decode_detections(
            output.nan_to_num(),
            len(classes),
            top_k=PREDICT_TOP_K,
            score_threshold=PREDICT_SCORE_THRESHOLD,
            iou_threshold=NMS_IOU,
        )
        boxes = np.empty(len(found), dtype=object)
        scores = np.empty(len(found), dtype=object)
        for i, (bx, s, c) in enumerate(found):
            if not known[i]:
                continue
            boxes[i] = [
                [*(float(v) for v in box), classes[k]]
                for box, k in zip(bx.tolist(), c.tolist(), strict=True)
            ]
            scores[i] = [float(v) for v in s.tolist()]
        return {task.name: boxes, f"{task.name}_score": scores}

    # -- distillation --------------------------------------------------------------------
    def teacher_mismatch(self, student: TaskLike, teacher: TaskLike) -> str | None:
        """The teacher's heat-map channels must be the student's classes, in order."""
        return classes_mismatch(student, teacher)

    def teacher_units(self, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        """One teacher loss per image ``[B, 1]``: the teacher's heat-map as soft targets at
        every cell and class, and its detections' offsets and sizes as regression targets.

        * Heat-map: Li et al.'s Quality Focal Loss (:func:`~polytask.tasks.centernet.\
          quality_focal_terms`) of the student's heat-map against the teacher's as soft
          targets, its cross-entropy on the tempered probabilities ``σ(s / T)`` and
          ``σ(t / T)`` and scaled by ``T²`` (as the other kinds' tempered divergences,
          Hinton et al. 2015), its focal factor on the untempered ones; summed over the
          cells and classes. A temperature above 1 softens the teacher's peaks and lifts its
          near-misses (a second class, a neighbouring cell) that the labels' Gaussian splats
          do not hold.
        * Regression at the teacher's detections: at every cell where the teacher's heat-map
          has a peak scoring at least the prediction threshold
          (:data:`PREDICT_SCORE_THRESHOLD`, the boxes ``polytask predict`` would report),
          the L1 distance of the student's offset (weight 1) and size (weight
          :data:`~polytask.tasks.centernet.SIZE_WEIGHT`) to the teacher's: the labels' box
          loss with the teacher's boxes. Elsewhere the teacher's regression channels are
          untrained and teach nothing.

        Summed over the image as the label loss sums its background cells into one header
        unit. An image without objects (a teacher without a peak above the threshold) costs
        its heat-map term only: it teaches the student where there is nothing."""
        if student.shape[1:] != teacher.shape[1:]:
            raise DataError(
                f"distill: a detection teacher's outputs {list(teacher.shape[1:])} (classes + "
                f"4, heat-map rows, columns) differ from the student's {list(student.shape[1:])}"
                "; teacher and student must read images of one size"
            )
        t = temperature
        n_classes = student.shape[1] - 4
        s, p = student.float(), teacher.float()
        heat = quality_focal_terms(s[:, :n_classes], p[:, :n_classes], t)
        heat = heat.flatten(1).sum(dim=1) * t * t
        found = peak_cells(p[:, :n_classes], PREDICT_SCORE_THRESHOLD)  # [B, h, w]
        weights = s.new_tensor([1.0, 1.0, SIZE_WEIGHT, SIZE_WEIGHT]).view(1, 4, 1, 1)
        gap = ((s[:, n_classes:] - p[:, n_classes:]).abs() * weights).sum(dim=1)
        regression = torch.where(found, gap, torch.zeros_like(gap)).flatten(1).sum(dim=1)
        return (heat + regression).unsqueeze(1)


def parse_boxes(series: pd.Series, where: str) -> list[list[Box] | None]:
    """Per cell of a boxes column, its boxes ``(x1, y1, x2, y2, class label)`` or ``None``
    for a missing cell; a :class:`DataError` naming the column and row of a malformed one."""
    rows: list[list[Box] | None] = []
    for label, cell in zip(series.index, series.tolist(), strict=True):
        rows.append(_cell_boxes(cell, f"{where}: column '{series.name}', row {label}"))
    return rows


def _cell_boxes(cell: object, where: str) -> list[Box] | None:
    expected = "a list of [x1, y1, x2, y2, class] boxes (a JSON list in a CSV cell)"
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    if isinstance(cell, str):
        if not cell.strip():
            return None
        text = cell
        try:
            cell = json.loads(text)
        except json.JSONDecodeError:
            # A list written by pandas' to_csv (``polytask predict``'s CSV output) is a Python
            # literal: quoted labels in single quotes. literal_eval reads literals only.
            try:
                cell = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise DataError(f"{where}: {text[:40]!r} is not {expected}") from None
    if isinstance(cell, np.ndarray):
        cell = cell.tolist()
    if not isinstance(cell, list | tuple):
        raise DataError(f"{where}: {cell!r} is not {expected}")
    boxes: list[Box] = []
    for box in cell:
        if isinstance(box, np.ndarray):
            box = box.tolist()
        if not isinstance(box, list | tuple) or len(box) != BOX:
            raise DataError(f"{where}: box {box!r} is not [x1, y1, x2, y2, class]")
        try:
            x1, y1, x2, y2 = (float(v) for v in box[:4])
        except (TypeError, ValueError):
            raise DataError(f"{where}: box {box!r} has non-numeric corners") from None
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or not (x2 > x1 and y2 > y1):
            raise DataError(f"{where}: box {box!r} needs finite corners with x2 > x1 and y2 > y1")
        boxes.append((x1, y1, x2, y2, _label_text(box[4])))
    return boxes


def _label_text(value: object) -> str:
    """A class label as text, as the other kinds read labels: 3, 3.0 and "3" are "3"."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _class_order(label: str) -> tuple[int, float, str]:
    """Numbers in numeric order ("2" before "10"), then other labels alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _unpack(target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes ``[B, M, 4]``, class indices ``[B, M]`` and which slots hold a box ``[B, M]``
    of encoded rows. A slot holds a box where its corners are finite with ``x2 > x1`` (the
    encoding's zeros and a masked placeholder do not)."""
    b = target.shape[0]
    slots = target[:, 1:].float().reshape(b, (target.shape[1] - 1) // BOX, BOX)
    finite = torch.isfinite(slots).all(dim=-1)
    slots = torch.where(finite.unsqueeze(-1), slots, torch.zeros_like(slots))
    boxes = slots[..., :4]
    valid = finite & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return boxes, slots[..., 4].round().long(), valid


@cache
def _detection_map_class() -> Callable[[str], Metric]:
    """The torchmetrics adapter: ``update(preds [K, 7], target [L, 6])`` rows (see
    :meth:`Detection.metric_inputs`), regrouped per image and scored by the COCO evaluation
    (pycocotools' ``COCOeval``, bbox): ``map`` is AP averaged over IoU .50:.05:.95, ``map_50``
    AP at IoU .50, both over at most 100 detections per image and every object size.

    torchmetrics' ``MeanAveragePrecision`` computes the same numbers with the same backend but
    refuses to run without torchvision, which has no CPU build on the machines CI runs on; this
    adapter calls the backend directly. Built on first use: importing torchmetrics costs
    seconds that listing kinds must not pay (see :func:`polytask.tasks.kinds.base.torchmetric`)."""
    base: type[Metric] = importlib.import_module("torchmetrics").Metric

    class DetectionMAP(base):  # type: ignore[valid-type, misc]
        """COCO mAP (``map``: IoU .5:.95; ``map_50``: IoU .5) of detection rows."""

        is_differentiable = False
        higher_is_better = True
        full_state_update = False
        plot_lower_bound = 0.0
        plot_upper_bound = 1.0

        def __init__(self, key: str) -> None:
            super().__init__()
            if importlib.util.find_spec("pycocotools") is None:
                raise ConfigError(
                    "config error: detection metrics need pycocotools "
                    "(pip install 'polytask[detection]')"
                )
            self.key = key
            self.add_state("preds", default=[], dist_reduce_fx="cat")
            self.add_state("truth", default=[], dist_reduce_fx="cat")

        def update(self, preds: Tensor, target: Tensor) -> None:
            # Number this call's images after those of earlier calls (ids restart at 0).
            seen = [t[:, 0] for t in [*self.preds, *self.truth] if len(t)]
            offset = float(torch.cat(seen).max()) + 1 if seen else 0.0
            preds, target = preds.clone(), target.clone()
            preds[:, 0] += offset
            target[:, 0] += offset
            self.preds.append(preds)
            self.truth.append(target)

        def compute(self) -> Tensor:
            preds = torch.cat(self.preds).double() if self.preds else torch.zeros(0, 7)
            truth = torch.cat(self.truth).double() if self.truth else torch.zeros(0, 6)
            stats = _cached_coco_map(preds.cpu().numpy(), truth.cpu().numpy())
            return torch.tensor(stats[self.key], dtype=torch.float32)

    return DetectionMAP


#: The last inputs :func:`coco_map` scored and its result: ``map`` and ``map_50`` come from one
#: COCO evaluation, and the metrics of a task read the same inputs one after the other.
_LAST: list[tuple[bytes, dict[str, float]]] = []


def _cached_coco_map(preds: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    key = hashlib.sha1(preds.tobytes() + b"|" + truth.tobytes()).digest()
    if _LAST and _LAST[0][0] == key:
        return _LAST[0][1]
    stats = coco_map(preds, truth)
    _LAST[:] = [(key, stats)]
    return stats


def coco_map(preds: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """COCO bbox mAP of detections ``[K, 7]`` (image, x1, y1, x2, y2, score, class) against
    ground truth ``[L, 6]`` (image, x1, y1, x2, y2, class): ``map`` (IoU .50:.95) and
    ``map_50``, NaN without ground truth; 0 without detections."""
    # Lazy: pycocotools is the optional `detection` extra, needed only when mAP is computed.
    from pycocotools.coco import COCO  # type: ignore[import-untyped]
    from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]

    if len(truth) == 0:
        return {"map": math.nan, "map_50": math.nan}
    if len(preds) == 0:
        return {"map": 0.0, "map_50": 0.0}
    images = sorted({int(i) for i in np.concatenate([preds[:, 0], truth[:, 0]])})
    classes = sorted({int(c) for c in np.concatenate([preds[:, 6], truth[:, 5]])})

    def xywh(rows: np.ndarray) -> list[list[float]]:
        return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in rows.tolist()]

    gt = COCO()
    gt.dataset = {
        "images": [{"id": i} for i in images],
        "categories": [{"id": c + 1} for c in classes],
        "annotations": [
            {
                "id": k + 1,
                "image_id": int(row[0]),
                "bbox": box,
                "area": box[2] * box[3],
                "category_id": int(row[5]) + 1,
                "iscrowd": 0,
            }
            for k, (row, box) in enumerate(zip(truth, xywh(truth[:, 1:5]), strict=True))
        ],
    }
    results = [
        {
            "image_id": int(row[0]),
            "bbox": box,
            "score": float(row[5]),
            "category_id": int(row[6]) + 1,
        }
        for row, box in zip(preds, xywh(preds[:, 1:5]), strict=True)
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map": float(evaluation.stats[0]), "map_50": float(evaluation.stats[1])}
