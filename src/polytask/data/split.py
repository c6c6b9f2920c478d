"""Train/validation/test splits: random rows, or whole groups (e.g. one patient per split)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from polytask.errors import ConfigError, DataError


def _check_fractions(val: float, test: float) -> None:
    if val < 0 or test < 0 or val + test >= 1:
        raise ConfigError(
            f"data.split: val ({val}) and test ({test}) must be >= 0 with val + test < 1"
        )


def random_split(
    n: int, val: float, test: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train, validation and test, drawn uniformly at random."""
    _check_fractions(val, test)
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(n * test), round(n * val)
    return (
        np.sort(order[n_test + n_val :]),
        np.sort(order[n_test : n_test + n_val]),
        np.sort(order[:n_test]),
    )


def group_split(
    groups: pd.Series, val: float, test: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices such that every group (patient, user, site) falls in exactly one split.

    Groups are shuffled and assigned to test, then validation, then train until each split
    holds its share of rows, so fractions are of rows rather than of groups.
    """
    _check_fractions(val, test)
    if bool(groups.isna().any()):
        raise DataError(f"group column '{groups.name}' has missing values; every row needs one")
    codes, _ = pd.factorize(groups)
    n_groups = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=n_groups)
    order = np.random.default_rng(seed).permutation(n_groups)
    cumulative = np.cumsum(sizes[order])
    n = len(groups)
    assignment = np.empty(n_groups, dtype=np.int8)  # 0 train, 1 val, 2 test
    test_end = np.searchsorted(cumulative, n * test, side="left") + (1 if test > 0 else 0)
    val_end = np.searchsorted(cumulative, n * (test + val), side="left") + (1 if val > 0 else 0)
    assignment[order] = 0
    assignment[order[:test_end]] = 2
    assignment[order[test_end:val_end]] = 1
    split = assignment[codes]
    return tuple(np.flatnonzero(split == k) for k in (0, 1, 2))  # type: ignore[return-value]


SPLIT_NAMES = ("train", "val", "test")


def column_split(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of the rows whose ``values`` are ``train``, ``val`` and ``test`` (an
    official split shipped with the data)."""
    text = values.astype("string").str.strip().str.lower()
    bad = ~text.isin(SPLIT_NAMES).fillna(False).to_numpy(dtype=bool)
    if bool(bad.any()):
        row = values.index[int(np.argmax(bad))]
        raise DataError(
            f"split column '{values.name}', row {row}: {values.loc[row]!r} is not one of "
            f"{', '.join(SPLIT_NAMES)}"
        )
    arr = text.to_numpy(dtype=str)
    return tuple(np.flatnonzero(arr == name) for name in SPLIT_NAMES)  # type: ignore[return-value]
