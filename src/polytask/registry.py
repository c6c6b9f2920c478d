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

from polytask.errors import ConfigError

T = TypeVar("T")


class NoParams(BaseModel):
    """Parameter schema of a component that takes no parameters."""

    model_config = ConfigDict(extra="forbid")


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

    def validate_params(self, name: str, params: dict[str, Any], where: str) -> BaseModel:
        """Validate ``params`` against the schema of component ``name``.

        ``where`` is the config path shown in error messages (e.g. ``model.encoder``).
        """
        from polytask.config_errors import validation_message  # local: avoids an import cycle

        entry = self.get(name)
        try:
            return entry.params.model_validate(params)
        except Exception as exc:  # pydantic.ValidationError
            raise ConfigError(validation_message(exc, where, entry.params)) from None
