"""The run directory: the one reader and writer of its format.

A run directory holds ``config.json`` (the validated configuration), ``model/`` (the model
directory, :mod:`polytask.run.predictor`), ``checkpoints/{last,best}`` (written by the trainer),
``metrics.jsonl`` or ``metrics.csv`` (one line per epoch), ``baselines/<task>/`` (the
single-task baselines, run directories themselves) and ``results.json`` (test metrics of the
model and its reference, and the comparison). Every check runs before the directory is touched,
so bad input leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from polytask.errors import PolytaskError
from polytask.state_io import atomic_write_text, read_json, to_json, write_json

CONFIG = "config.json"
RESULTS = "results.json"
MODEL = "model"
BASELINES = "baselines"


def last_checkpoint(run_dir: Path) -> Path:
    """Where the trainer's resumable checkpoint of ``run_dir`` lives."""
    return run_dir / "checkpoints" / "last"


def has_checkpoint(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a checkpoint a run can resume from."""
    return (last_checkpoint(run_dir) / "state.json").is_file()


def check_out_dir(out: Path | None, resume: bool, overwrite: bool) -> None:
    """Fail (one line) before anything is written if ``out`` cannot take this run: not a
    directory, not empty without ``overwrite``, or nothing to resume from with ``resume``."""
    if out is None:
        if resume:
            raise PolytaskError("resume needs an output directory holding checkpoints")
        return
    if out.exists() and not out.is_dir():
        raise PolytaskError(f"output path '{out}' exists and is not a directory")
    busy = out.exists() and any(out.iterdir())
    if resume:
        if not has_checkpoint(out):
            raise PolytaskError(f"cannot resume: no checkpoint in '{last_checkpoint(out)}'")
    elif busy and not overwrite:
        raise PolytaskError(
            f"output directory '{out}' is not empty; pass --overwrite to replace it "
            "or --resume to continue its run"
        )


def create_out_dir(out: Path | None, config: BaseModel, resume: bool, overwrite: bool) -> None:
    """Create (or, with ``overwrite``, replace) the run directory once every check passed, and
    record the configuration."""
    if out is None:
        return
    if overwrite and out.exists() and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, config)


def write_config(run_dir: Path, config: BaseModel) -> None:
    write_json(run_dir / CONFIG, config.model_dump(mode="json"))


def read_config(run_dir: Path) -> dict[str, Any]:
    """The stored configuration of a run, as a raw dict."""
    return _json_object(run_dir / CONFIG)


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
