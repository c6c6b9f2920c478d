"""The run directory: the one reader and writer of its format.

A run directory holds ``polytask-run.json`` (the marker saying polytask made it),
``config.json`` (the validated configuration), ``model/`` (the model directory,
:mod:`polytask.run.predictor`), ``checkpoints/{last,best}`` (written by the trainer, one atomic
unit), ``metrics.jsonl`` or ``metrics.csv`` (one line per epoch), ``baselines/<task>/`` (the
single-task baselines, run directories themselves) and ``results.json`` (test metrics of the
model and its reference, and the comparison). Every check runs before the directory is touched,
so bad input leaves nothing behind.

Safety rules (issue 17: never lose data):

* ``--overwrite`` replaces only a polytask run (:func:`is_run_dir`), never the working or home
  directory, nor one holding the configuration's folder or a data path. The new run trains in
  a hidden sibling ``.<name>.polytask-new-<random>`` and is exchanged with the old run only once
  it has finished (:func:`polytask.state_io.put_in_place`); a failed or killed run leaves the
  old one as it was.
* One process at a time writes a run directory (:mod:`polytask.run.lock`).
* Leftovers of a killed process (polytask's own staging names only) are removed, and a copy
  moved aside is moved back, when the next run opens the directory.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from polytask._version import __version__
from polytask.config import RunConfig
from polytask.data.split import RECORD_ID, RECORD_ROW, RECORD_SPLIT
from polytask.errors import PolytaskError
from polytask.run.lock import LOCK_NAME, RunLock, check_unlocked, is_locked
from polytask.state_io import (
    atomic_write_text,
    clean_leftovers,
    make_staging_dir,
    parse_staging,
    put_in_place,
    read_json,
    staging_name,
    to_json,
)

CONFIG = "config.json"
RESULTS = "results.json"
#: Which rows of the table went to train / val / test (``polytask evaluate RUN --split``).
SPLITS = "splits.csv"
MODEL = "model"
BASELINES = "baselines"
CHECKPOINTS = "checkpoints"
#: Written into every run directory polytask creates: what ``--overwrite`` may replace.
MARKER = "polytask-run.json"
#: What a run writes at its top level: the names whose staging leftovers are cleaned up.
RUN_ENTRIES = (
    MARKER,
    CONFIG,
    RESULTS,
    MODEL,
    CHECKPOINTS,
    SPLITS,
    "metrics.jsonl",
    "metrics.csv",
)


def last_checkpoint(run_dir: Path) -> Path:
    """Where the trainer's resumable checkpoint of ``run_dir`` lives."""
    return run_dir / CHECKPOINTS / "last"


def has_checkpoint(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a checkpoint a run can resume from (also one a save moved
    aside and a crash left there, where the system has no atomic exchange: the resume moves it
    back)."""
    if (last_checkpoint(run_dir) / "state.json").is_file():
        return True
    if os.path.lexists(run_dir / CHECKPOINTS):
        return False
    aside = run_dir.glob(f"{staging_name(CHECKPOINTS, 'old')}*")
    return any((p / "last" / "state.json").is_file() for p in aside)


def is_run_dir(path: Path) -> bool:
    """True when ``path`` is a run directory polytask wrote: it holds the marker
    ``polytask-run.json``, or (runs of versions before the marker) a ``config.json`` holding a
    JSON object with ``data`` and ``tasks`` next to ``model/`` or ``checkpoints/``."""
    if (path / MARKER).is_file():
        return True
    if not ((path / MODEL).is_dir() or (path / CHECKPOINTS).is_dir()):
        return False
    try:
        stored = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(stored, dict) and "data" in stored and "tasks" in stored


def protected_paths(cfg: RunConfig) -> list[tuple[str, Path]]:
    """What ``--overwrite`` must never delete for ``cfg``: the configuration's folder and every
    data path it names, each with the key that names it."""
    found: list[tuple[str, Path]] = [("the configuration's folder", Path(cfg.base_dir))]
    data = cfg.data
    entries: list[tuple[str, Any]] = [("data", data), ("data.split", data.split)]
    for i, source in enumerate(data.sources):
        entries.append((f"data.sources.{i}", source))
        if source.split is not None:
            entries.append((f"data.sources.{i}.split", source.split))
    for where, section in entries:
        for key in ("path", "root", "files_root", "val_path", "test_path"):
            value = getattr(section, key, None)
            if isinstance(value, str) and value:
                found.append((f"{where}.{key}", cfg.resolve(value)))
    return found


def _holds(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def _entries(out: Path) -> list[Path]:
    # A lock file a killed run left behind is not content.
    return [p for p in out.iterdir() if p.name != LOCK_NAME]


def check_out_dir(
    out: Path | None,
    resume: bool,
    overwrite: bool,
    protected: Sequence[tuple[str, Path]] = (),
) -> None:
    """Fail (one line) before anything is written if ``out`` cannot take this run: not a
    directory, not empty without ``overwrite``, nothing to resume from with ``resume``, in use
    by another process, or (with ``overwrite``) not a run, or holding the working or home
    directory or one of the ``protected`` paths (:func:`protected_paths`).

    The one thing it may change: a run that a replacement interrupted by a crash left moved
    aside (no atomic exchange on this system) is moved back to ``out`` first."""
    if out is None:
        if resume:
            raise PolytaskError("resume needs an output directory holding checkpoints")
        return
    _restore_moved_run(out)
    if out.exists() and not out.is_dir():
        raise PolytaskError(f"output path '{out}' exists and is not a directory")
    if out.is_dir():
        check_unlocked(out)
    busy = out.is_dir() and bool(_entries(out))
    if resume:
        if not has_checkpoint(out):
            raise PolytaskError(f"cannot resume: no checkpoint in '{last_checkpoint(out)}'")
    elif busy and not overwrite:
        raise PolytaskError(
            f"output directory '{out}' is not empty; pass --overwrite to replace it "
            "or --resume to continue its run"
        )
    elif busy:
        _check_replaceable(out, protected)


def _check_replaceable(out: Path, protected: Sequence[tuple[str, Path]]) -> None:
    """``--overwrite`` of the non-empty ``out``: only a polytask run holding nothing the user
    needs."""
    if out.is_symlink():
        raise PolytaskError(
            f"cannot overwrite '{out}': it is a symbolic link; give the directory it points to"
        )
    target = out.resolve()
    kept: list[tuple[str, Path]] = [("the working directory", Path.cwd())]
    with contextlib.suppress(KeyError, RuntimeError):  # no home directory: nothing to keep
        kept.append(("the home directory", Path.home()))
    for label, path in [*kept, *protected]:
        if _holds(target, path.expanduser().resolve()):
            raise PolytaskError(
                f"cannot overwrite '{out}': it holds {label} '{path}'; choose another --out"
            )
    if not is_run_dir(out):
        raise PolytaskError(
            f"cannot overwrite '{out}': it is not a polytask run directory (no {MARKER}); "
            "--overwrite only replaces runs, so move its files away or choose another --out"
        )


@contextlib.contextmanager
def create_out_dir(
    out: Path | None, config: BaseModel, resume: bool, overwrite: bool
) -> Iterator[Path | None]:
    """Open the run directory once every check passed: lock it, clean up what a killed run
    left, record the configuration, and yield the directory the run writes into.

    That is ``out`` itself, except when ``overwrite`` replaces a run: then a new hidden sibling,
    exchanged with ``out`` when the block finishes (after ``results.json``), or removed if it
    fails, leaving the old run as it was. The lock is held until the block ends. Without
    ``out`` (no run directory) it yields None.
    """
    if out is None:
        yield None
        return
    replace = overwrite and not resume and out.is_dir() and bool(_entries(out))
    if replace:  # again, for callers that skipped check_out_dir: never replace a user's folder
        _check_replaceable(out, ())
    out.mkdir(parents=True, exist_ok=True)
    locks = [RunLock.acquire(out)]
    try:
        _clean_run_siblings(out)
        if not replace:
            if resume:
                clean_run_dir(out)
            write_config(out, config)
            yield out
            return
        staging = make_staging_dir(out, "new")
        try:
            locks.append(RunLock.acquire(staging))
            write_config(staging, config)
            yield staging
            # Sites run.staged / run.exchanged: the new run finished beside the old one / in
            # its place, the old one not yet removed.
            put_in_place(staging, out, "run")
            locks[0].moved_to(staging)  # the old run (now deleted) and its lock file
            locks[1].moved_to(out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        for lock in reversed(locks):
            lock.release()


def clean_run_dir(run_dir: Path) -> None:
    """Remove what killed saves left in ``run_dir`` (and its baselines' run directories), and
    move back a copy a save moved aside; only polytask's staging names of polytask's own
    entries are touched. The caller holds the run's lock."""
    clean_leftovers(run_dir, RUN_ENTRIES)
    # Versions before the one-unit checkpoint staged last/ and best/ inside checkpoints/.
    if (run_dir / CHECKPOINTS).is_dir():
        clean_leftovers(run_dir / CHECKPOINTS, ("last", "best"))
    baselines = run_dir / BASELINES
    if baselines.is_dir() and not baselines.is_symlink():
        for sub in sorted(baselines.iterdir()):
            if sub.is_dir() and not sub.is_symlink():
                clean_run_dir(sub)


def _clean_run_siblings(out: Path) -> None:
    """Remove the staging siblings of ``out`` a killed ``--overwrite`` left (a new run that
    never finished, or an old one already replaced), unless a live process holds them."""
    for entry in sorted(out.parent.iterdir()):
        parsed = parse_staging(entry.name)
        if parsed is None or parsed[0] != out.name or parsed[1] not in ("new", "old"):
            continue
        if entry.is_symlink() or not entry.is_dir() or is_locked(entry):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _restore_moved_run(out: Path) -> None:
    """Where no atomic exchange exists, replacing a run moves the old one aside first: if the
    process died before the new one moved in, ``out`` is missing and the old run goes back."""
    if os.path.lexists(out) or not out.parent.is_dir():
        return
    for entry in sorted(out.parent.iterdir()):
        parsed = parse_staging(entry.name)
        if parsed == (out.name, "old") and entry.is_dir() and not is_locked(entry):
            os.rename(entry, out)
            return


def remove_run_dir(run_dir: Path) -> None:
    """Delete ``run_dir`` (to start its run over) if it is a polytask run (or empty) that no
    live process holds; anything else fails with one line and stays as it is."""
    if not run_dir.exists():
        return
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise PolytaskError(f"'{run_dir}' should be a run directory; remove it yourself")
    if _entries(run_dir) and not is_run_dir(run_dir):
        raise PolytaskError(
            f"'{run_dir}' is not a polytask run directory (no {MARKER}); "
            "move its files away to run it again"
        )
    lock = RunLock.acquire(run_dir)
    try:
        shutil.rmtree(run_dir)
    finally:
        lock.release(delete=False)  # the lock file went with the directory


def write_config(run_dir: Path, config: BaseModel) -> None:
    """Record the configuration (and mark the directory as a polytask run)."""
    if not (run_dir / MARKER).is_file():
        marker = {"format": "polytask-run", "version": 1, "polytask_version": __version__}
        atomic_write_text(run_dir / MARKER, to_json(marker) + "\n")
    atomic_write_text(run_dir / CONFIG, to_json(config.model_dump(mode="json")) + "\n")


def read_config(run_dir: Path) -> dict[str, Any]:
    """The stored configuration of a run, as a raw dict."""
    return _json_object(run_dir / CONFIG)


def write_splits(run_dir: Path, record: pd.DataFrame) -> None:
    """Write ``splits.csv`` atomically: the rows of each split (see
    :func:`polytask.data.split.split_record`)."""
    atomic_write_text(run_dir / SPLITS, record.to_csv(index=False, lineterminator="\n"))


def read_splits(run_dir: Path) -> pd.DataFrame:
    """The ``splits.csv`` of a run, checked; a one-line error when there is none (runs of
    streamed tables, of ``data.sources``, or of versions before the file)."""
    path = run_dir / SPLITS
    if not path.is_file():
        raise PolytaskError(
            f"run directory '{run_dir}' has no {SPLITS}: its split was not recorded (a "
            "streamed table, data.sources, or a run of an earlier version); score a table "
            "instead"
        )
    try:
        record = pd.read_csv(path, dtype={RECORD_SPLIT: str, RECORD_ID: str}, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise PolytaskError(f"'{path}': cannot read it: {str(exc).splitlines()[0]}") from None
    expected = {RECORD_ROW, RECORD_SPLIT}
    if not expected <= set(record.columns) or not pd.api.types.is_integer_dtype(record[RECORD_ROW]):
        raise PolytaskError(f"'{path}': expected integer column 'row' and column 'split'")
    return record


def baseline_dir(run_dir: Path, task: str) -> Path:
    """The run directory of ``task``'s single-task baseline inside ``run_dir``."""
    return run_dir / BASELINES / task


def model_dir(run_dir: Path) -> Path:
    return run_dir / MODEL


def results_path(run_dir: Path) -> Path:
    return run_dir / RESULTS


def is_finished(run_dir: Path) -> bool:
    """A run is finished once its results are written (they are written last)."""
    return results_path(run_dir).is_file()


def write_results(run_dir: Path, summary: dict[str, Any]) -> None:
    """Write ``results.json`` atomically (last, so its presence means the run finished)."""
    atomic_write_text(results_path(run_dir), to_json(summary) + "\n")


def read_results(run_dir: Path) -> dict[str, Any]:
    """The ``results.json`` of a finished run."""
    return _json_object(results_path(run_dir))


def _json_object(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise PolytaskError(f"'{path}' does not hold a JSON object")
    return data


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Epoch records from ``metrics.jsonl`` (or the flattened ``metrics.csv``)."""
    jsonl = directory / "metrics.jsonl"
    if jsonl.is_file():
        records = []
        for i, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PolytaskError(f"'{jsonl}' line {i} is not JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise PolytaskError(f"'{jsonl}' line {i} is not a JSON object")
            records.append(row)
        return records
    path = directory / "metrics.csv"
    if path.is_file():
        return _records_from_csv(path)
    return []


def _cell(text: str) -> Any:
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def _records_from_csv(path: Path) -> list[dict[str, Any]]:
    # The CSV log flattens nested dicts with dots: "train_loss.<task>",
    # "val_metrics.<task>.<metric>". Field names hold no dots and metric names neither, so
    # splitting at the first dot (and, for metrics, also at the last) recovers task names that
    # contain dots.
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    records = []
    for row in reader:
        record: dict[str, Any] = {}
        for column, text in row.items():
            if column is None:
                continue
            value = _cell(text or "")
            head, dot, rest = column.partition(".")
            if not dot:
                record[head] = value
            elif head == "val_metrics":
                task, _, metric = rest.rpartition(".")
                record.setdefault(head, {}).setdefault(task, {})[metric] = value
            else:
                record.setdefault(head, {})[rest] = value
        records.append(record)
    return records
