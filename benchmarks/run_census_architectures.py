"""Sharing architectures on UCI Census-Income (KDD): single-task nets, shared-bottom, MMoE, CGC
and PLE, at comparable parameter counts.

The real-data pair of Ma, Zhao, Yi, Chen, Hong and Chi, "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018, Section 6.2 (income > $50K and
marital status "never married", both binary, AUROC), also the census study of Tang, Liu, Zhao and
Gong, "Progressive Layered Extraction (PLE)", RecSys 2020. The data and the training recipe are
``examples/census.toml`` (tuned on the validation split): MLP encoder with dropout 0.3 and batch
norm, towers of 64 units, AdamW lr 1e-3, weight decay 1e-4, batch 256, cosine schedule, static
equal task weights, checkpoint chosen on the validation AUROCs (``mean_relative``).

Models (every expert is built like the configured encoder, with its own embeddings; widths are
chosen so the multi-task models have about the same number of parameters, counted and
reported):

* ``single``: the pipeline's baselines, one net per task with the tuned encoder [256, 128] and
  a tower, trained on that task alone by :func:`polytask.run.baselines.train_baseline` exactly as
  :func:`polytask.run.pipeline.run` trains its baselines, on the same split;
* ``hard`` (shared-bottom): the tuned encoder [256, 128], one tower per task;
* ``mmoe4`` / ``mmoe8``: 4 experts of [72, 36] / 8 experts of [32, 16], a linear softmax gate
  per task on the input;
* ``cgc``: PLE with one level (2 shared experts and 1 expert per task, [72, 36]);
* ``ple2``: PLE with two levels (same first level, upper experts of 36 units).

Every run has the same budget and split: a fixed number of epochs without early stopping, the
checkpoint of the best validation epoch, one train/val/test split (random 70/15/15, split seed
0) shared by all seeds; the seed changes the initialisation, dropout and batch order. Reported:
test AUROC per task, mean ± std over seeds, and Δm vs the single-task nets
(:func:`polytask.evaluate.delta.delta_m`: ``100 · mean_k −(AUROC_k − AUROC_k^single) /
AUROC_k^single``, paired per seed; lower is better, negative means the multi-task model beats
the single-task nets).

Each run is on one torch thread; ``--workers`` runs go in parallel.

Usage::

    python benchmarks/run_census_architectures.py             # 6 models x 3 seeds, 20 epochs
    python benchmarks/run_census_architectures.py --quick     # smoke: 1 seed, 1 epoch, 3 models
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    example_config,
    machine_lines,
    markdown_table,
    mean_std,
    worker_run_info,
    write_results,
)
from polytask.config import RunConfig, config_from_dict
from polytask.evaluate.delta import delta_m

TASKS = ("income", "never_married")
#: AUROC, the paper's metric: higher is better (delta_m flips its sign accordingly).
HIGHER_IS_BETTER = dict.fromkeys(TASKS, True)
SPLIT_SEED = 0
#: Model name -> (architecture section, encoder widths). The tuned encoder is [256, 128]; the
#: expert widths are the [w, w/2] closest to the shared-bottom's parameter count.
MODELS: dict[str, tuple[dict[str, Any], list[int]]] = {
    "single": ({"name": "hard"}, [256, 128]),
    "hard": ({"name": "hard"}, [256, 128]),
    "mmoe4": ({"name": "mmoe", "n_experts": 4}, [72, 36]),
    "mmoe8": ({"name": "mmoe", "n_experts": 8}, [32, 16]),
    "cgc": ({"name": "ple", "levels": 1, "shared_experts": 2, "task_experts": 1}, [72, 36]),
    "ple2": ({"name": "ple", "levels": 2, "shared_experts": 2, "task_experts": 1}, [72, 36]),
}
DESCRIPTIONS = {
    "single": "one net per task: encoder [256, 128] + tower [64]",
    "hard": "shared-bottom: encoder [256, 128], towers [64]",
    "mmoe4": "MMoE: 4 experts [72, 36], a softmax gate per task, towers [64]",
    "mmoe8": "MMoE: 8 experts [32, 16], a softmax gate per task, towers [64]",
    "cgc": "CGC (PLE, 1 level): 2 shared + 1 per-task experts [72, 36], towers [64]",
    "ple2": "PLE, 2 levels: 2 shared + 1 per-task experts [72, 36], then [36], towers [64]",
}


def raw_config(job: dict[str, Any]) -> dict[str, Any]:
    """The run configuration (as a raw dict) of one job: the tuned census example with the
    job's architecture, seed and budget."""
    raw = example_config("census", ["baselines=false"]).model_dump(mode="json")
    arch, widths = MODELS[job["model"]]
    raw["seed"] = job["seed"]
    raw["data"]["split"]["seed"] = SPLIT_SEED
    raw["model"]["architecture"] = dict(arch)
    raw["model"]["encoder"]["widths"] = list(widths)
    raw["train"].update(
        epochs=job["epochs"],
        # A fixed budget: every run trains the same number of epochs; the checkpoint is the
        # best validation epoch (the example's criterion, mean relative AUROC change).
        patience=None,
        progress=False,
        threads=1,
    )
    return raw


def build_config(job: dict[str, Any]) -> RunConfig:
    return config_from_dict(raw_config(job))


def parameter_count(model: str) -> int:
    """Trainable parameters of ``model`` on the census inputs (both single-task nets summed)."""
    from polytask.data.prepare import prepare_data
    from polytask.models.model import build_model

    cfg = build_config({"model": model, "seed": 0, "epochs": 1})
    data = prepare_data(cfg)
    tasks = data.tasks
    groups = [[t] for t in tasks] if model == "single" else [tasks]
    total = 0
    for group in groups:
        net = build_model(group, data.input_spec, cfg.model, seed=0)
        total += sum(p.numel() for p in net.parameters() if p.requires_grad)
    return total


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One training run (in a worker process, on one torch thread)."""
    import torch

    from polytask.data.prepare import prepare_data
    from polytask.run.baselines import train_baseline
    from polytask.run.pipeline import run

    torch.set_num_threads(1)
    cfg = build_config(job)
    started = time.perf_counter()
    if job["model"] == "single":
        # The pipeline's own baseline for one task (polytask.run.baselines), on the test split.
        data = prepare_data(cfg)
        task = next(t for t in data.tasks if t.name == job["task"])
        assert data.test is not None
        baseline = train_baseline(cfg, data, task, data.test, None, quiet=True)
        metrics, fit = {task.name: baseline.metrics}, baseline.fit
    else:
        result = run(cfg, quiet=True)
        metrics, fit = result.metrics, result.fit
    seconds = time.perf_counter() - started
    return {
        "model": job["model"],
        "task": job.get("task"),
        "seed": job["seed"],
        "metrics": metrics,
        "auroc": {t: m["auroc"] for t, m in metrics.items()},
        "best_epoch": fit.best_epoch,
        "epochs": len(fit.history),
        "seconds": seconds,
    }


def merge_single(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``single`` row per seed from its per-task runs (wall time summed: the cost of the
    single-task alternative is training every net)."""
    out = [r for r in runs if r["model"] != "single"]
    for seed in sorted({r["seed"] for r in runs if r["model"] == "single"}):
        parts = [r for r in runs if r["model"] == "single" and r["seed"] == seed]
        auroc = {t: v for r in parts for t, v in r["auroc"].items()}
        if set(auroc) != set(TASKS):
            continue
        out.append(
            {
                "model": "single",
                "seed": seed,
                "metrics": {t: m for r in parts for t, m in r["metrics"].items()},
                "auroc": auroc,
                "best_epoch": {r["task"]: r["best_epoch"] for r in parts},
                "epochs": max(r["epochs"] for r in parts),
                "seconds": sum(r["seconds"] for r in parts),
            }
        )
    return out


def add_delta_m(runs: list[dict[str, Any]]) -> None:
    """Each multi-task run's Δm against the single-task nets of the same seed (paired)."""
    reference = {r["seed"]: r["auroc"] for r in runs if r["model"] == "single"}
    for r in runs:
        ref = reference.get(r["seed"])
        r["delta_m"] = math.nan if ref is None else delta_m(r["auroc"], ref, HIGHER_IS_BETTER)


def summarise(runs: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Mean ± std over seeds per model."""
    out: dict[str, Any] = {}
    for model in models:
        group = [r for r in runs if r["model"] == model]
        if not group:
            continue
        out[model] = {
            "seeds": sorted(r["seed"] for r in group),
            "auroc": {t: mean_std([r["auroc"][t] for r in group]) for t in TASKS},
            "mean_auroc": mean_std([sum(r["auroc"].values()) / len(TASKS) for r in group]),
            "delta_m": mean_std([r["delta_m"] for r in group]),
            "seconds": mean_std([r["seconds"] for r in group]),
        }
    return out


def paired_vs_hard(runs: list[dict[str, Any]], model: str) -> tuple[float, float]:
    """Per seed, ``model``'s Δm minus shared-bottom's (negative: ``model`` is better)."""
    by = {(r["model"], r["seed"]): r["delta_m"] for r in runs}
    diffs = [
        by[(model, s)] - by[("hard", s)]
        for s in sorted({r["seed"] for r in runs})
        if (model, s) in by and ("hard", s) in by
    ]
    return mean_std(diffs)


def _fmt(value: tuple[float, float], digits: int = 4, signed: bool = False) -> str:
    mean, std = value
    if math.isnan(mean):
        return "-"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}"


def report(
    summary: dict[str, Any],
    runs: list[dict[str, Any]],
    counts: dict[str, int],
    info: dict[str, Any],
    args: argparse.Namespace,
) -> list[str]:
    lines = [
        "# Sharing architectures on Census-Income (KDD)",
        "",
        *machine_lines(info),
        f"- seeds: {args.seeds}; one random 70/15/15 split (split seed {SPLIT_SEED}) of the "
        "99,762-row census test file; the seed changes initialisation, dropout and batch order",
        f"- budget: {args.epochs} epochs for every run, no early stopping, checkpoint of the best "
        "validation epoch (mean relative AUROC change); otherwise `examples/census.toml` (batch "
        "256, AdamW lr 1e-3, weight decay 1e-4, cosine, dropout 0.3, batch norm, equal weights)",
        "",
        "Models (parameter counts include every expert's own embeddings and the gates; "
        "'single' is both single-task nets together):",
        "",
    ]
    lines += [f"- `{m}`: {DESCRIPTIONS[m]}: {counts[m]:,} parameters" for m in summary]
    lines += [
        "",
        "Test AUROC, mean ± std over seeds (higher is better). Δm = 100 · mean over tasks of "
        "−(AUROC − AUROC_single) / AUROC_single, paired per seed against that seed's "
        "single-task nets: **lower is better, negative = better than single-task**. "
        "Time = wall seconds of one run on one thread ('single': both nets).",
        "",
    ]
    header = ["model", "params", "income AUROC", "never_married AUROC", "Δm % (↓)", "time s"]
    rows = [
        [
            m,
            f"{counts[m]:,}",
            _fmt(row["auroc"]["income"]),
            _fmt(row["auroc"]["never_married"]),
            "0 (reference)" if m == "single" else _fmt(row["delta_m"], 3, signed=True),
            f"{row['seconds'][0]:.0f} ± {row['seconds'][1]:.0f}",
        ]
        for m, row in summary.items()
    ]
    lines += markdown_table(header, rows, left=1)
    if "hard" in summary:
        lines += [
            "",
            "Δm of each model minus shared-bottom's, paired per seed (negative: better than "
            "shared-bottom):",
            "",
        ]
        lines += [
            f"- `{m}`: {_fmt(paired_vs_hard(runs, m), 3, signed=True)}"
            for m in summary
            if m not in ("single", "hard")
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.models = [0], 1, ["single", "hard", "mmoe4"]
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results.
            args.out = Path(tempfile.gettempdir()) / "polytask-census-arch-quick"

    counts = {m: parameter_count(m) for m in args.models}
    print(f"parameter counts: {counts}", flush=True)
    jobs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for model in args.models:
            base = {"model": model, "seed": seed, "epochs": args.epochs}
            if model == "single":
                jobs += [{**base, "task": t} for t in TASKS]
            else:
                jobs.append(base)
    # Slowest first, so that the last job does not leave a worker idle for long.
    order = {m: i for i, m in enumerate(["mmoe8", "ple2", "cgc", "mmoe4", "hard", "single"])}
    jobs.sort(key=lambda j: order[j["model"]])
    # The machine may be shared: the load average tells how far the wall times are inflated.
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    raw_runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for future in as_completed(futures):
            r = future.result()
            raw_runs.append(r)
            aurocs = " ".join(f"{t}={v:.4f}" for t, v in r["auroc"].items())
            print(
                f"[{len(raw_runs)}/{len(jobs)}] {r['model']:<6} seed={r['seed']} {aurocs} "
                f"best epoch {r['best_epoch']} ({r['seconds']:.0f}s)",
                flush=True,
            )
    wall = time.perf_counter() - started
    runs = merge_single(raw_runs)
    add_delta_m(runs)
    runs.sort(key=lambda r: (args.models.index(r["model"]), r["seed"]))
    summary = summarise(runs, args.models)
    info = worker_run_info(args.workers, wall)
    info["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    lines = report(summary, runs, counts, info, args)
    load = info["load_average_1min"]
    lines += [
        "",
        f"Wall time: {wall / 60:.1f} min with {args.workers} workers; 1-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end on {info['nproc']} cores "
        "(above the core count, other jobs slowed the runs and the time column shows it).",
    ]
    data = {
        "info": info,
        "settings": {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "split_seed": SPLIT_SEED,
            "models": {
                m: raw_config({"model": m, "seed": 0, "epochs": args.epochs})["model"]
                for m in args.models
            },
            "delta_m": "100 * mean_k -(auroc_k - single_k) / single_k; lower is better",
        },
        "parameter_counts": counts,
        "summary": summary,
        "paired_delta_m_minus_hard": {
            m: paired_vs_hard(runs, m) for m in summary if m not in ("single", "hard")
        },
        "runs": runs,
    }
    write_results("census_architectures", lines, data, args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
