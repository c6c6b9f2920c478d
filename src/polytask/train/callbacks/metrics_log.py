"""The metrics log: every epoch's :class:`~polytask.train.record.EpochRecord` so far, rewritten
after each epoch to ``run_dir/metrics.jsonl`` (one JSON object a line) or ``metrics.csv``
(nested fields flattened to dotted columns)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from polytask.state_io import atomic_write_text, to_json
from polytask.train.callbacks.base import TrainerCallback, TrainerView
from polytask.train.record import EpochRecord


class MetricsLog(TrainerCallback):
    """Writes the trainer's history to ``run_dir`` in ``log_format`` (``jsonl`` or ``csv``)."""

    def __init__(self, run_dir: Path, log_format: str) -> None:
        self.run_dir = run_dir
        self.log_format = log_format

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        rows = [asdict(r) for r in trainer.history]
        if self.log_format == "jsonl":
            text = "".join(to_json(r, indent=None) + "\n" for r in rows)
            atomic_write_text(self.run_dir / "metrics.jsonl", text)
        else:
            flat = [flatten_row(r) for r in rows]
            header = list(dict.fromkeys(k for row in flat for k in row))
            lines = [",".join(header)] + [
                ",".join(_csv_cell(row.get(k)) for k in header) for row in flat
            ]
            atomic_write_text(self.run_dir / "metrics.csv", "\n".join(lines) + "\n")


def flatten_row(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``row`` with nested dicts flattened to dotted keys (the CSV log's columns)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_row(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _csv_cell(value: Any) -> str:
    return "" if value is None else str(value)
