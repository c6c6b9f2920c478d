"""Feature preprocessing fitted on the training split and stored as JSON.

Numeric columns: missing values filled (median, mean or zero) with an optional missing-indicator
column, then standardised. Categorical columns: categories kept by frequency, missing values as a
category of their own, unseen or rare values sent to a reserved "unknown" slot (or rejected, by
policy), then one-hot encoded into the numeric matrix or passed as indices to embeddings.

Everything runs column-wise with NumPy/pandas (or, for a table read from a file, straight from
its Arrow columns: :meth:`TablePreprocessor.fit_transform_arrow`, bit for bit the same); the
output is two tensors per table, so batching later is plain tensor indexing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from polytask.data.spec import InputSpec
from polytask.errors import DataError

MISSING_TOKEN = "__missing__"
Encoding = Literal["auto", "onehot", "embedding"]
UnseenPolicy = Literal["unknown", "error"]
NumericFill = Literal["median", "mean", "zero"]


@dataclass
class NumericColumn:
    """Fitted statistics of one numeric feature."""

    name: str
    mean: float
    std: float
    fill: float
    indicator: bool
    #: Quantile bin edges of the training values, in the column's own units (only when
    #: ``PreprocessOptions.numeric_bins`` > 0): the piecewise-linear numeric embeddings'
    #: bins (polytask.models.tabular), fitted here so that they come from the training rows
    #: and are saved with the rest of the fitted preprocessing.
    bins: list[float] = field(default_factory=list)


@dataclass
class CategoricalColumn:
    """Fitted vocabulary of one categorical feature (index 0 is reserved for unknown)."""

    name: str
    categories: list[str]
    encoding: Literal["onehot", "embedding"]
    rare: list[str] = field(default_factory=list)


@dataclass
class PreprocessOptions:
    """How features are encoded; see the ``[data]`` section of the config."""

    categorical_encoding: Encoding = "auto"
    onehot_max_categories: int = 10
    max_categories: int = 1000
    min_frequency: int = 1
    unseen: UnseenPolicy = "unknown"
    missing_numeric: NumericFill = "median"
    missing_indicator: bool = True
    #: False keeps 0/1 columns as they are: standardising a rare bit turns its 1 into a value
    #: of tens of standard deviations that dominates the first layer.
    scale_binary: bool = True
    #: Quantile bins fitted per numeric column (0: none): the piecewise-linear embeddings'
    #: bins, and the numeric columns' places in the dense block, for the encoders' numeric
    #: embeddings (``model.encoder.numeric_embedding``).
    numeric_bins: int = 0

    @classmethod
    def of(cls, settings: object) -> PreprocessOptions:
        """The options named like these fields on ``settings`` (the ``[data]`` section, a
        ``table`` input's parameters); a field ``settings`` lacks keeps its default."""
        names = [f.name for f in fields(cls) if hasattr(settings, f.name)]
        return cls(**{name: getattr(settings, name) for name in names})


def quantile_bins(observed: np.ndarray, n_bins: int, std: float) -> list[float]:
    """Bin edges at the ``n_bins + 1`` evenly spaced quantiles of ``observed`` (finite training
    values), repeated edges dropped (Gorishniy, Rubachev & Babenko, "On Embeddings for
    Numerical Features in Tabular Deep Learning", NeurIPS 2022, Section 3.2.1: a column with
    few distinct values gets fewer bins). A column with a single value gets the one bin
    ``[v, v + std]``, so that every column has at least two edges."""
    edges = np.unique(np.quantile(observed, np.linspace(0.0, 1.0, n_bins + 1)))
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0] + std])
    return [float(e) for e in edges]


def infer_types(
    df: pd.DataFrame,
    features: Sequence[str],
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Split ``features`` into numeric and categorical: numbers and booleans are numeric,
    everything else categorical, unless overridden by the ``numeric``/``categorical`` lists."""
    num, cat = [], []
    for col in features:
        if col in categorical:
            cat.append(col)
        elif (
            col in numeric
            or pd.api.types.is_numeric_dtype(df[col])
            or pd.api.types.is_bool_dtype(df[col])
        ):
            num.append(col)
        else:
            cat.append(col)
    return num, cat


def as_float(series: pd.Series, source: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64").to_numpy(na_value=np.nan)
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() & series.notna()
    if bool(bad.any()):
        text = series[bad].astype("string").str.strip()
        bad_text = text[text.fillna("") != ""]
        if len(bad_text):
            row = bad_text.index[0]
            raise DataError(
                f"{source}: column '{series.name}' should hold numbers but row {row} has "
                f"{series.loc[row]!r}"
            )
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def as_text(series: pd.Series) -> pd.Series:
    """Category labels as stripped strings, missing values as their own token."""
    text = series.astype("string").str.strip()
    text = text.mask(text == "", pd.NA)
    if pd.api.types.is_float_dtype(series):
        # 3.0 and 3 must be the same category when a code column was read as floats.
        as_float = series.to_numpy(dtype=np.float64, na_value=np.nan)
        integral = np.isfinite(as_float) & (as_float == np.round(as_float))
        ints = pd.Series(as_float, index=series.index).where(integral).astype("Int64")
        text = text.where(~integral, ints.astype("string"))
    return text.fillna(MISSING_TOKEN).astype(object)


def _distinct_text(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """:func:`as_text` of a column as its distinct labels (an object array ending with the
    missing token) and each row's index into them: the text is written once per distinct
    value. ``labels[codes]`` equals ``as_text(series)`` (missing cells get code -1, the
    last label)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    text = as_text(pd.Series(uniques, dtype=series.dtype)).to_numpy(dtype=object)
    labels: np.ndarray = np.append(text, np.array([MISSING_TOKEN], dtype=object))
    return labels, codes


#: The cells of one column as the fast path receives them: a list of Python values (a request's
#: JSON, typed by inference as ``pd.DataFrame(records)`` types it) or a typed NumPy array (a
#: frame's column, whose dtype is kept).
Cells = list[Any] | np.ndarray

#: Integers beyond this lose digits in a float64 column (pandas' type for whole numbers beside a
#: missing value), so their text is left to :func:`as_text`.
_EXACT_INT = 2**53


def _series(cells: Cells, name: str) -> pd.Series:
    """``cells`` as the column pandas would hold: a list typed by inference, an array as is."""
    return pd.Series(cells, name=name)


def _plain_number(value: Any) -> bool:
    """A cell that converts to float64 the same way in NumPy and in ``pd.to_numeric``."""
    return value is None or (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
    )


def cells_as_float(cells: Cells, name: str, source: str) -> np.ndarray:
    """:func:`as_float` of a few cells without building a Series when they are plain numbers
    or missing (the common case); any other cell (text, booleans among numbers) sends the
    column through :func:`as_float` itself, which stays the one definition."""
    if isinstance(cells, np.ndarray) and cells.dtype.kind in "fiub":
        return cells.astype(np.float64)
    if all(_plain_number(v) for v in cells):
        return np.array([np.nan if v is None else v for v in cells], dtype=np.float64)
    return as_float(_series(cells, name), source)


def cells_as_text(cells: Cells, name: str) -> list[str]:
    """:func:`as_text` of a few cells without pandas when each is text, missing or a whole
    number small enough that every column type pandas could infer writes it the same way;
    anything else (a float such as 2.5, whose text depends on the column's type) sends the
    column through :func:`as_text` itself, which stays the one definition."""
    if isinstance(cells, np.ndarray) and cells.dtype.kind in "iu":
        # An integer column has no missing value and writes each number as Python does.
        return [str(v) for v in cells.tolist()]
    if isinstance(cells, np.ndarray) and cells.dtype.kind == "f":
        # A float column of codes (an integer column with a gap): whole numbers are written as
        # integers (as_text's rule), NaN is missing; any other number goes to as_text.
        values = cells.astype(np.float64)
        known = ~np.isnan(values)
        if bool((np.abs(values[known]) <= _EXACT_INT).all()) and bool(
            (values[known] == np.round(values[known])).all()
        ):
            return [str(int(v)) if k else MISSING_TOKEN for v, k in zip(values, known, strict=True)]
    if isinstance(cells, np.ndarray) and cells.dtype.kind != "O":
        return list(as_text(_series(cells, name)))
    out: list[str] = []
    for v in cells:
        if isinstance(v, str):
            text = v.strip()
            out.append(text if text else MISSING_TOKEN)
        elif v is None or (isinstance(v, float) and v != v):
            out.append(MISSING_TOKEN)
        elif (
            isinstance(v, (int, np.integer))
            and not isinstance(v, (bool, np.bool_))
            and abs(int(v)) <= _EXACT_INT
        ):
            out.append(str(int(v)))
        else:
            return list(as_text(_series(cells, name)))
    return out


#: Standardised feature values are clipped to this many standard deviations: a value far
#: outside the training range (1e308 at prediction time) would otherwise reach the network as
#: an infinite float32. No training value comes near it (|z| <= sqrt(n) on the training rows).
MAX_STANDARD_SCORE = 1e6

#: Rows encoded at a time: a block of the float32 matrix stays in the CPU cache while its
#: columns are written.
_ENCODE_BLOCK = 8192


#: Blocks of :data:`_ENCODE_BLOCK` rows between two returns of freed Arrow memory to the
#: system (about 20 MB of a table of 40 numeric columns); each return costs a sweep of the
#: pool.
_RELEASE_EVERY = 8


class _ArrowRows:
    """One numeric Arrow column read in row order, block by block, as float64 (NaN missing,
    the values :func:`as_float` gives pandas' int64 or float64 column); each chunk is dropped
    once the blocks have passed it, so that its memory can be freed."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self._chunks: list[pa.Array | None] = list(column.chunks)
        self._starts = np.concatenate([[0], np.cumsum([len(c) for c in column.chunks])])
        self._first = 0  # chunks before this one are dropped

    @staticmethod
    def as_float(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """float64 values, NaN where missing (nulls; an int64 column with nulls converts as
        pandas converts it, exactly: every int64 read this way is within 2**53 or complete)."""
        if isinstance(values, pa.ChunkedArray):
            # Chunk by chunk: ChunkedArray.to_numpy with nulls was 4x slower.
            parts = [_ArrowRows.as_float(chunk) for chunk in values.chunks]
            return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)
        out: np.ndarray = values.to_numpy(zero_copy_only=False)
        return out.astype(np.float64, copy=False)

    def take(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (never before the last call's ``stop``)."""
        parts = []
        k = self._first
        while k < len(self._chunks) and self._starts[k] < stop:
            chunk = self._chunks[k]
            assert chunk is not None
            lo, hi = (
                max(start - self._starts[k], 0),
                min(stop, self._starts[k + 1]) - self._starts[k],
            )
            if hi > lo:
                parts.append(self.as_float(chunk.slice(lo, hi - lo)))
            if self._starts[k + 1] > stop:
                break
            self._chunks[k] = None
            self._first = k + 1
            k += 1
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def _arrow_text(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_distinct_text` of an Arrow column: its distinct labels (:func:`as_text` of
    each distinct value, ending with the missing token) and each row's index into them
    (the last label for a missing cell). Text columns stay in Arrow; a numeric column
    (declared categorical) is handed to pandas, whose text of a float is as_text's."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        distinct, codes = _distinct_text(column.to_pandas())
        return distinct, np.where(codes < 0, len(distinct) - 1, codes)
    uniques = pc.unique(column).drop_null()
    codes = pc.index_in(column, value_set=uniques).fill_null(len(uniques)).to_numpy()
    text = as_text(pd.Series(uniques.to_pandas())).to_numpy(dtype=object)
    labels: np.ndarray = np.append(text, np.array([MISSING_TOKEN], dtype=object))
    return labels, codes


def _label_counts(labels: np.ndarray, codes: np.ndarray) -> pd.Series:
    """``pd.Series(labels[codes]).value_counts(sort=True)``, the counts :meth:`fit_transform`
    fits a vocabulary from, with the rows' labels gathered by Arrow: pandas makes the same
    text Series (Arrow-backed) from the labels, only after checking each Python string, 2-3x
    slower."""
    text = pa.array(labels, type=pa.string()).take(pa.array(codes))
    counts: pd.Series = pd.Series(text.to_pandas()).value_counts(sort=True)
    return counts


def finite_mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of finite float64 ``values``, finite even when the values
    are near the float64 limit: numpy's own (so ordinary columns keep their exact bits) unless
    its sum or squares overflow, then computed on the values divided by their largest
    magnitude, where neither can, and scaled back (the mean and std are at most that
    magnitude, so scaling back cannot overflow either)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(values.mean()), float(values.std())
    if np.isfinite(mean) and np.isfinite(std):
        return mean, std
    scale = float(np.abs(values).max())
    scaled = values / scale
    return float(scaled.mean()) * scale, float(scaled.std()) * scale


def numeric_column(
    name: str,
    mean: float,
    std: float,
    fill: float,
    *,
    binary: bool,
    has_missing: bool,
    opts: PreprocessOptions,
) -> NumericColumn:
    """A fitted numeric column from its training statistics (mean and std of the filled
    values, the fill, whether every observed value is 0 or 1 and whether any was missing)."""
    if not opts.scale_binary and binary:
        mean, std = 0.0, 1.0
    if not all(np.isfinite((mean, std, fill))):
        # A last guard for statistics summed elsewhere (streaming): whatever is saved in
        # preprocessing.json must be finite, or the model cannot be loaded.
        raise DataError(
            f"column '{name}' holds values too large to standardise (mean {mean}, std {std})"
        )
    return NumericColumn(
        name=name,
        mean=mean,
        std=std if std > 0 else 1.0,
        fill=fill,
        indicator=opts.missing_indicator and has_missing,
    )


def categorical_column(name: str, counts: pd.Series, opts: PreprocessOptions) -> CategoricalColumn:
    """A fitted categorical column from its training value counts (most frequent first)."""
    kept = counts[counts >= opts.min_frequency].index[: opts.max_categories]
    categories = sorted(str(c) for c in kept)
    kept_set = set(kept)  # once: built per value, it made fitting quadratic in categories
    rare = sorted(str(c) for c in counts.index if c not in kept_set)
    if opts.categorical_encoding == "auto":
        encoding: Literal["onehot", "embedding"] = (
            "onehot" if len(categories) <= opts.onehot_max_categories else "embedding"
        )
    else:
        encoding = opts.categorical_encoding
    # Rare values are only worth remembering when unseen values must be rejected.
    return CategoricalColumn(name, categories, encoding, rare if opts.unseen == "error" else [])


@dataclass
class _Layout:
    """Where each fitted column lands in the dense matrix, as arrays, so that encoding is a
    few whole-matrix operations for any number of rows (derived from the fitted columns only)."""

    fills: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    #: Dense position of each numeric column's standardised value.
    value_at: np.ndarray
    #: Which numeric columns have a missing indicator, and its dense position.
    flagged: np.ndarray
    flag_at: np.ndarray
    #: (categorical column, dense offset of its one-hot block) and the embedded columns.
    onehot: list[tuple[int, int]]
    embedded: list[int]
    width: int

    @property
    def flag_of(self) -> dict[int, int]:
        """Numeric column -> dense position of its missing indicator."""
        return dict(zip(self.flagged.tolist(), self.flag_at.tolist(), strict=True))

    @classmethod
    def of(cls, numeric: list[NumericColumn], categorical: list[CategoricalColumn]) -> _Layout:
        value_at, flagged, flag_at = [], [], []
        at = 0
        for i, col in enumerate(numeric):
            value_at.append(at)
            at += 1
            if col.indicator:
                flagged.append(i)
                flag_at.append(at)
                at += 1
        onehot, embedded = [], []
        for j, cat in enumerate(categorical):
            if cat.encoding == "onehot":
                onehot.append((j, at))
                at += len(cat.categories)
            else:
                embedded.append(j)
        return cls(
            np.array([c.fill for c in numeric], dtype=np.float64),
            np.array([c.mean for c in numeric], dtype=np.float64),
            np.array([c.std for c in numeric], dtype=np.float64),
            np.array(value_at, dtype=np.int64),
            np.array(flagged, dtype=np.int64),
            np.array(flag_at, dtype=np.int64),
            onehot,
            embedded,
            at,
        )


class TablePreprocessor:
    """Fitted feature encoding of a table: ``fit`` on training rows, ``transform`` any table."""

    def __init__(
        self,
        numeric: list[NumericColumn],
        categorical: list[CategoricalColumn],
        options: PreprocessOptions,
    ) -> None:
        self.numeric = numeric
        self.categorical = categorical
        self.options = options

    # -- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        df: pd.DataFrame,
        numeric: Sequence[str],
        categorical: Sequence[str],
        options: PreprocessOptions,
        source: str,
    ) -> TablePreprocessor:
        """Fit statistics and vocabularies on ``df`` (the training rows only)."""
        num_cols = [cls._fit_numeric(df[c], options, source) for c in numeric]
        cat_cols = [cls._fit_categorical(df[c], options) for c in categorical]
        return cls(num_cols, cat_cols, options)

    @classmethod
    def fit_transform(
        cls,
        df: pd.DataFrame,
        numeric: Sequence[str],
        categorical: Sequence[str],
        options: PreprocessOptions,
        source: str,
        train_rows: np.ndarray,
        rows: np.ndarray,
    ) -> tuple[TablePreprocessor, dict[str, Tensor]]:
        """:meth:`fit` on the rows ``train_rows`` of ``df`` and :meth:`transform` of its rows
        ``rows`` (in that order), with the same results, without copying the table: each
        column is converted once for both, and a categorical column's labels are written
        for its distinct values only (``as_text`` per row was most of the time). Any error
        sends the table through :meth:`fit` and :meth:`transform`, so that messages name the
        same row as before."""
        try:
            numbers = [as_float(df[c], source) for c in numeric]
            texts = [_distinct_text(df[c]) for c in categorical]
        except DataError:
            fitted = cls.fit(df.iloc[train_rows], numeric, categorical, options, source)
            fitted.transform(df, source)
            raise
        num_cols = [
            cls._fit_numbers(str(c), x[train_rows], options, source)
            for c, x in zip(numeric, numbers, strict=True)
        ]
        cat_cols = [
            categorical_column(
                str(c), pd.Series(labels[codes[train_rows]]).value_counts(sort=True), options
            )
            for c, (labels, codes) in zip(categorical, texts, strict=True)
        ]
        pre = cls(num_cols, cat_cols, options)
        if options.unseen == "error":
            # The first unseen label must be the first in table order, as transform finds it.
            pre.transform(df, source)
        codes = [
            pre._codes(pd.Series(labels), j, source, check=False)[row_codes]
            for j, (labels, row_codes) in enumerate(texts)
        ]
        return pre, pre._encode(numbers, codes, len(rows), rows)

    @classmethod
    def fit_transform_arrow(
        cls,
        columns: dict[str, pa.ChunkedArray],
        numeric: Sequence[str],
        categorical: Sequence[str],
        options: PreprocessOptions,
        source: str,
        train_rows: np.ndarray,
        rows: np.ndarray,
    ) -> tuple[TablePreprocessor, dict[str, Tensor]]:
        """:meth:`fit_transform` of a table held as Arrow columns (``columns``, consumed: each
        is taken out of the mapping and freed as it is used), bit for bit, without a pandas
        frame of the table: the path of ``prepare_data`` for CSV and Parquet files.

        Numeric columns (Arrow int64, float64) are fitted one at a time from their training
        rows as float64, as :func:`as_float` gives them. A text column's labels are written
        for its distinct values (:func:`as_text`, the one definition) and each row keeps only
        its index into them; a numeric column declared categorical goes through pandas
        (:func:`_distinct_text`). Then the rows are encoded in table order, a block at a
        time, and each block's rows are written to their places in ``rows`` order (the
        splits, one after another): the numeric columns' Arrow chunks are freed as soon as
        they are encoded and handed back to the system, so that the peak memory is about the
        larger of the table and the output rather than their sum (benchmarks/run_prepare.py).
        """
        n = len(next(iter(columns.values()))) if columns else 0
        num_cols = []
        for name in numeric:
            values = _ArrowRows.as_float(columns[name])
            num_cols.append(cls._fit_numbers(str(name), values[train_rows], options, source))
            del values
        texts: list[tuple[np.ndarray, np.ndarray]] = []
        for name in categorical:
            column = columns.pop(name)
            texts.append(_arrow_text(column))
            del column
        cat_cols = [
            categorical_column(str(c), _label_counts(labels, codes[train_rows]), options)
            for c, (labels, codes) in zip(categorical, texts, strict=True)
        ]
        pre = cls(num_cols, cat_cols, options)
        lookups = []
        for j, (labels, codes_of_rows) in enumerate(texts):
            if options.unseen == "error":
                # The first unseen label in table order, named as transform names it.
                pre._codes(pd.Series(labels[codes_of_rows]), j, source)
            lookups.append(pre._codes(pd.Series(labels), j, source, check=False))
        row_codes = [codes for _, codes in texts]
        del texts
        numbers = [_ArrowRows(columns.pop(name)) for name in numeric]
        layout = pre._layout
        dense = np.zeros((len(rows), layout.width), dtype=np.float32)
        index = np.zeros((len(rows), len(layout.embedded)), dtype=np.int64)
        position = np.full(n, -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        pool = pa.default_memory_pool()
        for start in range(0, n, _ENCODE_BLOCK):
            stop = min(n, start + _ENCODE_BLOCK)
            at = position[start:stop]
            block = np.zeros((stop - start, layout.width), dtype=np.float32)
            block_index = np.empty((stop - start, len(layout.embedded)), dtype=np.int64)
            pre._encode_block(
                block,
                block_index,
                [column.take(start, stop) for column in numbers],
                [
                    lookup[codes[start:stop]]
                    for lookup, codes in zip(lookups, row_codes, strict=True)
                ],
            )
            kept = at >= 0
            if not kept.all():  # rows of no split (data.train_fraction)
                at, block, block_index = at[kept], block[kept], block_index[kept]
            # Whole rows scattered: each split's rows are in table order, so the writes move
            # forward through three regions of the output.
            dense[at] = block
            index[at] = block_index
            if (start // _ENCODE_BLOCK) % _RELEASE_EVERY == _RELEASE_EVERY - 1:
                # The Arrow pool keeps freed pages for reuse; nothing will reuse them here.
                pool.release_unused()
        return pre, {"numeric": torch.from_numpy(dense), "categorical": torch.from_numpy(index)}

    @staticmethod
    def _fit_numeric(series: pd.Series, opts: PreprocessOptions, source: str) -> NumericColumn:
        return TablePreprocessor._fit_numbers(
            str(series.name), as_float(series, source), opts, source
        )

    @staticmethod
    def _fit_numbers(
        name: str, x: np.ndarray, opts: PreprocessOptions, source: str
    ) -> NumericColumn:
        """A numeric column fitted on its training values ``x`` (float64, NaN missing)."""
        # inf and -inf count as missing, like NaN: filled and flagged by the indicator.
        observed = x[np.isfinite(x)]
        if observed.size == 0:
            raise DataError(
                f"{source}: numeric column '{name}' has no finite value in train "
                "(list it in data.ignore)"
            )
        fill = {
            "median": float(np.median(observed)),
            "mean": finite_mean_std(observed)[0],
            "zero": 0.0,
        }[opts.missing_numeric]
        filled = np.where(np.isfinite(x), x, fill)
        binary = bool(np.isin(observed, (0.0, 1.0)).all())
        mean, std = finite_mean_std(filled)
        column = numeric_column(
            name,
            mean,
            std,
            fill,
            binary=binary,
            has_missing=observed.size < x.size,
            opts=opts,
        )
        if opts.numeric_bins > 0:
            column.bins = quantile_bins(observed, opts.numeric_bins, column.std)
        return column

    @staticmethod
    def _fit_categorical(series: pd.Series, opts: PreprocessOptions) -> CategoricalColumn:
        return categorical_column(str(series.name), as_text(series).value_counts(sort=True), opts)

    # -- transforming --------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    @property
    def numeric_width(self) -> int:
        """Width of the dense input: numbers, missing indicators and one-hot blocks."""
        width = sum(2 if c.indicator else 1 for c in self.numeric)
        return width + sum(len(c.categories) for c in self.categorical if c.encoding == "onehot")

    @property
    def cardinalities(self) -> list[int]:
        """Vocabulary size (with the unknown slot) of each embedded column."""
        return [len(c.categories) + 1 for c in self.categorical if c.encoding == "embedding"]

    @property
    def input_spec(self) -> InputSpec:
        if self.options.numeric_bins == 0 or not self.numeric:
            return InputSpec(self.numeric_width, self.cardinalities)
        # The encoders read standardised values, so the bins are standardised the same way
        # (float64, as _encode_block computes the values). A column without bins (a
        # streamed table's) leaves the spec without any: periodic embeddings still work.
        binned = all(c.bins for c in self.numeric)
        return InputSpec(
            self.numeric_width,
            self.cardinalities,
            numeric_at=self._layout.value_at.tolist(),
            numeric_bins=[[(e - c.mean) / c.std for e in c.bins] for c in self.numeric]
            if binned
            else [],
        )

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        """Encode ``df`` into ``{"numeric": float32[N, D], "categorical": int64[N, C]}``
        (``base_dir`` is unused: tables hold their features, not files)."""
        self._require(set(df.columns), source)
        numbers = [as_float(df[col.name], source) for col in self.numeric]
        codes = [
            self._codes(as_text(df[cat.name]), j, source) for j, cat in enumerate(self.categorical)
        ]
        return self._encode(numbers, codes, len(df))

    def transform_cells(
        self, columns: Mapping[str, Cells], n: int, source: str
    ) -> dict[str, Tensor]:
        """:meth:`transform` of ``n`` rows given as cells per column (lists of Python values
        or NumPy arrays; missing-value markers already applied), without per-column pandas
        work: the fast path of ``Predictor`` for a few rows. Equal to :meth:`transform` of the
        same rows as a frame; it shares the fitted statistics, the category lookup and
        :meth:`_encode`, and hands any cell it does not convert itself to pandas."""
        self._require(set(columns), source)
        numbers = [cells_as_float(columns[col.name], col.name, source) for col in self.numeric]
        codes = [
            self._codes(cells_as_text(columns[cat.name], cat.name), j, source)
            for j, cat in enumerate(self.categorical)
        ]
        return self._encode(numbers, codes, n)

    def _require(self, present: set[str], source: str) -> None:
        missing = [c for c in self.columns if c not in present]
        if missing:
            raise DataError(
                f"{source}: feature column(s) {missing[:5]} not found; the model was trained "
                f"with {len(self.columns)} feature columns"
            )

    @cached_property
    def _layout(self) -> _Layout:
        return _Layout.of(self.numeric, self.categorical)

    @cached_property
    def _vocabularies(self) -> list[pd.Index]:
        """Each categorical column's categories as an index, hashed once, not per call."""
        return [pd.Index(cat.categories) for cat in self.categorical]

    @cached_property
    def _vocabulary_codes(self) -> list[dict[str, int]]:
        """The same lookup as a dict: a few labels are found faster there than in an index."""
        return [{c: i + 1 for i, c in enumerate(cat.categories)} for cat in self.categorical]

    def _encode(
        self,
        numbers: Sequence[np.ndarray],
        codes: Sequence[np.ndarray],
        n: int,
        rows: np.ndarray | None = None,
    ) -> dict[str, Tensor]:
        """The tensors from each numeric column as float64 and each categorical column's
        codes (of every row, or of ``rows`` only, in that order): fill, standardise, clip,
        flag the missing, one-hot or pass the codes on.

        The float32 matrix is filled one block of rows at a time, each block column by
        column: a float64 matrix of every column at once (and its float32 copy) was most of
        ``prepare_data``'s peak memory, and writing whole columns of a row-major matrix
        touched every cache line once per column. Each value is computed in float64 and
        rounded once, exactly as before."""
        layout = self._layout
        dense = np.zeros((n, layout.width), dtype=np.float32)
        index = np.zeros((n, len(layout.embedded)), dtype=np.int64)
        for start in range(0, n, _ENCODE_BLOCK):
            stop = min(n, start + _ENCODE_BLOCK)
            sel: slice | np.ndarray = slice(start, stop) if rows is None else rows[start:stop]
            self._encode_block(
                dense[start:stop],
                index[start:stop],
                [column[sel] for column in numbers],
                [column[sel] for column in codes],
            )
        return {"numeric": torch.from_numpy(dense), "categorical": torch.from_numpy(index)}

    def _encode_block(
        self,
        block: np.ndarray,
        index: np.ndarray,
        numbers: Sequence[np.ndarray],
        codes: Sequence[np.ndarray],
    ) -> None:
        """Write one block of rows into ``block`` (float32, zeros) and ``index`` (int64) from
        each numeric column's float64 values and each categorical column's codes there."""
        layout = self._layout
        flag_of = layout.flag_of
        for i, x in enumerate(numbers):
            present = np.isfinite(x)
            with np.errstate(over="ignore"):
                z = (np.where(present, x, layout.fills[i]) - layout.means[i]) / layout.stds[i]
            block[:, layout.value_at[i]] = np.clip(z, -MAX_STANDARD_SCORE, MAX_STANDARD_SCORE)
            flag = flag_of.get(i)
            if flag is not None:
                block[:, flag] = ~present
        for j, offset in layout.onehot:
            c = codes[j]
            known = c > 0
            block[np.flatnonzero(known), offset + c[known] - 1] = 1.0
        for k, j in enumerate(layout.embedded):
            index[:, k] = codes[j]

    def _codes(
        self, text: pd.Series | list[str], j: int, source: str, *, check: bool = True
    ) -> np.ndarray:
        """1-based indices into categorical column ``j``'s categories of labels written by
        :func:`as_text` (a Series) or :func:`cells_as_text` (a list); 0 for unknown (rare or
        unseen) values. Unseen values are rejected under ``data.unseen = 'error'`` unless
        ``check`` is False (distinct labels, among them the missing token of a column that
        has no missing cell, looked up after the rows were checked)."""
        cat = self.categorical[j]
        codes: np.ndarray
        if isinstance(text, list):
            lookup = self._vocabulary_codes[j]
            codes = np.array([lookup.get(t, 0) for t in text], dtype=np.int64)
        else:
            codes = (self._vocabularies[j].get_indexer(pd.Index(text)) + 1).astype(np.int64)
        if check and self.options.unseen == "error" and not bool(codes.all()):
            rare = set(cat.rare)
            labels = list(text)
            for i in np.flatnonzero(codes == 0):
                if labels[i] not in rare:
                    raise DataError(
                        f"{source}: column '{cat.name}' has category {labels[i]!r} not seen in "
                        "training (data.unseen = 'error'; use 'unknown' to map it to a shared "
                        "slot)"
                    )
        return codes

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "polytask.preprocessing/1",
            "options": {k: v for k, v in asdict(self.options).items() if k != "numeric_bins" or v},
            # bins only where fitted: files of tables without them stay as they were.
            "numeric": [
                {k: v for k, v in asdict(c).items() if k != "bins" or v} for c in self.numeric
            ],
            "categorical": [asdict(c) for c in self.categorical],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TablePreprocessor:
        if data.get("format") != "polytask.preprocessing/1":
            raise DataError(f"preprocessing: unsupported format {data.get('format')!r}")
        return cls(
            [NumericColumn(**c) for c in data["numeric"]],
            [CategoricalColumn(**c) for c in data["categorical"]],
            PreprocessOptions(**data["options"]),
        )
