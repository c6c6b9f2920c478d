"""Saving nested state (model, optimiser, balancer, RNG) without pickle.

Tensors go to a safetensors file; everything else (numbers, strings, lists, dicts, including
dicts keyed by integers, as optimiser states are) goes to a JSON skeleton that points at the
tensors by key. Loading therefore never executes code from the file.

Directories are written atomically: into a hidden sibling first, then exchanged with the old
copy in one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames that
:func:`recover` completes after a crash), so a crash or a bad input never leaves a half-written
model or checkpoint behind, nor a moment without one. Staging siblings have one name pattern
(:func:`staging_name`), so leftovers of a killed process are recognised and removed on the next
start. ``POLYTASK_FAULT`` (:func:`fault_point`) is the test hook that kills the process inside a
save.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file  # through write_tensors only
from torch import Tensor

from polytask.errors import PolytaskError
from polytask.safe_read import load_tensors, read_json_file

_TENSOR = "__tensor__"
_ITEMS = "__items__"
_TUPLE = "__tuple__"
#: Size cap of a state's JSON skeleton: larger than a model file's, as a sampler's state may
#: list every row of a large table.
MAX_STATE_JSON_BYTES = 2**30


def _flatten(value: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, Tensor):
        key = path or "root"
        if key in tensors:  # paths can collide, e.g. keys 1 and "1", or "a/b" and "a" -> "b"
            key = f"{key}#{len(tensors)}"
        # safetensors refuses shared or strided storage; a contiguous copy is what we store.
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {_TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _flatten(v, f"{path}/{k}", tensors) for k, v in value.items()}
        return {_ITEMS: [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {path!r} without pickle")


def _unflatten(value: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if _ITEMS in value:
            return {k: _unflatten(v, tensors) for k, v in value[_ITEMS]}
        if _TUPLE in value:
            return tuple(_unflatten(v, tensors) for v in value[_TUPLE])
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


_OS_ERROR = re.compile(r"os error (\d+)")


def write_tensors(
    path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file``, with a failed write raised as the ``OSError`` it is.

    safetensors reports a full disk or a refused write as its own ``SafetensorError`` carrying
    the text "os error N" and no file name; callers (and the CLI's one-line report of refused
    paths) expect an ``OSError`` naming the file.
    """
    try:
        save_file(tensors, str(path), metadata=metadata)
    except OSError:
        raise
    except Exception as exc:
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise PolytaskError(f"cannot write '{path}': {exc}") from None
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def save_state(directory: Path, state: dict[str, Any], name: str = "state") -> None:
    """Write ``state`` as ``{name}.safetensors`` + ``{name}.json`` into ``directory``."""
    tensors: dict[str, Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    write_tensors(directory / f"{name}.safetensors", tensors)
    # Internal state keeps inf/NaN exactly (Python's JSON extension): a resume must see them.
    (directory / f"{name}.json").write_text(json.dumps(skeleton) + "\n", encoding="utf-8")


def load_state(directory: Path, name: str = "state") -> dict[str, Any]:
    """Read what :func:`save_state` wrote; a missing, truncated or garbled file is a one-line
    :class:`PolytaskError` naming it (see :mod:`polytask.safe_read`)."""
    skeleton_path = directory / f"{name}.json"
    tensors_path = directory / f"{name}.safetensors"
    tensors = load_tensors(tensors_path)
    skeleton = read_json_file(skeleton_path, MAX_STATE_JSON_BYTES)
    try:
        state = _unflatten(skeleton, tensors)
    except (KeyError, TypeError, ValueError, RecursionError):
        # A skeleton edited by hand: a tensor key absent from the weights, a malformed pair.
        raise PolytaskError(
            f"'{skeleton_path}' does not match '{tensors_path}': not a polytask state"
        ) from None
    if not isinstance(state, dict):
        raise PolytaskError(f"'{skeleton_path}' does not hold a JSON object")
    return state


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``, so strict JSON readers (jq, JS) accept it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def to_json(data: Any, indent: int | None = 2) -> str:
    """Standard JSON text for user-facing files (undefined metrics become ``null``)."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def write_json(path: Path, data: Any) -> None:
    path.write_text(to_json(data) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    """The JSON value of ``path``, read with the checks of
    :func:`polytask.safe_read.read_json_file` (a regular file, at most 64 MiB, one-line
    errors naming it)."""
    return read_json_file(path)


# -- atomic replacement --------------------------------------------------------------------
# Every hidden name polytask gives a staging copy: ``.<target name>.polytask-<kind>-<random>``.
# ``tmp``: a save being written, or (after an exchange) the copy it replaced; ``old``: the
# replaced copy where no exchange was possible (moved aside, then the new one moved in);
# ``new``: a whole run trained beside the run it will replace (``--overwrite``). Only names
# of this shape (and the older ``.<name>.<random>`` of earlier versions) are ever cleaned up.
_STAGING = re.compile(r"^\.(?P<name>.+)\.polytask-(?P<kind>tmp|old|new)-[A-Za-z0-9_]+$")
# mkdtemp's random part: 8 characters of [a-z0-9_]; ``old.`` marks the copy moved aside.
_LEGACY = re.compile(r"^\.(?P<name>.+?)\.(?P<old>old\.)?[a-z0-9_]{8}$")

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None  # the libc function, looked up on first use (False: unavailable)


def staging_name(name: str, kind: str) -> str:
    """The prefix of a staging sibling for ``name`` (``mkdtemp`` adds the random part)."""
    return f".{name}.polytask-{kind}-"


def parse_staging(name: str) -> tuple[str, str] | None:
    """``(target name, kind)`` of a polytask staging entry's ``name``, else None."""
    match = _STAGING.match(name)
    return (match["name"], match["kind"]) if match else None


def exchange(a: Path, b: Path) -> bool:
    """Swap the existing paths ``a`` and ``b`` in one step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False, touching nothing, where the system or file system cannot."""
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = getattr(libc, "renameat2", False)  # a wrapper since glibc 2.28
        if _renameat2:
            _renameat2.argtypes = [
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_uint,
            ]
            _renameat2.restype = ctypes.c_int
    if not _renameat2:
        return False
    code = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if code == 0:
        return True
    err = ctypes.get_errno()
    # Old kernels and some file systems (NFS, FUSE, overlayfs on old kernels) lack the flag.
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def put_in_place(staging: Path, target: Path, site: str) -> None:
    """Move the finished ``staging`` to ``target`` and remove what ``target`` held.

    ``target`` always names a complete copy, old or new: where the system can, the two are
    exchanged in one step; elsewhere the old copy is moved aside to a ``…polytask-old-…`` name
    first, and :func:`recover` moves it back if the process dies before the new one is in.
    ``site`` names the fault-injection points (:func:`fault_point`) ``<site>.staged`` and
    ``<site>.exchanged``.
    """
    fault_point(f"{site}.staged")
    if not os.path.lexists(target):
        os.rename(staging, target)
        fault_point(f"{site}.exchanged")
        return
    if exchange(staging, target):
        fault_point(f"{site}.exchanged")
        shutil.rmtree(staging, ignore_errors=True)  # the old copy; a leftover is swept later
        return
    old = Path(tempfile.mkdtemp(prefix=staging_name(target.name, "old"), dir=target.parent))
    os.replace(target, old)  # onto the empty folder mkdtemp made: an atomic rename
    fault_point(f"{site}.moved")
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)  # the old copy goes back: the caller still has its staging
        raise
    fault_point(f"{site}.exchanged")
    shutil.rmtree(old, ignore_errors=True)


def recover(target: Path) -> None:
    """Undo or finish interrupted replacements of ``target``: a copy moved aside is moved back
    if ``target`` is missing, and every other staging sibling of ``target`` is removed.

    Only for targets whose writer holds the run's lock (or is the only writer): a live save
    of ``target`` by another process would lose its staging folder.
    """
    parent = target.parent
    if not parent.is_dir():
        return
    for entry in sorted(parent.iterdir()):
        parsed = parse_staging(entry.name)
        legacy = _LEGACY.match(entry.name)
        if parsed is not None and parsed[0] == target.name and parsed[1] in ("tmp", "old"):
            moved_aside = parsed[1] == "old"
            source = entry
        elif parsed is None and legacy is not None and legacy["name"] == target.name:
            # Earlier versions moved the old copy to ``.<name>.old.<random>/x``.
            moved_aside = legacy["old"] is not None
            source = entry / "x"
        else:
            continue
        if moved_aside and not os.path.lexists(target) and os.path.lexists(source):
            os.rename(source, target)
        _remove(entry)


def clean_leftovers(directory: Path, names: Iterable[str]) -> None:
    """:func:`recover` every target named in ``names`` inside ``directory``."""
    for name in names:
        recover(directory / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def make_staging_dir(target: Path, kind: str = "tmp") -> Path:
    """A fresh, empty staging folder beside ``target`` (:func:`staging_name`), with the mode a
    plain ``mkdir`` would give it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_name(target.name, kind), dir=target.parent))
    # mkdtemp makes the folder private (0700); a model or run dir should get the usual mode.
    staging.chmod(0o777 & ~_umask())
    return staging


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh staging directory that replaces ``target`` only if the block succeeds
    (:func:`put_in_place`: no moment without a complete ``target``). Fault sites:
    ``<target name>.staged`` and ``<target name>.exchanged``."""
    staging = make_staging_dir(target)
    try:
        yield staging
        put_in_place(staging, target, target.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary sibling and a rename (fault sites ``<file name>.staged``
    before the rename and ``<file name>.replaced`` after it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=staging_name(path.name, "tmp"), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from others
        fault_point(f"{path.name}.staged")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fault_point(f"{path.name}.replaced")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- fault injection (a test hook) ---------------------------------------------------------
def _fault_plan(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    site, _, count = value.rpartition(":")
    if not site or not count.isdigit() or int(count) < 1:
        raise ValueError(f"POLYTASK_FAULT={value!r}: expected '<site>:<n>' with n >= 1")
    return site, int(count)


#: ``POLYTASK_FAULT="<site>:<n>"`` makes the process kill itself (SIGKILL, like ``kill -9``)
#: the n-th time it passes the named site: the kill-and-resume tests use it to die inside a
#: save. Read once at import; unset (always, outside tests), :func:`fault_point` only
#: compares one global with None.
_FAULT = _fault_plan(os.environ.get("POLYTASK_FAULT"))
_fault_passes = 0


def fault_point(site: str) -> None:
    """A named moment inside a save where the test hook ``POLYTASK_FAULT`` may kill us.

    Sites: ``<name>.staged`` (a directory or file fully staged, not yet in place),
    ``<name>.exchanged`` (the new copy in place, the old one not yet removed), ``<name>.moved``
    (no exchange available: the old copy moved aside, the new one not yet in), ``<name>.replaced``
    (a file in place), ``checkpoint.last`` (between the two parts of a checkpoint),
    ``run.staged`` / ``run.exchanged`` (``--overwrite``: the new run finished beside the old /
    in its place, the old one not yet removed); ``<name>`` is the file or folder name
    (``checkpoints``, ``model``, ``results.json``, ``metrics.jsonl``, ``config.json``).
    """
    global _fault_passes
    if _FAULT is None or site != _FAULT[0]:
        return
    _fault_passes += 1
    if _fault_passes == _FAULT[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def rng_state(generator: torch.Generator) -> dict[str, Tensor]:
    return {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (model weights can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
