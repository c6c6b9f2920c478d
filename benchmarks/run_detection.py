"""Detection, counting and segmentation of MNIST digits: single-task nets vs one shared backbone.

Data: the registered ``mnist_detection`` dataset (:mod:`polytask.data.datasets.mnist_detection`):
64 x 64 canvases of 1-5 real MNIST test digits at random scales (16-32 px) and positions,
from disjoint pools of source digits per split (the test canvases show handwriting no training
canvas shows). Tasks and reported metrics (test split):

* ``detection``: each digit's box and class (kind ``detection``, a CenterNet head: Zhou, Wang
  & Krähenbühl, "Objects as Points", 2019): COCO mAP@[.5:.95] (and mAP@.5);
* ``count``: how many digits (kind ``regression``): MAE;
* ``segmentation``: which digit class owns each pixel (11 classes with background): mIoU.

Models, on the same ResNet-style ``cnn`` encoder (widths ``WIDTHS``, one block per stage, so the
last feature map has stride 4 = the CenterNet grid):

* ``single``: one net per task, trained on that task alone;
* ``joint``: one shared encoder, one head per task (hard sharing; the seeds' "a shared
  convolutional layer and a unique head for each object detection and segmentation task").

Every run: ``--epochs`` epochs, batch 32, AdamW (lr 5e-3, weight decay 1e-4), cosine
schedule, equal static task weights, no early stopping, the checkpoint of the best validation
loss. Δm vs the single-task nets (:func:`polytask.evaluate.delta.delta_m`, paired per seed,
lower is better). Each run is on one torch thread; ``--workers`` runs go in parallel.

Usage::

    python benchmarks/run_detection.py --seeds 0 1   # 2 models x 2 seeds, 1,500 train canvases
    python benchmarks/run_detection.py --quick       # smoke: 1 seed, 1 epoch, 200 canvases
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    machine_lines,
    markdown_table,
    mean_std,
    worker_run_info,
    write_results,
)
from polytask.config import config_from_dict
from polytask.evaluate.delta import delta_m

#: Task name -> (kind, target column, reported metric, higher is better).
TASKS: dict[str, tuple[str, str, str, bool]] = {
    "detection": ("detection", "boxes", "map", True),
    "count": ("regression", "count", "mae", False),
    "segmentation": ("segmentation", "mask", "miou", True),
}
MODELS = ("single", "joint")
WIDTHS = [8, 16, 32]
TOWER = [64]
DECODER = [16]
#: Canvases per split; --quick keeps a few.
CANVASES = {"train": 1500, "val": 250, "test": 500}
QUICK_CANVASES = {"train": 160, "val": 40, "test": 40}


def raw_config(job: dict[str, Any]) -> dict[str, Any]:
    """The run configuration (a raw dict, validated by ``config_from_dict``) of one job."""
    names = [job["task"]] if job["model"] == "single" else list(TASKS)
    return {
        "seed": job["seed"],
        "baselines": False,
        "data": {"input": {"name": "image"}, "split": {"method": "column", "column": "split"}},
        "tasks": [{"name": n, "kind": TASKS[n][0], "target": TASKS[n][1]} for n in names],
        "model": {
            "encoder": {"name": "cnn", "widths": list(WIDTHS)},
            "architecture": {"name": "hard"},
            "head": {"widths": list(TOWER), "decoder_channels": list(DECODER)},
        },
        "balancer": {"name": "equal"},
        "train": {
            "epochs": job["epochs"],
            "batch_size": 32,
            "lr": 5e-3,
            "weight_decay": 1e-4,
            "scheduler": "cosine",
            "patience": None,
            "criterion": "val_loss",
            "progress": False,
        },
    }


def load_frame(quick: bool) -> Any:
    """The generated canvases (from the data root's MNIST test files)."""
    from polytask.data.datasets.mnist_detection import load_mnist_detection
    from polytask.data.datasets.root import resolve_data_root

    return load_mnist_detection(resolve_data_root(None), QUICK_CANVASES if quick else CANVASES)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One training run (in a worker process, on one torch thread)."""
    import torch

    from polytask.run.pipeline import run

    torch.set_num_threads(1)
    frame = load_frame(job["quick"])
    started = time.perf_counter()
    result = run(config_from_dict(raw_config(job)), frame=frame, quiet=True)
    return {
        "model": job["model"],
        "task": job.get("task"),
        "seed": job["seed"],
        "metrics": {t: result.metrics[t][TASKS[t][2]] for t in result.metrics},
        "all_metrics": result.metrics,
        "best_epoch": result.fit.best_epoch,
        "epochs": len(result.fit.history),
        "seconds": time.perf_counter() - started,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: each task's metric (and mAP@.5), Δm vs the same seed's single nets."""
    higher = {t: v[3] for t, v in TASKS.items()}
    seeds = sorted({r["seed"] for r in runs})
    single: dict[int, dict[str, float]] = {s: {} for s in seeds}
    single_all: dict[int, dict[str, dict[str, float]]] = {s: {} for s in seeds}
    for r in runs:
        if r["model"] == "single":
            single[r["seed"]].update(r["metrics"])
            single_all[r["seed"]].update(r["all_metrics"])
    out: dict[str, Any] = {}
    for model in MODELS:
        group = [r for r in runs if r["model"] == model]
        if not group:
            continue
        if model == "single":
            by_seed = [single[s] for s in seeds if single[s]]
            map50 = [
                single_all[s]["detection"]["map_50"] for s in seeds if "detection" in single_all[s]
            ]
            deltas: list[float] = []
        else:
            by_seed = [r["metrics"] for r in group]
            map50 = [r["all_metrics"]["detection"]["map_50"] for r in group]
            deltas = [
                delta_m(r["metrics"], single[r["seed"]], higher)
                for r in group
                if set(single[r["seed"]]) == set(TASKS)
            ]
        out[model] = {
            "seeds": sorted({r["seed"] for r in group}),
            "metrics": {t: mean_std([m[t] for m in by_seed if t in m]) for t in TASKS},
            "map_50": mean_std(map50),
            "delta_m": mean_std(deltas) if deltas else (math.nan, math.nan),
            "seconds": mean_std(
                [sum(r["seconds"] for r in group if r["seed"] == s) for s in seeds]
            ),
        }
    return out


def _fmt(value: tuple[float, float], digits: int = 3) -> str:
    mean, std = value
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def save(
    runs: list[dict[str, Any]], n_jobs: int, args: argparse.Namespace, wall: float
) -> list[str]:
    """Write the results of the runs done so far; returns the markdown lines."""
    runs = sorted(runs, key=lambda r: (MODELS.index(r["model"]), r["task"] or "", r["seed"]))
    summary = summarise(runs)
    info = worker_run_info(args.workers, wall)
    sizes = QUICK_CANVASES if args.quick else CANVASES
    lines = [
        "# MNIST detection: detection + count + segmentation, single-task vs joint",
        "",
        *machine_lines(info),
        f"- seeds: {args.seeds}; data: `mnist_detection` 64 x 64 canvases of 1-5 MNIST test "
        f"digits, {sizes['train']:,} train / {sizes['val']:,} val / {sizes['test']:,} test"
        + (" — QUICK subset" if args.quick else ""),
        f"- budget: {args.epochs} epochs, batch 32, AdamW lr 5e-3, weight decay 1e-4, cosine "
        "schedule, equal task weights, checkpoint at the best validation loss",
        f"- encoder `cnn` widths {WIDTHS} (stride 4 = the CenterNet grid); count tower {TOWER} "
        f"on pooled features; segmentation decoder and CenterNet branches {DECODER[0]} channels",
        "",
        "Test split, mean ± std over seeds. detection: COCO mAP@[.5:.95] (mAP@.5 beside it); "
        "count: MAE (digits); segmentation: mIoU over background + 10 digit classes. Δm (%) vs "
        "the single-task nets of the same seed (lower is better, negative: joint beats "
        "single). Seconds: one seed's training (for single, the three nets together), on one "
        "thread beside the other worker and whatever else ran on the machine.",
        "",
    ]
    rows = [
        [
            model,
            _fmt(row["metrics"]["detection"]),
            _fmt(row["map_50"]),
            _fmt(row["metrics"]["count"]),
            _fmt(row["metrics"]["segmentation"]),
            "0 (reference)" if model == "single" else _fmt(row["delta_m"], 2),
            _fmt(row["seconds"], 0),
        ]
        for model, row in summary.items()
    ]
    header = ["model", "mAP@[.5:.95]", "mAP@.5", "count MAE", "seg. mIoU", "Δm (%)", "seconds"]
    lines += markdown_table(header, rows)
    last = sum(r["best_epoch"] == r["epochs"] for r in runs)
    lines += [
        "",
        f"Best validation epoch = last epoch in {last} of {len(runs)} runs.",
        f"Wall time: {wall / 60:.1f} min with {args.workers} workers.",
    ]
    if len(runs) < n_jobs:
        lines += ["", f"PARTIAL: {len(runs)} of {n_jobs} runs done."]
    data = {
        "info": info,
        "settings": {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "quick": args.quick,
            "canvases": sizes,
            "config": raw_config({"seed": 0, "model": "joint", "epochs": args.epochs}),
        },
        "complete": len(runs) == n_jobs,
        "summary": summary,
        "runs": runs,
    }
    write_results("detection", lines, data, args.out)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = [0], 1
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results.
            args.out = Path(tempfile.gettempdir()) / "polytask-detection-quick"
    # Seed by seed (an interrupted run keeps complete seeds); the joint run first, it is longest.
    jobs = [
        {"model": m, "task": t, "seed": s, "epochs": args.epochs, "quick": args.quick}
        for s in args.seeds
        for m in ("joint", "single")
        for t in (TASKS if m == "single" else [None])
    ]
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for future in as_completed([pool.submit(run_job, job) for job in jobs]):
            r = future.result()
            runs.append(r)
            shown = ", ".join(f"{t} {v:.4f}" for t, v in r["metrics"].items())
            label = r["model"] + (f":{r['task']}" if r["task"] else "")
            print(
                f"[{len(runs)}/{len(jobs)}] {label} seed={r['seed']} {shown} ({r['seconds']:.0f}s)",
                flush=True,
            )
            save(runs, len(jobs), args, time.perf_counter() - started)
    print("\n".join(save(runs, len(jobs), args, time.perf_counter() - started)))


if __name__ == "__main__":
    main()
