"""Small seeded runs whose final weights are fingerprinted (the reorganisation's golden check).

Each run goes through the public API only (``polytask.run``, ``polytask.finetune``), so the
same function produced the recorded fingerprints before the code was reorganised and checks
them after. ``python tests/golden/golden_runs.py`` rewrites ``tests/golden/weights.json``; do that
only in a commit that says why a fingerprint changed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import polytask
from polytask import config_from_dict

HERE = Path(__file__).parent
RECORD = HERE / "weights.json"
TRAIN = {
    "epochs": 3,
    "batch_size": 32,
    "lr": 3e-3,
    "patience": None,
    "progress": False,
    "threads": 1,
}


def table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Six features, a binary target ``b`` and a regression target ``r`` that share them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["b"] = (2.0 * x[:, 0] - x[:, 1] * x[:, 2] + rng.normal(0, 0.5, n) > 0).astype(int)
    frame["r"] = np.sin(x[:, 0]) + x[:, 3] ** 2 + rng.normal(0, 0.2, n)
    return frame


def images(n: int = 96, seed: int = 0) -> pd.DataFrame:
    """10 x 10 grey images with a bright square: its brightness class and its mask."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        r0, c0 = rng.integers(0, 6, size=2)
        level = int(rng.integers(90, 256))
        mask = np.zeros((10, 10), dtype=np.int64)
        mask[r0 : r0 + 4, c0 : c0 + 4] = 1
        image = np.where(mask == 1, level, rng.integers(0, 40, (10, 10))).astype(np.uint8)
        rows.append({"image": image, "bright": int(level > 170), "mask": mask})
    return pd.DataFrame(rows)


def raw(**sections: Any) -> dict[str, Any]:
    """A tabular run on :func:`table`; ``sections`` replace whole sections."""
    base: dict[str, Any] = {
        "seed": 0,
        "baselines": False,
        "data": {"split": {"method": "random", "val": 0.2, "test": 0.2}},
        "tasks": [
            {"name": "b", "kind": "binary", "target": "b"},
            {"name": "r", "kind": "regression", "target": "r"},
        ],
        "model": {
            "encoder": {"name": "mlp", "widths": [16], "dropout": 0.0},
            "head": {"widths": [8]},
        },
        "train": dict(TRAIN),
    }
    base.update(sections)
    return base


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _train(cfg: dict[str, Any], frame: pd.DataFrame, out: Path | None = None) -> Any:
    return polytask.run(config_from_dict(cfg), frame=frame, out=out, quiet=True)


def _architecture(name: str, **params: Any) -> Callable[[Path], Any]:
    def go(tmp: Path) -> Any:
        model = {
            "encoder": {"name": "mlp", "widths": [16], "dropout": 0.0},
            "architecture": {"name": name, **params},
            "head": {"widths": [8]},
        }
        return _train(raw(model=model), table())

    return go


def _balancer(name: str, **params: Any) -> Callable[[Path], Any]:
    def go(tmp: Path) -> Any:
        return _train(raw(balancer={"name": name, **params}), table())

    return go


def _mtan(tmp: Path) -> Any:
    cfg = {
        "seed": 0,
        "baselines": False,
        "data": {"input": {"name": "image"}, "split": {"val": 0.2, "test": 0.2}},
        "tasks": [
            {"name": "bright", "kind": "binary", "target": "bright"},
            {"name": "mask", "kind": "segmentation", "target": "mask"},
        ],
        "model": {
            "encoder": {"name": "cnn", "widths": [4, 8]},
            "architecture": {"name": "mtan"},
            "head": {"decoder_channels": [4]},
        },
        "train": dict(TRAIN, epochs=2),
    }
    return _train(cfg, images())


def _cosmos(tmp: Path) -> Any:
    model = {
        "encoder": {"name": "mlp", "widths": [16], "dropout": 0.0},
        "head": {"widths": [8]},
        "preference_conditioning": "film",
    }
    return _train(raw(model=model, balancer={"name": "cosmos", "lambda": 1.0}), table())


def _distill(tmp: Path) -> Any:
    teacher = _train(raw(), table(), tmp / "teacher")
    del teacher
    return _train(raw(distill={"teachers": [str(tmp / "teacher" / "model")]}), table())


def _finetune(tmp: Path) -> Any:
    base_tasks = [{"name": "b", "kind": "binary", "target": "b"}]
    base_data = {"ignore": ["r"], "split": {"method": "random", "val": 0.2, "test": 0.2}}
    _train(raw(tasks=base_tasks, data=base_data), table(), tmp / "base")
    cfg = raw(finetune={"freeze": "none", "head_lr_scale": 2.0})
    return polytask.finetune(tmp / "base", config_from_dict(cfg), frame=table(seed=1), quiet=True)


def _sources(tmp: Path) -> Any:
    frame = table(600)
    frame.iloc[:400].drop(columns=["r"]).to_csv(tmp / "big.csv", index=False)
    frame.iloc[400:].drop(columns=["b"]).to_csv(tmp / "small.csv", index=False)
    data = {
        "sources": [
            {"name": "big", "path": "big.csv", "tasks": ["b"]},
            {"name": "small", "path": "small.csv", "tasks": ["r"]},
        ],
        "split": {"method": "random", "val": 0.2, "test": 0.2},
    }
    cfg = config_from_dict(
        raw(data=data, sampling={"strategy": "temperature", "temperature": 2.0, "epoch": "sum"}),
        base_dir=tmp,
    )
    return polytask.run(cfg, quiet=True)


#: name -> a function training one run in a scratch folder and returning its RunResult.
RUNS: dict[str, Callable[[Path], Any]] = {
    "architecture-hard": _architecture("hard"),
    "architecture-soft": _architecture("soft"),
    "architecture-cross_stitch": _architecture("cross_stitch"),
    "architecture-mmoe": _architecture("mmoe"),
    "architecture-ple": _architecture("ple"),
    "architecture-mtan": _mtan,
    "balancer-loss-uncertainty": _balancer("uncertainty"),
    "balancer-loss-dwa": _balancer("dwa"),
    "balancer-gradient-exact-mgda": _balancer("mgda", mode="exact"),
    "balancer-gradient-representation-pcgrad": _balancer("pcgrad", mode="representation"),
    "balancer-cosmos": _cosmos,
    "distill": _distill,
    "finetune": _finetune,
    "sources-temperature": _sources,
}


def measure(name: str) -> dict[str, Any]:
    """Train run ``name``; its weights' fingerprint and its metrics."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = RUNS[name](Path(tmp))
    return {"sha256": fingerprint(result.predictor.model), "metrics": result.metrics}


def environment() -> dict[str, str]:
    """What bit-exact float results depend on: torch's version and the CPU kernels it picks."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


if __name__ == "__main__":
    names = sys.argv[1:] or list(RUNS)
    record = {"environment": environment(), "runs": {n: measure(n) for n in names}}
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(json.dumps(record, indent=1, sort_keys=True))
