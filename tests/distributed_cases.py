"""Runs shared by the data-parallel tests: each trains a small multi-task model with one balancer
and saves its final weights. ``python -m torch.distributed.run --nproc-per-node 2
tests/distributed_cases.py OUT [CASE ...]`` runs them data-parallel; plain ``python`` runs them in
one process, which is the reference (same seed, same global batch).

The table has a task labelled on 12% of the rows only, so in most global batches its labels sit
on one rank, and a multiclass task with class weights (its mean is a weighted mean).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from polytask import config_from_dict, run
from polytask.distributed import DistributedConfig, collective, launched

#: name -> (balancer section, extra config). Gradient methods in both engine modes.
CASES: dict[str, dict[str, Any]] = {
    "equal": {"balancer": {"name": "equal"}},
    "static": {"balancer": {"name": "static", "weights": {"value": 2.0, "label": 0.5}}},
    "uncertainty": {"balancer": {"name": "uncertainty"}},
    "famo": {"balancer": {"name": "famo"}},
    "rlw": {"balancer": {"name": "rlw"}},
    "gradnorm": {"balancer": {"name": "gradnorm"}},
    "mgda": {"balancer": {"name": "mgda"}},
    "mgda-representation": {"balancer": {"name": "mgda", "mode": "representation"}},
    "upgrad": {"balancer": {"name": "upgrad"}},
    "upgrad-representation": {"balancer": {"name": "upgrad", "mode": "representation"}},
    "pcgrad": {"balancer": {"name": "pcgrad"}},
    "nash_mtl": {"balancer": {"name": "nash_mtl"}},
    "upgrad-local": {"balancer": {"name": "upgrad"}, "distributed": {"gramian": "local"}},
    "equal-batchnorm": {"balancer": {"name": "equal"}, "norm": "batch"},
    "upgrad-batchnorm": {"balancer": {"name": "upgrad"}, "norm": "batch"},
    "equal-unsynced-batchnorm": {
        "balancer": {"name": "equal"},
        "norm": "batch",
        "distributed": {"sync_batchnorm": False},
    },
}


def frame(n: int = 480, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    value = x @ rng.normal(size=6) + 0.1 * rng.normal(size=n)
    label = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    kind = np.array(["a", "b", "c"])[np.digitize(x[:, 2] - x[:, 3], [-0.7, 0.7])]
    rare = np.where(rng.random(n) < 0.12, x[:, 4] * 2 + x[:, 5], np.nan)
    table = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    table["y_value"], table["y_label"], table["y_kind"], table["y_rare"] = value, label, kind, rare
    return table


def raw_config(case: str) -> dict[str, Any]:
    spec = CASES[case]
    return {
        "seed": 7,
        "baselines": False,
        "data": {"split": {"method": "random", "val": 0.15, "test": 0.15}},
        "tasks": [
            {"name": "value", "kind": "regression", "target": "y_value"},
            {"name": "label", "kind": "binary", "target": "y_label"},
            {
                "name": "kind",
                "kind": "multiclass",
                "target": "y_kind",
                "class_weights": [1.0, 2.0, 0.5],
            },
            {"name": "rare", "kind": "regression", "target": "y_rare"},
        ],
        "model": {
            "encoder": {"widths": [32, 16], "dropout": 0.0, "norm": spec.get("norm", "layer")}
        },
        "balancer": spec["balancer"],
        # 336 training rows in batches of 50: 7 steps an epoch, 21 steps in all.
        "train": {"epochs": 3, "batch_size": 50, "lr": 0.01, "progress": False, "threads": 1},
        "distributed": spec.get("distributed", {}),
    }


def train_case(case: str, out: Path) -> None:
    cfg = config_from_dict(raw_config(case))
    result = run(cfg, frame=frame(), quiet=True)
    if collective().writes:
        state = {
            k: v.detach().cpu().clone() for k, v in result.predictor.model.state_dict().items()
        }
        torch.save(state, out / f"{case}.pt")


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    cases = argv[1:] or list(CASES)
    # One process group for every case (each run would otherwise join and leave one).
    with launched("cpu", DistributedConfig()):
        for case in cases:
            train_case(case, out)


if __name__ == "__main__":
    main(sys.argv[1:])
