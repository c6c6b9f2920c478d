"""The HTTP schema of one model, built from the model itself.

The request body of ``POST /predict`` is validated against types derived from the fitted
preprocessing: a numeric feature is ``float | null``, a categorical one ``str | null`` (also an
integer when every training category is an integer code), a text input ``str | null``. The same
types give the OpenAPI document and ``GET /metadata`` their input schema, so the three never
disagree. Records become a DataFrame with fixed dtypes (float64 for numbers, object otherwise)
and go through the Predictor's own preprocessing; nothing here re-implements it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field, TypeAdapter

# pydantic reads typing.TypedDict only from Python 3.12 on.
from typing_extensions import NotRequired, Required, TypedDict

from polytask.data.inputs import InputProcessor
from polytask.data.inputs.tokens import TokensInput
from polytask.data.preprocess import MISSING_TOKEN, TablePreprocessor
from polytask.errors import PolytaskError
from polytask.run.predictor import Predictor
from polytask.serve.batcher import Records
from polytask.tasks import Task

#: How many categories a field's description lists before it says "and N more".
_SHOWN_CATEGORIES = 8


@dataclass(frozen=True)
class Column:
    """One input column of the model as the HTTP API sees it."""

    name: str
    #: ``number``: parsed as float64; ``category`` / ``text``: kept as Python objects.
    kind: Literal["number", "category", "text"]
    annotation: Any
    description: str
    example: Any


def input_columns(predictor: Predictor) -> list[Column]:
    """The columns a request must hold, in the order the model reads them.

    Models that read files (images, recordings) are refused: a path in a request would be
    opened on the server, which an HTTP client must never be able to make it do."""
    pre = predictor.preprocessor
    if isinstance(pre, TablePreprocessor):
        columns = [
            Column(
                c.name,
                "number",
                float | None,
                f"number; null when missing (filled with {c.fill:g}, as in training)",
                round(c.mean, 6),
            )
            for c in pre.numeric
        ]
        for cat in pre.categorical:
            codes = bool(cat.categories) and all(
                _is_integer(v) for v in cat.categories if v != MISSING_TOKEN
            )
            # The missing token is what a null becomes, not a value to send.
            seen = [v for v in cat.categories if v != MISSING_TOKEN]
            shown = ", ".join(seen[:_SHOWN_CATEGORIES])
            more = len(seen) - _SHOWN_CATEGORIES
            listed = f"{shown}, and {more} more" if more > 0 else shown
            columns.append(
                Column(
                    cat.name,
                    "category",
                    # An integer code column (an industry recode) is as natural in JSON as a
                    # number; the preprocessing reads 45 and "45" as the same category.
                    str | int | None if codes else str | None,
                    f"category, one of the {len(seen)} seen in training ({listed}); "
                    "any other value is the unknown category; null when missing",
                    seen[0] if seen else None,
                )
            )
        return columns
    if isinstance(pre, InputProcessor):
        if pre.reads_files:
            raise PolytaskError(
                f"cannot serve this model over HTTP: its input '{pre.name}' reads files named "
                "in the request, which a server must not open for a client; serve table or "
                "text models, or export the network (polytask export)"
            )
        if isinstance(pre, TokensInput):  # a sentence: its words, or text split on spaces
            what = "a sentence: a list of words, or words separated by spaces"
            example = ["The", "cat", "sat", "."]
            return [Column(c, "text", list[str] | str | None, what, example) for c in pre.columns]
        return [
            Column(c, "text", str | None, f"{pre.name} input text", "text") for c in pre.columns
        ]
    raise PolytaskError(f"cannot serve a model with input processor {type(pre).__name__}")


def task_columns(predictor: Predictor) -> list[str]:
    """The task columns of a task-indexed model's templates (``[data] task_column``)."""
    return [g.column for g in predictor.groups if g.column is not None]


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


@dataclass
class ModelSchema:
    """Request validation and the JSON/OpenAPI descriptions of one loaded model."""

    predictor: Predictor
    columns: list[Column]
    request: TypeAdapter[Any]
    #: JSON Schema of the request body, with its record type in ``$defs``.
    request_schema: dict[str, Any]

    @property
    def tasks(self) -> list[Task]:
        return self.predictor.tasks

    def record_schema(self) -> dict[str, Any]:
        """JSON Schema of one record (the input schema shown by ``GET /metadata``)."""
        defs = self.request_schema.get("$defs", {})
        record: dict[str, Any] = defs["Record"]
        return record

    def frame(self, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
        """Validated records as the DataFrame the Predictor reads. Dtypes are fixed per column
        (not inferred from the values), so frames of different requests concatenate into one
        batch without changing any value's type.

        The number columns are one float64 matrix and the other columns one object matrix,
        each read row by row and made a frame at once: a frame built column by column cost
        a one-row request 4 ms on Census (39 columns) and 23 ms on Tox21 (2,064), more than
        the prediction."""
        numbers, others, number_index, other_index, in_order = self._layout
        parts: list[pd.DataFrame] = []
        if numbers:
            # float64 reads a null (None) as NaN.
            cells = [[r.get(name) for name in numbers] for r in records]
            matrix = np.array(cells, dtype=np.float64).reshape(len(records), len(numbers))
            parts.append(pd.DataFrame(matrix, columns=number_index, copy=False))
        if others:
            # object, not pandas' inferred string dtype: the preprocessing reads the values
            # exactly as it reads them from pd.DataFrame(records).
            objects = np.empty((len(records), len(others)), dtype=object)
            for i, r in enumerate(records):
                objects[i, :] = [r.get(name) for name in others]
            parts.append(pd.DataFrame(objects, columns=other_index, dtype=object, copy=False))
        # The id and a task-indexed model's task columns travel with the rows when sent: the
        # Predictor copies the ids and answers each row with its own task's output.
        for name in self._passed_columns:
            if name not in self._names and any(name in r for r in records):
                values = pd.Series([r.get(name) for r in records], dtype=object, name=name)
                parts.append(values.to_frame())
        frame: pd.DataFrame = parts[0] if len(parts) == 1 else pd.concat(parts, axis=1)
        if not in_order:
            order = [c.name for c in self.columns]
            frame = frame[[*order, *[c for c in frame.columns if c not in self._names]]]
        return frame

    def records(self, records: list[dict[str, Any]]) -> Records:
        """Validated records as :class:`Records`: the torch runtime predicts them without a
        DataFrame (:meth:`Predictor.predict_records`), others build one with :meth:`frame`."""
        extra = tuple(c for c in self._passed_columns if any(c in r for r in records))
        return Records(records, self.frame, extra)

    @cached_property
    def _names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)

    @cached_property
    def _passed_columns(self) -> list[str]:
        """Columns a record may hold beside the features: the id, and the task column of
        each task-indexed template."""
        id_column = self.predictor.id_column
        names = [] if id_column is None else [id_column]
        return names + [c for c in task_columns(self.predictor) if c not in names]

    @cached_property
    def _layout(self) -> tuple[list[str], list[str], pd.Index, pd.Index, bool]:
        """The number columns and the others (names and indexes, built once: reading a long
        index back cost a Tox21 request 1 ms), and whether the columns come in that order."""
        numbers = [c.name for c in self.columns if c.kind == "number"]
        others = [c.name for c in self.columns if c.kind != "number"]
        in_order = numbers + others == [c.name for c in self.columns]
        return numbers, others, pd.Index(numbers), pd.Index(others), in_order

    def metadata(self) -> dict[str, Any]:
        """What ``GET /metadata`` answers: tasks with their kinds, classes and units, the
        input schema, and how the model takes a preference."""
        return {
            "tasks": [task_metadata(t) for t in self.tasks],
            "input_schema": self.record_schema(),
            "id_column": self.predictor.id_column,
            "missing_value_markers": self.predictor.na_values,
            "preference_conditioned": self.predictor.preference_conditioned,
        }


def task_metadata(task: Task) -> dict[str, Any]:
    """One task's entry in ``GET /metadata``: the user's labels and units of its predictions."""
    entry: dict[str, Any] = {"name": task.name, "kind": task.kind, "targets": task.targets}
    if task.classes is not None:
        entry["classes"] = task.classes
    if task.kind == "regression":
        entry["unit"] = {
            "description": f"the unit of training column '{task.targets[0]}'",
            "training_mean": task.target_mean,
            "training_std": task.target_std,
        }
    return entry


def build_schema(predictor: Predictor) -> ModelSchema:
    """Request types of ``predictor``: a record type with one key per input column, and the
    body ``{"records": [...], "tasks": [...]?, "preference": [...]?}``."""
    columns = input_columns(predictor)
    fields: dict[str, Any] = {
        c.name: Required[
            Annotated[
                c.annotation,
                Field(title=c.name, description=c.description, examples=[c.example]),
            ]
        ]
        for c in columns
    }
    id_column = predictor.id_column
    if id_column is not None and id_column not in fields:
        fields[id_column] = NotRequired[
            Annotated[
                str | int | None,
                Field(
                    title=id_column,
                    description="row id, copied into the predictions (not a feature)",
                ),
            ]
        ]
    for group in predictor.groups:
        if group.column is None or group.column in fields:
            continue
        values = list(group.values or ())
        shown = ", ".join(values[:_SHOWN_CATEGORIES])
        more = (
            f", and {len(values) - _SHOWN_CATEGORIES} more"
            if len(values) > _SHOWN_CATEGORIES
            else ""
        )
        fields[group.column] = NotRequired[
            Annotated[
                str | int | None,
                Field(
                    title=group.column,
                    description=(
                        f"the row's task ({shown}{more}): when sent, the row gets its own "
                        f"task's output as '{group.name}' (not one output per task); a value "
                        "that is no task of the model gets empty cells"
                    ),
                    examples=values[:1],
                ),
            ]
        ]
    # Functional TypedDict syntax: column names need not be Python identifiers. Keys a record
    # holds beyond these (labels, other columns) are ignored, as Predictor.predict ignores them.
    record = TypedDict("Record", fields)  # type: ignore[misc]
    record.__pydantic_config__ = ConfigDict(extra="ignore")  # type: ignore[attr-defined]

    names = tuple(predictor.task_names)
    task_name = Literal.__getitem__(names)  # one of the model's task names
    body: dict[str, Any] = {
        "records": Required[
            Annotated[
                list[record],
                Field(min_length=1, description="the rows to predict, one object per row"),
            ]
        ],
        "tasks": NotRequired[
            Annotated[
                list[task_name] | None,  # type: ignore[valid-type]
                Field(min_length=1, description="predict only these tasks (default: every task)"),
            ]
        ],
    }
    if predictor.preference_conditioned:
        body["preference"] = NotRequired[
            Annotated[
                list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None,
                Field(
                    min_length=len(names),
                    max_length=len(names),
                    description=(
                        f"the trade-off to serve: one non-negative weight per task, in the order "
                        f"{', '.join(names)} (normalised to sum to 1; default: equal weights)"
                    ),
                ),
            ]
        ]
    request = TypedDict("PredictRequest", body)  # type: ignore[misc]
    # Unknown top-level keys are refused: a misspelt "task" or a preference sent to a model
    # that takes none must not be silently ignored.
    request.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    adapter: TypeAdapter[Any] = TypeAdapter(request)
    schema = adapter.json_schema(ref_template="#/components/schemas/{model}")
    return ModelSchema(predictor, columns, adapter, schema)
