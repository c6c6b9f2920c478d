"""Tasks with very unequal data: does sharing help the task with 60 labels?

From the MNIST test digits (the only MNIST file here) three tasks on **disjoint** labelled
subsets of very different sizes, one data source each:

* ``digit`` (10 classes): 6,000 labelled images;
* ``parity`` (even / odd): 600 labelled images;
* ``gt4`` (digit > 4): 60 labelled images.

Each source keeps 10% of its images for validation (early stopping); all three tasks are
scored on the same 2,000 held-out images. Compared, 3 seeds each: the single-task net of each
task (trained on its own source only, the pipeline's baselines) and the multi-task net (one
CNN, three heads) under each sampler: proportional, uniform, temperature T = 2, annealed
(proportional -> α = 0.2) and round-robin, homogeneous batches. Every net gets the same
budget: epochs of 94 steps (one pass over all 5,994 training images in batches of 64), so the
single-task net of a 54-image task is not starved of steps (it sees its images many times
per epoch and stops early on its validation images). The seeds' data-efficiency claim,
measured: the small task's accuracy with and without the large task's images behind the
shared encoder.

Usage::

    python benchmarks/run_unequal_mnist.py            # 5 samplers x 3 seeds + baselines
    python benchmarks/run_unequal_mnist.py --quick    # 1 sampler, 1 seed, 2 epochs
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import (
    RESULTS_DIR,
    fmt_mean_std,
    machine_lines,
    markdown_table,
    mean_std,
    worker_run_info,
    write_results,
)

SIZES = {"digit": 6000, "parity": 600, "gt4": 60}
N_TEST = 2000
#: Steps per epoch for every net: one pass over all training images (90% of 6,660), batch 64.
STEPS = 94
SAMPLERS: dict[str, dict[str, Any]] = {
    "proportional": {"strategy": "proportional"},
    "uniform": {"strategy": "uniform"},
    "temperature T=2": {"strategy": "temperature", "temperature": 2.0},
    "annealed": {"strategy": "annealed", "anneal_end": 0.2},
    "round_robin": {"strategy": "round_robin"},
}
LABELS = {
    "digit": lambda d: d.astype(str),
    "parity": lambda d: np.where(d % 2 == 0, "even", "odd"),
    "gt4": lambda d: np.where(d > 4, "yes", "no"),
}


def build_sources(seed: int = 0) -> dict[str, pd.DataFrame]:
    """One frame per task: its disjoint labelled images (train/val) plus the shared test
    images, labelled for that task only; a ``split`` column says which is which."""
    from polytask.data.datasets.multimnist import read_mnist_test
    from polytask.data.datasets.root import resolve_data_root

    images, digits = read_mnist_test(resolve_data_root(None))
    order = np.random.default_rng(seed).permutation(len(digits))
    test, rest = order[:N_TEST], order[N_TEST:]
    frames, start = {}, 0
    for task, size in SIZES.items():
        own = rest[start : start + size]
        start += size
        n_val = max(6, size // 10)
        rows = np.concatenate([own, test])
        split = ["val"] * n_val + ["train"] * (size - n_val) + ["test"] * N_TEST
        frames[task] = pd.DataFrame(
            {"image": list(images[rows]), task: LABELS[task](digits[rows]), "split": split}
        )
    return frames


def _raw(sampling: dict[str, Any], seed: int, epochs: int, baselines: bool) -> dict[str, Any]:
    return {
        "seed": seed,
        "baselines": baselines,
        "data": {
            "input": {"name": "image"},
            "split": {"method": "column", "column": "split"},
            "sources": [{"name": t, "tasks": [t]} for t in SIZES],
        },
        "tasks": [
            {"name": "digit", "kind": "multiclass", "target": "digit"},
            {"name": "parity", "kind": "binary", "target": "parity", "positive": "odd"},
            {"name": "gt4", "kind": "binary", "target": "gt4"},
        ],
        "model": {
            "encoder": {"name": "cnn", "widths": [16, 32, 64], "dropout": 0.1},
            "head": {"widths": [32]},
        },
        # Every net, single-task baselines included, gets the same number of steps: an epoch
        # is one pass over all training images of the three sources in batches of 64.
        "sampling": {**sampling, "batches": "homogeneous", "epoch": "steps", "steps": STEPS},
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "lr": 2e-3,
            "patience": 5,
            "progress": False,
            "threads": 1,
            "criterion": "mean_relative",
        },
    }


def one_run(name: str, seed: int, epochs: int, baselines: bool) -> dict[str, Any]:
    from polytask.config import config_from_dict
    from polytask.run.pipeline import run

    frames = build_sources()
    started = time.perf_counter()
    cfg = config_from_dict(_raw(SAMPLERS[name], seed, epochs, baselines))
    result = run(cfg, frames=frames, quiet=True)
    return {
        "sampler": name,
        "seed": seed,
        "accuracy": {t: m["accuracy"] for t, m in result.metrics.items()},
        "single": {t: m["accuracy"] for t, m in result.baseline_metrics.items()},
        "seconds": time.perf_counter() - started,
        "best_epoch": result.fit.best_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS_DIR))
    args = parser.parse_args()
    names = list(SAMPLERS)
    if args.quick:
        names, args.seeds, args.epochs = ["uniform"], [0], 2
    jobs = [(n, s, args.epochs, n == names[0]) for s in args.seeds for n in names]
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(one_run, *job) for job in jobs]
        for future in as_completed(futures):
            runs.append(future.result())
            r = runs[-1]
            print(r["sampler"], r["seed"], r["accuracy"], r["single"], f"{r['seconds']:.0f}s")
    single = {t: [r["single"][t] for r in runs if r["single"]] for t in SIZES}

    def delta(acc: dict[str, float], seed: int) -> float:
        ref = next(r["single"] for r in runs if r["seed"] == seed and r["single"])
        return 100 * float(np.mean([-(acc[t] - ref[t]) / ref[t] for t in SIZES]))

    rows = [
        ["single-task"]
        + [fmt_mean_std(single[t]) for t in SIZES]
        + ["0 (reference)", f"{mean_std([r['seconds'] for r in runs if r['single']])[0]:.0f}*"]
    ]
    for name in names:
        mine = [r for r in runs if r["sampler"] == name]
        rows.append(
            [name]
            + [fmt_mean_std([r["accuracy"][t] for r in mine]) for t in SIZES]
            + [
                fmt_mean_std([delta(r["accuracy"], r["seed"]) for r in mine], 2),
                f"{mean_std([r['seconds'] for r in mine])[0]:.0f}",
            ]
        )
    info = worker_run_info()
    md = [
        "# Unequal task sizes on MNIST digits: 6,000 / 600 / 60 labels",
        "",
        *machine_lines(info),
        "",
        __doc__.split("Usage::")[0].split("\n", 2)[2].strip(),
        "",
        f"Test accuracy on the same {N_TEST} held-out images, mean ± std over seeds "
        f"{args.seeds}; CNN [16, 32, 64] (ResNet-style), towers [32], batch 64, AdamW 2e-3, up to "
        f"{args.epochs} epochs with early stopping on the validation criterion. Δm = 100 · mean "
        "over tasks of −(acc − acc_single) / acc_single, per seed: **lower is better, negative = "
        "better than the single-task nets**. Seconds: wall time per run (* the single-task row's "
        "time is that of the run that also trained the baselines).",
        "",
        *markdown_table(
            ["model", "digit (6000)", "parity (600)", "gt4 (60)", "Δm % (↓)", "s"], rows
        ),
    ]
    write_results("unequal_mnist", md, {"info": info, "runs": runs}, Path(args.out))
    print("\n".join(md))


if __name__ == "__main__":
    main()
