"""CenterNet: objects as the peaks of a per-class centre heat-map, with their size and sub-pixel
offset regressed at the peak (Zhou, Wang & Krähenbühl, "Objects as Points", arXiv 1904.07850,
2019). The head, its training targets, its loss terms and its decoding, in torch only: the
:mod:`polytask.tasks.kinds.detection` kind builds on these.

Layout of the head's raw output ``[B, C + 4, h, w]`` on a grid of stride :data:`STRIDE` input
pixels (cell ``(i, j)`` covers input pixels ``[S·i, S·i + S) x [S·j, S·j + S)``):

* channels ``0 .. C-1``: centre heat-map logits, one channel per class;
* channels ``C, C+1``: the centre's sub-cell offset ``(dx, dy)`` in cells (target in [0, 1));
* channels ``C+2, C+3``: the box's width and height in cells.

Boxes are ``[x1, y1, x2, y2]`` in input pixels (corners, ``x2 > x1``), their centre cell
``floor(centre / S)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Input pixels per heat-map cell: the paper's output stride (4), where small objects (the
#: 10-30 pixel digits of the MNIST benchmark) still get a cell of their own.
STRIDE = 4
#: Minimum IoU a box shifted by the Gaussian radius keeps with its ground truth (CornerNet's
#: and CenterNet's 0.7).
MIN_OVERLAP = 0.7
#: Weight of the size regression (the paper's λ_size = 0.1; offsets weigh 1).
SIZE_WEIGHT = 0.1
#: Focal loss exponents: α on the prediction error, β on the Gaussian penalty reduction
#: (the paper's α = 2, β = 4, from CornerNet).
ALPHA, BETA = 2.0, 4.0
#: Prior probability of a centre at initialisation: the heat-map bias is logit(0.1) so the
#: focal loss of the many background cells does not swamp the first steps (RetinaNet's
#: prior, used by CenterNet's released code).
PRIOR = 0.1


class CenterNetHead(nn.Module):
    """Three branches on a shared feature map, each a 3x3 conv (``channels`` wide), ReLU and
    a 1x1 conv, as in the paper's heads: heat-map (``n_classes``), offset (2) and size (2).

    The feature map is first resized to the grid of stride :data:`STRIDE` on an
    ``input_size`` image (bilinear; a no-op for a backbone of that stride, e.g. the default
    three-stage ``cnn`` encoder), so the output is tied to input pixels whatever the
    backbone's own stride."""

    def __init__(
        self, in_dim: int, n_classes: int, channels: int, input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.grid = grid_size(input_size)

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_dim, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, out, 1)
            )

        self.heat = branch(n_classes)
        self.offset = branch(2)
        self.size = branch(2)
        last = self.heat[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, math.log(PRIOR / (1.0 - PRIOR)))

    def forward(self, z: Tensor) -> Tensor:
        if tuple(z.shape[-2:]) != self.grid:
            z = F.interpolate(z, size=self.grid, mode="bilinear", align_corners=False)
        return torch.cat([self.heat(z), self.offset(z), self.size(z)], dim=1)


def grid_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """The heat-map grid ``(h, w)`` covering an ``(H, W)`` input at :data:`STRIDE`."""
    return (math.ceil(input_size[0] / STRIDE), math.ceil(input_size[1] / STRIDE))


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = MIN_OVERLAP) -> Tensor:
    """CornerNet's radius (Law & Deng, ECCV 2018, as in CenterNet's released
    ``gaussian_radius``): the largest corner shift keeping IoU >= ``min_overlap`` with the
    box, the smallest of the three cases (both corners inside, outside, one each)."""
    a1 = 1.0
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2 = 4.0
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def centre_cells(boxes: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per box ``[..., 4]`` (input pixels): its centre cell's column and row (long, clamped
    to the grid) and its centre in cells ``(cx, cy)`` (float)."""
    cx = (boxes[..., 0] + boxes[..., 2]) / (2 * STRIDE)
    cy = (boxes[..., 1] + boxes[..., 3]) / (2 * STRIDE)
    col = cx.floor().long().clamp(0, grid[1] - 1)
    row = cy.floor().long().clamp(0, grid[0] - 1)
    return col, row, cx, cy


def heatmap_targets(
    boxes: Tensor, classes: Tensor, valid: Tensor, n_classes: int, grid: tuple[int, int]
) -> Tensor:
    """The ground-truth heat-map ``[B, C, h, w]``: per box an unnormalised Gaussian splat on
    its class channel, peak 1 at the centre cell, ``σ = (2r + 1) / 6`` with ``r`` the
    CornerNet radius in cells, cut off beyond ``r`` cells, overlapping splats combined by
    their maximum (the paper's Section 3).

    Args:
        boxes: ``[B, M, 4]`` in input pixels; classes: ``[B, M]`` class indices;
        valid: ``[B, M]`` which of the ``M`` slots hold a box.
    """
    b, m = classes.shape
    h, w = grid
    heat = boxes.new_zeros(b * n_classes, h * w)
    if m == 0 or not bool(valid.any()):
        return heat.view(b, n_classes, h, w)
    col, row, _, _ = centre_cells(boxes, grid)
    bw = (boxes[..., 2] - boxes[..., 0]) / STRIDE
    bh = (boxes[..., 3] - boxes[..., 1]) / STRIDE
    radius = gaussian_radius(bh, bw).clamp(min=0).floor()
    sigma = (2 * radius + 1) / 6
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype).view(1, 1, 1, w)
    dy = ys - row.unsqueeze(-1).unsqueeze(-1).to(boxes.dtype)
    dx = xs - col.unsqueeze(-1).unsqueeze(-1).to(boxes.dtype)
    s = sigma.unsqueeze(-1).unsqueeze(-1)
    r = radius.unsqueeze(-1).unsqueeze(-1)
    splat = torch.exp(-(dx * dx + dy * dy) / (2 * s * s))
    splat = torch.where((dx.abs() <= r) & (dy.abs() <= r), splat, torch.zeros_like(splat))
    splat = splat * valid.unsqueeze(-1).unsqueeze(-1).to(boxes.dtype)  # [B, M, h, w]
    channel = torch.arange(b, device=boxes.device).unsqueeze(1) * n_classes + classes.clamp(
        0, n_classes - 1
    )
    index = channel.reshape(-1, 1).expand(-1, h * w)
    heat.scatter_reduce_(0, index, splat.reshape(b * m, h * w), reduce="amax")
    return heat.view(b, n_classes, h, w)


def focal_terms(logits: Tensor, heat: Tensor) -> tuple[Tensor, Tensor]:
    """CenterNet's penalty-reduced pixel-wise focal loss (Eq. 1), unreduced and unnormalised:
    the positive term ``-(1 - p)^α log p`` where the target is 1 (a centre) and the negative
    term ``-(1 - Y)^β p^α log(1 - p)`` elsewhere, each zero where the other applies. Computed
    from logits with ``logsigmoid`` (no clamping of ``p``)."""
    p = torch.sigmoid(logits)
    pos = heat >= 1.0
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    positive = torch.where(pos, -((1 - p) ** ALPHA) * log_p, torch.zeros_like(p))
    negative = torch.where(pos, torch.zeros_like(p), -((1 - heat) ** BETA) * p**ALPHA * log_not_p)
    return positive, negative


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept ``boxes`` ``[K, 4]`` (xyxy), by
    decreasing score; a box is dropped when its IoU with a kept, higher-scored box exceeds
    ``iou_threshold`` (``torchvision.ops.nms``'s rule; torchvision is not a dependency)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    # One IoU matrix, then the greedy pass over a boolean array on the host (K <= top-k).
    above = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= above[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU ``[len(a), len(b)]`` of xyxy boxes."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def decode_detections(
    output: Tensor,
    n_classes: int,
    *,
    top_k: int = 100,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.5,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image, its detections ``(boxes [K, 4] in input pixels, scores [K], classes [K])``
    from raw outputs ``[B, C + 4, h, w]``: heat-map peaks (a cell no lower than its 3x3
    neighbourhood, the paper's max-pool NMS), the ``top_k`` highest, those scoring at least
    ``score_threshold``, then class-wise IoU NMS. Sorted by decreasing score, ties in
    top-to-bottom, left-to-right order of the centres (so decoding is deterministic)."""
    b, _, h, w = output.shape
    heat = torch.sigmoid(output[:, :n_classes].float())
    peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = torch.where(peaks, heat, torch.zeros_like(heat))
    # Cell-major, class-minor order: top-k's ties then fall in reading order of the centres.
    flat = heat.permute(0, 2, 3, 1).reshape(b, h * w * n_classes)
    k = min(top_k, flat.shape[1])
    results: list[tuple[Tensor, Tensor, Tensor]] = []
    for i in range(b):
        scores, index = torch.sort(flat[i], descending=True, stable=True)
        scores, index = scores[:k], index[:k]
        keep = scores >= score_threshold
        scores, index = scores[keep], index[keep]
        cls = index % n_classes
        cell = index // n_classes
        row, col = cell // w, cell % w
        reg = output[i, n_classes:, row, col].float()  # [4, K]: dx, dy, width, height
        cx = (col.to(reg.dtype) + reg[0]) * STRIDE
        cy = (row.to(reg.dtype) + reg[1]) * STRIDE
        half_w, half_h = reg[2].clamp(min=0) * STRIDE / 2, reg[3].clamp(min=0) * STRIDE / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)
        kept = _classwise_nms(boxes, scores, cls, iou_threshold)
        kept = kept.sort().values  # back to score order (stable in reading order)
        results.append((boxes[kept], scores[kept], cls[kept]))
    return results


def _classwise_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by :func:`nms` within each class: boxes of different classes are moved
    apart (shifted by their class times more than the largest coordinate) so that one pass
    never lets them suppress each other (``torchvision.ops.batched_nms``'s trick)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    shift = boxes.abs().max() + 1
    return nms(boxes + (classes.to(boxes.dtype) * shift).unsqueeze(1), scores, iou_threshold)


# -- distillation -----------------------------------------------------------------------------
#: The Quality Focal Loss exponent on the gap between the soft target and the prediction
#: (Li et al., "Generalized Focal Loss", NeurIPS 2020: β = 2).
QFL_BETA = 2.0


def quality_focal_terms(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Li et al.'s Quality Focal Loss per entry, unreduced, of a student's heat-map logits
    against a teacher's as soft targets: ``-|y - q|^β (y log q' + (1 - y) log(1 - q'))``.

    At temperature 1 it is the paper's loss with ``q = q' = σ(s)`` and ``y = σ(t)``. The focal
    factor plays the part of CenterNet's ``p^α`` on background cells: the many cells where
    student and teacher already agree (both near 0) cost almost nothing, so they do not swamp
    the few peaks, as a plain binary cross-entropy over every cell would (a student at the
    prior 0.1 against a teacher at 0.001 costs 0.1 a cell with BCE, 0.001 with QFL).

    A temperature ``T`` softens the cross-entropy's targets and predictions
    (``q' = σ(s / T)``, ``y' = σ(t / T)`` in place of ``y`` there, Hinton et al. 2015) but not
    the focal factor, which stays on the untempered probabilities: tempered, a background
    cell's near-zero probabilities rise towards 0.5 and the factor would no longer silence
    them (at T = 2, a cell of logits -5 against -7 weighs a thousand times more). The student
    at the teacher's logits costs 0, with a 0 gradient, at any temperature."""
    gap = (torch.sigmoid(teacher) - torch.sigmoid(student)).abs()
    t = temperature
    cross = F.binary_cross_entropy_with_logits(
        student / t, torch.sigmoid(teacher / t), reduction="none"
    )
    return gap**QFL_BETA * cross


def peak_cells(logits: Tensor, score_threshold: float) -> Tensor:
    """``[B, h, w]`` bool: the cells where a heat-map ``[B, C, h, w]`` (logits) has a peak of
    some class (a cell no lower than its 3x3 neighbourhood, as :func:`decode_detections`
    finds them) scoring at least ``score_threshold``: the centres of the detections it would
    report, before top-k and NMS."""
    heat = torch.sigmoid(logits.float())
    peaks = (heat == F.max_pool2d(heat, 3, stride=1, padding=1)) & (heat >= score_threshold)
    return peaks.any(dim=1)
