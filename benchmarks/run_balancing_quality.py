"""Quality of every loss-balancing method on real multi-task data, with its cost beside it.

For each dataset (``examples/<name>.toml``: Tox21, 12 binary assays with 17% of labels missing;
QM8, 12 regression targets on very different scales) and each seed:

* one run with ``balancer = equal`` and ``baselines = true`` trains the equal-weight multi-task
  net and one single-task net per task (same encoder, heads and budget): the references;
* one run per balancing method (gradient-level ones in the engine mode given by ``--mode``)
  trains the multi-task net alone.

Every run selects its checkpoint on the validation split (the config's criterion) and is scored
on the test split. Reported per method: the mean over tasks of the primary test metric, Δm%
against the single-task nets of the same seed (one definition, ``polytask.evaluate.delta``;
negative = better than single-task), the worst task's relative change, and the cost (seconds
per training epoch and its ratio to equal weighting in the same benchmark run).

Runs are cached one JSON file per (dataset, method, mode, seed) under ``--cache`` so an
interrupted benchmark resumes where it stopped; ``--workers`` runs that many in parallel, each
on one thread.

Usage::

    python benchmarks/run_balancing_quality.py                      # both datasets, seeds 0 1 2
    python benchmarks/run_balancing_quality.py --quick              # smoke: 1 seed, 3 methods
    python benchmarks/run_balancing_quality.py --datasets tox21 --methods equal mgda famo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    example_config,
    machine_info,
    machine_lines,
    markdown_table,
    mean_std,
    write_results,
)
from polytask.balance import BALANCERS, GradientBalancer, build_balancer
from polytask.errors import ConfigError
from polytask.evaluate.delta import delta_m, relative_change
from polytask.evaluate.metrics import higher_is_better
from polytask.run.pipeline import run
from polytask.tasks import Task

DATASETS = ("tox21", "qm8")
#: (dataset, what, threshold): the best method's mean test metric must reach it.
TARGETS = {"tox21": ("mean test ROC-AUC of the best method", 0.85)}
REFERENCE = "equal"


def is_gradient_level(name: str, tasks: list[Task]) -> bool:
    """Whether ``name`` runs on the gradient engine (it then accepts a ``mode``)."""
    try:
        balancer = build_balancer(name, {"mode": "representation"}, tasks)
    except ConfigError:  # loss-level methods have no ``mode`` key
        return False
    return isinstance(balancer, GradientBalancer)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One training run; returns what the report needs (runs in a worker process)."""
    import torch

    torch.set_num_threads(1)
    overrides = [f"seed={job['seed']}", f"balancer.name={job['method']}"]
    overrides.append(f"baselines={'true' if job['baselines'] else 'false'}")
    if job["mode"] is not None:
        overrides.append(f"balancer.mode={job['mode']}")
    overrides += job["extra"]
    cfg = example_config(job["dataset"], overrides)
    with tempfile.TemporaryDirectory(prefix="polytask-quality-") as tmp:
        started = time.perf_counter()
        result = run(cfg, out=Path(tmp) / "run", quiet=True)
        seconds = time.perf_counter() - started
    history = result.fit.history
    train_seconds = sum(r.seconds for r in history)
    return {
        **{k: job[k] for k in ("dataset", "method", "mode", "seed")},
        "metrics": result.metrics,
        "baseline_metrics": result.baseline_metrics,
        "epochs": len(history),
        "best_epoch": result.fit.best_epoch,
        "seconds_per_epoch": train_seconds / max(1, len(history)),
        "wall_seconds": seconds,
        "final_weights": history[-1].weights if history else {},
        "final_grad_norms": history[-1].grad_norms if history else {},
    }


def _cache_file(cache: Path, job: dict[str, Any]) -> Path:
    mode = job["mode"] or "loss"
    # Overrides change the result, so they are part of the key.
    tag = hashlib.sha256(json.dumps(job["extra"]).encode()).hexdigest()[:8]
    return cache / f"{job['dataset']}-{job['method']}-{mode}-{job['seed']}-{tag}.json"


def plan(
    datasets: list[str], methods: list[str], seeds: list[int], mode: str, extra: list[str]
) -> list[dict[str, Any]]:
    jobs = []
    for dataset in datasets:
        overrides = dataset_overrides(dataset, extra)
        for seed in seeds:
            for method in methods:
                method_mode = mode if _gradient(method) else None
                if method == "graddrop":
                    method_mode = "representation"  # GradDrop needs the gradient matrix
                jobs.append(
                    {
                        "dataset": dataset,
                        "method": method,
                        "mode": method_mode,
                        "seed": seed,
                        "baselines": method == REFERENCE,
                        "extra": overrides,
                    }
                )
    return jobs


def dataset_overrides(dataset: str, extra: list[str]) -> list[str]:
    """The ``--set`` overrides for ``dataset``: unprefixed ones and ``dataset:key=value``."""
    chosen = []
    for item in extra:
        prefix, sep, rest = item.partition(":")
        if not sep or "=" in prefix:
            chosen.append(item)
        elif prefix == dataset:
            chosen.append(rest)
    return chosen


def _gradient(method: str) -> bool:
    probe = [Task("a", "regression", target="a"), Task("b", "regression", target="b")]
    return is_gradient_level(method, probe)


# -- report --------------------------------------------------------------------------------
def summarise(dataset: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: mean metric, Δm vs single-task and worst-task change, over seeds."""
    refs = {r["seed"]: r for r in runs if r["method"] == REFERENCE}
    tasks = example_config(dataset).task_objects()
    primary = {t.name: t.primary for t in tasks}
    hib = {t.name: higher_is_better(t, t.primary) for t in tasks}
    by_method: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    for r in runs:
        by_method.setdefault((r["method"], r["mode"]), []).append(r)
    equal_cost = mean_std([refs[s]["seconds_per_epoch"] for s in refs])[0] if refs else math.nan
    rows: dict[str, Any] = {}
    for (method, mode), group in sorted(
        by_method.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
    ):
        means, deltas, worst = [], [], []
        for r in group:
            values = {t: r["metrics"][t][m] for t, m in primary.items()}
            means.append(sum(values.values()) / len(values))
            ref = refs.get(r["seed"])
            if ref is None:
                continue
            stl = {t: ref["baseline_metrics"][t][m] for t, m in primary.items()}
            deltas.append(delta_m(values, stl, hib))
            changes = [100 * relative_change(values[t], stl[t], hib[t]) for t in values]
            worst.append(max(c for c in changes if not math.isnan(c)))
        cost = mean_std([r["seconds_per_epoch"] for r in group])
        key = method if mode is None else f"{method} ({mode})"
        rows[key] = {
            "method": method,
            "mode": mode,
            "seeds": sorted(r["seed"] for r in group),
            "mean_metric": mean_std(means),
            "delta_m_pct": mean_std(deltas),
            "worst_task_change_pct": mean_std(worst),
            "seconds_per_epoch": cost,
            "cost_vs_equal": cost[0] / equal_cost if equal_cost else math.nan,
            "per_task": {
                t: mean_std([r["metrics"][t][m] for r in group]) for t, m in primary.items()
            },
        }
    single_task = {
        t: mean_std([ref["baseline_metrics"][t][m] for ref in refs.values()])
        for t, m in primary.items()
    }
    stl_means = []
    for ref in refs.values():
        vals = [ref["baseline_metrics"][t][m] for t, m in primary.items()]
        stl_means.append(sum(vals) / len(vals))
    return {
        "primary": primary,
        "higher_is_better": hib,
        "single_task_mean_metric": mean_std(stl_means),
        "single_task_per_task": single_task,
        "methods": rows,
    }


def report(results: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [
        "# Loss balancing: quality and cost on real data",
        "",
        *machine_lines(info),
        f"- seeds: {args.seeds}; gradient-level engine mode: `{args.mode}`"
        f" (graddrop: representation)",
        *[
            f"- `{d}`: `examples/{d}.toml` with overrides {dataset_overrides(d, args.extra)}"
            for d in args.datasets
        ],
        "",
        "Test split, mean ± std over seeds. Metric = mean over tasks of the primary test metric."
        " Δm% vs the single-task nets of the same seed (negative = multi-task better); worst"
        " task = the largest relative loss of any task (percent, positive = worse). Cost ="
        " training seconds per epoch, each run on one torch thread (runs share a noisy 2-core"
        " machine, two at a time, so the cost column is indicative; see balancing_cost.md).",
        "",
    ]
    for dataset, summary in results.items():
        metric = next(iter(summary["primary"].values()))
        arrow = "↑" if next(iter(summary["higher_is_better"].values())) else "↓"
        lines += [f"## {dataset}", ""]
        stl, stl_std = summary["single_task_mean_metric"]
        lines.append(f"Single-task nets: mean {metric} {stl:.4g} ± {stl_std:.2g}")
        lines.append("")
        header = ["method", f"mean {metric} {arrow}", "Δm% ↓", "worst task %", "s/epoch", "× equal"]
        ordered = sorted(
            summary["methods"].items(),
            key=lambda kv: (
                kv[1]["delta_m_pct"][0] if not math.isnan(kv[1]["delta_m_pct"][0]) else 1e9
            ),
        )
        rows = []
        for key, row in ordered:
            m, s = row["mean_metric"]
            d, ds = row["delta_m_pct"]
            w, ws = row["worst_task_change_pct"]
            rows.append(
                [
                    key,
                    f"{m:.4g} ± {s:.2g}",
                    f"{d:+.2f} ± {ds:.2f}",
                    f"{w:+.2f} ± {ws:.2f}",
                    f"{row['seconds_per_epoch'][0]:.2f}",
                    f"{row['cost_vs_equal']:.2f}",
                ]
            )
        lines += markdown_table(header, rows)
        lines += ["", f"Per task ({metric}, test, mean over seeds):", ""]
        names = list(summary["primary"])
        per_task_rows = [
            ["single-task nets", *[f"{summary['single_task_per_task'][t][0]:.4g}" for t in names]]
        ]
        per_task_rows += [
            [key, *[f"{row['per_task'][t][0]:.4g}" for t in names]] for key, row in ordered
        ]
        lines += markdown_table(["method", *names], per_task_rows)
        lines.append("")
        if dataset in TARGETS:
            what, threshold = TARGETS[dataset]
            best_key, best = max(summary["methods"].items(), key=lambda kv: kv[1]["mean_metric"][0])
            value = best["mean_metric"][0]
            verdict = "PASS" if value >= threshold else "MISS"
            lines += [
                f"Target: {what} ≥ {threshold}: {best_key} {value:.4f} — **{verdict}**.",
                "",
            ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every balancer")
    parser.add_argument("--mode", default="exact", choices=["exact", "representation"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="config override KEY=VALUE, or DATASET:KEY=VALUE for one dataset",
    )
    parser.add_argument("--cache", type=Path, default=BENCH_DIR / ".cache" / "balancing_quality")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    methods = args.methods or [m for m in BALANCERS.names() if m != "static"]
    if REFERENCE not in methods:
        methods.insert(0, REFERENCE)
    if args.quick:
        args.seeds, methods = args.seeds[:1], [REFERENCE, "mgda", "famo"]
        args.extra = [*args.extra, "train.epochs=2"]
    args.cache.mkdir(parents=True, exist_ok=True)
    jobs = plan(args.datasets, methods, args.seeds, args.mode, args.extra)
    done: list[dict[str, Any]] = []
    todo = []
    for job in jobs:
        path = _cache_file(args.cache, job)
        if path.is_file() and not args.quick:
            done.append(json.loads(path.read_text()))
        else:
            todo.append(job)
    print(f"{len(done)} cached, {len(todo)} to run", flush=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_job, job): job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            result = future.result()
            path = _cache_file(args.cache, job)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, allow_nan=True))
            os.replace(tmp, path)
            done.append(result)
            print(
                f"{job['dataset']} {job['method']} {job['mode'] or ''} seed {job['seed']}: "
                f"{result['seconds_per_epoch']:.1f} s/epoch, {result['epochs']} epochs",
                flush=True,
            )
    results = {d: summarise(d, [r for r in done if r["dataset"] == d]) for d in args.datasets}
    info = machine_info()
    stem = "balancing_quality_quick" if args.quick else "balancing_quality"
    write_results(
        stem,
        report(results, info, args),
        {"machine": info, "results": results, "runs": done},
        args.out,
    )
    print((args.out / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
