"""Shared test helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from polytask.data.datasets import DATASETS, data_available, resolve_data_root
from polytask.errors import DataError


def _absent(message: str) -> NoReturn:
    # Locally a missing dataset is a reason to skip; in CI the data is provisioned, so a skip
    # would silently hide that the real-data tests never ran.
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_data(name: str) -> Path:
    """Return the data root holding ``name``, or skip (fail under ``CI=true``) if it is absent.

    ``name`` is a key of ``DATASETS`` or a path relative to the data root.
    """
    try:
        root = resolve_data_root()
    except DataError as exc:
        _absent(f"data for {name!r} not found: {exc}")
    if not data_available(name, root):
        info = DATASETS.get(name)
        relpaths = [f.relpath for f in info.files] if info is not None else [name]
        missing = next((root / rel for rel in relpaths if not (root / rel).exists()), root / name)
        _absent(f"data for {name!r} not found at {missing}; set POLYTASK_DATA")
    return root


@pytest.fixture(name="require_data", scope="session")
def require_data_fixture() -> Callable[[str], Path]:
    """The :func:`require_data` helper as a fixture, usable from fixtures of any scope."""
    return require_data
