"""Several named inputs per example: an image and patient columns, a text and a table.

``[data.inputs.<name>]`` declares each input by the name of its processor (``image``,
``audio``, ``text``, ``table``, ...) and that processor's parameters; :class:`MultiInput`
holds one fitted sub-processor per input and hands the encoder their tensors keyed
``"<input>.<tensor>"`` (``"scan.image"``, ``"patient.numeric"``), plus one presence mask per
input, ``"<input>.present"`` (bool ``[N]``).

**Missing inputs.** An input is missing from a row when every column it reads is empty
(None, NaN, a blank string): a row without an image path, a patient with no recorded value.
Its sub-processor never sees such a row: it is fitted on the training rows that have the input
and transforms only the rows that have it; the absent rows get zeros and ``present = False``,
which the fusion encoder (:mod:`polytask.models.fusion`) masks out. So an image processor
never tries to read a missing file, and a table's statistics come from the patients that
were measured.

Saved as one ``preprocessing.json``: each input's parameters and fitted state, and the dtype
and per-example shape of each of its tensors (the zeros of a batch where no row has the input).

Not supported (yet): augmentation (``flip``/``crop_padding`` of an image input),
``data.workers`` and ``[[data.sources]]``; every input is decoded once, before training.
Serving over HTTP is refused (an input may read files a request would name).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field, field_validator
from torch import Tensor

from polytask.config_errors import Schema
from polytask.data.inputs.base import (
    INPUTS,
    InputProcessor,
    StoredState,
    build_input,
    local_params,
    parse_state,
)
from polytask.data.spec import InputSpec
from polytask.errors import DataError
from polytask.registry import ComponentConfig

#: An input's name: it prefixes its tensors' keys, so it holds no dot.
INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: Most inputs one example may have.
MAX_INPUTS = 64
#: Key of an input's presence mask, after the input's name.
PRESENT = "present"
#: Largest per-example tensor a stored layout may describe (elements): an image of
#: 4 x 16384 x 16384, the largest an image input accepts.
_MAX_ELEMENTS = 4 * 16_384 * 16_384

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}
DType = Literal["float32", "float64", "float16", "bfloat16", "int64", "int32", "bool"]


def key(input_name: str, tensor: str) -> str:
    """The key of ``tensor`` of input ``input_name`` in the batch: ``"<input>.<tensor>"``."""
    return f"{input_name}.{tensor}"


class MultiParams(Schema):
    """Parameters of the multi-input processor: the inputs by name (``[data.inputs]``)."""

    inputs: dict[str, ComponentConfig] = Field(
        min_length=1,
        max_length=MAX_INPUTS,
        description="each input by name: its processor's name and parameters",
    )

    @field_validator("inputs")
    @classmethod
    def _names(cls, inputs: dict[str, ComponentConfig]) -> dict[str, ComponentConfig]:
        for name, section in inputs.items():
            if not INPUT_NAME.match(name):
                raise ValueError(
                    f"input name {name!r}: letters, digits and '_' only, not starting with a "
                    "digit (it prefixes the input's tensors)"
                )
            if section.name == "multi":
                raise ValueError(f"{name}.name: an input cannot itself hold several inputs")
        return inputs


class TensorLayout(StoredState):
    """The dtype and per-example shape of one tensor of an input."""

    dtype: DType
    shape: list[Annotated[int, Field(ge=0, le=_MAX_ELEMENTS)]] = Field(max_length=4)


class MultiState(StoredState):
    """What :class:`MultiInput` fits, as stored: each input's own state (checked by its own
    processor) and the layout of its tensors."""

    inputs: dict[str, dict[str, Any]] = Field(max_length=MAX_INPUTS)
    layout: dict[str, dict[str, TensorLayout]] = Field(max_length=MAX_INPUTS)


def _missing_cells(series: pd.Series) -> np.ndarray:
    """Which cells of ``series`` are empty: None, NaN, NA or a blank string (an array or a
    number is a value)."""
    missing: np.ndarray = np.array(series.isna(), dtype=bool)
    if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
        blank = np.fromiter(
            (isinstance(v, str) and not v.strip() for v in series), dtype=bool, count=len(series)
        )
        missing = missing | blank
    return missing


class MultiInput(InputProcessor):
    """Named sub-processors -> ``{"<input>.<tensor>": ..., "<input>.present": bool[N]}``."""

    name = "multi"
    #: Whether any input may read files is known per instance only; true for all, so that a
    #: server refuses a request naming paths it would open (serve/schema.py), whatever the
    #: inputs are. Worker decoding and data.sources are refused for now (data/config.py).
    reads_files = True

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, MultiParams)
        super().__init__(params)
        self.p = params
        self.parts: dict[str, InputProcessor] = {
            name: build_input(section.name, section.params(), f"data.inputs.{name}")
            for name, section in params.inputs.items()
        }
        #: Per input, the dtype and per-example shape of each of its tensors (fitted).
        self.layout: dict[str, dict[str, TensorLayout]] = {}

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for part in self.parts.values() for c in part.columns))

    def present(self, name: str, df: pd.DataFrame) -> np.ndarray:
        """Which rows of ``df`` have input ``name``: any of its columns is not empty."""
        part = self.parts[name]
        missing = np.ones(len(df), dtype=bool)
        for column in part.columns:
            missing &= _missing_cells(df[column])
        return ~missing

    def _require(self, df: pd.DataFrame, source: str) -> None:
        for name, part in self.parts.items():
            absent = [c for c in part.columns if c not in df.columns]
            if absent:
                raise DataError(
                    f"{source}: column '{absent[0]}' not found; data.inputs.{name} "
                    f"('{part.name}') reads {part.columns}"
                )

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        self._require(train, source)
        self.layout = {}
        for name, part in self.parts.items():
            rows = np.flatnonzero(self.present(name, train))
            if len(rows) == 0:
                raise DataError(
                    f"{source}: data.inputs.{name}: no training row has this input (columns "
                    f"{part.columns} are all empty)"
                )
            own = train.iloc[rows]
            part.fit(own, source, base_dir)
            # One row tells each tensor's dtype and per-example shape: the zeros of a batch
            # where no row has this input.
            sample = part.transform(own.iloc[:1], source, base_dir)
            self.layout[name] = {
                k: TensorLayout(dtype=_dtype_name(v.dtype), shape=list(v.shape[1:]))
                for k, v in sample.items()
            }

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        self._require(df, source)
        n = len(df)
        out: dict[str, Tensor] = {}
        for name, part in self.parts.items():
            present = self.present(name, df)
            rows = np.flatnonzero(present)
            # Only the rows holding the input reach its processor (a missing image path is
            # never read); the others are zeros, masked by the encoder.
            given = part.transform(df.iloc[rows], source, base_dir) if len(rows) else {}
            index = torch.from_numpy(rows)
            for tensor, layout in self.layout[name].items():
                value = given.get(tensor)
                shape = list(value.shape[1:]) if value is not None else layout.shape
                full = torch.zeros((n, *shape), dtype=_DTYPES[layout.dtype])
                if value is not None:
                    full[index] = value.to(full.dtype)
                out[key(name, tensor)] = full
            out[key(name, PRESENT)] = torch.from_numpy(present.copy())
        return out

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(kind="multi", parts={n: p.input_spec for n, p in self.parts.items()})

    def state(self) -> dict[str, Any]:
        return {
            "inputs": {n: p.state() for n, p in self.parts.items()},
            "layout": {
                n: {k: v.model_dump(mode="json") for k, v in tensors.items()}
                for n, tensors in self.layout.items()
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        stored = parse_state(MultiState, state)
        for what, names in (("inputs", stored.inputs), ("layout", stored.layout)):
            if set(names) != set(self.parts):
                raise DataError(
                    f"preprocessing: state.{what}: holds inputs {sorted(names)}, the parameters "
                    f"declare {sorted(self.parts)}"
                )
        for name, part in self.parts.items():
            # Rebuilt without its machine-local parameters (a cache folder): a model file
            # never chooses where anything is written (see local_params).
            local = local_params(part.params)
            params = {k: v for k, v in part.params.model_dump().items() if k not in local}
            rebuilt = build_input(part.name, params, f"params.inputs.{name}")
            rebuilt.load_state(stored.inputs[name])
            self.parts[name] = rebuilt
        self.layout = stored.layout

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        # Each input's parameters as its own processor saves them (machine-local ones left out).
        data["params"] = {
            "inputs": {
                name: {
                    "name": part.name,
                    **part.params.model_dump(mode="json", exclude=set(local_params(part.params))),
                }
                for name, part in self.parts.items()
            }
        }
        return data


def _dtype_name(dtype: torch.dtype) -> DType:
    for name, known in _DTYPES.items():
        if known == dtype:
            return name  # type: ignore[return-value]  # (a key of _DTYPES is a DType)
    raise DataError(f"data.inputs: an input produced tensors of unsupported dtype {dtype}")


@INPUTS.register(
    "multi",
    params=MultiParams,
    summary="several named inputs per example ([data.inputs.<name>]), with presence masks",
)
def build_multi(params: BaseModel) -> InputProcessor:
    return MultiInput(params)
