"""How far an exported model's predictions are from the torch predictor's, column by column
(the export equality check of the tests and ``benchmarks/run_export_equality.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ColumnDiff:
    """One prediction column compared: numbers by their largest absolute and relative
    difference (NaN where both are NaN counts as equal), labels by identity."""

    column: str
    numeric: bool
    max_abs: float
    max_rel: float
    identical: bool

    def within(self, abs_tol: float, rel_tol: float) -> bool:
        """Labels identical; numbers within ``abs_tol`` or ``rel_tol`` of the expected."""
        if not self.numeric:
            return self.identical
        return self.identical and (self.max_abs <= abs_tol or self.max_rel <= rel_tol)


def _cells(column: pd.Series) -> np.ndarray:
    """A column as one float array (arrays per row concatenated) or None for labels."""
    values = column.to_numpy()
    if values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
        return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
    return values


def compare_predictions(expected: pd.DataFrame, got: pd.DataFrame) -> list[ColumnDiff]:
    """Every column of ``expected`` against the same column of ``got`` (which must have the
    same columns in the same order, or the first difference is reported as column '<columns>').
    Per-pixel columns are compared pixel by pixel; a row without a map (None) must be None in
    both."""
    if list(expected.columns) != list(got.columns) or len(expected) != len(got):
        return [ColumnDiff("<columns>", False, np.inf, np.inf, False)]
    diffs: list[ColumnDiff] = []
    for name in expected.columns:
        a, b = expected[name], got[name]
        if a.map(lambda v: v is None).ne(b.map(lambda v: v is None)).any():
            diffs.append(ColumnDiff(str(name), False, np.inf, np.inf, False))
            continue
        keep = a.map(lambda v: v is not None).to_numpy()
        x, y = _cells(a[keep]), _cells(b[keep])
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            same_nan = bool((np.isnan(x) == np.isnan(y)).all())
            both = ~np.isnan(x) & ~np.isnan(y)
            diff = np.abs(x[both] - y[both])
            scale = np.maximum(np.abs(x[both]), np.finfo(np.float64).tiny)
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = float((diff / scale).max()) if diff.size else 0.0
            diffs.append(ColumnDiff(str(name), True, max_abs, max_rel, same_nan))
        else:
            identical = len(x) == len(y) and all(
                bool(np.array_equal(u, v)) for u, v in zip(x, y, strict=True)
            )
            diffs.append(ColumnDiff(str(name), False, 0.0, 0.0, identical))
    return diffs
