"""Reading files that may be damaged or hostile: model directories, checkpoints, run files.

Every reader here checks that the path is a regular file *before* opening it (opening a FIFO
blocks until a writer appears; ``/dev/zero`` never ends), opens it without blocking, reads at
most a size cap, and turns every failure into a one-line :class:`PolytaskError` that names the
file: ``'<path>' not found``, ``'<path>' is not a regular file (it is a FIFO)``, ``'<path>'
cannot be read: Permission denied``, ``'<path>' is larger than 64 MiB``, ``'<path>' is not
valid JSON: ...``, ``'<path>' is not a valid safetensors file: ...``. Nothing here unpickles.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor

from polytask.errors import PolytaskError

#: Largest JSON file a model or run directory may hold. A fitted vocabulary of a few hundred
#: thousand words is a few MiB; anything near this cap is not a file polytask wrote.
MAX_JSON_BYTES = 64 * 2**20

#: What ``os.stat`` says a non-regular path is, for the error message.
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _os_problem(path: Path, exc: OSError) -> PolytaskError:
    if isinstance(exc, FileNotFoundError):
        return PolytaskError(f"'{path}' not found")
    return PolytaskError(f"'{path}' cannot be read: {exc.strerror or type(exc).__name__}")


def regular_file(path: Path) -> os.stat_result:
    """``path``'s status if it is (a symlink to) a regular file; a one-line error otherwise."""
    try:
        status = os.stat(path)
    except OSError as exc:
        raise _os_problem(path, exc) from None
    if not stat.S_ISREG(status.st_mode):
        raise PolytaskError(f"'{path}' is not a regular file (it is {_kind(status.st_mode)})")
    return status


@contextmanager
def _opened(path: Path) -> Iterator[int]:
    """A read-only descriptor of the regular file ``path``.

    Checked before opening (a FIFO would block the open) and again on the descriptor (the
    path may have been swapped in between); O_NONBLOCK keeps even that swapped-in FIFO from
    blocking the open itself.
    """
    regular_file(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_problem(path, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise PolytaskError(f"'{path}' is not a regular file (it is {_kind(mode)})")
        yield fd
    finally:
        os.close(fd)


def read_bytes(path: Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of the regular file ``path``; an error if it holds more than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    with _opened(path) as fd:
        try:
            # Read to the end rather than trusting st_size: the file may grow meanwhile.
            while size <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise _os_problem(path, exc) from None
    if size > limit:
        raise PolytaskError(f"'{path}' is larger than {_size(limit)}; not a polytask file")
    return b"".join(chunks)


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n} bytes"


def read_json_file(path: Path, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value of the file ``path`` (at most ``limit`` bytes of UTF-8 text).

    Python's JSON extension (NaN, Infinity) is accepted: checkpoints keep non-finite values
    exactly. Schemas reject them where they do not belong.
    """
    return decode_json(path, read_bytes(path, limit))


def decode_json(path: Path, data: bytes) -> Any:
    """The JSON value of ``data``, read from ``path`` (named in the errors)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolytaskError(f"'{path}' is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolytaskError(
            f"'{path}' is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise PolytaskError(f"'{path}' is not valid JSON: nested too deeply") from None


@contextmanager
def _safetensors(path: Path) -> Iterator[Any]:
    """The safetensors file ``path`` opened lazily (header parsed, no tensor read yet)."""
    # Checks the type and the permissions first, with a one-line error for each.
    with _opened(path):
        pass
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except SafetensorError as exc:
        raise PolytaskError(f"'{path}' is not a valid safetensors file: {exc}") from None
    except OSError as exc:
        raise _os_problem(path, exc) from None


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in the safetensors file ``path``, from its header only:
    compare them with what is expected before reading (and allocating) anything."""
    with _safetensors(path) as handle:
        names: list[str] = handle.keys()  # a safe_open handle is not iterable
        return {name: list(handle.get_slice(name).get_shape()) for name in names}


def load_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of the safetensors file ``path``, on the CPU. The file's size bounds what
    is allocated: safetensors rejects a header pointing past the end of the file."""
    with _safetensors(path) as handle:
        names: list[str] = handle.keys()
        return {name: handle.get_tensor(name) for name in names}
