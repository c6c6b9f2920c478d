"""The schema of a model directory, checked when it is read and before it is written.

A model directory may have been damaged or edited, so nothing in it is trusted: each JSON file
is read with a size cap (:mod:`polytask.safe_read`) and validated in pydantic's strict JSON
mode (types, finite numbers, no unknown key) with bounds on every size that decides an
allocation, *before* anything is built. The weights are then compared, by their safetensors
header alone, with the tensors a model built from those files would have (built on the
``meta`` device, which allocates nothing), so no file chooses an allocation beyond the bytes
it holds. Every problem is one line naming the file and the field.

Bounds (the config's own bounds are in :mod:`polytask.config_errors`; these agree with them):

* tasks: at most :data:`MAX_TASKS`; classes (or labels) per task at most :data:`MAX_CLASSES`;
* input spec: dense width at most :data:`MAX_INPUT_WIDTH`; at most :data:`MAX_COLUMNS`
  embedded columns of at most ``MAX_VOCAB + 1`` values; image ``[C, H, W]`` with C <= 4 and
  sides <= ``MAX_WIDTH``; text up to ``MAX_WIDTH`` tokens and ``2 * MAX_VOCAB + 2`` ids; audio
  up to ``MAX_SAMPLES`` samples at up to ``MAX_SAMPLE_RATE`` Hz;
* tables: at most :data:`MAX_COLUMNS` numeric and categorical columns, finite statistics and a
  positive standard deviation; at most ``MAX_VOCAB`` categories per column;
* ``na_values``: at most :data:`MAX_MARKERS` markers of at most :data:`MAX_NAME` characters.

The :class:`ModelFiles` read here are what :func:`polytask.run.predictor.load` assembles.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from torch import Tensor

from polytask.config_errors import MAX_VOCAB, MAX_WIDTH, validation_message
from polytask.data.inputs import InputProcessor, input_from_dict
from polytask.data.inputs.audio import MAX_SAMPLE_RATE, MAX_SAMPLES
from polytask.data.inputs.base import FORMAT as INPUT_FORMAT
from polytask.data.inputs.multi import MAX_INPUTS
from polytask.data.preprocess import (
    CategoricalColumn,
    NumericColumn,
    PreprocessOptions,
    TablePreprocessor,
)
from polytask.data.spec import InputKind, InputSpec
from polytask.errors import PolytaskError
from polytask.models.config import ModelConfig, check_model_config
from polytask.models.model import MultiTaskModel, build_model
from polytask.safe_read import load_tensors, read_bytes, tensor_shapes
from polytask.tasks import Task
from polytask.tasks.config import TaskConfig
from polytask.tasks.task import check_unique_names

MODEL_FORMAT = "polytask.model/1"
TABLE_FORMAT = "polytask.preprocessing/1"

#: Most tasks a model may have.
MAX_TASKS = 1024
#: Most classes of a task (or labels of a multilabel task): the width of its head.
MAX_CLASSES = 2**16
#: Most feature columns of a table, and most embedded (categorical) columns.
MAX_COLUMNS = 2**16
#: Widest dense input of a table (numbers, missing indicators and one-hot blocks).
MAX_INPUT_WIDTH = 2**20
#: Most quantile bins of a numeric column (data.numeric_bins).
MAX_BINS = 1024
#: Most missing-value markers, and the longest name (of a column or a marker).
MAX_MARKERS = 1024
MAX_NAME = 1024
#: Longest error message: a tampered file may hold a megabyte-long value.
_MAX_MESSAGE = 400

Name = Annotated[str, Field(max_length=MAX_NAME)]


class _Stored(BaseModel):
    """Base of the stored files' schemas: strict types, finite floats, no unknown key."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StoredInputSpec(_Stored):
    """``model.json``'s ``input_spec``: :class:`InputSpec` with every size bounded."""

    n_numeric: int = Field(ge=0, le=MAX_INPUT_WIDTH)
    cardinalities: list[Annotated[int, Field(ge=1, le=MAX_VOCAB + 1)]] = Field(
        max_length=MAX_COLUMNS
    )
    kind: InputKind
    shape: list[Annotated[int, Field(ge=1, le=MAX_SAMPLES)]] = Field(max_length=3)
    vocab_size: int = Field(ge=0, le=2 * MAX_VOCAB + 2)
    sample_rate: int = Field(ge=0, le=MAX_SAMPLE_RATE)
    char_vocab_size: int = Field(default=0, ge=0, le=MAX_VOCAB + 2)
    #: multi: each named input's spec (one level: a part is not multi itself).
    parts: dict[Name, StoredInputSpec] = Field(default_factory=dict, max_length=MAX_INPUTS)
    #: tables fitted with data.numeric_bins: the numeric columns' dense positions and bins.
    numeric_at: list[Annotated[int, Field(ge=0, lt=MAX_INPUT_WIDTH)]] = Field(
        default_factory=list, max_length=MAX_COLUMNS
    )
    numeric_bins: list[Annotated[list[float], Field(min_length=2, max_length=MAX_BINS + 1)]] = (
        Field(default_factory=list, max_length=MAX_COLUMNS)
    )

    @model_validator(mode="after")
    def _numeric_columns(self) -> StoredInputSpec:
        """Positions inside the dense block; one list of increasing edges per position."""
        if any(at >= self.n_numeric for at in self.numeric_at):
            raise ValueError(f"numeric_at: a position is not below n_numeric = {self.n_numeric}")
        if self.numeric_bins and len(self.numeric_bins) != len(self.numeric_at):
            raise ValueError("numeric_bins: one list of bin edges per numeric_at entry")
        for i, edges in enumerate(self.numeric_bins):
            if any(b <= a for a, b in pairwise(edges)):
                raise ValueError(f"numeric_bins.{i}: bin edges must increase")
        return self

    @model_validator(mode="after")
    def _shape_of_kind(self) -> StoredInputSpec:
        """The per-example shape each kind has, within the bounds of its settings."""
        if (self.kind == "multi") != bool(self.parts) or any(
            p.kind == "multi" for p in self.parts.values()
        ):
            raise ValueError("parts: a multi input has parts, each of another kind; others none")
        limits: dict[str, list[int]] = {
            "multi": [],
            "table": [],
            "image": [4, MAX_WIDTH, MAX_WIDTH],
            "audio": [MAX_SAMPLES],
            "text": [MAX_WIDTH],
            "tokens": [MAX_WIDTH],
            "subwords": [MAX_WIDTH],
            "graph": [],
        }
        limit = limits[self.kind]
        if len(self.shape) != len(limit) or any(
            d > m for d, m in zip(self.shape, limit, strict=True)
        ):
            raise ValueError(
                f"a {self.kind} input has a shape of {len(limit)} sizes of at most {limit}, "
                f"got {self.shape}"
            )
        return self

    def to_spec(self) -> InputSpec:
        own = self.model_dump(exclude={"parts"})
        return InputSpec(**own, parts={k: v.to_spec() for k, v in self.parts.items()})


class ModelFile(_Stored):
    """``model.json``."""

    format: Literal["polytask.model/1"]
    polytask_version: str = Field(max_length=64)
    model: ModelConfig
    input_spec: StoredInputSpec
    id_column: Name | None
    na_values: list[Name] = Field(max_length=MAX_MARKERS)


class StoredTask(TaskConfig):
    """One entry of ``tasks.json``: the declared fields of a task (:class:`TaskConfig`) and the
    fitted ones, with the sizes that decide a head's width bounded."""

    target_mean: float | None = None
    target_std: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _bounded(self) -> StoredTask:
        for field in ("classes", "target", "positive", "missing"):
            value = getattr(self, field)
            if isinstance(value, list) and len(value) > MAX_CLASSES:
                raise ValueError(f"{field}: more than {MAX_CLASSES} entries")
        return self


_TASKS = TypeAdapter(Annotated[list[StoredTask], Field(min_length=1, max_length=MAX_TASKS)])


class StoredTable(_Stored):
    """``preprocessing.json`` of a table: :class:`TablePreprocessor`'s fitted columns."""

    format: Literal["polytask.preprocessing/1"]
    options: PreprocessOptions
    numeric: list[NumericColumn] = Field(max_length=MAX_COLUMNS)
    categorical: list[CategoricalColumn] = Field(max_length=MAX_COLUMNS)

    @model_validator(mode="after")
    def _usable(self) -> StoredTable:
        for i, col in enumerate(self.numeric):
            if not col.std > 0:  # a division by it standardises the column
                raise ValueError(f"numeric.{i}.std: must be > 0 (got {col.std})")
        for i, cat in enumerate(self.categorical):
            if max(len(cat.categories), len(cat.rare)) > MAX_VOCAB:
                raise ValueError(f"categorical.{i}: more than {MAX_VOCAB} categories")
        return self

    def to_preprocessor(self) -> TablePreprocessor:
        return TablePreprocessor(self.numeric, self.categorical, self.options)


class _Format(BaseModel):
    """Any JSON object, for its ``format`` (which says the schema of the rest)."""

    model_config = ConfigDict(extra="allow")
    format: object = None


@dataclass
class ModelFiles:
    """The checked contents of a model directory's ``model.json``, ``tasks.json`` and
    ``preprocessing.json``."""

    meta: ModelFile
    tasks: list[Task]
    preprocessor: TablePreprocessor | InputProcessor

    @property
    def input_spec(self) -> InputSpec:
        return self.meta.input_spec.to_spec()


def _one_line(where: str, message: str) -> PolytaskError:
    """``message`` prefixed with ``where`` (the file), less the prefixes it was given for
    other contexts (a config file, a preprocessing state read alone), cut to a sane length."""
    for prefix in ("config error: ", "preprocessing: ", ": "):
        message = message.removeprefix(prefix)
    # pydantic's label of a validator's ValueError says nothing to a user.
    message = message.replace("Value error, ", "")
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    return PolytaskError(f"{where}: {message}")


def _validated(schema: Any, text: bytes | str, where: str) -> Any:
    """``text`` validated by ``schema`` (a model or a TypeAdapter) in strict JSON mode."""
    try:
        if isinstance(schema, TypeAdapter):
            return schema.validate_json(text)
        return schema.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            detail = str(first["msg"]).removeprefix("Invalid JSON: ")
            raise _one_line(where, f"not valid JSON: {detail}") from None
        model = schema if isinstance(schema, type) else None
        raise _one_line(where, validation_message(exc, "", model)) from None


def _checked(where: str, build: Any, *args: Any) -> Any:
    """``build(*args)``, its one-line errors (a task's cross-field rules, a registered
    component's parameters) prefixed with ``where``."""
    try:
        return build(*args)
    except PolytaskError as exc:
        raise _one_line(where, str(exc)) from None


def parse_model_json(text: bytes | str, where: str) -> ModelFile:
    """``model.json``, checked (``where`` prefixes the errors)."""
    meta: ModelFile = _validated(ModelFile, text, where)
    _checked(where, check_model_config, meta.model)
    return meta


def parse_tasks(text: bytes | str, where: str) -> list[Task]:
    """``tasks.json``, checked: every task valid, the names distinct."""
    stored: list[StoredTask] = _validated(_TASKS, text, where)
    tasks = [_checked(where, Task.from_dict, t.model_dump()) for t in stored]
    _checked(where, check_unique_names, tasks)
    return tasks


def parse_preprocessing(text: bytes | str, where: str) -> TablePreprocessor | InputProcessor:
    """``preprocessing.json``, checked: a table's fitted columns or an input processor."""
    probe: _Format = _validated(_Format, text, where)
    if probe.format == INPUT_FORMAT:
        processor: InputProcessor = _checked(where, input_from_dict, json.loads(text))
        return processor
    table: StoredTable = _validated(StoredTable, text, where)
    return table.to_preprocessor()


def parse_model_files(texts: Mapping[str, bytes | str], where: Mapping[str, str]) -> ModelFiles:
    """The three description files (by name: ``model.json``, ``tasks.json``,
    ``preprocessing.json``), checked alone and against each other."""
    meta = parse_model_json(texts["model.json"], where["model.json"])
    tasks = parse_tasks(texts["tasks.json"], where["tasks.json"])
    pre = parse_preprocessing(texts["preprocessing.json"], where["preprocessing.json"])
    files = ModelFiles(meta, tasks, pre)
    if pre.input_spec != files.input_spec:
        stored, described = asdict(files.input_spec), asdict(pre.input_spec)
        field = next(k for k in stored if stored[k] != described[k])
        raise PolytaskError(
            f"{where['preprocessing.json']}: describes inputs with {field} = "
            f"{described[field]!r}, but model.json's input_spec.{field} is {stored[field]!r}"
        )
    return files


def read_model_files(directory: Path) -> ModelFiles:
    """The checked description files of the model directory ``directory``."""
    names = ("model.json", "tasks.json", "preprocessing.json")
    texts: dict[str, bytes | str] = {n: read_bytes(directory / n) for n in names}
    return parse_model_files(texts, {n: f"'{directory / n}'" for n in names})


def describe_for_save(
    meta: dict[str, Any], tasks: list[dict[str, Any]], preprocessing: dict[str, Any]
) -> dict[str, str]:
    """The JSON texts of the three description files, checked as :func:`load` will check
    them (so nothing unloadable, nothing non-finite, is saved): name -> text."""
    data = {"model.json": meta, "tasks.json": tasks, "preprocessing.json": preprocessing}
    # allow_nan keeps a NaN visible to the check, which then names its field.
    texts = {name: json.dumps(value, allow_nan=True) for name, value in data.items()}
    parse_model_files(texts, {n: n for n in texts})
    return texts


def expected_shapes(tasks: list[Task], spec: InputSpec, cfg: ModelConfig) -> dict[str, list[int]]:
    """Name -> shape of every tensor of the model the files describe, built on the ``meta``
    device: nothing is allocated, whatever sizes the files name."""
    with torch.device("meta"):
        model = build_model(tasks, spec, cfg, seed=0)
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def load_weights(path: Path, files: ModelFiles) -> MultiTaskModel:
    """The model ``files`` describe with the weights of ``path``, checked by the file's header
    (names and shapes) before anything is read, then for dtype and finite values."""
    spec = files.input_spec
    expected = expected_shapes(files.tasks, spec, files.meta.model)
    found = tensor_shapes(path)
    where = f"'{path}'"
    missing = [k for k in expected if k not in found]
    if missing:
        raise PolytaskError(f"{where}: tensor {missing[0]!r} is missing ({len(missing)} missing)")
    extra = [k for k in found if k not in expected]
    if extra:
        raise PolytaskError(f"{where}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected)")
    for name, shape in expected.items():
        if found[name] != shape:
            raise PolytaskError(
                f"{where}: tensor {name!r} has shape {found[name]}, the model needs {shape}"
            )
    model = build_model(files.tasks, spec, files.meta.model, seed=0)
    own = model.state_dict()
    weights = load_tensors(path)
    for name, tensor in weights.items():
        if tensor.dtype != own[name].dtype:
            raise PolytaskError(
                f"{where}: tensor {name!r} is {tensor.dtype}, the model needs {own[name].dtype}"
            )
    bad = nonfinite_tensor(weights)
    if bad is not None:
        raise PolytaskError(f"{where}: tensor {bad!r} holds non-finite values (NaN or inf)")
    model.load_state_dict(weights, strict=True)
    return model


def nonfinite_tensor(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, if any."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
