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

Expected wall time on the 2-core machine with ``--workers 2`` (the default: the two datasets
in two processes of one torch thread each; ``polytask compare`` itself trains its runs one
after another). Estimated, not measured end to end: from the smoke run (one thread, 1 epoch:
census 0.5 s per hard-sharing epoch on a quarter of the rows, DB-MTL 2 times and MMoE 2.5
times that, ~1.5 s of data preparation per run; Tox21 0.2-0.3 s per epoch on a quarter of the
rows with 3 tasks, ~6 s of featurisation per multi-task run) and ``tables.json`` /
``balancing_quality.json`` (runs stop early after ~7-10 epochs): census 2 baselines + 4
configurations at 4 fractions, ~6-8 min per seed, **~30-40 min** for 5 seeds; Tox21 12
baselines + 4 configurations at 2 fractions, ~4-6 min per seed, **~20-30 min** (~35-45 min
with ``--fractions 0.1 0.25 0.5 1.0``). In parallel, **about 30-45 minutes** in all on an
otherwise idle machine; more while other jobs run. Keep one torch thread per process on a
shared machine: in a first smoke run with 2 threads while another benchmark kept both cores
busy, Tox21 single-task epochs on a quarter of the rows took up to 6.3 s against 0.2 s with
one thread, and a census hard-sharing run (1 epoch, a quarter of the rows) 3.7-7.4 s against
2.0 s. Disk: the run directories keep their model (~5 MB per Tox21 run, ~1 GB in all);
checkpoints of finished runs are deleted as the benchmark goes (``--keep-checkpoints`` keeps
them, ~3 GB more).

Usage::

    python benchmarks/run_compare.py                        # both datasets, 5 seeds
    python benchmarks/run_compare.py --datasets tox21       # one dataset (resumes its cache)
    python benchmarks/run_compare.py --quick                # smoke: 2 seeds, 1 epoch, temp dir
"""

from __future__ import annotations

import argparse
import json
import math
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
from polytask.config import RunConfig, config_from_dict
from polytask.studies.compare.config import SINGLE_TASK

DATASETS: dict[str, dict[str, Any]] = {
    "census": {
        "title": "Census-Income (KDD)",
        "fractions": [0.1, 0.25, 0.5, 1.0],
        "expert_widths": [72, 36],
        "configurations": ["hard", "hard-uncertainty", "hard-db_mtl", "mmoe"],
    },
    "tox21": {
        "title": "Tox21",
        "fractions": [0.25, 1.0],
        "expert_widths": [128, 64],
        "configurations": ["hard", "hard-uncertainty", "hard-db_mtl", "mmoe"],
    },
    "fdu_mtl": {
        "title": "FDU-MTL (16 sentiment domains, one source each)",
        # One fraction and one configuration: 16 baselines a seed, and an Adam step over the
        # 16-domain n-gram table takes ~0.1 s on one core (~13 min a seed in all).
        "fractions": [1.0],
        "configurations": ["hard"],
        "note": "one `[[data.sources]]` entry per domain, mixed batches, batches of 64, up to "
        "30 epochs (patience 5) for every run (`fdu_as_sources`)",
    },
    "fsdd": {
        "title": "Free Spoken Digit Dataset (digit and speaker)",
        "fractions": [1.0],
        # One configuration: a run takes ~5 min of one core (the log-mel CNN), three per seed.
        "configurations": ["hard"],
    },
}
CONFIGURATIONS = ("hard", "hard-uncertainty", "hard-db_mtl", "mmoe")
#: Datasets split by the release (a column), the same for every seed.
FIXED_SPLIT = ("fdu_mtl", "fsdd")
#: Wall time of every invocation of this script on a compare directory (a resumed benchmark
#: reports the sum), written into that directory.
INVOCATIONS = "benchmark_invocations.json"
#: Run-directory parts the comparison never reads again once a run has its results.json.
PRUNABLE = "checkpoints"
SEEDS = [0, 1, 2, 3, 4]
CACHE_DIR = BENCH_DIR / ".cache" / "compare"
#: Tasks kept in the smoke run of Tox21 (the other assays' columns are ignored, not features).
QUICK_TOX21_TASKS = ["NR-AR", "NR-AhR", "SR-ARE"]


def configurations(dataset: str, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``[[compare.configurations]]`` entries of ``dataset`` (``names``: a subset)."""
    spec = DATASETS[dataset]
    sets = {
        "hard": [],
        "hard-uncertainty": ["balancer.name=uncertainty"],
        "hard-db_mtl": ["balancer.name=db_mtl", "balancer.mode=exact"],
    }
    if "expert_widths" in spec:
        sets["mmoe"] = [
            "model.architecture.name=mmoe",
            "model.architecture.n_experts=4",
            f"model.encoder.widths={json.dumps(spec['expert_widths'])}",
        ]
    chosen = [n for n in names or spec["configurations"] if n in spec["configurations"]]
    return [{"name": name, "set": sets[name]} for name in chosen]


def fdu_as_sources(raw: dict[str, Any]) -> dict[str, Any]:
    """The FDU-MTL example with one ``[[data.sources]]`` entry per domain (its reviews, by the
    loader's ``domain`` column), so a single-task baseline trains on its own domain's reviews
    only, as a one-domain net would, instead of batches of all 16 domains of which one in
    sixteen rows is labelled. Multi-task batches mix the domains (proportional sampling): in
    ``fdu_sampling.md`` mixed batches gave 88.59% against 87.9-88.0% for one domain a batch."""
    out: dict[str, Any] = json.loads(json.dumps(raw))
    data = out["data"]
    dataset = data.pop("dataset")
    data["sources"] = [
        {
            "name": t["name"],
            "tasks": [t["name"]],
            "dataset": dataset,
            "where": {"domain": t["name"]},
        }
        for t in out["tasks"]
    ]
    out["sampling"] = {**out.get("sampling", {}), "batches": "mixed"}
    # One budget for every run, between the recipes tuned on dev for the multi-task net (256
    # a batch, 12 epochs) and for one-domain nets (32, 30 epochs; benchmarks/run_fdu_mtl.py):
    # at 256 a one-domain net takes 6 steps an epoch. Tuning the batch size per run (a compare
    # grid) would double the cost.
    out["train"].update(batch_size=64, epochs=30, patience=5)
    return out


def build_config(
    dataset: str,
    seeds: list[int],
    fractions: list[float],
    threads: int | None,
    quick: bool,
    names: list[str] | None = None,
) -> RunConfig:
    """The example config of ``dataset`` with the benchmark's ``[compare]`` section."""
    base = example_config(dataset)
    raw = base.model_dump(mode="json", exclude={"base_dir"})
    if dataset == "fdu_mtl":
        raw = fdu_as_sources(raw)
    if quick:
        raw["train"]["epochs"] = 1
        if dataset == "tox21":
            raw = subset_tasks(raw, QUICK_TOX21_TASKS)
        if dataset == "fdu_mtl":
            raw["tasks"] = raw["tasks"][:3]
            raw["data"]["sources"] = raw["data"]["sources"][:3]
    # Cosmetic settings: the compare runner ignores them when it checks a finished run's
    # configuration, so a resumed benchmark may change them.
    raw["train"]["progress"] = False
    raw["train"]["threads"] = threads
    raw["compare"] = {
        "seeds": seeds,
        "fractions": fractions,
        "configurations": configurations(dataset, names),
        "grid": DATASETS[dataset].get("grid", {}),
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
    invocations = context["invocations"]
    total = sum(i.get("seconds", 0.0) for i in invocations)
    loads = "; ".join(
        f"{i['load_start']:.1f}-{i.get('load_end', math.nan):.1f}" for i in invocations
    )
    lines = [
        f"# polytask compare on {DATASETS[dataset]['title']}",
        "",
        *machine_lines(info),
        f"- seeds: {doc['seeds']}; training fractions: {fractions}; "
        + (
            f"the release's fixed split (`examples/{dataset}.toml`)"
            if dataset in FIXED_SPLIT
            else f"each seed draws its own random split of `examples/{dataset}.toml`"
        )
        + (f"; {DATASETS[dataset]['note']}" if "note" in DATASETS[dataset] else "")
        + (f" (smoke run: {context['quick_note']})" if context.get("quick_note") else ""),
        f"- compare directory: `{context['cache']}` ({len(context['trained'])} runs trained by "
        f"this invocation, {len(context['reused'])} read back from earlier ones)",
        f"- wall time: {total / 60:.1f} min over {len(invocations)} invocation(s) of this "
        f"script on this compare directory (this one {context['wall'] / 60:.1f} min); 1-minute "
        f"load average {loads}, at the start and end of each, on {info['nproc']} cores "
        "(above the core count, other jobs slowed the runs)",
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
        f"Verdict test: {doc['test']}. Each of the {len(tasks)} tasks is tested on its own.",
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
    lines += ["", "## Report", "", context["report_note"], ""]
    lines += ["The compare command's own summary (`compare.md`, headings one level down):", ""]
    lines += _demoted(context["compare_md"])
    return lines


def prune_checkpoints(root: Path) -> None:
    """Delete the checkpoints of finished runs: a run directory with ``results.json`` is only
    ever read back (its metrics and logs), never resumed."""
    for results in (root / "runs").rglob("results.json"):
        folder = results.parent / PRUNABLE
        if folder.is_dir():
            shutil.rmtree(folder)


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
    seeds = settings["seeds"]
    names = settings["configurations"]
    root = Path(settings["cache"]) / dataset
    load_start = load_average()
    started = time.perf_counter()
    trained: list[str] = []
    # One seed more per call: each call reads the finished runs back and trains the new seed's,
    # so the checkpoints of finished runs can be deleted as the benchmark goes (Tox21's are
    # ~19 MB a run) and compare.json always holds whole seeds. The last call is the comparison
    # over every seed, exactly as one call would make it.
    log = root / INVOCATIONS
    invocations = json.loads(log.read_text(encoding="utf-8")) if log.is_file() else []
    entry: dict[str, Any] = {"date": machine_info()["date"], "load_start": load_start}
    invocations.append(entry)
    for n in range(1, len(seeds) + 1):
        cfg = build_config(dataset, seeds[:n], fractions, threads, settings["quick"], names)
        result = polytask.compare(cfg, out=root, quiet=False)
        trained += result.trained
        if not settings["keep_checkpoints"]:
            prune_checkpoints(root)
        # Logged after every seed, so an interrupted invocation's time still counts.
        entry.update(
            seconds=round(time.perf_counter() - started, 1),
            runs_trained=len(trained),
            load_end=load_average(),
        )
        log.write_text(json.dumps(invocations, indent=1) + "\n", encoding="utf-8")
    reused = [r for r in result.reused if r not in trained]
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
        "trained": trained,
        "reused": reused,
        "wall": wall,
        "invocations": invocations,
        "load": (load_start, load_average()),
        "report_note": note,
        "compare_md": (root / "compare.md").read_text(encoding="utf-8"),
        "quick_note": (
            "1 epoch per run"
            + {"tox21": ", 3 of the 12 tasks", "fdu_mtl": ", 3 of the 16 domains"}.get(dataset, "")
            if settings["quick"]
            else ""
        ),
    }
    costs = run_costs(root)
    lines = report_lines(dataset, result.summary, costs, context)
    info["wall_seconds"] = round(wall, 1)
    info["invocations"] = invocations
    info["load_average_1min"] = {"start": context["load"][0], "end": context["load"][1]}
    data = {
        "info": info,
        "settings": {
            "dataset": dataset,
            "config": f"examples/{dataset}.toml",
            "seeds": seeds,
            "fractions": fractions,
            "configurations": configurations(dataset, names),
            "quick": settings["quick"],
            "compare_dir": str(root),
            "runs_trained": len(trained),
            "runs_reused": len(reused),
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
        default=2,
        help="datasets compared at once, each in its own process (compare itself trains its "
        "runs one after another)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (more than one oversubscribes a shared machine)",
    )
    parser.add_argument(
        "--configurations", nargs="+", default=list(CONFIGURATIONS), choices=CONFIGURATIONS
    )
    parser.add_argument("--cache", type=Path, default=CACHE_DIR, help="compare directories")
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the checkpoints of finished runs (default: deleted, ~19 MB per Tox21 run)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--report-max-kb", type=float, default=1024.0)
    args = parser.parse_args()
    if args.quick:
        args.seeds = [0, 1]  # two seeds: the least that gives intervals and verdicts
        # Small fractions keep the smoke run to minutes; every configuration still runs.
        args.fractions = args.fractions or [0.1, 0.25]
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results nor resume the real cache.
            args.out = Path(tempfile.gettempdir()) / "polytask-compare-quick"
        if args.cache == CACHE_DIR:
            args.cache = args.out / "cache"
    workers = max(1, min(args.workers, len(args.datasets)))
    threads = args.threads
    settings = {
        "seeds": args.seeds,
        "fractions": args.fractions,
        "threads": threads,
        "quick": args.quick,
        "cache": str(args.cache),
        "out": str(args.out),
        "report_max_kb": args.report_max_kb,
        "configurations": args.configurations,
        "keep_checkpoints": args.keep_checkpoints,
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
