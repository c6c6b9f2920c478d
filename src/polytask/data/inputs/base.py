"""The input-processor interface: what turns a table's input column(s) into tensors.

Tables use :class:`polytask.data.preprocess.TablePreprocessor` (the default). Other inputs
(an image per row, a recording, a text) are declared in ``[data.input]`` by the name of a
processor registered in :data:`INPUTS`, with that processor's parameters. A processor is fitted
on the training rows (normalisation statistics, a vocabulary), turns any table into the
tensors its encoder reads, describes them in an :class:`InputSpec`, and round-trips through
JSON so a saved model predicts from the same raw inputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from polytask.config_errors import validation_message
from polytask.data.spec import InputSpec
from polytask.errors import DataError
from polytask.registry import Registry

FORMAT = "polytask.input/1"


class StoredState(BaseModel):
    """Base of the schemas of what processors fit (their :meth:`InputProcessor.state`): the
    state is read back from a model directory, which may have been edited, so its types are
    strict, unknown keys are refused and floats must be finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


StateT = TypeVar("StateT", bound=StoredState)


def parse_state(schema: type[StateT], state: object) -> StateT:
    """``state`` checked against ``schema``; a one-line :class:`DataError` naming the field."""
    try:
        return schema.model_validate(state)
    except ValidationError as exc:
        # validation_message words config errors; here the field sits in preprocessing.json.
        message = validation_message(exc, "state", schema).removeprefix("config error: ")
        raise DataError(f"preprocessing: {message}") from None


class StoredInput(BaseModel):
    """The shape of :meth:`InputProcessor.to_dict`'s output, checked before anything in it is
    used; the parameters and the state are then checked by their own schemas."""

    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["polytask.input/1"]
    name: str
    params: dict[str, Any]
    state: dict[str, Any]


class InputProcessor(ABC):
    """Base class of input processors; ``name`` is its registry key.

    Subclasses keep what they fit in JSON-ready attributes returned by :meth:`state` and
    restored by :meth:`load_state`.
    """

    name: ClassVar[str]
    #: Whether the columns may hold file paths (resolved against the table's folder): images
    #: and recordings do, texts do not (a review must never be turned into a path).
    reads_files: ClassVar[bool] = False

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """The table columns this processor reads."""

    @abstractmethod
    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        """Fit on the training rows (statistics, vocabulary)."""

    @abstractmethod
    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        """Every row of ``df`` as input tensors (first dimension ``len(df)``)."""

    @property
    @abstractmethod
    def input_spec(self) -> InputSpec:
        """What the encoder receives."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What ``fit`` learned, JSON-ready."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    @property
    def augments(self) -> bool:
        """Whether :meth:`augment` changes training batches (its parameters ask for it)."""
        return False

    def augment(self, inputs: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """A training batch's inputs randomly altered (flips, crops), drawing only from
        ``generator``; as they are by default. Never applied to evaluation or prediction."""
        return inputs

    def require_columns(self, df: pd.DataFrame, source: str) -> None:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise DataError(
                f"{source}: column '{missing[0]}' not found; data.input "
                f"'{self.name}' reads {self.columns}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "params": self.params.model_dump(mode="json", exclude=set(local_params(self.params))),
            "state": self.state(),
        }


def local_params(params: BaseModel | type[BaseModel]) -> frozenset[str]:
    """The parameters of a processor that belong to the machine, not to the model (a cache
    folder), as its parameter schema declares them in a ``local_params`` class variable. They
    are never saved in ``preprocessing.json``, and ignored there if a file holds them, so a
    model file cannot choose where anything is written."""
    declared: frozenset[str] = getattr(params, "local_params", frozenset())
    return declared


InputFactory = Callable[[BaseModel], InputProcessor]
INPUTS: Registry[InputFactory] = Registry("input")


def build_input(name: str, params: dict[str, Any], where: str = "data.input") -> InputProcessor:
    """An unfitted processor ``name`` with validated ``params``."""
    entry = INPUTS.get(name)
    return entry.factory(INPUTS.validate_params(name, params, where))


def input_from_dict(data: object) -> InputProcessor:
    """A fitted processor from :meth:`InputProcessor.to_dict`'s output (as read from a model
    directory: every part checked, machine-local parameters dropped)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise DataError(f"preprocessing: unsupported input format {found!r}")
    try:
        stored = StoredInput.model_validate(data)
    except ValidationError as exc:
        message = validation_message(exc, "", StoredInput).removeprefix("config error: ")
        raise DataError(f"preprocessing: {message}") from None
    local = local_params(INPUTS.get(stored.name).params)
    params = {k: v for k, v in stored.params.items() if k not in local}
    processor = build_input(stored.name, params, "params")
    processor.load_state(stored.state)
    return processor
