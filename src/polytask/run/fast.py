"""The few-row encoding of a table model, compiled once when a :class:`Predictor` is loaded.

:meth:`TablePreprocessor.transform_cells` converts a few rows without pandas, but its encoding
(:meth:`TablePreprocessor._encode`) runs a dozen NumPy calls per column, sized for tables: for
one row they cost more than the network's forward pass. :class:`FastTable` holds the fitted
statistics as arrays and the category lookups as dicts, derived once from the fitted columns,
and encodes ``n`` rows in a handful of whole-matrix operations: every numeric column's fill,
standardisation and clip at once (the same float64 operations, rounded once to float32, so the
values are bit for bit those of ``_encode``), the one-hot cells written through one flat index,
the embedded codes as one array.

Rows as dicts (:meth:`FastTable.records`, a parsed JSON request) are read cell by cell in one
pass. The fast path takes only the cells whose conversion it shares with
:func:`~polytask.data.preprocess.cells_as_float` and
:func:`~polytask.data.preprocess.cells_as_text` without pandas (plain numbers and missing
values; text, missing values and whole numbers): anything else (a number written as text, a
float in a category column, a missing-value marker, an absent column, an unseen category under
``data.unseen = "error"``) returns None and the caller takes the general path, which stays the
one definition of what such a cell means (and of every error message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polytask.data.preprocess import (
    MAX_STANDARD_SCORE,
    MISSING_TOKEN,
    Cells,
    TablePreprocessor,
    cells_as_float,
    cells_as_text,
)

__all__ = ["FastTable"]

#: Whole numbers beyond this are written by pandas' rules, not here (see ``cells_as_text``).
_EXACT_INT = 2**53
_NAN = float("nan")


class FastTable:
    """The fitted encoding of a :class:`TablePreprocessor` laid out for a few rows at a time.

    ``markers`` are the model's missing-value markers: a cell that could be one sends the rows
    to the general path (which marks it)."""

    def __init__(self, pre: TablePreprocessor, markers: Sequence[str] = ()) -> None:
        self.numeric = [c.name for c in pre.numeric]
        self.categorical = [c.name for c in pre.categorical]
        self.fills = np.array([c.fill for c in pre.numeric], dtype=np.float64)
        self.means = np.array([c.mean for c in pre.numeric], dtype=np.float64)
        self.stds = np.array([c.std for c in pre.numeric], dtype=np.float64)
        value_at: list[int] = []
        flagged: list[int] = []
        flag_at: list[int] = []
        at = 0
        for i, col in enumerate(pre.numeric):
            value_at.append(at)
            at += 1
            if col.indicator:
                flagged.append(i)
                flag_at.append(at)
                at += 1
        #: Per categorical column: its lookup (label -> 1-based code), and the dense offset
        #: of its one-hot block (codes 1.. at offset + code - 1) or -1 - its embedding slot.
        self.lookups: list[dict[str, int]] = []
        self.targets: list[int] = []
        embedded = 0
        for cat in pre.categorical:
            self.lookups.append({c: i + 1 for i, c in enumerate(cat.categories)})
            if cat.encoding == "onehot":
                self.targets.append(at)
                at += len(cat.categories)
            else:
                self.targets.append(-1 - embedded)
                embedded += 1
        self.value_at = np.array(value_at, dtype=np.int64)
        self.flagged = np.array(flagged, dtype=np.int64)
        self.flag_at = np.array(flag_at, dtype=np.int64)
        self.width = at
        self.embedded = embedded
        #: Read on every call: ``data.unseen`` may be changed on a loaded model.
        self.options = pre.options
        self.has_markers = bool(markers)
        self.marker_texts = {m.strip() for m in markers}
        self.marker_numbers = {float(m) for m in markers if _is_number(m)}
        if self.width != pre.numeric_width or self.embedded != len(pre.cardinalities):
            raise AssertionError("the few-row layout differs from the preprocessor's")

    # -- rows as dicts -------------------------------------------------------------------
    def records(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Tensor] | None:
        """The model's input tensors of ``records`` (each holding every feature column), or
        None when a cell needs the general path."""
        n = len(records)
        numbers: list[Any] = []
        append = numbers.append
        numeric = self.numeric
        markers = self.has_markers
        try:
            for record in records:
                for name in numeric:
                    v = record[name]
                    kind = type(v)
                    if kind is float or kind is int:
                        if markers and v in self.marker_numbers:
                            return None
                        append(v)
                    elif v is None:
                        append(_NAN)
                    else:
                        return None  # numpy scalars, text, booleans: the general path
            width = self.width
            onehot: list[int] = []
            codes: list[int] = []
            lookups = self.lookups
            targets = self.targets
            texts = self.marker_texts
            reject_unseen = self.options.unseen == "error"
            for i, record in enumerate(records):
                row = i * width
                for j, name in enumerate(self.categorical):
                    v = record[name]
                    kind = type(v)
                    if kind is str:
                        label = v.strip()
                        if markers and label in texts:
                            return None
                        if not label:
                            label = MISSING_TOKEN
                    elif v is None:
                        label = MISSING_TOKEN
                    elif kind is int and -_EXACT_INT <= v <= _EXACT_INT:
                        if markers and v in self.marker_numbers:
                            return None
                        label = str(v)
                    elif kind is float and v != v:
                        label = MISSING_TOKEN  # NaN: never a marker (NaN equals nothing)
                    else:
                        return None
                    code = lookups[j].get(label, 0)
                    if code == 0 and reject_unseen:
                        return None
                    target = targets[j]
                    if target >= 0:
                        if code:
                            onehot.append(row + target + code - 1)
                    else:
                        codes.append(code)
        except KeyError:
            return None
        x = np.array(numbers, dtype=np.float64).reshape(n, len(numeric))
        return self._tensors(x, onehot, np.array(codes, dtype=np.int64).reshape(n, self.embedded))

    # -- cells per column ----------------------------------------------------------------
    def columns(
        self, columns: Mapping[str, Cells], n: int, source: str
    ) -> dict[str, Tensor] | None:
        """The model's input tensors of ``n`` rows given as cells per column (markers already
        applied), converted by :func:`cells_as_float` and :func:`cells_as_text`; None when a
        feature column is absent or an unseen category must be refused."""
        if any(c not in columns for c in self.numeric) or any(
            c not in columns for c in self.categorical
        ):
            return None
        x = np.empty((n, len(self.numeric)), dtype=np.float64)
        for i, name in enumerate(self.numeric):
            x[:, i] = cells_as_float(columns[name], name, source)
        onehot: list[int] = []
        index = np.empty((n, self.embedded), dtype=np.int64)
        width = self.width
        for j, name in enumerate(self.categorical):
            lookup = self.lookups[j]
            codes = [lookup.get(t, 0) for t in cells_as_text(columns[name], name)]
            if self.options.unseen == "error" and 0 in codes:
                return None
            target = self.targets[j]
            if target >= 0:
                onehot.extend(i * width + target + c - 1 for i, c in enumerate(codes) if c)
            else:
                index[:, -1 - target] = codes
        return self._tensors(x, onehot, index)

    def _tensors(self, x: np.ndarray, onehot: list[int], index: np.ndarray) -> dict[str, Tensor]:
        """Fill, standardise and clip the numbers (float64, rounded once to float32, as
        ``_encode`` does), flag the missing, set the one-hot cells."""
        n = x.shape[0]
        dense = np.zeros((n, self.width), dtype=np.float32)
        present = np.isfinite(x)
        with np.errstate(over="ignore"):
            z = (np.where(present, x, self.fills) - self.means) / self.stds
        dense[:, self.value_at] = np.clip(z, -MAX_STANDARD_SCORE, MAX_STANDARD_SCORE)
        if len(self.flagged):
            dense[:, self.flag_at] = ~present[:, self.flagged]
        if onehot:
            dense.reshape(-1)[onehot] = 1.0
        return {"numeric": torch.from_numpy(dense), "categorical": torch.from_numpy(index)}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
