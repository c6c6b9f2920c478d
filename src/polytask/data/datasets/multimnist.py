"""MultiMNIST: two overlapping MNIST digits per image, built reproducibly from the MNIST test set.

The construction follows Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018 (Section 5.1 and their released loader): one digit is placed at the top-left of a
36 x 36 canvas (rows and columns 0-27), another shifted 6 pixels down and right (rows and
columns 6-33), and each pixel of the composite is the brighter of the two. Unlike Sener &
Koltun, the composite is kept at 36 x 36 (they shrink it to 28 x 28) and a third, per-pixel task
is added.

Only the MNIST test set (10,000 digits; LeCun, Cortes & Burges, CC BY-SA 3.0) is available here,
so the digits are split *before* composing, with a fixed seed, into disjoint pools of 7,000
(train), 1,000 (validation) and 2,000 (test) source digits: no digit appears in two splits, so
the test images are new handwriting, not new pairings of digits seen in training. Within a pool
the digits are shuffled and each becomes the left digit of one image, the right digit being the
next one in the shuffled order (so every digit is also the right digit of exactly one image and
never paired with itself).

Tasks:

* ``left``: the top-left digit (multiclass, 10 classes);
* ``right``: the bottom-right digit (multiclass, 10 classes);
* ``mask``: per-pixel segmentation, 0 background, 1 left digit, 2 right digit. A digit inks a
  pixel where its own value is at least :data:`INK` (half intensity); where both ink it, the
  brighter one owns the pixel and ties go to the right digit (the one pasted second, on top).

Columns: ``image`` (uint8 36 x 36 arrays), ``left``, ``right`` (int64), ``mask`` (uint8 36 x 36
arrays), ``split`` (train / val / test: use ``data.split.method = "column"``), and the MNIST
test-set indices of the two source digits, ``left_source`` and ``right_source`` (ignored).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from polytask.errors import DataError

IMAGES_RELPATH = "mnist/t10k-images-idx3-ubyte.gz"
LABELS_RELPATH = "mnist/t10k-labels-idx1-ubyte.gz"
# The torchvision mirror of LeCun's files. The checksums are those of the copies in the shared
# data folder; their decompressed contents are the canonical MNIST test files (MD5
# 2646ac647ad5339dbf082846283269ea and 27ae3e4e09519cfbb04c329615203637).
IMAGES_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz"
LABELS_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz"
IMAGES_SHA256 = "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b"
LABELS_SHA256 = "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c"

SEED = 0
#: Source digits per split, taken from one seeded permutation of the 10,000 test digits.
POOLS: dict[str, int] = {"train": 7000, "val": 1000, "test": 2000}
CANVAS = 36
DIGIT = 28
#: Top-left corner of the left and the right digit (Sener & Koltun's placement).
LEFT_AT, RIGHT_AT = 0, 6
#: A digit inks a pixel where its value is at least this (of 255).
INK = 128

TARGETS: dict[str, str] = {"left": "multiclass", "right": "multiclass", "mask": "segmentation"}
IGNORE: tuple[str, ...] = ("left_source", "right_source")
SUMMARY = "MultiMNIST 36x36 (from MNIST test digits): left digit, right digit, segmentation"
CITATION = (
    "Sener & Koltun. Multi-Task Learning as Multi-Objective Optimization. NeurIPS 2018 "
    "(MultiMNIST construction). Digits: LeCun, Cortes & Burges, the MNIST database, test set "
    "(CC BY-SA 3.0)."
)


def _read_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of a gzipped IDX file, checking its magic number and dimensions."""
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    header = 4 * (1 + len(shape))
    fields = np.frombuffer(raw[:header], dtype=">u4")
    if len(fields) != 1 + len(shape) or int(fields[0]) != magic:
        raise DataError(f"{path}: not an MNIST IDX file (magic number {magic} expected)")
    dims = tuple(int(d) for d in fields[1:])
    if dims != shape or len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path}: dimensions {dims}, expected the MNIST test set's {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def compose(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and masks ``[N, 36, 36]`` (uint8) from ``[N, 28, 28]`` left and right digits."""
    n = len(left)
    lcan = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    rcan = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    lcan[:, LEFT_AT : LEFT_AT + DIGIT, LEFT_AT : LEFT_AT + DIGIT] = left
    rcan[:, RIGHT_AT : RIGHT_AT + DIGIT, RIGHT_AT : RIGHT_AT + DIGIT] = right
    image = np.maximum(lcan, rcan)
    ink_l, ink_r = lcan >= INK, rcan >= INK
    mask = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    mask[ink_l & ~(ink_r & (rcan >= lcan))] = 1
    mask[ink_r & ~(ink_l & (lcan > rcan))] = 2
    return image, mask


def read_mnist_test(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test digits ``[N, 28, 28]`` (uint8) and their labels ``[N]`` (int64)."""
    digits = _read_idx(root / IMAGES_RELPATH, 2051, (10_000, DIGIT, DIGIT))
    labels = _read_idx(root / LABELS_RELPATH, 2049, (10_000,)).astype(np.int64)
    return digits, labels


def load_multimnist(root: Path) -> pd.DataFrame:
    """Compose the 10,000 MultiMNIST images from the MNIST test files under ``root``.

    Returns:
        One row per image, train rows first, then validation, then test (see the module
        docstring for the columns).

    Raises:
        DataError: if a file is not the MNIST test set's.
    """
    digits, labels = read_mnist_test(root)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(digits))
    parts = []
    start = 0
    for split, size in POOLS.items():
        pool = order[start : start + size]
        start += size
        left_src = pool[rng.permutation(size)]
        right_src = np.roll(left_src, -1)
        image, mask = compose(digits[left_src], digits[right_src])
        parts.append(
            pd.DataFrame(
                {
                    "image": list(image),
                    "left": labels[left_src],
                    "right": labels[right_src],
                    "mask": list(mask),
                    "split": split,
                    "left_source": left_src.astype(np.int64),
                    "right_source": right_src.astype(np.int64),
                }
            )
        )
    frame: pd.DataFrame = pd.concat(parts, ignore_index=True)
    return frame
