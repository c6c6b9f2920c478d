"""Runs shared by the data-parallel tests: each trains a small multi-task model with one balancer
and saves its final weights. ``python -m torch.distributed.run --nproc-per-node 2
tests/distributed_cases.py OUT [CASE ...]`` runs them data-parallel; plain ``python`` runs them in
one process, which is the reference (same seed, same global batch).

The table has a task labelled on 12% of the rows only, so in most global batches its labels sit
on one rank, and a multiclass task with class weights (its mean is a weighted mean).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from polytask import config_from_dict, run
from polytask.distributed import DistributedConfig, collective, launched
from polytask.train.callbacks.base import TrainerCallback

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


#: Runs built differently from the table cases: several sources drawn by a sampler, a
#: streamed Parquet file, and interrupted runs (a mid-epoch checkpoint every 3 steps, stopped
#: after step 11; "resume" resumes under the same processes, "interrupt" is left for another
#: number of processes to resume).
SPECIAL = ("sources", "stream", "distill", "resume", "interrupt")
INTERRUPT_AFTER = 11


class _Stop(Exception):
    pass


class _Interrupt(TrainerCallback):
    def after_step(self, trainer: Any, losses: Any, result: Any) -> None:
        if trainer.step == INTERRUPT_AFTER:
            raise _Stop


def _save(result: Any, path: Path) -> None:
    if collective().writes:
        model = result.predictor.model
        torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, path)


def sources_config() -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Two sources: three tasks on one table, the fourth on another, drawn by temperature."""
    raw = raw_config("equal")
    table = frame(720, seed=5)
    big = table.iloc[:540].drop(columns=["y_rare"])
    small = table.iloc[540:].drop(columns=["y_value", "y_label", "y_kind"])
    raw["data"]["sources"] = [
        {"name": "big", "tasks": ["value", "label", "kind"]},
        {"name": "small", "tasks": ["rare"]},
    ]
    raw["sampling"] = {"strategy": "temperature", "temperature": 2.0, "epoch": "sum"}
    return raw, {"big": big, "small": small}


def stream_config(out: Path) -> dict[str, Any]:
    raw = raw_config("upgrad")
    path = out / f"stream-{os.environ.get('RANK', '0')}.parquet"
    frame(900, seed=9).to_parquet(path, index=False, row_group_size=200)
    raw["data"] = {"path": str(path), "stream": True, "stream_chunk": 150, "stream_buffer": 300}
    raw["train"]["batch_size"] = 64
    return raw


def interrupted_config() -> dict[str, Any]:
    raw = raw_config("upgrad")
    raw["train"]["checkpoint_every"] = 3
    return raw


def train_case(case: str, out: Path) -> None:
    if case == "sources":
        raw, frames = sources_config()
        _save(run(config_from_dict(raw), frames=frames, quiet=True), out / "sources.pt")
    elif case == "stream":
        _save(run(config_from_dict(stream_config(out)), quiet=True), out / "stream.pt")
    elif case == "distill":  # a student taught by the 'equal' model, trained here first
        teacher = out / "teacher-run"
        run(config_from_dict(raw_config("equal")), frame=frame(), out=teacher, quiet=True)
        collective().broadcast_object(None)  # rank 0 has written the teacher: read it
        raw = raw_config("equal")
        raw["model"]["encoder"]["widths"] = [16]
        raw["distill"] = {"teachers": [str(teacher / "model")]}
        _save(run(config_from_dict(raw), frame=frame(), quiet=True), out / "distill.pt")
    elif case in ("resume", "interrupt"):
        cfg, run_dir = config_from_dict(interrupted_config()), out / f"{case}-run"
        with contextlib.suppress(_Stop):
            run(cfg, frame=frame(), out=run_dir, quiet=True, callbacks=[_Interrupt()])
        if case == "resume":
            _save(run(cfg, frame=frame(), out=run_dir, resume=True, quiet=True), out / "resume.pt")
    else:
        _save(
            run(config_from_dict(raw_config(case)), frame=frame(), quiet=True), out / f"{case}.pt"
        )


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    # One process group for every case (each run would otherwise join and leave one).
    with launched("cpu", DistributedConfig()):
        if argv[1:2] == ["--resume"]:  # a run interrupted under another number of processes
            cfg = config_from_dict(interrupted_config())
            resumed = run(cfg, frame=frame(), out=Path(argv[2]), resume=True, quiet=True)
            _save(resumed, out / "resumed-elsewhere.pt")
            return
        for case in argv[1:] or [*CASES, *SPECIAL]:
            train_case(case, out)


if __name__ == "__main__":
    main(sys.argv[1:])
