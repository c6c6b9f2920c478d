"""Array-valued table cells: images, masks and depth maps held in memory or named by file.

A cell is a NumPy array (or nested list), or a path to a ``.npy`` file or an image file
(PNG, JPEG, BMP, GIF, TIFF; read with Pillow). Relative paths are resolved against a base
folder, by default the folder of the table that names them. A column is stacked into one
array after checking that every cell has the same shape; the first cell that does not is
named in the error, with its row and shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from polytask.errors import DataError
from polytask.progress import long_step

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def is_missing(value: object) -> bool:
    """True for an empty cell: None, NaN or a blank string."""
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def resolve_path(value: str, base_dir: Path | None) -> Path:
    """``value`` with ``~`` / ``~user`` expanded, relative to ``base_dir`` unless absolute;
    the one place a path the user wrote (in the config or in a table) is resolved."""
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~nosuchuser, or no home directory to put for ~
        user = str(value).split("/", 1)[0]
        raise DataError(
            f"path '{value}': cannot expand '{user}' (no such user or no home directory)"
        ) from None
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def read_array_file(path: Path, where: str) -> np.ndarray:
    """The array in a ``.npy`` or image file."""
    if not path.is_file():
        raise DataError(f"{where}: file '{path}' not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                return np.asarray(image)
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot read '{path}': {exc}") from None
    raise DataError(
        f"{where}: file '{path}' is not a .npy or image file ({', '.join(IMAGE_SUFFIXES)})"
    )


def cell_array(value: object, base_dir: Path | None, where: str) -> np.ndarray:
    """The array a cell holds or names."""
    if isinstance(value, str):
        return read_array_file(resolve_path(value, base_dir), where)
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list | tuple):
        return np.asarray(value)
    raise DataError(f"{where}: expected an array or a file path, got {type(value).__name__}")


def stack_column(
    series: pd.Series,
    source: str,
    base_dir: Path | None,
    *,
    reader: Callable[[object, Path | None, str], np.ndarray] = cell_array,
    allow_missing: bool = False,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every cell of ``series`` stacked into ``[N, *shape]`` and a boolean array of the rows
    that held a value (missing rows are zero-filled; an error unless ``allow_missing``).
    ``progress`` names the step for the progress display (:mod:`polytask.progress`): reading
    thousands of image files takes minutes."""
    with long_step(progress or "", len(series) if progress else 0, "rows") as advance:
        return _stack_column(series, source, base_dir, reader, allow_missing, advance)


def _stack_column(
    series: pd.Series,
    source: str,
    base_dir: Path | None,
    reader: Callable[[object, Path | None, str], np.ndarray],
    allow_missing: bool,
    advance: Callable[[int], None],
) -> tuple[np.ndarray, np.ndarray]:
    column = str(series.name)
    arrays: list[np.ndarray | None] = []
    shape: tuple[int, ...] | None = None
    first_row: object = None
    for row, value in series.items():
        advance(1)
        where = f"{source}: column '{column}', row {row}"
        if is_missing(value):
            if not allow_missing:
                raise DataError(f"{where}: empty cell; every row needs a value here")
            arrays.append(None)
            continue
        array = reader(value, base_dir, where)
        if shape is None:
            shape, first_row = array.shape, row
        elif array.shape != shape:
            raise DataError(
                f"{where}: shape {array.shape} differs from {shape} (row {first_row}); "
                "every cell of a column must have the same shape"
            )
        arrays.append(array)
    if shape is None:
        raise DataError(f"{source}: column '{column}' holds no array")
    present = np.array([a is not None for a in arrays], dtype=bool)
    dtype = next(a for a in arrays if a is not None).dtype
    out = np.zeros((len(arrays), *shape), dtype=dtype)
    for i, cell in enumerate(arrays):
        if cell is not None:
            out[i] = cell
    return out, present
