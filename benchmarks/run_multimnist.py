"""Sharing architectures on MultiMNIST: single-task nets, hard sharing, MTAN, soft sharing and
MMoE with CNN experts, on two image-level tasks and one per-pixel task.

Data: the registered ``multimnist`` dataset (:mod:`polytask.data.datasets.multimnist`), two
overlapping MNIST test digits per 36 x 36 image as in Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization", NeurIPS 2018, plus a segmentation mask (background / left digit /
right digit). Its fixed split (7,000 train, 1,000 validation, 2,000 test images, built from
disjoint pools of source digits) is used by every run. Tasks and reported metrics (test split):
``left`` and ``right`` digit (accuracy), ``mask`` (mean IoU over the three classes).

Models, all on the same ResNet-style ``cnn`` encoder (widths ``WIDTHS``, one residual block per
stage), image-level heads pooling the last feature map into a tower of ``TOWER`` units, the
segmentation head a ``DECODER``-channel 3x3 conv decoder upsampled to 36 x 36:

* ``single``: one net per task, trained on that task alone (what the pipeline's baselines do);
* ``hard``: one shared encoder, one head per task (Caruana 1997);
* ``mtan``: the shared encoder with a soft-attention module per task and stage (Liu, Johns &
  Davison, CVPR 2019; :mod:`polytask.models.mtan`, attention hidden width = stage width / 4);
* ``soft``: one encoder per task, coupled by the L2 penalty (Duong et al. 2015, λ = 1e-3);
* ``mmoe``: ``MMOE_EXPERTS`` CNN experts mixed per task by a softmax gate computed from one more
  CNN's pooled features (Ma et al., KDD 2018, as :class:`polytask.models.architectures.MMoE`
  builds it for feature-map encoders).

Every run has the same budget: ``--epochs`` epochs, batch 128, AdamW (lr 3e-3, weight decay
1e-4), cosine schedule, equal static task weights, no early stopping, the checkpoint of the
best validation loss. The seed changes the initialisation and the batch order, not the data.
Reported: per task mean ± std over seeds, and Δm vs the single-task nets
(:func:`polytask.evaluate.delta.delta_m`, ``100 · mean_k −(M_k − S_k) / S_k`` with every metric
higher-is-better, paired per seed; lower is better, negative means the multi-task model beats
the single-task nets), parameter counts and the seconds each run took.

Budget: at most ~40 minutes with 2 workers on a 2-core machine that runs nothing else (3 seeds x
7 trainings of 3 epochs; an MTAN step costs ~3 hard-sharing steps, soft sharing and MMoE ~2).
Sharing the cores with other jobs stretches it in proportion; the wall time is recorded, and the
results files are rewritten after every run (marked PARTIAL until the last), seed by seed.

Each run is on one torch thread; ``--workers`` runs go in parallel.

Usage::

    python benchmarks/run_multimnist.py             # 5 models x 3 seeds, 3 epochs
    python benchmarks/run_multimnist.py --quick     # smoke: 1 seed, 1 epoch, 600 images
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

#: Task name -> (kind, target column, reported metric).
TASKS: dict[str, tuple[str, str, str]] = {
    "left": ("multiclass", "left", "accuracy"),
    "right": ("multiclass", "right", "accuracy"),
    "mask": ("segmentation", "mask", "miou"),
}
HIGHER_IS_BETTER = {t: True for t in TASKS}
MODELS = ("single", "hard", "mtan", "soft", "mmoe")
WIDTHS = [8, 16, 32]
TOWER = [64]
DECODER = [16]
MMOE_EXPERTS = 2
#: Rows of each split kept by --quick.
QUICK_ROWS = {"train": 400, "val": 100, "test": 100}


def model_section(model: str) -> dict[str, Any]:
    """The ``[model]`` config section of ``model`` (single-task nets use hard sharing)."""
    arch: dict[str, Any] = {"name": "hard" if model == "single" else model}
    if model == "mmoe":
        arch["n_experts"] = MMOE_EXPERTS
    return {
        "encoder": {"name": "cnn", "widths": list(WIDTHS)},
        "architecture": arch,
        "head": {"widths": list(TOWER), "decoder_channels": list(DECODER)},
    }


def raw_config(job: dict[str, Any]) -> dict[str, Any]:
    """The run configuration (a raw dict, validated by ``config_from_dict``) of one job."""
    tasks = [job["task"]] if job["model"] == "single" else list(TASKS)
    return {
        "seed": job["seed"],
        "baselines": False,
        "data": {
            "input": {"name": "image"},
            "split": {"method": "column", "column": "split"},
        },
        "tasks": [
            {"name": name, "kind": TASKS[name][0], "target": TASKS[name][1]} for name in tasks
        ],
        "model": model_section(job["model"]),
        "balancer": {"name": "equal"},
        "train": {
            "epochs": job["epochs"],
            "batch_size": 128,
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "scheduler": "cosine",
            "patience": None,
            "criterion": "val_loss",
            "progress": False,
        },
    }


def load_frame(quick: bool) -> Any:
    """The MultiMNIST frame (a few hundred rows per split with ``quick``)."""
    import pandas as pd

    from polytask.data.datasets import load_dataset

    frame = load_dataset("multimnist")
    if quick:
        parts = [frame[frame["split"] == s].head(n) for s, n in QUICK_ROWS.items()]
        frame = pd.concat(parts, ignore_index=True)
    return frame


def parameter_count(model: str, task: str | None = None) -> int:
    """Trainable parameters of ``model`` (of the ``task`` net for ``single``)."""
    from polytask.data.spec import InputSpec
    from polytask.models.model import build_model
    from polytask.tasks import Task

    names = [task] if task is not None else list(TASKS)
    tasks = [
        Task(
            n,
            TASKS[n][0],
            TASKS[n][1],
            classes=[str(c) for c in range(10 if TASKS[n][0] == "multiclass" else 3)],
        )
        for n in names
    ]
    cfg = config_from_dict(raw_config({"seed": 0, "model": model, "task": task, "epochs": 1}))
    spec = InputSpec(kind="image", shape=[1, 36, 36])
    net = build_model(tasks, spec, cfg.model, seed=0)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One training run (in a worker process, on one torch thread)."""
    import torch

    from polytask.run.pipeline import run

    torch.set_num_threads(1)
    frame = load_frame(job["quick"])
    cfg = config_from_dict(raw_config(job))
    started = time.perf_counter()
    result = run(cfg, frame=frame, quiet=True)
    seconds = time.perf_counter() - started
    metrics = {t: result.metrics[t][TASKS[t][2]] for t in result.metrics}
    return {
        "model": job["model"],
        "task": job.get("task"),
        "seed": job["seed"],
        "metrics": metrics,
        "all_metrics": result.metrics,
        "best_epoch": result.fit.best_epoch,
        "epochs": len(result.fit.history),
        "seconds": seconds,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: each task's metric, Δm vs the same seed's single-task nets, seconds."""
    seeds = sorted({r["seed"] for r in runs})
    single: dict[int, dict[str, float]] = {s: {} for s in seeds}
    single_seconds: dict[int, float] = dict.fromkeys(seeds, 0.0)
    for r in runs:
        if r["model"] == "single":
            single[r["seed"]].update(r["metrics"])
            single_seconds[r["seed"]] += r["seconds"]
    out: dict[str, Any] = {}
    for model in MODELS:
        group = [r for r in runs if r["model"] == model]
        if not group:
            continue
        if model == "single":
            by_seed = [single[s] for s in seeds if single[s]]
            seconds = [single_seconds[s] for s in seeds if single[s]]
            deltas: list[float] = []
        else:
            by_seed = [r["metrics"] for r in group]
            seconds = [r["seconds"] for r in group]
            deltas = [
                delta_m(r["metrics"], single[r["seed"]], HIGHER_IS_BETTER)
                for r in group
                if single[r["seed"]]
            ]
        out[model] = {
            "seeds": sorted({r["seed"] for r in group}),
            "metrics": {t: mean_std([m[t] for m in by_seed if t in m]) for t in TASKS},
            "delta_m": mean_std(deltas) if deltas else (math.nan, math.nan),
            "seconds": mean_std(seconds),
        }
    return out


def _fmt(value: tuple[float, float], scale: float = 1.0, digits: int = 4) -> str:
    mean, std = value
    if math.isnan(mean):
        return "-"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def report(
    summary: dict[str, Any],
    counts: dict[str, int],
    info: dict[str, Any],
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
) -> list[str]:
    lines = [
        "# MultiMNIST: single-task vs hard sharing vs MTAN vs soft sharing vs MMoE",
        "",
        *machine_lines(info),
        f"- seeds: {args.seeds}; data: `multimnist` (7,000 train / 1,000 val / 2,000 test "
        "images of 36 x 36 from disjoint pools of MNIST test digits)"
        + (" — QUICK subset" if args.quick else ""),
        f"- budget: {args.epochs} epochs, batch 128, AdamW lr 3e-3, weight decay 1e-4, cosine "
        "schedule, equal task weights, checkpoint at the best validation loss",
        f"- encoder `cnn` widths {WIDTHS} (1 residual block per stage); towers {TOWER} on "
        f"pooled features; segmentation decoder {DECODER} channels; MTAN attention "
        f"hidden width = stage width / 4; soft sharing L2 λ = 1e-3; MMoE {MMOE_EXPERTS} CNN "
        "experts + a CNN gate input",
        "- parameters: " + ", ".join(f"{name} {count:,}" for name, count in counts.items()),
        "",
        "Test split, mean ± std over seeds. left/right: accuracy; mask: mean IoU "
        "(background, left, right). Δm (%) vs the single-task nets of the same seed, every "
        "metric higher-is-better: lower Δm is better, negative beats single-task. Seconds: "
        "wall time of one training run (for single, the three nets together), on one thread "
        f"next to {args.workers - 1} other worker(s) and whatever else ran on the machine.",
        "",
    ]
    header = ["model", "left acc.", "right acc.", "mask mIoU", "Δm (%)", "seconds / run"]
    rows = []
    for model, row in summary.items():
        rows.append(
            [
                model,
                _fmt(row["metrics"]["left"]),
                _fmt(row["metrics"]["right"]),
                _fmt(row["metrics"]["mask"]),
                "0 (reference)" if model == "single" else _fmt(row["delta_m"], digits=2),
                _fmt(row["seconds"], digits=0),
            ]
        )
    lines += markdown_table(header, rows)
    last = sum(r["best_epoch"] == r["epochs"] for r in runs)
    if runs:
        lines += [
            "",
            f"The best validation epoch is the last one in {last} of {len(runs)} runs"
            + (
                ": every model is still improving when the budget ends, so the table ranks "
                f"how far each architecture gets in {args.epochs} epochs, not its converged "
                "accuracy."
                if last == len(runs)
                else "."
            ),
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = [0], 1
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results.
            args.out = Path(tempfile.gettempdir()) / "polytask-multimnist-quick"

    counts: dict[str, int] = {}
    for model in args.models:
        if model == "single":
            for task in TASKS:
                counts[f"single:{task}"] = parameter_count(model, task)
        else:
            counts[model] = parameter_count(model)
    print(f"parameter counts: {counts}")
    jobs: list[dict[str, Any]] = []
    # Seed by seed, so that an interrupted run leaves complete seeds in the partial results;
    # within a seed the costliest runs first, so that the two workers finish together.
    for seed in args.seeds:
        for model in sorted(args.models, key=("mtan", "soft", "mmoe", "hard", "single").index):
            for task in TASKS if model == "single" else [None]:
                jobs.append(
                    {
                        "model": model,
                        "task": task,
                        "seed": seed,
                        "epochs": args.epochs,
                        "quick": args.quick,
                    }
                )
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for future in as_completed(futures):
            r = future.result()
            runs.append(r)
            shown = ", ".join(f"{t} {v:.4f}" for t, v in r["metrics"].items())
            label = r["model"] + (f":{r['task']}" if r["task"] else "")
            print(
                f"[{len(runs)}/{len(jobs)}] {label:<13} seed={r['seed']} {shown} "
                f"({r['seconds']:.0f}s)",
                flush=True,
            )
            if len(runs) < len(jobs):
                # Hours on a busy machine: keep what is done if the run is cut short.
                save(runs, len(jobs), counts, args, time.perf_counter() - started)
    lines = save(runs, len(jobs), counts, args, time.perf_counter() - started)
    print("\n".join(lines))


def save(
    runs: list[dict[str, Any]],
    n_jobs: int,
    counts: dict[str, int],
    args: argparse.Namespace,
    wall: float,
) -> list[str]:
    """Write the results of the runs done so far; returns the markdown lines."""
    runs = sorted(runs, key=lambda r: (MODELS.index(r["model"]), r["task"] or "", r["seed"]))
    summary = summarise(runs)
    info = worker_run_info(args.workers, wall)
    lines = report(summary, counts, info, args, runs)
    lines += ["", f"Wall time: {wall / 60:.1f} min with {args.workers} workers."]
    if len(runs) < n_jobs:
        lines += ["", f"PARTIAL: {len(runs)} of {n_jobs} runs done."]
    data = {
        "info": info,
        "settings": {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "quick": args.quick,
            "models": {m: model_section(m) for m in args.models},
            "tasks": TASKS,
        },
        "parameter_counts": counts,
        "complete": len(runs) == n_jobs,
        "summary": summary,
        "runs": runs,
    }
    write_results("multimnist", lines, data, args.out)
    return lines


if __name__ == "__main__":
    main()
