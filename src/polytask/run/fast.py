"""The encoding of a table model laid out for speed, compiled once when a :class:`Predictor`
is loaded: a few rows (a request) and whole frames (batch prediction) alike.

:meth:`TablePreprocessor.transform` converts column by column through pandas and
:meth:`TablePreprocessor._encode` runs a dozen NumPy calls per column, sized for tables: for
one row they cost more than the network's forward pass, and for a 100,000-row chunk the text
conversion of every cell dominates. :class:`FastTable` holds the fitted statistics as arrays
and the category lookups as dicts, derived once from the fitted columns, and encodes rows in a
handful of whole-matrix operations: every numeric column's fill, standardisation and clip at
once (the same float64 operations, rounded once to float32, so the values are bit for bit
those of ``_encode``), the one-hot cells written through one index, the embedded codes as one
array.

A few rows, as plain Python values per column (:meth:`FastTable.lists`: a parsed JSON request
via :meth:`FastTable.records`, or a few-row frame's columns) are read cell by cell in one
pass. The fast path takes only the cells whose conversion it shares with
:func:`~polytask.data.preprocess.cells_as_float` and
:func:`~polytask.data.preprocess.cells_as_text` without pandas (plain numbers and missing
values; text, missing values and whole numbers): anything else (a number written as text, a
float in a category column, a missing-value marker, an absent column, an unseen category under
``data.unseen = "error"``) returns None and the caller takes the general path, which stays the
one definition of what such a cell means (and of every error message).

A whole frame (:meth:`FastTable.prepare`, then :meth:`FastTable.encode` per forward batch)
converts each categorical column through :func:`~polytask.data.preprocess.as_text` once per
distinct value, not per cell, and remembers the codes of the values it has seen, so that the
chunks of a batch prediction pay for a column's conversion once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polytask.data.preprocess import (
    MAX_STANDARD_SCORE,
    MISSING_TOKEN,
    Cells,
    TablePreprocessor,
    as_float,
    as_text,
    cells_as_float,
    cells_as_text,
)

__all__ = ["FastTable", "PreparedRows"]

#: Whole numbers beyond this are written by pandas' rules, not here (see ``cells_as_text``).
_EXACT_INT = 2**53
_NAN = float("nan")
#: A categorical column's remembered distinct values (:meth:`FastTable.prepare`) at most.
_KNOWN_VALUES = 100_000


@dataclass
class PreparedRows:
    """A frame's feature columns converted (:meth:`FastTable.prepare`), not yet laid out:
    the numbers (rows by numeric columns, float64, NaN for missing) and each categorical
    column's 1-based codes (0: unknown)."""

    numbers: np.ndarray
    codes: list[np.ndarray]

    def __len__(self) -> int:
        return int(self.numbers.shape[0])


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
        #: Per (categorical column, dtype): distinct value -> code, see :meth:`_distinct_codes`.
        self._known: dict[tuple[int, str], dict[Any, int]] = {}
        self.has_markers = bool(markers)
        self.marker_texts = {m.strip() for m in markers}
        self.marker_numbers = {float(m) for m in markers if _is_number(m)}
        if self.width != pre.numeric_width or self.embedded != len(pre.cardinalities):
            raise AssertionError("the few-row layout differs from the preprocessor's")

    # -- rows as dicts -------------------------------------------------------------------
    def records(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Tensor] | None:
        """The model's input tensors of ``records`` (each holding every feature column), or
        None when a cell needs the general path."""
        try:
            numeric = [[record[name] for record in records] for name in self.numeric]
            categorical = [[record[name] for record in records] for name in self.categorical]
        except KeyError:
            return None
        return self.lists(numeric, categorical, len(records))

    def lists(
        self, numeric: Sequence[list[Any]], categorical: Sequence[list[Any]], n: int
    ) -> dict[str, Tensor] | None:
        """The model's input tensors of ``n`` rows given as plain Python values per column
        (each numeric column's ``n`` cells in :attr:`numeric` order, then each categorical
        one's), read in one pass; None when a cell needs the general path (see the module
        docstring). :meth:`records` (a JSON request) and a few-row frame's columns
        (``Predictor.predict``) both come here."""
        numbers: list[Any] = []
        append = numbers.append
        markers = self.has_markers
        marker_numbers = self.marker_numbers
        for values in numeric:
            for v in values:
                kind = type(v)
                if kind is float or kind is int:
                    if markers and v in marker_numbers:
                        return None
                    append(v)
                elif v is None:
                    append(_NAN)
                else:
                    return None  # numpy scalars, text, booleans: the general path
        width = self.width
        onehot: list[int] = []
        codes: list[int] = []
        texts = self.marker_texts
        reject_unseen = self.options.unseen == "error"
        for values, lookup, target in zip(categorical, self.lookups, self.targets, strict=True):
            row = target - 1  # the flat index of code 1 in row 0 (one-hot columns)
            for v in values:
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
                    if markers and v in marker_numbers:
                        return None
                    label = str(v)
                elif kind is float and v != v:
                    label = MISSING_TOKEN  # NaN: never a marker (NaN equals nothing)
                else:
                    return None
                code = lookup.get(label, 0)
                if code == 0 and reject_unseen:
                    return None
                if target < 0:
                    codes.append(code)
                elif code:
                    onehot.append(row + code)
                row += width
        # Column after column: the transposes are views, the matrices (n, columns).
        x = np.array(numbers, dtype=np.float64).reshape(len(self.numeric), n).T
        index = np.array(codes, dtype=np.int64).reshape(self.embedded, n).T
        dense = self._dense(x)
        if onehot:
            dense.reshape(-1)[onehot] = 1.0
        return {
            "numeric": torch.from_numpy(dense),
            "categorical": torch.from_numpy(np.ascontiguousarray(index)),
        }

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
        dense = self._dense(x)
        if onehot:
            dense.reshape(-1)[onehot] = 1.0
        return {"numeric": torch.from_numpy(dense), "categorical": torch.from_numpy(index)}

    # -- a whole frame -------------------------------------------------------------------
    def frame(self, df: pd.DataFrame, source: str) -> dict[str, Tensor] | None:
        """:meth:`TablePreprocessor.transform` of ``df`` (markers already applied), bit for
        bit: :meth:`prepare` and :meth:`encode` of every row; None for the general path."""
        prepared = self.prepare(df, source)
        return None if prepared is None else self.encode(prepared, 0, len(df))

    def prepare(self, df: pd.DataFrame, source: str) -> PreparedRows | None:
        """Each feature column of ``df`` (markers already applied) converted as
        :meth:`TablePreprocessor.transform` converts it, vectorised over rows: NumPy number
        columns are read as they are, and each categorical column goes through
        :func:`as_text` once per *distinct* value (``pd.factorize``) and the lookup once per
        distinct label, each row then taking its label's code by index. :meth:`encode` then
        lays out any range of the rows.

        A number column of another type (text, a column whose markers were made missing)
        goes through :func:`as_float` itself, which owns its conversion and the error naming
        a row. None when the frame needs the general path: a duplicated or absent feature
        column, a categorical column of a type whose distinct values could merge cells
        :func:`as_text` writes differently (an object column holding anything but text,
        where ``1``, ``1.0`` and ``True`` are one value to a hash table), or an unseen
        category under ``data.unseen = "error"``."""
        if not df.columns.is_unique or any(c not in df.columns for c in self.numeric):
            return None
        n = len(df)
        x = np.empty((n, len(self.numeric)), dtype=np.float64)
        for i, name in enumerate(self.numeric):
            series = df[name]
            dtype = series.dtype
            if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
                x[:, i] = series.to_numpy()  # what as_float gives: the values cast to float64
            else:
                x[:, i] = as_float(series, source)  # text, markers made missing: its own rules
        codes: list[np.ndarray] = []
        for j, name in enumerate(self.categorical):
            if name not in df.columns:
                return None
            column = self._distinct_codes(df[name], j)
            if column is None:
                return None
            codes.append(column)
        return PreparedRows(x, codes)

    def encode(self, rows: PreparedRows, start: int, stop: int) -> dict[str, Tensor]:
        """The model's input tensors of rows ``start:stop`` of ``rows``. A batch prediction
        encodes one forward pass's rows at a time: a block of the float32 matrix is reused
        from the allocator, where the whole chunk's (56 MB for 100,000 Census rows) came
        fresh from the kernel each time, a page fault per 4 KiB (a third of a second per
        chunk on a shared 2-core machine)."""
        x = rows.numbers[start:stop]
        dense = self._dense(x)
        index = np.empty((x.shape[0], self.embedded), dtype=np.int64)
        for codes, target in zip(rows.codes, self.targets, strict=True):
            block = codes[start:stop]
            if target >= 0:
                at = np.flatnonzero(block)
                dense[at, target - 1 + block[at]] = 1.0
            else:
                index[:, -1 - target] = block
        return {"numeric": torch.from_numpy(dense), "categorical": torch.from_numpy(index)}

    def _distinct_codes(self, series: pd.Series, j: int) -> np.ndarray | None:
        """The 1-based codes of categorical column ``j`` (0: unknown), its text written by
        :func:`as_text` once per distinct value; None for the general path (see
        :meth:`prepare`).

        :func:`as_text` converts each cell on its own given the column's type, so the text of
        the distinct values, typed as the column, is the text of every cell holding them."""
        dtype = series.dtype
        if isinstance(dtype, np.dtype):
            if dtype.kind not in "iufbO":
                return None
            values: Any = series.to_numpy()
        elif isinstance(dtype, pd.StringDtype):
            values = series.array
        else:
            return None  # categoricals, nullable integers, dates: the general path
        rows, uniques = pd.factorize(values, use_na_sentinel=True)
        mixed = isinstance(dtype, np.dtype) and dtype.kind == "O"
        if mixed and pd.api.types.infer_dtype(uniques, skipna=True) not in ("string", "empty"):
            return None
        lookup = self.lookups[j]
        # The codes of the distinct values seen in earlier chunks of this column and type:
        # as_text costs a dozen pandas calls per column, whatever the few values it writes.
        known = self._known.setdefault((j, str(dtype)), {})
        if len(known) > _KNOWN_VALUES:  # a column of ids: as many values as rows
            known.clear()
        distinct = uniques.tolist()
        fresh = [v for v in distinct if v not in known]
        if fresh:
            labels = as_text(pd.Series(fresh, dtype=dtype)).tolist()
            known.update(zip(fresh, (lookup.get(t, 0) for t in labels), strict=True))
        # The missing cells (-1 from factorize) take the last entry: the missing token's code.
        # int32: a vocabulary is far below 2**31, and a chunk's codes take half the memory.
        codes = np.array(
            [*map(known.__getitem__, distinct), lookup.get(MISSING_TOKEN, 0)], dtype=np.int32
        )
        if self.options.unseen == "error" and not bool(codes[:-1].all()):
            return None  # an unseen (or rare) category: refused, or not, by the general path
        if self.options.unseen == "error" and codes[-1] == 0 and bool((rows < 0).any()):
            return None
        result: np.ndarray = codes[rows]
        return result

    def _dense(self, x: np.ndarray) -> np.ndarray:
        """The dense float32 matrix of ``x`` (rows by numeric columns, float64, NaN for
        missing), one-hot cells still zero: every numeric column filled, standardised and
        clipped at once (in float64, rounded once to float32, as ``_encode`` does) and the
        missing flagged."""
        n = x.shape[0]
        dense = np.zeros((n, self.width), dtype=np.float32)
        present = np.isfinite(x)
        with np.errstate(over="ignore"):
            z = (np.where(present, x, self.fills) - self.means) / self.stds
        dense[:, self.value_at] = np.clip(z, -MAX_STANDARD_SCORE, MAX_STANDARD_SCORE)
        if len(self.flagged):
            dense[:, self.flag_at] = ~present[:, self.flagged]
        return dense


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
