"""The catalogue of polytask's built-in components: what ``polytask list`` and
``polytask list --params NAME`` print about them, read from ``catalog.json`` beside this file.

Why a committed file: the live answer comes from the registries (inputs, encoders,
architectures, balancers, task kinds, datasets) and the pydantic schemas of their parameters,
and importing those imports torch, pydantic and the metrics libraries: about 5 s of CPU for a
listing that never changes between two releases of the code. This module imports neither
(``json`` and :mod:`polytask.errors` only), so ``polytask list`` reads the catalogue in
milliseconds when no plug-in is installed. When one is, the command line lists from the live
registries instead (a plug-in's components exist only once its code has run), and keeps what
they said in a cache file (:func:`read_cached`, :func:`cached_document`) under the digest of the
installed plug-ins (:func:`polytask.plugins.fingerprint`): the next ``polytask list`` with
the same plug-ins, unchanged, reads it and imports none of them.

The file is generated, never edited: ``polytask list --write-catalog src/polytask/catalog.json``
(:data:`REGENERATE`) writes what the live registries and schemas say about polytask's own
components (plug-ins left out), and ``tests/test_catalog.py`` fails while the committed file
differs from a fresh generation, naming that command. The same test checks that ``list`` and
``list --params`` print the same text from the catalogue as from the live registries.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polytask.errors import ConfigError, PolytaskError

#: The catalogue shipped inside the package (``[tool.setuptools.package-data]``).
CATALOG_FILE = Path(__file__).with_name("catalog.json")

#: The command that regenerates :data:`CATALOG_FILE` (named in the file and by the stale test).
REGENERATE = "polytask list --write-catalog src/polytask/catalog.json"

#: What ``source`` (the ``from`` column of ``polytask list``) says of a built-in component.
BUILT_IN = "polytask"

#: The listing with plug-ins, kept between runs in :func:`cache_dir` (one file, rewritten when
#: the plug-ins change: nothing accumulates there).
CACHE_FILE = "catalog-plugins.json"
#: The format of :data:`CACHE_FILE`; another format (an older polytask) is rebuilt, not read.
CACHE_FORMAT = "polytask.catalog-cache/1"


@dataclass(frozen=True)
class Key:
    """One documented key: its path, type, default, valid values and description."""

    name: str
    type: str
    default: str
    valid: str
    description: str


@dataclass(frozen=True)
class Component:
    """A registered component found by name: which registry (``kind``: encoder, balancer,
    task kind, section, ...), its summary, its keys and where a config names it."""

    kind: str
    name: str
    summary: str
    keys: list[Key]
    where: str
    extra: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One line of ``polytask list``: the kind of component, its name, its summary and where
    it comes from (``polytask``, or the distribution of the plug-in that registered it)."""

    kind: str
    name: str
    summary: str
    source: str


@dataclass(frozen=True)
class Catalog:
    """What ``polytask list`` (:attr:`rows`, in listing order) and ``polytask list --params``
    (:attr:`components`, in the order :func:`find` returns them) print."""

    rows: list[Row]
    components: list[Component]

    def names(self) -> list[str]:
        """Every name ``--params`` knows (datasets are listed, not parametrised)."""
        return sorted({c.name for c in self.components})

    def find(self, name: str) -> list[Component]:
        """Every component called ``name`` (one name may be an encoder and a balancer).

        Raises:
            ConfigError: no component has that name (one line with the close matches).
        """
        found = [c for c in self.components if c.name == name]
        if not found:
            raise unknown_component(name, self.names())
        return found

    def to_json(self) -> dict[str, Any]:
        """The document written to :data:`CATALOG_FILE`: plain lists, so a diff of two
        generations reads line by line."""
        return {
            "about": "polytask's built-in components, generated from the registries and "
            f"schemas; do not edit. Regenerate: {REGENERATE}",
            "list": [[r.kind, r.name, r.summary] for r in self.rows],
            "params": [
                {
                    "kind": c.kind,
                    "name": c.name,
                    "summary": c.summary,
                    "where": c.where,
                    "keys": [[k.name, k.type, k.default, k.valid, k.description] for k in c.keys],
                    "extra": [list(pair) for pair in c.extra],
                }
                for c in self.components
            ],
        }

    def to_text(self) -> str:
        """:meth:`to_json` as the committed file: one list row, one component header and one
        key per line (a regenerated file's diff names what changed)."""

        def dump(value: Any) -> str:
            return json.dumps(value, ensure_ascii=False)

        document = self.to_json()
        lines = ["{", f' "about": {dump(document["about"])},', ' "list": [']
        lines += [f"  {dump(row)}," for row in document["list"]]
        lines[-1] = lines[-1].rstrip(",")
        lines += [" ],", ' "params": [']
        for component in document["params"]:
            head = {k: v for k, v in component.items() if k != "keys"}
            lines.append(f"  {dump(head)[:-1]}, " + '"keys": [')
            lines += [f"   {dump(key)}," for key in component["keys"]]
            if component["keys"]:
                lines[-1] = lines[-1].rstrip(",")
            lines.append("  ]},")
        lines[-1] = lines[-1].rstrip(",")
        lines += [" ]", "}", ""]
        return "\n".join(lines)

    @classmethod
    def from_json(cls, document: Any, source: str = str(CATALOG_FILE)) -> Catalog:
        """Read a document of :meth:`to_json` (rows of three fields, every component
        polytask's own) or of :func:`cached_document` (a fourth field: where the row comes from).

        Raises:
            PolytaskError: ``document`` is not one (one line naming ``source`` and the field).
        """
        where = "list"
        try:
            rows = [
                Row(str(row[0]), str(row[1]), str(row[2]), str(row[3]) if row[3:] else BUILT_IN)
                for row in document["list"]
                if 3 <= len(row) <= 4
            ]
            if len(rows) != len(document["list"]):
                raise ValueError("a row of the list has neither 3 nor 4 fields")
            where = "params"
            components = [
                Component(
                    str(c["kind"]),
                    str(c["name"]),
                    str(c["summary"]),
                    [Key(*map(str, key)) for key in c["keys"]],
                    str(c["where"]),
                    [(str(a), str(b)) for a, b in c["extra"]],
                )
                for c in document["params"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise PolytaskError(
                f"component catalogue '{source}': field {where!r} is not what polytask writes "
                f"({type(exc).__name__}: {exc}); regenerate it: {REGENERATE}"
            ) from None
        return cls(rows, components)


def cache_dir() -> Path:
    """Where polytask keeps what it can rebuild: ``$POLYTASK_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/polytask``, else ``~/.cache/polytask``."""
    own = os.environ.get("POLYTASK_CACHE_DIR")
    if own:
        return Path(own)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "polytask"


def read_cached(key: str) -> Catalog | None:
    """The listing :func:`cached_document` wrote under ``key``, or None: no file, another key (the
    plug-ins changed), another format, or a file that does not read (a cache is rebuilt,
    never an error)."""
    try:
        document = json.loads((cache_dir() / CACHE_FILE).read_text(encoding="utf-8"))
        if document.get("format") != CACHE_FORMAT or document.get("key") != key:
            return None
        return Catalog.from_json(document, str(cache_dir() / CACHE_FILE))
    except (OSError, ValueError, AttributeError, PolytaskError):
        return None


def cached_document(key: str, found: Catalog) -> str:
    """The text the command line writes (atomically) to ``cache_dir() / CACHE_FILE``:
    ``found``'s rows with their sources and its components, under ``key``."""
    document = found.to_json()
    document.pop("about")
    document["list"] = [[r.kind, r.name, r.summary, r.source] for r in found.rows]
    return json.dumps({"format": CACHE_FORMAT, "key": key, **document}, ensure_ascii=False)


def unknown_component(name: str, names: list[str]) -> ConfigError:
    """The one-line error of ``polytask list --params NAME`` for a name nothing has, with the
    close matches among ``names`` (shared by the catalogue and the live look-up)."""
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return ConfigError(f"unknown component {name!r}{hint} (polytask list shows them all)")


@functools.cache
def load() -> Catalog:
    """The catalogue shipped with this copy of polytask (read once per process).

    Raises:
        PolytaskError: the file is missing or unreadable (a broken install), in one line.
    """
    try:
        document = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PolytaskError(
            f"component catalogue '{CATALOG_FILE}' cannot be read ({type(exc).__name__}: "
            f"{exc}); reinstall polytask, or regenerate it: {REGENERATE}"
        ) from None
    return Catalog.from_json(document)


__all__ = [
    "BUILT_IN",
    "CACHE_FILE",
    "CATALOG_FILE",
    "REGENERATE",
    "Catalog",
    "Component",
    "Key",
    "Row",
    "cache_dir",
    "cached_document",
    "load",
    "read_cached",
    "unknown_component",
]
