"""Turn pydantic validation errors into one-line messages that name the key.

pydantic's own report spans several lines and speaks of "locations"; a user editing a TOML file
wants ``config error: train.epochs: Input should be greater than 0 (got -3)``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

#: Keys polytask sets itself; a config file may not set them, so they are never suggested.
_INTERNAL_KEYS = frozenset({"base_dir", "sections"})


def _valid_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys a (possibly nested) pydantic model accepts at ``loc`` (minus the bad key)."""
    current: Any = model
    for part in loc[:-1]:
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
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
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
