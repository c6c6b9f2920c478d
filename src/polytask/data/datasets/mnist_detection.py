"""MNIST detection: canvases of 1-5 real MNIST test digits at random scales and positions,
with their boxes, their count and a per-pixel map of which digit owns each pixel.

The benchmark the seeds ask for ("a shared convolutional layer and a unique head for each
object detection and segmentation task") on real handwriting: only the MNIST test set
(10,000 digits; LeCun, Cortes & Burges, CC BY-SA 3.0) is available here, so its digits are
split *before* composing, with a fixed seed, into disjoint pools of 8,000 (train), 1,000
(validation) and 1,000 (test) source digits, as :mod:`polytask.data.datasets.multimnist`
does: the test canvases hold handwriting no training canvas shows.

Each canvas (``CANVAS`` x ``CANVAS`` pixels, black) gets 1-5 digits drawn from its split's
pool, each resized (bilinear, antialiased) from 28 x 28 to a side of ``MIN_SIDE`` to
``MAX_SIDE`` pixels and pasted at a random position inside the canvas where its box overlaps
no earlier box by more than ``MAX_IOU`` (placements are retried; a digit that finds no place
is left out). Pixels are the brighter of the overlapping digits.

Columns:

* ``image``: uint8 ``[CANVAS, CANVAS]`` arrays;
* ``boxes``: the digits' boxes ``[x1, y1, x2, y2, digit]`` (detection): the tight box around
  the pixels the digit inks (value >= :data:`INK`), in pixels, ``x2``/``y2`` exclusive;
* ``count``: how many digits the canvas holds (regression);
* ``mask``: uint8 ``[CANVAS, CANVAS]``: 0 background, ``1 + digit`` where a digit inks the
  pixel (segmentation, 11 classes); where two digits ink it, the brighter one owns it, ties to
  the one pasted last (on top);
* ``split``: train / val / test (use ``data.split.method = "column"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from polytask.data.datasets.multimnist import (
    IMAGES_RELPATH,
    IMAGES_SHA256,
    IMAGES_URL,
    LABELS_RELPATH,
    LABELS_SHA256,
    LABELS_URL,
    read_mnist_test,
)

__all__ = [
    "IMAGES_RELPATH",
    "IMAGES_SHA256",
    "IMAGES_URL",
    "LABELS_RELPATH",
    "LABELS_SHA256",
    "LABELS_URL",
    "compose_canvases",
    "load_mnist_detection",
]

SEED = 0
#: Source digits per split, from one seeded permutation of the 10,000 test digits.
POOLS: dict[str, int] = {"train": 8000, "val": 1000, "test": 1000}
#: Canvases per split of the registered dataset.
CANVASES: dict[str, int] = {"train": 3000, "val": 500, "test": 1000}
CANVAS = 64
MIN_SIDE, MAX_SIDE = 16, 32
MAX_DIGITS = 5
MAX_IOU = 0.3
#: A digit inks a pixel where its (resized) value is at least this (of 255).
INK = 128
#: Placements tried per digit before it is left out.
TRIES = 30

TARGETS: dict[str, str] = {"boxes": "detection", "count": "regression", "mask": "segmentation"}
IGNORE: tuple[str, ...] = ()
SUMMARY = "MNIST detection 64x64 (1-5 MNIST test digits per canvas): boxes, count, segmentation"
CITATION = (
    "polytask's generator (polytask.data.datasets.mnist_detection) on the MNIST test set: "
    "LeCun, Cortes & Burges, the MNIST database (CC BY-SA 3.0). Detection head: Zhou, Wang & "
    "Krähenbühl, Objects as Points, 2019."
)


def _resized(digit: np.ndarray, side: int) -> np.ndarray:
    """A 28 x 28 uint8 digit resized to ``side`` x ``side`` (bilinear, antialiased)."""
    t = torch.from_numpy(digit.astype(np.float32))[None, None]
    out = F.interpolate(t, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out[0, 0].clamp(0, 255).round().to(torch.uint8).numpy()


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def compose_canvases(
    digits: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[list[list[float]]], list[np.ndarray]]:
    """``n`` canvases of digits drawn (without replacement while the pool lasts) from
    ``digits [P, 28, 28]`` with their ``labels``: images, boxes and ownership masks."""
    images, boxes, masks = [], [], []
    order = rng.permutation(len(digits))
    cursor = 0
    for _ in range(n):
        image = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
        mask = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        found: list[list[float]] = []
        for _ in range(int(rng.integers(1, MAX_DIGITS + 1))):
            if cursor == len(order):
                order, cursor = rng.permutation(len(digits)), 0
            k = int(order[cursor])
            cursor += 1
            side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
            glyph = _resized(digits[k], side)
            ink = glyph >= INK
            if not ink.any():
                continue
            rows, cols = np.nonzero(ink)
            for _ in range(TRIES):
                top = int(rng.integers(0, CANVAS - side + 1))
                left = int(rng.integers(0, CANVAS - side + 1))
                box = (
                    left + int(cols.min()),
                    top + int(rows.min()),
                    left + int(cols.max()) + 1,
                    top + int(rows.max()) + 1,
                )
                if all(_iou(box, other) <= MAX_IOU for other in placed):
                    break
            else:
                continue  # no room left for this digit
            window = (slice(top, top + side), slice(left, left + side))
            below = image[window]
            owns = ink & (glyph >= below)
            mask[window][owns] = 1 + int(labels[k])
            image[window] = np.maximum(below, glyph)
            placed.append(box)
            found.append([float(v) for v in box] + [int(labels[k])])
        images.append(image)
        boxes.append(found)
        masks.append(mask)
    return images, boxes, masks


def load_mnist_detection(
    root: Path, canvases: dict[str, int] | None = None, seed: int = SEED
) -> pd.DataFrame:
    """Compose the MNIST detection canvases from the MNIST test files under ``root``.

    Args:
        root: the data root holding ``mnist/t10k-*``.
        canvases: canvases per split (default :data:`CANVASES`).
        seed: the seed of the digit pools and the compositions.

    Returns:
        One row per canvas, train rows first, then validation, then test (see the module
        docstring for the columns).

    Raises:
        DataError: if a file is not the MNIST test set's.
    """
    digits, labels = read_mnist_test(root)
    sizes = dict(CANVASES if canvases is None else canvases)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits))
    parts = []
    start = 0
    for split, size in POOLS.items():
        pool = order[start : start + size]
        start += size
        images, boxes, masks = compose_canvases(
            digits[pool], labels[pool], sizes.get(split, 0), rng
        )
        boxes_column = np.empty(len(boxes), dtype=object)
        boxes_column[:] = boxes
        parts.append(
            pd.DataFrame(
                {
                    "image": images,
                    "boxes": boxes_column,
                    "count": np.array([len(b) for b in boxes], dtype=np.int64),
                    "mask": masks,
                    "split": split,
                }
            )
        )
    frame: pd.DataFrame = pd.concat(parts, ignore_index=True)
    return frame
