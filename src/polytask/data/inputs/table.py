"""Table columns as an input processor: :class:`TablePreprocessor` behind the
:class:`InputProcessor` interface, so that a few columns of a table can be one named input
among several (``[data.inputs.patient] name = "table"``, :mod:`polytask.data.inputs.multi`).

Nothing is re-implemented here: numbers are imputed and standardised, categories one-hot
encoded or embedded, exactly as the table of a plain run (:mod:`polytask.data.preprocess`);
the encoding options are this input's own parameters, with the ``[data]`` section's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, Field, model_validator
from torch import Tensor

from polytask.config_errors import MAX_VOCAB, Schema, VocabSize
from polytask.data.inputs.base import INPUTS, InputProcessor, StoredState, parse_state
from polytask.data.preprocess import (
    CategoricalColumn,
    NumericColumn,
    PreprocessOptions,
    TablePreprocessor,
    infer_types,
)
from polytask.data.spec import InputSpec
from polytask.errors import DataError

#: Most columns one table input may read (as a stored table's bound in run/model_schema.py).
MAX_COLUMNS = 2**16


class TableParams(Schema):
    """Parameters of the table input: its columns and how they are encoded (the keys of the
    ``[data]`` section of the same names, with the same defaults)."""

    columns: list[str] = Field(
        min_length=1, max_length=MAX_COLUMNS, description="the feature columns of this input"
    )
    numeric: list[str] = Field(
        default_factory=list,
        description="columns to treat as numbers even if they look categorical",
    )
    categorical: list[str] = Field(
        default_factory=list,
        description="columns to treat as categories even if they hold numbers",
    )
    categorical_encoding: Literal["auto", "onehot", "embedding"] = Field(
        default="auto", description="as data.categorical_encoding"
    )
    onehot_max_categories: int = Field(
        default=10, ge=1, le=MAX_VOCAB, description="as data.onehot_max_categories"
    )
    max_categories: VocabSize = Field(default=1000, description="as data.max_categories")
    min_frequency: int = Field(default=1, ge=1, description="as data.min_frequency")
    unseen: Literal["unknown", "error"] = Field(default="unknown", description="as data.unseen")
    missing_numeric: Literal["median", "mean", "zero"] = Field(
        default="median", description="as data.missing_numeric"
    )
    missing_indicator: bool = Field(default=True, description="as data.missing_indicator")
    scale_binary: bool = Field(default=True, description="as data.scale_binary")

    @model_validator(mode="after")
    def _declared_columns(self) -> TableParams:
        for key in ("numeric", "categorical"):
            extra = [c for c in getattr(self, key) if c not in self.columns]
            if extra:
                raise ValueError(f"{key}: '{extra[0]}' is not one of columns {self.columns}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("columns: a column is listed twice")
        return self

    def options(self) -> PreprocessOptions:
        return PreprocessOptions.of(self)


class _StoredNumeric(StoredState):
    """One :class:`NumericColumn` as stored."""

    name: str
    mean: float
    std: float
    fill: float
    indicator: bool


class _StoredCategorical(StoredState):
    """One :class:`CategoricalColumn` as stored."""

    name: str
    categories: list[str]
    encoding: Literal["onehot", "embedding"]
    rare: list[str] = Field(default_factory=list)


class TableState(StoredState):
    """What :class:`TableInput` fits, as stored: the :class:`TablePreprocessor`'s columns,
    each standard deviation positive (it divides), each vocabulary bounded."""

    numeric: list[_StoredNumeric] = Field(max_length=MAX_COLUMNS)
    categorical: list[_StoredCategorical] = Field(max_length=MAX_COLUMNS)

    @model_validator(mode="after")
    def _usable(self) -> TableState:
        for i, col in enumerate(self.numeric):
            if not col.std > 0:
                raise ValueError(f"numeric.{i}.std: must be > 0 (got {col.std})")
        for i, cat in enumerate(self.categorical):
            if max(len(cat.categories), len(cat.rare)) > MAX_VOCAB:
                raise ValueError(f"categorical.{i}: more than {MAX_VOCAB} categories")
        return self


class TableInput(InputProcessor):
    """Table columns -> ``{"numeric": float32[N, D], "categorical": int64[N, C]}``, as the
    ``mlp`` encoder reads them."""

    name = "table"

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, TableParams)
        super().__init__(params)
        self.p = params
        self.table: TablePreprocessor | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.p.columns)

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        self.require_columns(train, source)
        p = self.p
        numeric, categorical = infer_types(train, p.columns, p.numeric, p.categorical)
        self.table = TablePreprocessor.fit(train, numeric, categorical, self.p.options(), source)

    def _fitted(self) -> TablePreprocessor:
        if self.table is None:
            raise DataError("data.input 'table': transform before fit")
        return self.table

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        return self._fitted().transform(df, source)

    @property
    def input_spec(self) -> InputSpec:
        return self._fitted().input_spec

    def state(self) -> dict[str, Any]:
        data = self._fitted().to_dict()
        return {"numeric": data["numeric"], "categorical": data["categorical"]}

    def load_state(self, state: dict[str, Any]) -> None:
        stored = parse_state(TableState, state)
        # The options are the parameters', so they are stored once (in params).
        numeric = [NumericColumn(**c.model_dump()) for c in stored.numeric]
        categorical = [CategoricalColumn(**c.model_dump()) for c in stored.categorical]
        self.table = TablePreprocessor(numeric, categorical, self.p.options())


@INPUTS.register("table", params=TableParams, summary="table columns as one named input")
def build_table(params: BaseModel) -> InputProcessor:
    return TableInput(params)
