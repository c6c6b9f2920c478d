"""The built-in demo: the synthetic benchmark of the MMoE paper, no download needed.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018, Section 3.2: two tasks from shared random weights whose correlation is controlled.
Here task 1 stays a regression and task 2 is binarised at its median, so the demo shows one
regression and one classification head trained jointly, next to the two single-task models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from polytask.config import config_from_dict
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.run.pipeline import RunResult, run


def demo_config(epochs: int = 12, seed: int = 0, **train: Any) -> dict[str, Any]:
    """The raw config the demo trains (a plain dict, as read from TOML)."""
    return {
        "seed": seed,
        "data": {"ignore": ["y2_raw"], "split": {"method": "random", "val": 0.15, "test": 0.15}},
        "tasks": [
            {"name": "regression", "kind": "regression", "target": "y_regression"},
            {"name": "classification", "kind": "binary", "target": "y_binary"},
        ],
        "model": {
            "encoder": {"name": "mlp", "widths": [128, 64], "dropout": 0.0},
            "head": {"widths": [32]},
        },
        "train": {"epochs": epochs, "batch_size": 128, "lr": 2e-3, "patience": 4, **train},
    }


def run_demo(
    *,
    out: str | Path | None = "runs/demo",
    samples: int = 12000,
    correlation: float = 0.9,
    epochs: int = 12,
    seed: int = 0,
    quiet: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Generate the data, train multi-task and single-task models, return the comparison."""
    frame = make_mmoe_synthetic(samples, correlation, seed=seed)
    cfg = config_from_dict(demo_config(epochs=epochs, seed=seed))
    result = run(cfg, frame=frame, out=out, overwrite=True, quiet=quiet, console=console)
    if result.out_dir is not None:
        frame.to_csv(result.out_dir / "data.csv", index=False)
    return result
