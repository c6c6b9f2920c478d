"""Feature preprocessing fitted on the training split and stored as JSON.

Numeric columns: missing values filled (median, mean or zero) with an optional missing-indicator
column, then standardised. Categorical columns: categories kept by frequency, missing values as a
category of their own, unseen or rare values sent to a reserved "unknown" slot (or rejected, by
policy), then one-hot encoded into the numeric matrix or passed as indices to embeddings.

Everything runs column-wise with NumPy/pandas; the output is two tensors per table, so batching
later is plain tensor indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
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


#: Standardised feature values are clipped to this many standard deviations: a value far
#: outside the training range (1e308 at prediction time) would otherwise reach the network as
#: an infinite float32. No training value comes near it (|z| <= sqrt(n) on the training rows).
MAX_STANDARD_SCORE = 1e6


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
    rare = sorted(str(c) for c in counts.index if c not in set(kept))
    if opts.categorical_encoding == "auto":
        encoding: Literal["onehot", "embedding"] = (
            "onehot" if len(categories) <= opts.onehot_max_categories else "embedding"
        )
    else:
        encoding = opts.categorical_encoding
    # Rare values are only worth remembering when unseen values must be rejected.
    return CategoricalColumn(name, categories, encoding, rare if opts.unseen == "error" else [])


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

    @staticmethod
    def _fit_numeric(series: pd.Series, opts: PreprocessOptions, source: str) -> NumericColumn:
        x = as_float(series, source)
        # inf and -inf count as missing, like NaN: filled and flagged by the indicator.
        observed = x[np.isfinite(x)]
        if observed.size == 0:
            raise DataError(
                f"{source}: numeric column '{series.name}' has no finite value in train "
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
        return numeric_column(
            str(series.name),
            mean,
            std,
            fill,
            binary=binary,
            has_missing=observed.size < x.size,
            opts=opts,
        )

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
        return InputSpec(self.numeric_width, self.cardinalities)

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        """Encode ``df`` into ``{"numeric": float32[N, D], "categorical": int64[N, C]}``
        (``base_dir`` is unused: tables hold their features, not files)."""
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise DataError(
                f"{source}: feature column(s) {missing[:5]} not found; the model was trained "
                f"with {len(self.columns)} feature columns"
            )
        n = len(df)
        blocks: list[np.ndarray] = []
        for col in self.numeric:
            x = as_float(df[col.name], source)
            present = np.isfinite(x)
            with np.errstate(over="ignore"):
                z = (np.where(present, x, col.fill) - col.mean) / col.std
            blocks.append(np.clip(z, -MAX_STANDARD_SCORE, MAX_STANDARD_SCORE)[:, None])
            if col.indicator:
                blocks.append((~present).astype(np.float64)[:, None])
        indices: list[np.ndarray] = []
        for cat in self.categorical:
            codes = self._codes(df[cat.name], cat, source)
            if cat.encoding == "onehot":
                onehot = np.zeros((n, len(cat.categories)), dtype=np.float64)
                known = codes > 0
                onehot[np.flatnonzero(known), codes[known] - 1] = 1.0
                blocks.append(onehot)
            else:
                indices.append(codes)
        dense = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))
        index = np.stack(indices, axis=1) if indices else np.zeros((n, 0), dtype=np.int64)
        return {
            "numeric": torch.from_numpy(dense.astype(np.float32)),
            "categorical": torch.from_numpy(index.astype(np.int64)),
        }

    def _codes(self, series: pd.Series, cat: CategoricalColumn, source: str) -> np.ndarray:
        """1-based category indices; 0 for unknown (rare or unseen) values."""
        text = as_text(series)
        codes = pd.Index(cat.categories).get_indexer(text) + 1
        if self.options.unseen == "error":
            unseen = (codes == 0) & ~text.isin(cat.rare).to_numpy()
            if bool(unseen.any()):
                value = text[unseen].iloc[0]
                raise DataError(
                    f"{source}: column '{cat.name}' has category {value!r} not seen in "
                    "training (data.unseen = 'error'; use 'unknown' to map it to a shared slot)"
                )
        result: np.ndarray = codes.astype(np.int64)
        return result

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "polytask.preprocessing/1",
            "options": asdict(self.options),
            "numeric": [asdict(c) for c in self.numeric],
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
