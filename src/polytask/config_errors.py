"""The base of every config schema, the bounded types they share, and one-line messages that
name the key.

pydantic's own report spans several lines and speaks of "locations"; a user editing a TOML file
wants ``config error: train.epochs: Input should be greater than 0 (got -3)``.

Every section and every registered component's parameters derive from :class:`Schema`: unknown
keys are errors, types are strict (``epochs = "5"``, ``epochs = true`` and ``seed = 1e3`` are
refused rather than coerced; an integer is still accepted where a float is wanted) and floats are
finite (``lr = inf`` or ``nan`` is refused). The sizes a config chooses (epochs, widths, batch
sizes, vocabularies) are bounded by the types below, so no config can request an absurd
allocation.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: Largest seed: numpy's and torch's generators take seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1
#: Largest number of epochs (and of epochs of patience).
MAX_EPOCHS = 100_000
#: Largest count of optimiser steps a config may name (checkpoint intervals, steps per epoch).
MAX_STEPS = 1_000_000_000
#: Largest batch (examples per step or per evaluation pass).
MAX_BATCH = 2**20
#: Largest width of one layer: hidden units, channels, embedding and model dimensions. A square
#: layer this wide holds 2**28 weights (1 GiB in float32).
MAX_WIDTH = 16_384
#: Largest number of layers, experts, blocks, heads or levels of a model.
MAX_LAYERS = 256
#: Largest vocabulary or number of hashed buckets of a text input.
MAX_VOCAB = 2**22
#: Largest number of rows a config asks to hold at once (streaming chunks and buffers).
MAX_ROWS = 2**26

#: A random seed.
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
#: A number of training epochs.
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
#: A number of optimiser steps.
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
#: A batch size.
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH)]
#: The width of one layer (units, channels, embedding dimension).
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
#: The widths of a stack of layers (at most :data:`MAX_LAYERS` of them).
Widths = Annotated[list[Width], Field(max_length=MAX_LAYERS)]
#: A number of layers, experts, blocks, heads or levels.
Layers = Annotated[int, Field(ge=1, le=MAX_LAYERS)]
#: A vocabulary size or bucket count.
VocabSize = Annotated[int, Field(ge=1, le=MAX_VOCAB)]
#: A number of rows held at once.
Rows = Annotated[int, Field(ge=1, le=MAX_ROWS)]
#: A finite float > 0.
PositiveFloat = Annotated[float, Field(gt=0.0)]
#: A finite float >= 0.
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class Schema(BaseModel):
    """Base of every config section and component parameter schema: unknown keys forbidden,
    strict types (no string, bool or float turned into an int), finite floats."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


#: Keys polytask sets itself; a config file may not set them, so they are never suggested.
_INTERNAL_KEYS = frozenset({"base_dir", "sections"})


def _valid_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys a (possibly nested) pydantic model accepts at ``loc`` (minus the bad key)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list of tables ([[data.sources]]): same model
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [k for k in current.model_fields if k not in _INTERNAL_KEYS]
    return []


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


#: How pydantic names the member of a union in an error's location (``float``,
#: ``list[constrained-float]``, ``function-after[...]``): not a key the user wrote.
_UNION_TAG = re.compile(
    r"^(int|float|str|bool|none|constrained-\w+"
    r"|(list|dict|tuple|set|nullable|constrained-\w+|function-\w+|lax-or-strict"
    r"|json-or-python|tagged-union)\[.*\])$"
)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and _UNION_TAG.match(part) is not None


def _deepest(errors: list[Any]) -> Any:
    """The error to report: the first, or, when the first is about one member of a union,
    the error of that union's member that got furthest into the value. For ``float |
    list[float]`` given ``[1, nan]`` pydantic reports both members; the list's "item 1 should
    be finite" says what is wrong, "should be a valid number" does not. Ties: the first."""
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    tag = next((i for i, p in enumerate(loc) if _is_union_tag(p)), None)
    if tag is None:
        return first
    same = [e for e in errors if tuple(e.get("loc", ()))[:tag] == loc[:tag]]
    return max(same, key=lambda e: len(e.get("loc", ())))


def validation_message(
    exc: Exception,
    where: str,
    model: type[BaseModel] | None = None,
    more_keys: tuple[str, ...] = (),
) -> str:
    """One line describing the first problem in ``exc``, prefixed by the config path ``where``.

    ``more_keys`` are valid top-level keys that are not fields of ``model`` (the sections
    registered by studies)."""
    if not isinstance(exc, ValidationError):
        return f"config error: {where}: {exc}"
    err = _deepest(exc.errors())
    loc = tuple(p for p in err.get("loc", ()) if not _is_union_tag(p))
    path = ".".join(str(p) for p in ((where,) if where else ()) + loc)
    if err.get("type") == "extra_forbidden":
        keys = _valid_keys(model, loc) + (list(more_keys) if len(loc) == 1 else [])
        hint = f"; valid keys: {', '.join(keys)}" if keys else ""
        return f"config error: {path}: unknown key{hint}"
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "missing":
        return f"config error: {path}: required key is missing"
    got = err.get("input")
    if isinstance(got, dict | list) or got is None:
        return f"config error: {path}: {msg}"
    return f"config error: {path}: {msg} (got {got!r})"
