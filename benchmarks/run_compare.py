"""Should I use multi-task learning here? ``polytask compare`` on Census-Income and Tox21.

The protocol of issue 6, run through :func:`polytask.compare` itself (nothing re-implemented
here): for each seed and training fraction, one single-task net per task (the compare command's
own baselines: the same encoder, head, data, split and budget, hard sharing with one head and a
static weight of 1) and each multi-task configuration below. Checkpoints are chosen on the
validation split; every number is on the test split. Reported per fraction and configuration:
each task's primary test metric (AUROC) as mean ± half-width of the 95% Student-t interval over
seeds, Δm% (one definition, ``polytask.evaluate.delta``: mean over tasks of the signed relative
change of the primary metric, negative = multi-task better; per seed against that seed's
baselines, then mean and interval) and its all-metrics variant, the worst task, and a verdict
per task from a paired t-test over seeds (helps / no significant difference / hurts).

Data (``examples/<dataset>.toml``, the tuned recipes, unchanged):

* ``census``: UCI Census-Income (KDD), income > $50K and never married (Ma et al., KDD 2018);
  MLP [256, 128], dropout 0.3, towers [64], 20 epochs, early stopping (patience 5);
* ``tox21``: MoleculeNet Tox21, 12 binary assays with 17% of the labels missing; RDKit Morgan
  fingerprint + descriptors, MLP [512, 256], towers [64], 30 epochs, patience 5.

Configurations (the same four on both datasets; the balancers are the two that did best in
``benchmarks/results/balancing_quality.md``):

* ``hard``: the example as written: hard sharing, static weight 1 per task (= equal weights);
* ``hard-uncertainty``: uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018): first on
  Tox21 (Δm -1.06%) and fourth on QM8 (-1.64%) there, at 1.1-1.3 times the cost of equal
  weights;
* ``hard-db_mtl``: DB-MTL (Lin, Ye, Xu, Shi and Zhang, 2023), gradient-level, exact mode: first
  on QM8 (-2.05%), middle of the field on Tox21 (-0.55%), at about twice the cost;
* ``mmoe``: MMoE (Ma et al., KDD 2018) with 4 experts, each narrower than the shared-bottom
  encoder so the parameter counts match ([72, 36] on census, as in ``census_architectures.md``;
  [128, 64] on Tox21's 2,064 inputs: 1.09 M vs 1.19 M encoder weights), static weights.

Training fractions (``data.train_fraction``: a random subset of the training rows, drawn with
the run seed; validation and test rows all kept): census [0.1, 0.25, 0.5, 1.0] (data
efficiency: does sharing help more when labels are scarce?), Tox21 [0.25, 1.0] (12 baselines
per seed and fraction make each fraction cost about as much as the whole census sweep; pass
``--fractions 0.1 0.25 0.5 1.0`` for the full curve, roughly doubling Tox21's time). Each seed
draws its own random split (``data.split.seed`` unset), so the intervals include the split's
variance; Δm and the verdicts are paired per seed.

Output: the compare directory ``benchmarks/.cache/compare/<dataset>/`` (``compare.json``,
``compare.md``, one run directory per run). It is resumable: ``polytask compare`` never
retrains a finished run directory, so after an interruption the same command continues where
it stopped (and ``--seeds 0 1 2 3 4 5 6`` later trains only the new seeds). Then
``benchmarks/results/compare_<dataset>.md`` / ``.json`` (machine, summary tables, compare.md,
training cost per configuration) and the HTML report (:func:`polytask.report`) copied to
``benchmarks/results/compare_<dataset>_report/`` when it is smaller than ``--report-max-kb``
(otherwise it stays in the cache directory and the markdown says so).

Expected wall time on the 2-core machine (estimated from ``tables.json``,
``census_architectures.json`` and ``balancing_quality.json``: census ~1.0-1.4 s per epoch at
full data on 2 threads, ~10 epochs per run, ~5 s of data preparation per multi-task run;
Tox21 ~30 s per multi-task run and ~11 s per single-task net on one thread, DB-MTL and MMoE
about twice hard sharing): census 2 × 2 baselines + 4 × 4 configurations per seed = 24 runs,
~6 min per seed, **~30 min** for 5 seeds; Tox21 12 + 4 runs per seed and fraction, ~7 min per
seed at [0.25, 1.0], **~35-40 min** for 5 seeds. ``--workers 2`` runs the two datasets in two
processes of one thread each: **~40-60 min** in all; sequentially on 2 threads about 60-80
min. Other jobs on the machine stretch both (the census architectures benchmark ran 2-3 times
slower than its smoke test under a load of 3-9).

Usage::

    python benchmarks/run_compare.py --workers 2            # both datasets, 5 seeds
    python benchmarks/run_compare.py --datasets tox21       # one dataset (resumes its cache)
    python benchmarks/run_compare.py --quick                # smoke: 2 seeds, 1 epoch, temp dir
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    example_config,
    load_average,
    machine_info,
    machine_lines,
    markdown_table,
    mean_std,
    subset_tasks,
    write_results,
)
from polytask.config import SINGLE_TASK, RunConfig, config_from_dict

DATASETS: dict[str, dict[str, Any]] = {
    "census": {
        "title": "Census-Income (KDD)",
        "fractions": [0.1, 0.25, 0.5, 1.0],
        "expert_widths": [72, 36],
    },
    "tox21": {
        "title": "Tox21",
        "fractions": [0.25, 1.0],
        "expert_widths": [128, 64],
    },
}
CONFIGURATIONS = ("hard", "hard-uncertainty", "hard-db_mtl", "mmoe")
SEEDS = [0, 1, 2, 3, 4]
CACHE_DIR = BENCH_DIR / ".cache" / "compare"
#: Tasks kept in the smoke run of Tox21 (the other assays' columns are ignored, not features).
QUICK_TOX21_TASKS = ["NR-AR", "NR-AhR", "SR-ARE"]


def configurations(dataset: str) -> list[dict[str, Any]]:
    """The ``[[compare.configurations]]`` entries of ``dataset``."""
    widths = DATASETS[dataset]["expert_widths"]
    sets = {
        "hard": [],
        "hard-uncertainty": ["balancer.name=uncertainty"],
        "hard-db_mtl": ["balancer.name=db_mtl", "balancer.mode=exact"],
        "mmoe": [
            "model.architecture.name=mmoe",
            "model.architecture.n_experts=4",
            f"model.encoder.widths={json.dumps(widths)}",
        ],
    }
    return [{"name": name, "set": sets[name]} for name in CONFIGURATIONS]


def build_config(
    dataset: str, seeds: list[int], fractions: list[float], threads: int | None, quick: bool
) -> RunConfig:
    """The example config of ``dataset`` with the benchmark's ``[compare]`` section."""
    base = example_config(dataset)
    raw = base.model_dump(mode="json", exclude={"base_dir"})
    if quick:
        raw["train"]["epochs"] = 1
        if dataset == "tox21":
            raw = subset_tasks(raw, QUICK_TOX21_TASKS)
    # Cosmetic settings: the compare runner ignores them when it checks a finished run's
    # configuration, so a resumed benchmark may change them.
    raw["train"]["progress"] = False
    raw["train"]["threads"] = threads
    raw["compare"] = {
        "seeds": seeds,
        "fractions": fractions,
        "configurations": configurations(dataset),
    }
    return config_from_dict(raw, base_dir=base.base_dir)


# -- reading the results -------------------------------------------------------------------------


def _ci(stat: dict[str, Any] | None, digits: int = 4) -> str:
    """``mean ± half-width`` of a compare.json interval."""
    if not stat or stat.get("mean") is None:
        return "-"
    low, high = stat.get("ci_low"), stat.get("ci_high")
    if low is None or high is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def _delta(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    low, high = stat.get("ci_low"), stat.get("ci_high")
    if low is None or high is None:
        return f"{stat['mean']:+.2f}"
    return f"{stat['mean']:+.2f} [{low:+.2f}, {high:+.2f}]"


def run_costs(root: Path) -> dict[str, dict[str, Any]]:
    """Training cost per (configuration, fraction) from the run directories' ``metrics.jsonl``:
    seconds per run (sum of its epochs' seconds: training + validation, no data preparation)
    and epochs per run. Single-task baselines are per task (one net)."""
    out: dict[str, dict[str, Any]] = {}
    runs = root / "runs"
    for results in sorted(runs.rglob("results.json")):
        parts = results.parent.relative_to(runs).parts
        if len(parts) < 3 or not parts[0].startswith("fraction-"):
            continue
        fraction, configuration = parts[0].removeprefix("fraction-"), parts[1]
        records = [
            json.loads(line)
            for line in (results.parent / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
        entry = out.setdefault(f"{configuration}@{fraction}", {"seconds": [], "epochs": []})
        entry["seconds"].append(sum(float(r.get("seconds", 0.0)) for r in records))
        entry["epochs"].append(len(records))
    return out


def _verdict_counts(row: dict[str, Any]) -> str:
    verdicts = [v["verdict"] for v in row.get("verdicts", {}).values()]
    helps, hurts = verdicts.count("helps"), verdicts.count("hurts")
    same = verdicts.count("no significant difference")
    return f"{helps} / {same} / {hurts}"


def _demoted(markdown: str) -> list[str]:
    """compare.md with its headings one level down (it goes under a section here)."""
    lines = []
    for line in markdown.splitlines():
        lines.append("#" + line if line.startswith("#") else line)
    return lines


def report_lines(
    dataset: str, doc: dict[str, Any], costs: dict[str, dict[str, Any]], context: dict[str, Any]
) -> list[str]:
    info = context["info"]
    fractions = doc["fractions"]
    tasks = list(doc["tasks"])
    names = [n for n in doc["configurations"] if n != SINGLE_TASK]
    rows = {(r["fraction"], r["configuration"]): r for r in doc["results"]}
    metric = sorted({t["metric"] for t in doc["tasks"].values()})
    lines = [
        f"# polytask compare on {DATASETS[dataset]['title']}",
        "",
        *machine_lines(info),
        f"- seeds: {doc['seeds']}; training fractions: {fractions}; each seed draws its own "
        f"random split of `examples/{dataset}.toml`"
        + (f" (smoke run: {context['quick_note']})" if context.get("quick_note") else ""),
        f"- compare directory: `{context['cache']}` ({len(context['trained'])} runs trained by "
        f"this invocation, {len(context['reused'])} read back from earlier ones)",
        f"- wall time of this invocation: {context['wall'] / 60:.1f} min; 1-minute load average "
        f"{context['load'][0]:.1f} at the start, {context['load'][1]:.1f} at the end on "
        f"{info['nproc']} cores (above the core count, other jobs slowed the runs)",
        "",
        "Configurations (`single-task`: the baselines compare trains itself, one net per task):",
        "",
    ]
    for name, conf in doc["configurations"].items():
        overrides = ", ".join(f"`{o}`" for o in conf["overrides"]) or "the example as written"
        lines.append(f"- `{name}`: {overrides}")
    lines += [
        "",
        f"Test split, primary metric {', '.join(metric)} (higher is better). Cells: mean ± "
        "half-width of the 95% Student-t interval over seeds; Δm% [95% CI], negative = "
        "multi-task better than the single-task nets.",
        "",
        "## Data efficiency: Δm% per configuration and training fraction",
        "",
    ]
    header = ["configuration", *[f"fraction {f:g}" for f in fractions]]
    lines += markdown_table(
        header,
        [[n, *[_delta((rows.get((f, n)) or {}).get("delta_m")) for f in fractions]] for n in names],
    )
    lines += [
        "",
        "## Verdicts per task (helps / no significant difference / hurts)",
        "",
        f"Paired t-test over seeds, {doc['test']}; {len(tasks)} tasks each tested on its own.",
        "",
    ]
    lines += markdown_table(
        header,
        [[n, *[_verdict_counts(rows.get((f, n)) or {}) for f in fractions]] for n in names],
    )
    lines += ["", "## Mean primary metric over tasks (test)", ""]
    mean_rows = []
    for n in [SINGLE_TASK, *names]:
        cells = []
        for f in fractions:
            row = rows.get((f, n))
            values = [row["per_task"][t]["mean"] for t in tasks] if row else []
            finite = [v for v in values if v is not None]
            cells.append(f"{sum(finite) / len(finite):.4f}" if finite else "-")
        mean_rows.append([n, *cells])
    lines += markdown_table(header, mean_rows)
    lines += [
        "",
        "## Training cost",
        "",
        "Seconds per run (sum of its epochs: training + validation, no data preparation; "
        "single-task: one net) and epochs per run (early stopping), mean ± std over runs. "
        "Indicative only on a shared machine.",
        "",
    ]
    cost_rows = []
    for n in [SINGLE_TASK, *names]:
        for f in fractions:
            entry = costs.get(f"{n}@{f:g}")
            if not entry:
                continue
            s, e = mean_std(entry["seconds"]), mean_std(entry["epochs"])
            runs = str(len(entry["seconds"]))
            cost_rows.append(
                [n, f"{f:g}", runs, f"{s[0]:.1f} ± {s[1]:.1f}", f"{e[0]:.1f} ± {e[1]:.1f}"]
            )
    lines += markdown_table(
        ["configuration", "fraction", "runs", "s / run", "epochs"], cost_rows, 2
    )
    lines += ["", "## Report", "", context["report_note"], "", "## compare.md", ""]
    lines += _demoted(context["compare_md"])
    return lines


def render_report(root: Path, target: Path, max_kb: float) -> tuple[str, dict[str, Any]]:
    """Render the HTML report into ``root/report``; copy it to ``target`` if small enough.
    Returns the note for the markdown and what happened."""
    from polytask import report
    from polytask.errors import PolytaskError

    try:
        page = report(root)
    except PolytaskError as exc:
        return f"Not rendered: {exc}", {"rendered": False, "error": str(exc)}
    folder = page.parent
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    total_kb = sum(files.values()) / 1024
    png_kb = sum(v for k, v in files.items() if k.endswith(".png")) / 1024
    meta = {"rendered": True, "files": files, "total_kb": round(total_kb, 1)}
    if total_kb <= max_kb:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        meta["copied_to"] = target.name
        note = (
            f"HTML report with {len(files) - 1} PNG figures ({png_kb:.0f} KB of PNG, "
            f"{total_kb:.0f} KB in all): `{target.name}/index.html`."
        )
    else:
        meta["copied_to"] = None
        note = (
            f"The HTML report ({total_kb:.0f} KB, {png_kb:.0f} KB of PNG) is larger than "
            f"{max_kb:.0f} KB, so it is not copied here; it is in `{folder}` "
            f"(regenerate with `polytask report {root}`)."
        )
    return note, meta


def compare_dataset(dataset: str, settings: dict[str, Any]) -> list[str]:
    """Run (or resume) the comparison of ``dataset`` and write its results; returns the
    markdown lines (runs in a worker process with ``--workers``)."""
    import torch

    import polytask

    threads = settings["threads"]
    if threads is not None:
        torch.set_num_threads(threads)
    fractions = settings["fractions"] or DATASETS[dataset]["fractions"]
    cfg = build_config(dataset, settings["seeds"], fractions, threads, settings["quick"])
    root = Path(settings["cache"]) / dataset
    load_start = load_average()
    started = time.perf_counter()
    result = polytask.compare(cfg, out=root, quiet=False)
    wall = time.perf_counter() - started
    out = Path(settings["out"])
    out.mkdir(parents=True, exist_ok=True)
    note, report_meta = render_report(
        root, out / f"compare_{dataset}_report", settings["report_max_kb"]
    )
    info = machine_info()
    info["torch_threads"] = threads if threads is not None else torch.get_num_threads()
    context = {
        "info": info,
        "cache": root,
        "trained": result.trained,
        "reused": result.reused,
        "wall": wall,
        "load": (load_start, load_average()),
        "report_note": note,
        "compare_md": (root / "compare.md").read_text(encoding="utf-8"),
        "quick_note": "1 epoch per run, Tox21 cut to 3 tasks" if settings["quick"] else "",
    }
    costs = run_costs(root)
    lines = report_lines(dataset, result.summary, costs, context)
    info["wall_seconds"] = round(wall, 1)
    info["load_average_1min"] = {"start": context["load"][0], "end": context["load"][1]}
    data = {
        "info": info,
        "settings": {
            "dataset": dataset,
            "config": f"examples/{dataset}.toml",
            "seeds": settings["seeds"],
            "fractions": fractions,
            "configurations": configurations(dataset),
            "quick": settings["quick"],
            "compare_dir": str(root),
            "runs_trained": len(result.trained),
            "runs_reused": len(result.reused),
        },
        "compare": result.summary,
        "cost": costs,
        "report": report_meta,
    }
    write_results(f"compare_{dataset}", lines, data, out)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=None, help="default: per dataset"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="datasets compared at once, each in its own process on one thread (compare "
        "itself trains its runs one after another)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (default: torch's)"
    )
    parser.add_argument("--cache", type=Path, default=CACHE_DIR, help="compare directories")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--report-max-kb", type=float, default=1024.0)
    args = parser.parse_args()
    if args.quick:
        args.seeds = [0, 1]  # two seeds: the least that gives intervals and verdicts
        args.fractions = args.fractions or [0.25, 1.0]
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results nor resume the real cache.
            args.out = Path(tempfile.gettempdir()) / "polytask-compare-quick"
        if args.cache == CACHE_DIR:
            args.cache = args.out / "cache"
    workers = max(1, min(args.workers, len(args.datasets)))
    threads = args.threads if args.threads is not None else (1 if workers > 1 else None)
    settings = {
        "seeds": args.seeds,
        "fractions": args.fractions,
        "threads": threads,
        "quick": args.quick,
        "cache": str(args.cache),
        "out": str(args.out),
        "report_max_kb": args.report_max_kb,
    }
    if workers == 1:
        for dataset in args.datasets:
            print("\n".join(compare_dataset(dataset, settings)), flush=True)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(compare_dataset, d, settings): d for d in args.datasets}
        for future in as_completed(futures):
            print("\n".join(future.result()), flush=True)


if __name__ == "__main__":
    main()
