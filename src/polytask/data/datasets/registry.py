"""The registry of real multi-task datasets, their origins, and the load/fetch entry points.

Loading never touches the network: :func:`load_dataset` only reads files under the data root
(see :mod:`polytask.data.datasets.root`). Each dataset also records the public URL and SHA-256
of every file so that :func:`fetch_dataset` can download it, but only when a user asks for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from polytask.data.datasets import census, diabetes, fdu_mtl, fsdd, molecules, multimnist
from polytask.data.datasets.root import ENV_VAR, resolve_data_root
from polytask.errors import DataError
from polytask.state_io import file_sha256

TASK_KINDS = ("binary", "regression", "multiclass", "segmentation")

_CHUNK = 1 << 20
_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it goes under the data root and where it comes from."""

    relpath: str
    url: str
    sha256: str


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset.

    Attributes:
        name: Registry key.
        summary: One line for listings.
        files: Every file the loader reads, relative to the data root.
        loader: Reads the files under the given data root and returns one frame holding
            features, targets, the group column and the ignored columns.
        targets: Target column -> task kind (one of :data:`TASK_KINDS`).
        group: Column whose values must not be split across train and test (e.g. a patient
            id), or ``None`` when rows are independent.
        ignore: Columns that are neither features nor targets (row ids, sampling weights, the
            raw columns a target was derived from).
        citation: Where the data and the task definition come from.
    """

    name: str
    summary: str
    files: tuple[RemoteFile, ...]
    loader: Callable[[Path], pd.DataFrame]
    # hash=False: a dict is unhashable, and the info should stay usable as a dict key / in sets.
    targets: dict[str, str] = field(hash=False)
    group: str | None
    ignore: tuple[str, ...]
    citation: str

    def __post_init__(self) -> None:
        bad = {col: kind for col, kind in self.targets.items() if kind not in TASK_KINDS}
        if bad:
            raise ValueError(f"dataset {self.name!r}: unknown task kind(s) {bad}")

    def feature_columns(self, frame: pd.DataFrame) -> list[str]:
        """The columns of ``frame`` that are features: not a target, the group or ignored."""
        excluded = {*self.targets, *self.ignore}
        if self.group is not None:
            excluded.add(self.group)
        return [str(col) for col in frame.columns if col not in excluded]


def _declared(
    name: str, module: ModuleType, loader: Callable[[Path], pd.DataFrame], prefix: str = ""
) -> DatasetInfo:
    """The entry a dataset module declares with upper-case constants (``{prefix}SUMMARY``,
    ``RELPATH``, ``URL``, ``SHA256``, ``TARGETS``, ``CITATION``; ``GROUP`` and ``IGNORE``
    optionally prefixed)."""

    def attr(key: str, default: object = ...) -> Any:
        for candidate in (prefix + key, key):
            if hasattr(module, candidate):
                return getattr(module, candidate)
        if default is ...:
            raise AttributeError(f"{module.__name__} declares no {prefix + key}")
        return default

    return DatasetInfo(
        name=name,
        summary=attr("SUMMARY"),
        files=(RemoteFile(attr("RELPATH"), attr("URL"), attr("SHA256")),),
        loader=loader,
        targets=dict(attr("TARGETS")),
        group=attr("GROUP", None),
        ignore=attr("IGNORE"),
        citation=attr("CITATION"),
    )


DATASETS: dict[str, DatasetInfo] = {
    "census": _declared("census", census, census.load_census),
    "diabetes": _declared("diabetes", diabetes, diabetes.load_diabetes),
    "tox21": _declared("tox21", molecules, molecules.load_tox21, prefix="TOX21_"),
    "qm8": _declared("qm8", molecules, molecules.load_qm8, prefix="QM8_"),
    "fsdd": _declared("fsdd", fsdd, fsdd.load_fsdd),
    "multimnist": DatasetInfo(
        name="multimnist",
        summary=multimnist.SUMMARY,
        files=(
            RemoteFile(multimnist.IMAGES_RELPATH, multimnist.IMAGES_URL, multimnist.IMAGES_SHA256),
            RemoteFile(multimnist.LABELS_RELPATH, multimnist.LABELS_URL, multimnist.LABELS_SHA256),
        ),
        loader=multimnist.load_multimnist,
        targets=dict(multimnist.TARGETS),
        group=None,
        ignore=multimnist.IGNORE,
        citation=multimnist.CITATION,
    ),
    "fdu_mtl": DatasetInfo(
        name="fdu_mtl",
        summary=fdu_mtl.SUMMARY,
        files=tuple(RemoteFile(*file) for file in fdu_mtl.FILES),
        loader=fdu_mtl.load_fdu_mtl,
        targets=dict(fdu_mtl.TARGETS),
        group=None,
        ignore=fdu_mtl.IGNORE,
        citation=fdu_mtl.CITATION,
    ),
}


def _info(name: str) -> DatasetInfo:
    info = DATASETS.get(name)
    if info is None:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return info


def load_dataset(name: str, root: str | Path | None = None) -> pd.DataFrame:
    """Load a registered dataset from the data root.

    Only checks that the files exist (checksums are verified when fetching, and hashing a few
    MB on every load would buy nothing); parsing problems surface from the loader as DataError.

    Raises:
        DataError: for an unknown name, an unresolvable root, or a missing file.
    """
    info = _info(name)
    base = resolve_data_root(root)
    for remote in info.files:
        path = base / remote.relpath
        if not path.is_file():
            raise DataError(
                f"dataset {name!r}: missing file {path}; download it with "
                f"polytask.data.datasets.fetch_dataset({name!r}, root) or set {ENV_VAR} "
                f"to a folder that holds {remote.relpath}"
            )
    return info.loader(base)


def _download(remote: RemoteFile, dest: Path) -> None:
    """Download ``remote`` to ``dest`` atomically, or leave ``dest`` untouched on any failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits next to the destination so that os.replace is a same-filesystem
    # rename: readers never see a half-written or unverified file under the final name.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(remote.url, timeout=_TIMEOUT_SECONDS) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DataError(f"could not download {remote.url}: {reason}") from exc
        actual = digest.hexdigest()
        if actual != remote.sha256.lower():
            raise DataError(
                f"checksum mismatch for {remote.url}: expected sha256 {remote.sha256}, "
                f"got {actual}; {dest} was not written"
            )
        os.replace(tmp, dest)
    finally:
        # After a successful os.replace the temporary name no longer exists.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def fetch_dataset(name: str, root: str | Path) -> Path:
    """Download a registered dataset's files into ``root`` and verify their SHA-256.

    This is the only function in polytask that uses the network, and only when called
    explicitly. Files already present with the right checksum are kept as they are.

    Args:
        name: A key of :data:`DATASETS`.
        root: The data root to fill; created if missing.

    Returns:
        The absolute data root, ready to pass to :func:`load_dataset`.

    Raises:
        DataError: for an unknown name, a failed download or a checksum mismatch (in which
            case the destination file is not created).
    """
    info = _info(name)
    base = Path(root).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    for remote in info.files:
        dest = base / remote.relpath
        if dest.is_file() and file_sha256(dest) == remote.sha256.lower():
            continue
        _download(remote, dest)
    return base


def data_available(name: str, root: str | Path | None = None) -> bool:
    """Tell whether a dataset's files are present, without loading or checking them.

    Args:
        name: A name from :data:`polytask.data.datasets.DATASETS` (all of its files must exist),
            or otherwise a path relative to the data root (a file or folder, e.g.
            ``"molecules/tox21.csv"``) for data that has no registered loader.
        root: An explicit data root, resolved as in :func:`resolve_data_root`.

    Returns:
        ``False`` when no data root can be resolved or any expected file is missing.
    """
    try:
        base = resolve_data_root(root)
    except DataError:
        return False

    info = DATASETS.get(name)
    if info is None:
        return (base / name).exists()
    return all((base / remote.relpath).is_file() for remote in info.files)
