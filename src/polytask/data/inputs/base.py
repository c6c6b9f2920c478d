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
from typing import Any, ClassVar

import pandas as pd
from pydantic import BaseModel
from torch import Tensor

from polytask.data.spec import InputSpec
from polytask.errors import DataError
from polytask.registry import Registry

FORMAT = "polytask.input/1"


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
            "params": self.params.model_dump(mode="json"),
            "state": self.state(),
        }


InputFactory = Callable[[BaseModel], InputProcessor]
INPUTS: Registry[InputFactory] = Registry("input")


def build_input(name: str, params: dict[str, Any], where: str = "data.input") -> InputProcessor:
    """An unfitted processor ``name`` with validated ``params``."""
    entry = INPUTS.get(name)
    return entry.factory(INPUTS.validate_params(name, params, where))


def input_from_dict(data: dict[str, Any]) -> InputProcessor:
    """A fitted processor from :meth:`InputProcessor.to_dict`'s output."""
    if data.get("format") != FORMAT:
        raise DataError(f"preprocessing: unsupported input format {data.get('format')!r}")
    processor = build_input(data["name"], data["params"])
    processor.load_state(data["state"])
    return processor
