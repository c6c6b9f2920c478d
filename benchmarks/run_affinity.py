"""Task affinity against ground truth: synthetic tasks of known correlation, then Tox21.

Lookahead inter-task affinity (Fifty, Amid, Zhao, Yu, Anil and Finn, "Efficiently Identifying
Task Groupings for Multi-Task Learning", NeurIPS 2021), as measured by
:func:`polytask.affinity` (``Z[i, j]``: how a step of the shared layers on task i's loss alone
changes task j's loss on the same batch; pairs scored by ``(Z_ij + Z_ji) / 2``), the mean
pairwise gradient cosine measured on the same steps, and the suggested grouping
(:mod:`polytask.studies.affinity.grouping`, the paper's network selection). Three checks:

1. **Ranking** (synthetic, :func:`polytask.data.synthetic.make_correlated_tasks`): six
   regression tasks whose weight vectors have a known correlation matrix, two blocks of three
   (within-block correlations 0.65-0.9, across blocks 0-0.24, all 15 pairs distinct; 3,000
   rows, 16 features, noise 0.1). For each seed: affinity from a full training (6 epochs,
   every step measured) and from a probe (1 epoch), and the gradient cosines of both; Spearman
   rank correlation of the 15 pair scores with the true correlations, per seed, its mean, and
   that of the pair scores averaged over seeds. The 2-group suggestion is compared with the
   two blocks of the construction.
2. **Grouping vs the exhaustive pair search** (:func:`polytask.studies.affinity.study.pair_search`:
   every task trained alone and every pair together, gains = relative reduction of the
   partner's validation loss, the same grouping objective on the gains; Standley et al., ICML
   2020): on 4 tasks in two blocks of identical tasks (the small case: 10 trainings) and on the
   6 graded tasks above (21 trainings), both with noisy labels (noise 2, 1,500 rows, so that
   sharing pays off), 2 groups, several seeds. Reported: the three groupings (pair search,
   full affinity, probe) per seed and how often they agree.
3. **Tox21** (``examples/tox21.toml``, 12 assays, hard sharing, equal weights): the 12 × 12
   affinity from a probe (1 epoch, every step) and from the full training (the example's
   budget: 30 epochs with early stopping, every 5th step), the suggested groupings into 2 and
   3 models from each, and the honest check: for each seed, train every suggested group (each
   a normal run of :func:`polytask.run` on that subset of tasks, the other assays' columns
   ignored) and score each task by the group that serves it, against one model of all 12
   tasks and 12 single-task nets (that run's baselines: same encoder, head, budget and split),
   plus a control: the tasks shuffled (fixed seed) into as many equal blocks as the 3-group
   suggestion has models, each block one model. Mean test ROC-AUC over the 12 tasks and Δm%
   against the single-task nets and against the all-in-one model (negative = better), mean ±
   std over seeds.

Each job (one seed of a study, one Tox21 measurement or training) is cached as a JSON file
under ``benchmarks/.cache/affinity/`` so an interrupted benchmark resumes where it stopped;
``--workers`` jobs run in parallel, each on one torch thread. Writes
``benchmarks/results/affinity.md`` / ``.json`` and ``affinity.png`` (heat maps).

Expected wall time on the 2-core machine with ``--workers 2`` (the default), estimated from
the smoke run (one thread; Tox21 with 4 tasks: a 1-epoch probe 13 s, a 1-epoch training 7 s of
which ~6 s is featurisation) and ``balancing_quality.json`` (Tox21 runs stop after ~7-10
epochs; the 12 baselines ~2 min): the synthetic studies ~2-3 min (the 6-task pair search is
21 small trainings per seed); Tox21 affinity ~2-4 min (a measured step costs ~2K passes, K =
12); Tox21 trainings per seed ~2.5 min for the all-in-one model with its 12 baselines plus up
to 13 distinct groups of ~15-20 s each, 3 seeds: ~10-12 min on two workers. **About 15-25
minutes** in all (~30-40 with one worker), more while other jobs share the machine.

Usage::

    python benchmarks/run_affinity.py                  # everything, 2 workers
    python benchmarks/run_affinity.py --quick          # smoke: tiny, 4 Tox21 tasks, temp dir
    python benchmarks/run_affinity.py --skip-tox21     # the synthetic studies only
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from polytask.studies.affinity.study import AffinityResult

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    example_config,
    fmt_mean_std,
    job_key,
    load_average,
    machine_info,
    machine_lines,
    markdown_table,
    mean_std,
    subset_tasks,
    write_results,
)

CACHE_DIR = BENCH_DIR / ".cache" / "affinity"

#: Six tasks in two blocks ({t0, t1, t2}, {t3, t4, t5}); every pair's correlation distinct.
#: Positive definite (smallest eigenvalue 0.031).
GRADED_PAIRS: dict[tuple[int, int], float] = {
    (0, 1): 0.9,
    (3, 4): 0.85,
    (0, 2): 0.8,
    (1, 2): 0.75,
    (3, 5): 0.7,
    (4, 5): 0.65,
    (0, 3): 0.24,
    (1, 4): 0.21,
    (2, 5): 0.18,
    (0, 4): 0.15,
    (1, 3): 0.12,
    (2, 3): 0.09,
    (0, 5): 0.06,
    (1, 5): 0.03,
    (2, 4): 0.0,
}
GRADED_BLOCKS = [["t0", "t1", "t2"], ["t3", "t4", "t5"]]
#: The grouping cases: correlations, number of tasks, the construction's blocks.
GROUPING_CASES: dict[str, dict[str, Any]] = {
    "blocks4": {
        "title": "4 tasks, two blocks of identical tasks",
        "pairs": {(0, 1): 1.0, (2, 3): 1.0},
        "k": 4,
        "blocks": [["t0", "t1"], ["t2", "t3"]],
    },
    "graded6": {
        "title": "6 graded tasks (the ranking study's correlations)",
        "pairs": GRADED_PAIRS,
        "k": 6,
        "blocks": GRADED_BLOCKS,
    },
}
TOX21_GROUPS = (2, 3)
#: Seed of the random control partition (fixed: the same control for every training seed).
CONTROL_SEED = 12345
QUICK_TOX21_TASKS = ["NR-AR", "NR-AhR", "SR-ARE", "SR-MMP"]


def correlations(pairs: dict[tuple[int, int], float], k: int) -> np.ndarray:
    c = np.eye(k)
    for (i, j), value in pairs.items():
        c[i, j] = c[j, i] = value
    return c


def synthetic_raw(
    k: int, seed: int, *, epochs: int, batch_size: int, val: float, head: int
) -> dict[str, Any]:
    """The run configuration of the synthetic studies (an MLP [32] encoder, towers of
    ``head`` units, a fixed budget, no test split: affinity and pair gains use validation)."""
    return {
        "seed": seed,
        "baselines": False,
        "data": {"split": {"method": "random", "val": val, "test": 0.0}},
        "tasks": [{"name": f"t{i}", "kind": "regression", "target": f"y{i}"} for i in range(k)],
        "model": {"encoder": {"widths": [32], "dropout": 0.0}, "head": {"widths": [head]}},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": 3e-3,
            "patience": None,
            "progress": False,
        },
    }


def pair_values(matrix: np.ndarray, names: list[str], keys: list[tuple[int, int]]) -> list[float]:
    """Symmetrised ``(M_ij + M_ji) / 2`` of each pair in ``keys``."""
    m = np.asarray(matrix, dtype=float)
    return [float((m[i, j] + m[j, i]) / 2) for i, j in keys]


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or not all(map(math.isfinite, a)):
        return math.nan
    return float(spearmanr(a, b).statistic)


# -- the jobs (each runs in a worker process and returns JSON-ready data) ------------------------


def job_ranking(job: dict[str, Any]) -> dict[str, Any]:
    """One seed of the ranking study: full and probe affinity on the six graded tasks."""
    from polytask.data.synthetic import make_correlated_tasks

    k = 6
    frame = make_correlated_tasks(
        job["rows"], correlations(GRADED_PAIRS, k), n_features=16, seed=job["seed"]
    )
    raw = synthetic_raw(k, job["seed"], epochs=job["epochs"], batch_size=256, val=0.2, head=32)
    out: dict[str, Any] = {}
    for mode in ("full", "probe"):
        result = measure_synthetic(raw, frame, mode)
        out[mode] = {
            "affinity": result.affinity.tolist(),
            "gradient_cosine": result.gradient_cosine.tolist(),
            "groups": result.grouping.groups,
            "epochs": result.epochs,
            "steps_measured": result.steps_measured,
        }
    return out


def measure_synthetic(raw: dict[str, Any], frame: pd.DataFrame, mode: str) -> AffinityResult:
    """Affinity of a synthetic study: every step measured, 2 groups; ``mode`` full or probe."""
    from polytask import affinity, config_from_dict

    return affinity(
        config_from_dict(raw), frame=frame, probe=mode == "probe", every=1, max_groups=2, quiet=True
    )


def job_grouping(job: dict[str, Any]) -> dict[str, Any]:
    """One seed of a grouping case: the exhaustive pair search, full and probe affinity."""
    from polytask import config_from_dict
    from polytask.data.synthetic import make_correlated_tasks
    from polytask.studies.affinity.study import pair_search

    case = GROUPING_CASES[job["case"]]
    k = case["k"]
    frame = make_correlated_tasks(
        job["rows"], correlations(case["pairs"], k), n_features=16, noise=2.0, seed=job["seed"]
    )
    raw = synthetic_raw(k, job["seed"], epochs=job["epochs"], batch_size=64, val=0.3, head=16)
    truth = pair_search(config_from_dict(raw), frame=frame, max_groups=2)
    out: dict[str, Any] = {
        "pair_search": {
            "groups": truth.grouping.groups,
            "score": truth.grouping.score,
            "gains": truth.gains.tolist(),
            "runs": truth.runs,
        }
    }
    for mode in ("full", "probe"):
        result = measure_synthetic(raw, frame, mode)
        out[mode] = {"groups": result.grouping.groups, "affinity": result.affinity.tolist()}
    return out


def tox21_raw(job: dict[str, Any]) -> dict[str, Any]:
    raw = example_config("tox21").model_dump(mode="json", exclude={"base_dir"})
    raw["seed"] = job["seed"]
    raw["train"]["progress"] = False
    if job.get("epochs") is not None:
        raw["train"]["epochs"] = job["epochs"]
    if job.get("tasks"):
        raw = subset_tasks(raw, job["tasks"])
    return raw


def _tox21_config(raw: dict[str, Any]) -> Any:
    from polytask import config_from_dict

    return config_from_dict(raw, base_dir=str(example_config("tox21").base_dir))


def job_tox21_affinity(job: dict[str, Any]) -> dict[str, Any]:
    """Tox21 affinity (probe or full training), with the groupings for each budget."""
    import numpy as np

    from polytask import affinity
    from polytask.studies.affinity.grouping import search_groups

    cfg = _tox21_config(tox21_raw(job))
    result = affinity(cfg, out=job["out"], probe=job["probe"], quiet=True)
    z = np.nan_to_num(result.affinity, nan=0.0)
    groupings = {}
    for g in job["groups"]:
        found = search_groups(z, g, result.tasks)
        groupings[str(g)] = {
            "groups": found.groups,
            "score": found.score,
            "served_by": found.served_by,
        }
    return {"document": result.to_dict(), "groupings": groupings}


def job_tox21_train(job: dict[str, Any]) -> dict[str, Any]:
    """One Tox21 training: all tasks with single-task baselines, or one group of tasks."""
    from polytask import run

    raw = tox21_raw(job)
    raw["baselines"] = bool(job["baselines"])
    result = run(_tox21_config(raw), quiet=True)
    return {
        "auroc": {t: m["auroc"] for t, m in result.metrics.items()},
        "baseline_auroc": {t: m["auroc"] for t, m in result.baseline_metrics.items()},
        "epochs": len(result.fit.history),
        "best_epoch": result.fit.best_epoch,
    }


RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ranking": job_ranking,
    "grouping": job_grouping,
    "tox21-affinity": job_tox21_affinity,
    "tox21-train": job_tox21_train,
}


def execute(job: dict[str, Any], cache: str, threads: int | None) -> dict[str, Any]:
    """Run ``job`` (or read its cached result); its seconds are recorded with it."""
    import torch

    # Where a job writes its files is not part of what it computes.
    key = job_key({k: v for k, v in job.items() if k != "out"})
    path = Path(cache) / f"{job['kind']}-{key}.json"
    if path.is_file():
        return {**json.loads(path.read_text(encoding="utf-8")), "cached": True}
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    result = RUNNERS[job["kind"]](job)
    record = {"job": job, "result": result, "seconds": time.perf_counter() - started}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, allow_nan=True), encoding="utf-8")
    tmp.replace(path)  # atomic: a killed job leaves no half-written cache file
    return {**record, "cached": False}


def run_all(
    jobs: list[dict[str, Any]], cache: Path, workers: int, threads: int | None
) -> list[dict[str, Any]]:
    """Every job's record, in the order of ``jobs``."""
    records: list[dict[str, Any] | None] = [None] * len(jobs)

    def done(i: int, record: dict[str, Any]) -> None:
        records[i] = record
        job = record["job"]
        what = " ".join(
            f"{k}={v}" for k, v in job.items() if k not in ("kind", "out", "groups", "rows")
        )
        how = "cached" if record["cached"] else f"{record['seconds']:.0f}s"
        print(
            f"[{sum(r is not None for r in records)}/{len(jobs)}] {job['kind']} {what} ({how})",
            flush=True,
        )

    if workers <= 1:
        for i, job in enumerate(jobs):
            done(i, execute(job, str(cache), threads))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(execute, job, str(cache), threads): i for i, job in enumerate(jobs)
            }
            for future in as_completed(futures):
                done(futures[future], future.result())
    return [r for r in records if r is not None]


# -- summaries -----------------------------------------------------------------------------------


def summarise_ranking(records: list[dict[str, Any]]) -> dict[str, Any]:
    k = 6
    names = [f"t{i}" for i in range(k)]
    keys = sorted(GRADED_PAIRS, key=lambda p: -GRADED_PAIRS[p])
    truth = [GRADED_PAIRS[p] for p in keys]
    per_seed = []
    scores: dict[str, list[list[float]]] = {}
    for record in records:
        result = record["result"]
        row: dict[str, Any] = {"seed": record["job"]["seed"], "seconds": record["seconds"]}
        for mode in ("full", "probe"):
            for measure in ("affinity", "gradient_cosine"):
                values = pair_values(np.array(result[mode][measure]), names, keys)
                scores.setdefault(f"{mode}:{measure}", []).append(values)
                row[f"{mode}:{measure}"] = spearman(values, truth)
            row[f"{mode}:groups"] = result[mode]["groups"]
            row[f"{mode}:blocks_found"] = result[mode]["groups"] == GRADED_BLOCKS
        per_seed.append(row)
    mean_scores = {key: np.mean(v, axis=0).tolist() for key, v in scores.items()}
    return {
        "pairs": [f"t{i}|t{j}" for i, j in keys],
        "true_correlation": truth,
        "per_seed": per_seed,
        "spearman_mean": {key: mean_std([row[key] for row in per_seed]) for key in sorted(scores)},
        "spearman_of_mean_scores": {
            key: spearman(values, truth) for key, values in mean_scores.items()
        },
        "mean_scores": mean_scores,
        "mean_affinity_matrix": np.mean(
            [np.array(r["result"]["full"]["affinity"]) for r in records], axis=0
        ).tolist(),
    }


def summarise_grouping(case: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    spec = GROUPING_CASES[case]
    k = spec["k"]
    names = [f"t{i}" for i in range(k)]
    keys = list(itertools.combinations(range(k), 2))
    truth = [correlations(spec["pairs"], k)[i, j] for i, j in keys]
    rows = []
    for record in records:
        result = record["result"]
        pair = result["pair_search"]["groups"]
        gains = pair_values(np.array(result["pair_search"]["gains"]), names, keys)
        rows.append(
            {
                "seed": record["job"]["seed"],
                "pair_search": pair,
                "full": result["full"]["groups"],
                "probe": result["probe"]["groups"],
                "full_matches": result["full"]["groups"] == pair,
                "probe_matches": result["probe"]["groups"] == pair,
                "pair_search_is_blocks": pair == spec["blocks"],
                # Ties in the truth (blocks4) make this a rough check there.
                "gains_vs_correlation_spearman": spearman(gains, truth),
                "seconds": record["seconds"],
            }
        )
    return {
        "title": spec["title"],
        "blocks": spec["blocks"],
        "per_seed": rows,
        "full_agreement": sum(r["full_matches"] for r in rows),
        "probe_agreement": sum(r["probe_matches"] for r in rows),
        "pair_search_blocks": sum(r["pair_search_is_blocks"] for r in rows),
        "n": len(rows),
    }


def group_key(tasks: list[str]) -> str:
    return "+".join(tasks)


def tox21_groupings(
    affinities: dict[str, dict[str, Any]], names: list[str]
) -> dict[str, dict[str, Any]]:
    """The groupings the honest check trains: each suggestion, and the random control.
    Each is ``{"groups": [...], "served": {task: group}}``."""
    out: dict[str, dict[str, Any]] = {}
    for mode in ("full", "probe"):
        for g, found in affinities[mode]["groupings"].items():
            groups = found["groups"]
            served = {t: groups[i] for t, i in found["served_by"].items()}
            out[f"{mode}, {g} groups"] = {"groups": groups, "served": served}
    # The control: as many models as the largest suggestion, the tasks shuffled into blocks
    # of equal size (as near as possible). Training smaller models is not itself what the
    # affinity claims to get right; choosing which tasks share one is.
    largest = max(TOX21_GROUPS)
    if len(names) > largest:
        order = [str(t) for t in np.random.default_rng(CONTROL_SEED).permutation(names)]
        blocks = [order[i::largest] for i in range(largest)]
        groups = [[t for t in names if t in block] for block in blocks]
        groups.sort(key=lambda g: names.index(g[0]))
        served = {t: g for g in groups for t in g}
        out[f"random control ({largest} equal blocks)"] = {"groups": groups, "served": served}
    return out


def score_groupings(
    groupings: dict[str, dict[str, Any]],
    train: dict[tuple[int, str], dict[str, Any]],
    names: list[str],
    seeds: list[int],
) -> dict[str, Any]:
    """Per seed and grouping: each task's test AUROC from the group serving it."""
    from polytask.evaluate.delta import delta_m

    hib = dict.fromkeys(names, True)
    table: dict[str, Any] = {}
    rows = {"single-task nets": None, "all tasks in one model": None, **groupings}
    for label in rows:
        per_seed = []
        for seed in seeds:
            everything = train.get((seed, "all"))
            if everything is None:
                continue
            single = everything["baseline_auroc"]
            if label == "single-task nets":
                auroc = dict(single)
            elif label == "all tasks in one model":
                auroc = dict(everything["auroc"])
            else:
                auroc = {}
                for task in names:
                    group = groupings[label]["served"][task]
                    if len(group) == 1:
                        auroc[task] = single[task]  # a block of one is a single-task net
                        continue
                    run = train.get((seed, group_key(group)))
                    auroc[task] = run["auroc"][task] if run else math.nan
            per_seed.append(
                {
                    "seed": seed,
                    "auroc": auroc,
                    "mean_auroc": float(np.mean([auroc[t] for t in names])),
                    "delta_m": delta_m(auroc, single, hib),
                    "vs_all": delta_m(auroc, everything["auroc"], hib),
                }
            )
        table[label] = {
            "groups": None
            if label in ("single-task nets", "all tasks in one model")
            else groupings[label]["groups"],
            "per_seed": per_seed,
            "mean_auroc": mean_std([r["mean_auroc"] for r in per_seed]),
            "delta_m": mean_std([r["delta_m"] for r in per_seed]),
            "delta_m_vs_all": mean_std([r["vs_all"] for r in per_seed]),
            "per_task": {t: mean_std([r["auroc"][t] for r in per_seed]) for t in names},
        }
    return table


# -- the figure and the report ------------------------------------------------------------------


def heat_maps(panels: list[tuple[str, np.ndarray, list[str]]], path: Path) -> bool:
    """Heat maps of the matrices (diagonal hidden: a task's self-affinity is not a relation
    and dwarfs the rest); False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(10, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, matrix, labels) in zip(axes.flat, panels, strict=False):
        m = np.array(matrix, dtype=float)
        np.fill_diagonal(m, np.nan)
        scale = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
        image = ax.imshow(m, cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return True


def _groups_text(groups: list[list[str]] | None) -> str:
    if not groups:
        return "-"
    return " · ".join("{" + ", ".join(g) + "}" for g in groups)


def _signed(value: tuple[float, float], digits: int = 2) -> str:
    mean, std = value
    return "-" if math.isnan(mean) else f"{mean:+.{digits}f} ± {std:.{digits}f}"


def report(data: dict[str, Any], plot: str | None) -> list[str]:
    info, settings = data["info"], data["settings"]
    lines = [
        "# Task affinity: ground truth on synthetic tasks, and Tox21",
        "",
        *machine_lines(info),
        f"- wall time {info['wall_seconds'] / 60:.1f} min with {settings['workers']} workers; "
        f"1-minute load average {info['load_average_1min']['start']:.1f} at the start, "
        f"{info['load_average_1min']['end']:.1f} at the end on {info['nproc']} cores"
        + (" (smoke run)" if settings["quick"] else ""),
        "",
        "Lookahead affinity Z[i, j] (Fifty et al., NeurIPS 2021): the relative change of task "
        "j's loss after a step of the shared layers on task i's loss alone (positive: i helps "
        "j); pairs are scored by (Z_ij + Z_ji) / 2. Gradient cosine: mean cosine of the two "
        "tasks' gradients on the shared parameters over the same steps.",
    ]
    ranking = data.get("ranking")
    if ranking:
        lines += [
            "",
            "## 1. Synthetic: does the affinity rank task pairs by their true correlation?",
            "",
            f"Six tasks, {settings['ranking']['rows']} rows, seeds {settings['ranking']['seeds']};"
            f" full = {settings['ranking']['epochs']} epochs measured at every step, probe = 1 "
            "epoch. Spearman rank correlation of the 15 pair scores with the true correlations "
            "(1 = same order):",
            "",
        ]
        keys = ["full:affinity", "probe:affinity", "full:gradient_cosine", "probe:gradient_cosine"]
        header = ["seed", "affinity (full)", "affinity (probe)", "cosine (full)", "cosine (probe)"]
        rows = [[str(r["seed"]), *[f"{r[k]:.3f}" for k in keys]] for r in ranking["per_seed"]]
        rows.append(["mean ± std", *[_signed(ranking["spearman_mean"][k], 3) for k in keys]])
        rows.append(
            ["of the mean scores", *[f"{ranking['spearman_of_mean_scores'][k]:.3f}" for k in keys]]
        )
        lines += markdown_table(header, rows)
        lines += ["", "Pair scores averaged over seeds (affinity ×10⁻³):", ""]
        pair_rows = []
        for i, pair in enumerate(ranking["pairs"]):
            ms = ranking["mean_scores"]
            pair_rows.append(
                [
                    pair,
                    f"{ranking['true_correlation'][i]:.2f}",
                    f"{1e3 * ms['full:affinity'][i]:+.3f}",
                    f"{1e3 * ms['probe:affinity'][i]:+.3f}",
                    f"{ms['full:gradient_cosine'][i]:+.3f}",
                    f"{ms['probe:gradient_cosine'][i]:+.3f}",
                ]
            )
        lines += markdown_table(
            [
                "pair",
                "true ρ",
                "affinity (full)",
                "affinity (probe)",
                "cosine (full)",
                "cosine (probe)",
            ],
            pair_rows,
        )
        found = [r["full:blocks_found"] for r in ranking["per_seed"]]
        found_probe = [r["probe:blocks_found"] for r in ranking["per_seed"]]
        lines += [
            "",
            f"Suggested 2-group split = the construction's blocks {_groups_text(GRADED_BLOCKS)}: "
            f"full {sum(found)}/{len(found)} seeds, probe {sum(found_probe)}/{len(found_probe)}.",
        ]
    grouping = data.get("grouping")
    if grouping:
        lines += [
            "",
            "## 2. Synthetic: suggested grouping vs the exhaustive pair search",
            "",
            "Noisy labels (noise 2), 2 groups. Pair search: every task alone and every pair "
            "together, gains = relative reduction of the validation loss; the same grouping "
            "objective on the gains.",
        ]
        for case in grouping.values():
            lines += ["", f"### {case['title']}", ""]
            rows = [
                [
                    str(r["seed"]),
                    _groups_text(r["pair_search"]),
                    _groups_text(r["full"]),
                    _groups_text(r["probe"]),
                    f"{r['gains_vs_correlation_spearman']:.2f}",
                ]
                for r in case["per_seed"]
            ]
            lines += markdown_table(
                ["seed", "pair search", "affinity (full)", "affinity (probe)", "gains vs ρ"],
                rows,
            )
            lines += [
                "",
                f"Agreement with the pair search: full affinity {case['full_agreement']}/"
                f"{case['n']}, probe {case['probe_agreement']}/{case['n']}; the pair search "
                f"found the construction's blocks {_groups_text(case['blocks'])} in "
                f"{case['pair_search_blocks']}/{case['n']}. 'gains vs ρ': Spearman of the "
                "symmetrised pair-search gains with the true correlations.",
            ]
    tox = data.get("tox21")
    if tox:
        lines += tox21_lines(tox, settings)
    if plot:
        lines += [
            "",
            f"![affinity heat maps]({plot})",
            "",
            f"`{plot}`: off-diagonal affinity ×10³ (the diagonal, self-affinity, is hidden: it "
            "is 10-100 times larger); the synthetic affinity is the mean over seeds of the full "
            "training.",
        ]
    return lines


def tox21_lines(tox: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    names = tox["tasks"]
    lines = ["", "## 3. Tox21: affinity and suggested groups", ""]
    for mode in ("full", "probe"):
        doc = tox["affinity"][mode]["document"]
        lines.append(
            f"- {mode}: {doc['epochs']} epoch(s), {doc['steps_measured']} measured steps "
            f"({tox['affinity'][mode]['seconds'] / 60:.1f} min)"
        )
    lines += [
        f"- probe vs full, Spearman over the {len(names) * (len(names) - 1) // 2} pair scores: "
        f"affinity {tox['probe_vs_full']['affinity']:.3f}, gradient cosine "
        f"{tox['probe_vs_full']['gradient_cosine']:.3f}",
        "",
        "Affinity Z[i, j] ×10⁻³ from the full training (row: the task whose step is taken):",
        "",
    ]
    z = np.array(tox["affinity"]["full"]["document"]["affinity"], dtype=float)
    lines += markdown_table(
        ["step \\ loss", *names],
        [[names[i], *[f"{1e3 * v:+.2f}" for v in z[i]]] for i in range(len(names))],
    )
    lines += ["", "Suggested groupings (score: mean affinity onto each task from its group):", ""]
    rows = []
    for mode in ("full", "probe"):
        for g, found in tox["affinity"][mode]["groupings"].items():
            rows.append([mode, g, _groups_text(found["groups"]), f"{1e3 * found['score']:+.3f}"])
    lines += markdown_table(["affinity", "groups", "suggestion", "score ×10⁻³"], rows, left=3)
    check = tox["check"]
    lines += [
        "",
        "## 4. Tox21: training the suggested groups (the honest check)",
        "",
        f"Seeds {settings['tox21']['seeds']}; each group is its own hard-sharing model with the "
        "example's recipe; a task is scored by the group serving it (the suggestion's groups may "
        "overlap). Test ROC-AUC, mean ± std over seeds; Δm% against the single-task nets of the "
        "same seed and against the all-in-one model (negative = better).",
        "",
    ]
    rows = [
        [
            label,
            _groups_text(entry["groups"]) if entry["groups"] else "-",
            fmt_mean_std([r["mean_auroc"] for r in entry["per_seed"]]),
            _signed(entry["delta_m"]),
            _signed(entry["delta_m_vs_all"]),
        ]
        for label, entry in check.items()
    ]
    lines += markdown_table(
        ["models", "groups", "mean AUROC ↑", "Δm% vs single ↓", "Δm% vs all-in-one ↓"],
        rows,
        left=2,
    )
    lines += ["", "Per task (test AUROC, mean over seeds):", ""]
    rows = [
        [label, *[f"{entry['per_task'][t][0]:.4f}" for t in names]]
        for label, entry in check.items()
    ]
    lines += markdown_table(["models", *names], rows)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--ranking-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--grouping-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--cases", nargs="+", default=list(GROUPING_CASES), choices=list(GROUPING_CASES)
    )
    parser.add_argument("--tox21-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-tox21", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="jobs at once, one thread each")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    ranking = {"seeds": args.ranking_seeds, "rows": 3000, "epochs": 6}
    grouping = {"seeds": args.grouping_seeds, "rows": 1500, "epochs": 10, "cases": args.cases}
    tox = {"seeds": args.tox21_seeds, "tasks": None, "epochs": None, "affinity_seed": 0}
    if args.quick:
        ranking.update(seeds=[0, 1], epochs=2)
        grouping.update(seeds=[0], epochs=3, cases=["blocks4"])
        tox.update(seeds=[0], tasks=QUICK_TOX21_TASKS, epochs=1)
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results nor fill the real cache.
            args.out = Path(tempfile.gettempdir()) / "polytask-affinity-quick"
        if args.cache == CACHE_DIR:
            args.cache = args.out / "cache"
    # One torch thread per job: more oversubscribes a shared 2-core machine (see run_compare.py).
    threads = 1
    load_start = load_average()
    started = time.perf_counter()

    stage1 = [
        {"kind": "ranking", "seed": s, "rows": ranking["rows"], "epochs": ranking["epochs"]}
        for s in ranking["seeds"]
    ]
    stage1 += [
        {
            "kind": "grouping",
            "case": c,
            "seed": s,
            "rows": grouping["rows"],
            "epochs": grouping["epochs"],
        }
        for c in grouping["cases"]
        for s in grouping["seeds"]
    ]
    if not args.skip_tox21:
        for probe in (False, True):
            mode = "probe" if probe else "full"
            stage1.insert(
                0,
                {
                    "kind": "tox21-affinity",
                    "probe": probe,
                    "seed": tox["affinity_seed"],
                    "tasks": tox["tasks"],
                    "epochs": tox["epochs"],
                    "groups": list(TOX21_GROUPS),
                    "out": str(
                        args.cache
                        / f"tox21-{mode}-{job_key({'t': tox['tasks'], 'e': tox['epochs']})}"
                    ),
                },
            )
    records = run_all(stage1, args.cache, args.workers, threads)
    data: dict[str, Any] = {}
    ranking_records = [r for r in records if r["job"]["kind"] == "ranking"]
    if ranking_records:
        data["ranking"] = summarise_ranking(ranking_records)
    grouping_summary = {}
    for case in grouping["cases"]:
        case_records = [r for r in records if r["job"].get("case") == case]
        if case_records:
            grouping_summary[case] = summarise_grouping(case, case_records)
    data["grouping"] = grouping_summary
    panels: list[tuple[str, np.ndarray, list[str]]] = []
    if ranking_records:
        labels = [f"t{i}" for i in range(6)]
        panels.append(("synthetic: true correlation", correlations(GRADED_PAIRS, 6), labels))
        panels.append(
            (
                "synthetic: affinity ×10³ (full, mean over seeds)",
                1e3 * np.array(data["ranking"]["mean_affinity_matrix"]),
                labels,
            )
        )
    if not args.skip_tox21:
        aff = {
            ("probe" if r["job"]["probe"] else "full"): {**r["result"], "seconds": r["seconds"]}
            for r in records
            if r["job"]["kind"] == "tox21-affinity"
        }
        names = aff["full"]["document"]["tasks"]
        keys = list(itertools.combinations(range(len(names)), 2))
        agreement = {
            measure: spearman(
                pair_values(np.array(aff["probe"]["document"][measure], dtype=float), names, keys),
                pair_values(np.array(aff["full"]["document"][measure], dtype=float), names, keys),
            )
            for measure in ("affinity", "gradient_cosine")
        }
        groupings = tox21_groupings(aff, names)
        distinct = sorted(
            {group_key(g) for entry in groupings.values() for g in entry["groups"] if len(g) > 1}
        )
        stage2 = []
        for seed in tox["seeds"]:
            base = {"kind": "tox21-train", "seed": seed, "epochs": tox["epochs"]}
            stage2.append({**base, "tasks": tox["tasks"], "baselines": True, "group": "all"})
            stage2 += [
                {**base, "tasks": key.split("+"), "baselines": False, "group": key}
                for key in distinct
            ]
        train_records = run_all(stage2, args.cache, args.workers, threads)
        train = {(r["job"]["seed"], r["job"]["group"]): r["result"] for r in train_records}
        data["tox21"] = {
            "tasks": names,
            "affinity": aff,
            "probe_vs_full": agreement,
            "groupings": groupings,
            "check": score_groupings(groupings, train, names, tox["seeds"]),
            "train_seconds": {
                f"{r['job']['seed']}:{r['job']['group']}": r["seconds"] for r in train_records
            },
        }
        for mode in ("full", "probe"):
            panels.append(
                (
                    f"Tox21: affinity ×10³ ({mode})",
                    1e3 * np.array(aff[mode]["document"]["affinity"], dtype=float),
                    names,
                )
            )
    wall = time.perf_counter() - started
    info = machine_info()
    info["torch_threads"] = threads if threads is not None else info["torch_threads"]
    info["wall_seconds"] = round(wall, 1)
    info["load_average_1min"] = {"start": load_start, "end": load_average()}
    data = {
        "info": info,
        "settings": {
            "quick": args.quick,
            "workers": args.workers,
            "ranking": ranking,
            "grouping": grouping,
            "tox21": tox,
            "graded_correlations": correlations(GRADED_PAIRS, 6).tolist(),
            "cache": str(args.cache),
        },
        **data,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot = "affinity.png" if panels and heat_maps(panels, args.out / "affinity.png") else None
    lines = report(data, plot)
    write_results("affinity", lines, data, args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
