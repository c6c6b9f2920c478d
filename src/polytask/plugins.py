"""Third-party components: every entry point of the group ``polytask.plugins``.

A plug-in is an installed distribution declaring, in its ``pyproject.toml``::

    [project.entry-points."polytask.plugins"]
    my_balancer = "my_package.balancer"          # a module: importing it registers
    my_kind = "my_package.kinds:register"        # or a callable, called with no arguments

Loading an entry point imports the module (or imports and calls the callable); the plug-in's own
code imports polytask's registries (``polytask.balance.base.BALANCERS``,
``polytask.models.encoders.ENCODERS``, ...) and calls ``.register`` on them, exactly as
polytask's built-in components do. This module only finds and loads the entry points: it is a
base-layer module and imports none of the registries.

:func:`load_plugins` runs at the first look-up in any registry (:func:`ensure_loaded`) and at the
first use of a name exported by ``polytask``, not at ``import polytask``: plug-ins import torch
and the registries, which ``polytask --help`` must not pay for. Later calls of
:func:`load_plugins` load only entry points not yet loaded. A plug-in that
fails to load raises a one-line :class:`~polytask.errors.PolytaskError` naming the entry point
and the original error (a name registered twice gives the registry's own message).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

from polytask._version import __version__
from polytask.errors import PolytaskError

#: The entry-point group polytask loads plug-ins from.
GROUP = "polytask.plugins"


@dataclass(frozen=True)
class Plugin:
    """One loaded entry point: its name, its target (``module`` or ``module:attr``) and the
    distribution that declared it."""

    name: str
    value: str
    distribution: str | None

    @property
    def package(self) -> str:
        """Top-level package of the entry point's module (what its components' modules start
        with)."""
        return self.value.split(":", 1)[0].strip().split(".", 1)[0]


#: Entry points loaded so far, keyed by ``(name, value)``: loading is idempotent.
_loaded: dict[tuple[str, str], Plugin] = {}
#: Whether :func:`ensure_loaded` has run (or is running: a plug-in's own import may look a
#: name up, which must not start a second, recursive load).
_started = False


def ensure_loaded() -> None:
    """Load the plug-ins once, on the first look-up in a registry; a flag test afterwards, so
    registries can call it on every look-up (scanning entry points costs milliseconds)."""
    global _started
    if _started:
        return
    _started = True
    load_plugins()


def entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of :data:`GROUP`, in name order (tests replace this)."""
    return sorted(importlib.metadata.entry_points(group=GROUP), key=lambda ep: (ep.name, ep.value))


def _distribution(ep: importlib.metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return str(name) if name else None


def _load(ep: importlib.metadata.EntryPoint) -> None:
    target = ep.load()
    if inspect.ismodule(target):
        return  # importing the module registered its components
    if not callable(target):
        raise TypeError(f"{ep.value} is neither a module nor a callable")
    target()


def load_plugins() -> list[Plugin]:
    """Load every entry point of :data:`GROUP` not loaded yet; return all loaded plug-ins.

    Raises:
        PolytaskError: an entry point failed to load (one line: its name, its target and the
            original error).
    """
    for ep in entry_points():
        key = (ep.name, ep.value)
        if key in _loaded:
            continue
        try:
            _load(ep)
        except Exception as exc:
            raise PolytaskError(
                f"plug-in {ep.name!r} (entry point {ep.value!r} of group {GROUP!r}) failed to "
                f"load: {type(exc).__name__}: {exc}"
            ) from None
        _loaded[key] = Plugin(ep.name, ep.value, _distribution(ep))
    return loaded_plugins()


def loaded_plugins() -> list[Plugin]:
    """The plug-ins loaded so far, in load order."""
    return list(_loaded.values())


def source_of(obj: object) -> str | None:
    """Where a registered factory comes from: the name of the plug-in whose package defines it
    (its distribution's name when known), or None for polytask's own and unknown components."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or module == "polytask" or module.startswith("polytask."):
        return None
    for plugin in _loaded.values():
        if module == plugin.package or module.startswith(plugin.package + "."):
            return plugin.distribution or plugin.name
    return None


def fingerprint(built_in: Path) -> str:
    """A digest of what ``polytask list`` prints when plug-ins are installed, computed without
    importing any of them: polytask's version and its catalogue file ``built_in`` (its own
    components), and for each entry point its name, target, distribution and version, and
    the size and modification time of every Python file of its top-level package (found
    with :func:`importlib.util.find_spec`, which reads the file system and runs nothing, so
    an editable install whose source changed gets a new digest). Equal digests mean the
    live registries would list the same components (:mod:`polytask.catalog` keeps their
    listing under it)."""
    digest = hashlib.sha256(f"polytask {__version__}\n".encode())
    digest.update(_stamp(built_in).encode())
    for ep in entry_points():
        dist = getattr(ep, "dist", None)
        version = getattr(dist, "version", None) if dist is not None else None
        digest.update(f"{ep.name}={ep.value} {_distribution(ep)} {version}\n".encode())
        package = Plugin(ep.name, ep.value, None).package
        for path in _package_files(package):
            digest.update(f"{path} {_stamp(path)}\n".encode())
    return digest.hexdigest()


def _package_files(package: str) -> list[Path]:
    """The Python files of top-level module ``package`` (its directory walked), without
    importing it; none when it cannot be found (loading it will then say why)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    roots = list(spec.submodule_search_locations or [])
    if not roots:
        return [Path(spec.origin)] if spec.origin and os.path.isfile(spec.origin) else []
    files: list[Path] = []
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [Path(folder, n) for n in sorted(names) if n.endswith(".py")]
    return files


def _stamp(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return "absent"
    return f"{stat.st_size} {stat.st_mtime_ns}"
