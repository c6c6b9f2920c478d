"""Explicit registries of pluggable components.

The trainer and the model builder never branch on a component's name: they look the name up here
and call what they find. Each registry is a plain dict kept in one place, listed by
``polytask list``; an unknown name fails with the valid choices in the message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from polytask.config_errors import Schema, validation_message
from polytask.errors import ConfigError

T = TypeVar("T")


class NoParams(Schema):
    """Parameter schema of a component that takes no parameters."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its factory, its parameter schema and a one-line summary."""

    name: str
    factory: T
    params: type[BaseModel]
    summary: str


class Registry(Generic[T]):
    """A named, explicit mapping from component names to factories."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, params: type[BaseModel] = NoParams, summary: str = ""
    ) -> Callable[[T], T]:
        """Decorator registering ``factory`` under ``name``."""

        def add(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, factory, params, summary)
            return factory

        return add

    def get(self, name: str) -> Entry[T]:
        """The entry called ``name``; a :class:`ConfigError` naming the choices otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check_section(self, section: ComponentConfig, where: str) -> BaseModel:
        """Validate a config section naming one of this registry's components: an unknown
        name fails naming ``<where>.name`` and the choices, a bad parameter ``<where>.<key>``."""
        if section.name not in self:
            raise ConfigError(
                f"config error: {where}.name: unknown {self.kind} {section.name!r}; "
                f"valid choices: {', '.join(self.names())}"
            )
        return self.validate_params(section.name, section.params(), where)

    def validate_params(self, name: str, params: dict[str, Any], where: str) -> BaseModel:
        """Validate ``params`` against the schema of component ``name``.

        ``where`` is the config path shown in error messages (e.g. ``model.encoder``).
        """
        entry = self.get(name)
        try:
            # strict=True holds a plug-in's schema that does not derive from Schema to the
            # same rule as ours: no "4" -> 4, true -> 1, 1.5 -> 1.
            return entry.params.model_validate(params, strict=True)
        except Exception as exc:  # pydantic.ValidationError
            raise ConfigError(validation_message(exc, where, entry.params)) from None


class ComponentConfig(Schema):
    """A config section naming a registered component, plus that component's own parameters
    (checked against the component's schema by :meth:`Registry.check_section`)."""

    # The component's own keys are kept here and checked (strictly: its schema is a Schema)
    # by :meth:`Registry.check_section`, which knows which component they belong to.
    model_config = ConfigDict(extra="allow")
    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def with_default_name(value: Any, default: str) -> Any:
    """A component section without ``name`` (e.g. from ``--set model.encoder.widths=[8]``)
    configures the default component."""
    if isinstance(value, dict) and "name" not in value:
        return {"name": default, **value}
    return value
