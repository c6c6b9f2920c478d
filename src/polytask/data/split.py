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
    groups: pd.Series, val: float, test: float, seed: int, unit: str = "rows"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices such that every group (patient, user, site) falls in exactly one split.

    Groups are shuffled and assigned to test, then validation, then train until each split
    holds its share of rows, so fractions are of rows rather than of groups; with ``unit =
    "groups"`` the fractions are of groups: ``round(val * n_groups)`` groups for validation
    (4 of 42 subjects for val = 0.1), whatever their sizes.
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
    if unit == "groups":
        test_end = round(n_groups * test)
        val_end = test_end + round(n_groups * val)
    else:
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


# -- the record of a run's split (``splits.csv`` in the run directory) ---------------------
#: Columns of a split record: the row's position in the table as the run read it (after
#: ``data.where``), its split, and (with ``data.id``) its id as text.
RECORD_ROW, RECORD_SPLIT, RECORD_ID = "row", "split", "id"


def id_text(values: pd.Series) -> np.ndarray:
    """Ids as text, the same whichever reader typed them: ``7``, ``7.0`` and ``"7"`` are
    ``"7"``; a missing id is ``""``."""

    def text(value: object) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return ""
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        return str(value).strip()

    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    texts = np.array([text(u) for u in uniques] + [""], dtype=object)
    out: np.ndarray = texts[codes]  # code -1 (missing) picks the trailing ""
    return out


def split_record(
    splits: tuple[np.ndarray, np.ndarray, np.ndarray], ids: pd.Series | None
) -> pd.DataFrame:
    """Which rows went to train, validation and test: one line per row used, in split
    order. Rows are named by their id when ``ids`` (the ``data.id`` column) are given, unique
    and never missing; else by their position only."""
    rows = np.concatenate(splits).astype(np.int64)
    names = np.repeat(np.array(SPLIT_NAMES, dtype=object), [len(s) for s in splits])
    record: pd.DataFrame = pd.DataFrame({RECORD_ROW: rows, RECORD_SPLIT: names})
    if ids is not None:
        text = id_text(ids)
        if (text != "").all() and len(set(text.tolist())) == len(text):
            record[RECORD_ID] = text[rows]
    return record


def select_split(
    table: pd.DataFrame,
    record: pd.DataFrame,
    split: str,
    id_column: str | None,
    source: str,
) -> pd.DataFrame:
    """The rows of ``table`` that ``record`` puts in ``split``, in the run's order: found by
    id when the record holds ids (``id_column`` must then be in ``table``), else by position.
    A :class:`DataError` naming the table when a recorded row is not in it."""
    if split not in SPLIT_NAMES:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLIT_NAMES)}")
    chosen = record[record[RECORD_SPLIT] == split]
    if len(chosen) == 0:
        raise DataError(f"{source}: the run put no row in its {split!r} split")
    if RECORD_ID in record.columns and id_column is not None:
        if id_column not in table.columns:
            raise DataError(
                f"{source}: id column '{id_column}' not found; the run's split names rows by it"
            )
        text = id_text(table[id_column])
        position = pd.Index(text)
        if not position.is_unique:
            raise DataError(
                f"{source}: id column '{id_column}' repeats ids; cannot find the run's rows"
            )
        found = position.get_indexer(chosen[RECORD_ID].astype(str).to_numpy())
        if bool((found < 0).any()):
            lost = chosen[RECORD_ID].to_numpy()[found < 0]
            raise DataError(
                f"{source}: {len(lost)} of the {len(chosen)} {split} rows of the run are not in "
                f"the table (first: id {lost[0]!r} in column '{id_column}')"
            )
        rows = found
    else:
        rows = chosen[RECORD_ROW].to_numpy(dtype=np.int64)
        if len(rows) and int(rows.max()) >= len(table):
            raise DataError(
                f"{source}: the run's {split} split names row {int(rows.max())} but the table "
                f"has {len(table)} rows; is it the table the run was trained on?"
            )
    selected: pd.DataFrame = table.iloc[rows].reset_index(drop=True)
    return selected
