"""Saving nested state (model, optimiser, balancer, RNG) without pickle.

Tensors go to a safetensors file; everything else (numbers, strings, lists, dicts, including
dicts keyed by integers, as optimiser states are) goes to a JSON skeleton that points at the
tensors by key. Loading therefore never executes code from the file.

Directories are written atomically: into a hidden sibling first, then renamed into place, so a
crash or a bad input never leaves a half-written model or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

_TENSOR = "__tensor__"
_ITEMS = "__items__"
_TUPLE = "__tuple__"


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


def save_state(directory: Path, state: dict[str, Any], name: str = "state") -> None:
    """Write ``state`` as ``{name}.safetensors`` + ``{name}.json`` into ``directory``."""
    tensors: dict[str, Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    # Internal state keeps inf/NaN exactly (Python's JSON extension): a resume must see them.
    (directory / f"{name}.json").write_text(json.dumps(skeleton) + "\n", encoding="utf-8")


def load_state(directory: Path, name: str = "state") -> dict[str, Any]:
    """Read what :func:`save_state` wrote."""
    tensors = load_file(str(directory / f"{name}.safetensors"))
    skeleton = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    state = _unflatten(skeleton, tensors)
    assert isinstance(state, dict)
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
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh staging directory that replaces ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        # mkdtemp makes the folder private (0700); a model dir should get the usual mode.
        staging.chmod(0o777 & ~_umask())
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
