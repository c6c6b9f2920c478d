"""FDU-MTL as 16 separate datasets: which sampler should pick the domain of each batch?

The 16 domains of FDU-MTL (Liu, Qiu & Huang, ACL 2017) as 16 ``[[data.sources]]``, one per
domain and task, trained as one multi-task net (the fastText-style ``embedding_bag`` encoder and
budget of ``run_fdu_mtl.py``, chosen there on the dev split; not re-tuned per sampler). Compared,
3 seeds each, all with one domain per batch (homogeneous) except the last:

* ``proportional`` (p_i ∝ n_i), ``uniform`` (p_i = 1/16), ``temperature`` T = 2 and T = 5
  (p_i ∝ n_i^(1/T)), ``annealed`` (α from 1 to 0.2 over training, Stickland & Murray 2019),
  ``round_robin`` (the domains in turn);
* ``proportional mixed``: each batch mixes domains, as training on the one stacked table does.

Two settings of the training-set sizes:

* ``released``: the release's sizes (1,300-1,400 reviews per domain: almost equal, so the
  samplers differ little by construction);
* ``unequal``: each domain's training reviews subsampled (fixed, seed 0) to sizes falling
  geometrically from 1,400 to 50 across the domains (the order of domains drawn once with seed
  0), so that the samplers' trade-off between large and small sources shows. The dev (200) and
  test (400) reviews of every domain are kept whole.

Every run has the same budget: epochs of 88 steps (one pass over the released training sets,
batch 256), at most 12 epochs, early stopping on the dev criterion; the checkpoint is chosen
on dev accuracy. Reported: the test accuracy averaged over the 16 domains, the worst domain's,
and (``unequal``) the average over the 5 smallest domains; mean ± std over seeds.

Usage::

    python benchmarks/run_fdu_sampling.py            # both settings, 7 samplers, 3 seeds
    python benchmarks/run_fdu_sampling.py --quick    # smoke: 4 domains, 2 samplers, 1 epoch
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import (
    RESULTS_DIR,
    machine_lines,
    markdown_table,
    mean_std,
    worker_run_info,
    write_results,
)
from run_fdu_mtl import ENCODERS

SAMPLERS: dict[str, dict[str, Any]] = {
    "proportional": {"strategy": "proportional"},
    "uniform": {"strategy": "uniform"},
    "temperature T=2": {"strategy": "temperature", "temperature": 2.0},
    "temperature T=5": {"strategy": "temperature", "temperature": 5.0},
    "annealed": {"strategy": "annealed", "anneal_end": 0.2},
    "round_robin": {"strategy": "round_robin"},
    "proportional mixed": {"strategy": "proportional", "batches": "mixed"},
}
SETTINGS = ("released", "unequal")
#: The unequal setting's sizes: geometric from LARGEST to SMALLEST training reviews.
LARGEST, SMALLEST = 1400, 50
#: Steps per epoch: one pass over the released training sets (22,280 reviews) in batches of 256.
STEPS = 88
N_SMALL = 5


def unequal_sizes(domains: list[str]) -> dict[str, int]:
    """Domain -> training size in the ``unequal`` setting (the order drawn with seed 0)."""
    k = len(domains)
    sizes = [round(LARGEST * (SMALLEST / LARGEST) ** (i / max(k - 1, 1))) for i in range(k)]
    order = np.random.default_rng(0).permutation(k)
    return {domains[int(j)]: sizes[i] for i, j in enumerate(order)}


def domain_frames(setting: str, domains: list[str]) -> dict[str, pd.DataFrame]:
    """One frame per domain: its (possibly subsampled) training rows, dev and test rows."""
    from polytask.data.datasets import load_dataset

    frame = load_dataset("fdu_mtl")
    sizes = unequal_sizes(domains) if setting == "unequal" else None
    out = {}
    for d in domains:
        own = frame[frame["domain"] == d]
        if sizes is not None:
            train = own[own["split"] == "train"]
            keep = train.sample(n=min(sizes[d], len(train)), random_state=0).index
            own = own[(own["split"] != "train") | own.index.isin(keep)]
        out[d] = own.reset_index(drop=True)
    return out


def raw_config(sampler: str, seed: int, domains: list[str], epochs: int) -> dict[str, Any]:
    family = ENCODERS["embedding_bag"]
    sampling = {"batches": "homogeneous", "epoch": "steps", "steps": STEPS, **SAMPLERS[sampler]}
    return {
        "seed": seed,
        "baselines": False,
        "data": {
            "split": {"method": "column", "column": "split"},
            "input": dict(family["input"]),
            "sources": [{"name": d, "tasks": [d]} for d in domains],
        },
        "tasks": [
            {"name": d, "kind": "binary", "target": d, "primary_metric": "accuracy"}
            for d in domains
        ],
        "model": family["model"],
        "sampling": sampling,
        "train": {
            "weight_decay": 0.0,
            "criterion": "mean_relative",
            "progress": False,
            "threads": 1,
            **family["train"]["multi"],
            "epochs": epochs,
        },
    }


def run_job(
    setting: str, sampler: str, seed: int, domains: list[str], epochs: int
) -> dict[str, Any]:
    """One training run (in a worker process, on one torch thread)."""
    from polytask.config import config_from_dict
    from polytask.run.pipeline import run

    frames = domain_frames(setting, domains)
    started = time.perf_counter()
    cfg = config_from_dict(raw_config(sampler, seed, domains, epochs))
    result = run(cfg, frames=frames, quiet=True)
    best = result.fit.history[result.fit.best_epoch - 1]
    return {
        "setting": setting,
        "sampler": sampler,
        "seed": seed,
        "test": {d: result.metrics[d]["accuracy"] for d in domains},
        "val": {d: best.val_metrics[d]["accuracy"] for d in domains},
        # Reviews drawn from each domain over the whole run (repeats counted).
        "drawn": {d: sum(h.sources.get(d, 0) for h in result.fit.history) for d in domains},
        "best_epoch": result.fit.best_epoch,
        "epochs": len(result.fit.history),
        "seconds": time.perf_counter() - started,
    }


def summarise(runs: list[dict[str, Any]], small: list[str]) -> dict[str, Any]:
    """Per sampler: average, worst-domain and small-domain test accuracy (%), over seeds."""
    out: dict[str, Any] = {}
    for sampler in SAMPLERS:
        mine = [r for r in runs if r["sampler"] == sampler]
        if not mine:
            continue
        acc = [np.array(list(r["test"].values())) * 100 for r in mine]
        out[sampler] = {
            "average": mean_std([float(a.mean()) for a in acc]),
            "worst": mean_std([float(a.min()) for a in acc]),
            "small": mean_std([100 * float(np.mean([r["test"][d] for d in small])) for r in mine]),
            "dev_average": mean_std([100 * float(np.mean(list(r["val"].values()))) for r in mine]),
            "seconds": mean_std([r["seconds"] for r in mine]),
            "seeds": sorted(r["seed"] for r in mine),
        }
    return out


def _fmt(value: tuple[float, float], digits: int = 2) -> str:
    mean, std = value
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    from polytask.data.datasets.fdu_mtl import DOMAINS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    domains = list(DOMAINS)
    if args.quick:
        domains, args.seeds, args.epochs = ["books", "dvd", "imdb", "MR"], [0], 1
        args.samplers = ["uniform", "round_robin"]
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results.
            args.out = Path(tempfile.gettempdir()) / "polytask-fdu-sampling-quick"
    jobs = [
        (setting, sampler, seed, domains, args.epochs)
        for setting in args.settings
        for seed in args.seeds
        for sampler in args.samplers
    ]
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_job, *job) for job in jobs]
        for future in as_completed(futures):
            r = future.result()
            runs.append(r)
            acc = np.array(list(r["test"].values())) * 100
            print(
                f"[{len(runs)}/{len(jobs)}] {r['setting']} {r['sampler']} seed={r['seed']}: "
                f"avg {acc.mean():.2f} worst {acc.min():.1f} (best epoch {r['best_epoch']}/"
                f"{r['epochs']}, {r['seconds']:.0f}s)",
                flush=True,
            )
    wall = time.perf_counter() - started
    runs.sort(key=lambda r: (r["setting"], list(SAMPLERS).index(r["sampler"]), r["seed"]))
    sizes = unequal_sizes(domains)
    small = sorted(domains, key=lambda d: sizes[d])[:N_SMALL]
    summary = {s: summarise([r for r in runs if r["setting"] == s], small) for s in args.settings}

    info = worker_run_info(args.workers, wall)
    family = ENCODERS["embedding_bag"]
    lines = [
        "# FDU-MTL as 16 data sources: sampling strategies compared",
        "",
        *machine_lines(info),
        f"- seeds: {args.seeds}; {len(domains)} domains; encoder `embedding_bag` "
        f"(input {family['input']}, model {family['model']}, train "
        f"{family['train']['multi']}, epochs of {STEPS} steps, at most {args.epochs})",
        "- unequal training sizes: "
        + ", ".join(f"{d} {n}" for d, n in sorted(sizes.items(), key=lambda kv: -kv[1])),
        "",
        __doc__.split("Usage::")[0].split("\n", 2)[2].strip(),
        "",
        "Test accuracy (%), mean ± std over seeds. `worst`: the lowest domain accuracy of each "
        f"run; `small 5`: the average over the {N_SMALL} smallest domains of the unequal "
        f"setting ({', '.join(small)}; in `released` the same domains at full size).",
    ]
    for setting in args.settings:
        rows = [
            [
                name,
                _fmt(v["average"]),
                _fmt(v["worst"], 1),
                _fmt(v["small"]),
                _fmt(v["dev_average"]),
                f"{v['seconds'][0]:.0f}",
            ]
            for name, v in summary[setting].items()
        ]
        lines += [
            "",
            f"## {setting}",
            "",
            *markdown_table(
                ["sampler", "average", "worst domain", f"small {N_SMALL}", "average (dev)", "s"],
                rows,
            ),
        ]
    lines += ["", f"Wall time: {wall / 60:.1f} min with {args.workers} workers."]
    data = {
        "info": info,
        "settings": {
            "seeds": args.seeds,
            "domains": domains,
            "samplers": {s: SAMPLERS[s] for s in args.samplers},
            "unequal_sizes": sizes,
            "steps_per_epoch": STEPS,
            "epochs": args.epochs,
        },
        "summary": summary,
        "runs": runs,
    }
    write_results("fdu_sampling", lines, data, args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
