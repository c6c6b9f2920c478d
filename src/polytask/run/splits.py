"""A run's own rows: ``polytask evaluate RUN --split test`` scores the rows the run put in a
split (``splits.csv`` in the run directory) of the table its configuration names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from polytask.config import config_from_dict
from polytask.data.prepare import read_split
from polytask.errors import PolytaskError
from polytask.run.directory import is_run_dir, read_config, read_splits
from polytask.run.predictor import load


def evaluate_split(
    run_dir: str | Path,
    split: str,
    tasks: list[str] | None = None,
    table: str | Path | None = None,
    preference: str | Sequence[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the run's model on the rows the run put in ``split`` (``train``, ``val`` or
    ``test``), read from the table in the run's configuration, or from ``table`` (the same
    table, e.g. for a run trained on a data frame). The test split gives the run's own test
    metrics (``results.json``) back."""
    run = Path(run_dir)
    if not is_run_dir(run):
        raise PolytaskError(
            f"'{run}' is not a run directory: --split reads the run's config.json and "
            "splits.csv (a model directory alone does not record its rows)"
        )
    record = read_splits(run)
    cfg = config_from_dict(read_config(run))
    predictor = load(run)
    frame = predictor.read(table) if table is not None else None
    rows, source, files_root = read_split(cfg, record, split, frame)
    return predictor.evaluate(
        rows,
        tasks,
        source=f"{source} ({split} rows)",
        base_dir=files_root,
        preference=preference,
    )
