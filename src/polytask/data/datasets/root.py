"""Where the real datasets live on disk.

The datasets are public but large and must never be fetched implicitly (tests and builds run
offline), so every loader reads from one *data root* folder. The layout under the root mirrors
the shared data folder described in ``../shared/data/README.md``: one sub-folder per dataset,
e.g. ``census-income/census-income.test.gz``.

The root is resolved in this order:

1. an explicit ``root`` argument;
2. the ``POLYTASK_DATA`` environment variable;
3. ``../shared/data`` relative to the current working directory;
4. ``../shared/data`` relative to the repository that holds this source file (an editable
   install in ``<repo>/src/polytask``), so that tests find the data from any working directory.

An explicit argument or environment variable that names a missing folder is an error rather
than a reason to fall through: silently reading some other folder would hide a typo.
"""

from __future__ import annotations

import os
from pathlib import Path

from polytask.errors import DataError

ENV_VAR = "POLYTASK_DATA"

# src/polytask/data/datasets/root.py -> parents[4] is the repository root of a source checkout.
_REPO_ROOT = Path(__file__).resolve().parents[4]


def _candidates() -> list[Path]:
    """The implicit default locations, most specific first."""
    return [
        Path.cwd() / ".." / "shared" / "data",
        _REPO_ROOT.parent / "shared" / "data",
    ]


def resolve_data_root(root: str | Path | None = None) -> Path:
    """Return the folder that holds the datasets, as an absolute path.

    Args:
        root: An explicit data root; overrides everything else.

    Raises:
        DataError: if the explicit root or ``POLYTASK_DATA`` names a folder that does not exist,
            or if neither is given and none of the default locations exists.
    """
    if root is not None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataError(f"data root {path} does not exist or is not a folder")
        return path.resolve()

    env = os.environ.get(ENV_VAR, "").strip()
    # An empty variable is treated as unset: `POLYTASK_DATA= cmd` is a common way to unset it.
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"{ENV_VAR}={env} does not exist or is not a folder")
        return path.resolve()

    candidates = _candidates()
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()

    looked = ", ".join(dict.fromkeys(str(c.resolve()) for c in candidates))
    raise DataError(
        f"no data root found (looked in {looked}); set {ENV_VAR} to the folder holding the datasets"
    )
