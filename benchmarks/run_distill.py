"""Distillation on Tox21: twelve single-task teachers into one multi-task student.

Issue 7, benchmark 1: single-task teachers vs a student with at most a quarter of their total
parameters; per-task metric, parameters, and inference throughput (examples/s) measured side
by side. Target: the student keeps >= 98% of the teachers' mean metric at >= 4x their
combined throughput.

Per seed (``examples/tox21.toml`` as written: RDKit Morgan fingerprint + descriptors, MLP
[512, 256] encoder, towers [64], 30 epochs, patience 5; each seed draws its own random
80/10/10 split, the same for teachers and students because the split depends on the seed
and the table only):

* ``teachers``: one net per assay, the example's network with one head (``polytask.run`` on a
  one-task config; the other assays' columns ignored, not features);
* ``student (labels)``: the plain multi-task net of the example, trained on the labels alone
  (what multi-task learning gives without a teacher);
* ``student (distilled)``: the same net taught by the twelve teachers (``[distill]``:
  temperature 2, teacher annealing from teacher-only to labels-only, Clark et al. 2019; rows
  without an assay's label, 17% of the entries, learn it from its teacher);
* ``student (distilled, labelled rows)``: the same with ``fill_missing = false``;
* ``small student (distilled)``: a narrower encoder [256, 128] with towers [32], distilled
  as above.

Every number is on the test split (checkpoints chosen on validation). The metric is ROC-AUC
(MoleculeNet's Tox21 metric), averaged over the 12 assays. The teachers' AUROC is read from
the distilled student's ``results.json`` (its ``teachers`` entry: the teachers' outputs
scored on the student's own test rows), and checked against the teachers' own runs.

Throughput: ``Predictor.predict`` on the whole featurised table (7,831 molecules, the
serving path: preprocessing + network + output decoding), the twelve teachers one after
another against one student, alternating teacher and student rounds (5 rounds, median), in
one process with one torch thread, so both sides see the same machine load. The
network-only rate (``predict_outputs`` on preprocessed inputs) is reported too.

Usage::

    python benchmarks/run_distill.py                   # 3 seeds (~40 min on 2 cores)
    python benchmarks/run_distill.py --quick           # smoke: 1 seed, 3 assays, 2 epochs

Runs are cached under ``benchmarks/.cache/distill/`` (a finished run is read back).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    example_config,
    machine_lines,
    markdown_table,
    mean_std,
    subset_tasks,
    worker_run_info,
    write_results,
)

CACHE_DIR = BENCH_DIR / ".cache" / "distill"
SEEDS = [0, 1, 2]
QUICK_TASKS = ["NR-AR", "NR-AhR", "SR-ARE"]
STUDENTS: dict[str, dict[str, Any]] = {
    "student (labels)": {},
    "student (distilled)": {"distill": {}},
    "student (distilled, labelled rows)": {"distill": {"fill_missing": False}},
    "small student (distilled)": {
        "distill": {},
        "model": {"encoder": {"widths": [256, 128]}, "head": {"widths": [32]}},
    },
}
DISTILL = {"temperature": 2.0, "anneal": True}
ROUNDS = 5


def base_raw(seed: int, quick: bool) -> dict[str, Any]:
    raw = example_config("tox21").model_dump(mode="json", exclude={"base_dir"})
    raw["seed"] = seed
    raw["baselines"] = False
    raw["train"].update(progress=False, threads=1)
    if quick:
        raw = subset_tasks(raw, QUICK_TASKS)
        raw["train"]["epochs"] = 2
    return raw


def _run(raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train ``raw`` into ``out`` unless a finished run is there; its results.json."""
    from polytask import config_from_dict, run

    if not (out / "results.json").is_file():
        base = example_config("tox21").base_dir
        run(config_from_dict(raw, base_dir=base), out=out, overwrite=True, quiet=True)
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def _seconds(out: Path) -> float:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line)["seconds"] for line in lines if line.strip())


def seed_job(seed: int, root: str, quick: bool) -> dict[str, Any]:
    """Teachers and students of one seed, and their throughput."""
    import torch

    torch.set_num_threads(1)
    where = Path(root) / f"seed{seed}"
    raw = base_raw(seed, quick)
    tasks = [t["name"] for t in raw["tasks"]]
    teachers: dict[str, Path] = {}
    teacher_auc: dict[str, float] = {}
    train_seconds: dict[str, float] = {"teachers": 0.0}
    for task in tasks:
        out = where / "teachers" / task
        res = _run(subset_tasks(raw, [task]), out)
        teachers[task] = out / "model"
        teacher_auc[task] = res["multi_task"][task]["auroc"]
        train_seconds["teachers"] += _seconds(out)
    students: dict[str, dict[str, Any]] = {}
    for name, change in STUDENTS.items():
        one = json.loads(json.dumps(raw))
        for section, values in change.get("model", {}).items():
            one["model"][section].update(values)
        if "distill" in change:
            one["distill"] = {
                "teachers": [str(p) for p in teachers.values()],
                **DISTILL,
                **change["distill"],
            }
        out = where / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        res = _run(one, out)
        students[name] = {
            "dir": str(out),
            "auroc": {t: res["multi_task"][t]["auroc"] for t in tasks},
            "teachers_on_student_rows": {t: v["auroc"] for t, v in res.get("teachers", {}).items()},
            "parameters": res.get("parameters", {}).get("student"),
        }
        train_seconds[name] = _seconds(out)
    speed = throughput(list(teachers.values()), {n: Path(s["dir"]) for n, s in students.items()})
    return {
        "seed": seed,
        "tasks": tasks,
        "teachers": {"auroc": teacher_auc, "dirs": {t: str(p) for t, p in teachers.items()}},
        "students": students,
        "train_seconds": train_seconds,
        "throughput": speed,
    }


def throughput(teacher_dirs: list[Path], student_dirs: dict[str, Path]) -> dict[str, Any]:
    """Examples per second of the teachers together and of each student, measured in
    alternating rounds on the whole table (median of :data:`ROUNDS`)."""
    import polytask
    from polytask.data.datasets import load_dataset
    from polytask.evaluate.evaluation import predict_outputs

    frame = load_dataset("tox21")
    teachers = [polytask.load(p) for p in teacher_dirs]
    students = {n: polytask.load(p) for n, p in student_dirs.items()}
    n = len(frame)
    inputs = {
        id(p): p.preprocessor.transform(frame, "tox21") for p in [*teachers, *students.values()]
    }

    def timed(predictors: list[polytask.Predictor], network_only: bool) -> float:
        start = time.perf_counter()
        for p in predictors:
            if network_only:
                predict_outputs(p.model, inputs[id(p)], p.batch_size)
            else:
                p.predict(frame)
        return time.perf_counter() - start

    sides = {"teachers": teachers, **{n_: [p] for n_, p in students.items()}}
    out: dict[str, Any] = {"rows": n, "rounds": ROUNDS}
    for mode in ("end_to_end", "network_only"):
        times: dict[str, list[float]] = {k: [] for k in sides}
        for predictors in sides.values():
            timed(predictors, mode == "network_only")  # warm-up
        for _ in range(ROUNDS):
            for side, predictors in sides.items():
                times[side].append(timed(predictors, mode == "network_only"))
        out[mode] = {k: n / statistics.median(v) for k, v in times.items()}
    out["parameters"] = {
        "teachers": sum(sum(q.numel() for q in p.model.parameters()) for p in teachers),
        **{k: sum(q.numel() for q in p.model.parameters()) for k, p in students.items()},
    }
    return out


def summarise(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = jobs[0]["tasks"]
    names = list(STUDENTS)

    def mean_auc(values: dict[str, float]) -> float:
        return statistics.fmean(values[t] for t in tasks)

    rows: dict[str, Any] = {"teachers": {"mean": [mean_auc(j["teachers"]["auroc"]) for j in jobs]}}
    for name in names:
        rows[name] = {"mean": [mean_auc(j["students"][name]["auroc"]) for j in jobs]}
    for name, row in rows.items():
        ratios = [m / t for m, t in zip(row["mean"], rows["teachers"]["mean"], strict=True)]
        row["retained"] = ratios
        row["speedup_end_to_end"] = [
            j["throughput"]["end_to_end"][name] / j["throughput"]["end_to_end"]["teachers"]
            for j in jobs
        ]
        row["speedup_network"] = [
            j["throughput"]["network_only"][name] / j["throughput"]["network_only"]["teachers"]
            for j in jobs
        ]
        row["examples_per_s"] = [j["throughput"]["end_to_end"][name] for j in jobs]
        row["parameters"] = jobs[0]["throughput"]["parameters"][name]
        row["train_seconds"] = [j["train_seconds"][name] for j in jobs]
    per_task = {
        name: {
            t: [
                (j["teachers"]["auroc"] if name == "teachers" else j["students"][name]["auroc"])[t]
                for j in jobs
            ]
            for t in tasks
        }
        for name in rows
    }
    return {"rows": rows, "per_task": per_task}


def report(summary: dict[str, Any], jobs: list[dict[str, Any]], info: dict[str, Any]) -> list[str]:
    rows = summary["rows"]
    teacher_params = rows["teachers"]["parameters"]

    def ms(values: list[float], digits: int = 4) -> str:
        m, s = mean_std(values)
        return f"{m:.{digits}f} ± {s:.{digits}f}"

    lines = [
        "# Distillation on Tox21: 12 single-task teachers -> one multi-task student",
        "",
        *machine_lines(info),
        f"- seeds: {[j['seed'] for j in jobs]}; wall {info.get('wall_seconds', 0) / 60:.1f} min "
        f"with {info.get('workers', 1)} worker(s)",
        "",
        "Test ROC-AUC averaged over the assays (mean ± std over seeds), the share of the "
        "teachers' mean kept, parameters, and throughput relative to the twelve teachers "
        "(end to end: `Predictor.predict` on the 7,831-molecule table; network only: the "
        "forward passes on preprocessed inputs). Training time: seconds of the run's epochs "
        "(teachers: the twelve together).",
        "",
    ]
    table = []
    for name, row in rows.items():
        params = row["parameters"]
        table.append(
            [
                name,
                ms(row["mean"]),
                ms([100 * r for r in row["retained"]], 2) + "%",
                f"{params:,} ({100 * params / teacher_params:.1f}%)",
                f"{statistics.fmean(row['examples_per_s']):,.0f}",
                ms(row["speedup_end_to_end"], 2) + "x",
                ms(row["speedup_network"], 2) + "x",
                f"{statistics.fmean(row['train_seconds']):.0f}",
            ]
        )
    lines += markdown_table(
        [
            "model",
            "mean AUROC",
            "of teachers",
            "parameters",
            "examples/s",
            "speed-up (end to end)",
            "speed-up (network)",
            "train s",
        ],
        table,
        1,
    )
    lines += ["", "## Target: >= 98% of the teachers' mean AUROC at >= 4x their throughput", ""]
    for name, row in rows.items():
        if name == "teachers":
            continue
        kept = statistics.fmean(row["retained"])
        speed = statistics.fmean(row["speedup_end_to_end"])
        small = row["parameters"] <= teacher_params / 4
        verdict = "MET" if kept >= 0.98 and speed >= 4.0 and small else "MISSED"
        lines.append(
            f"- {name}: {verdict} ({100 * kept:.2f}% of the teachers' AUROC, {speed:.1f}x "
            f"end-to-end throughput, {100 * row['parameters'] / teacher_params:.1f}% of their "
            "parameters)"
        )
    lines += ["", "## Per assay (test AUROC, mean over seeds)", ""]
    tasks = jobs[0]["tasks"]
    per_task = summary["per_task"]
    lines += markdown_table(
        ["assay", *per_task],
        [[t, *[f"{statistics.fmean(per_task[n][t]):.4f}" for n in per_task]] for t in tasks],
        1,
    )
    check = []
    for j in jobs:
        own = j["teachers"]["auroc"]
        seen = j["students"]["student (distilled)"]["teachers_on_student_rows"]
        check.append(max(abs(own[t] - seen[t]) for t in own))
    lines += [
        "",
        "Check: the teachers' AUROC from their own runs and from the distilled student's run "
        f"(their outputs on the student's test rows) differ by at most {max(check):.2e} "
        "(same split, same rows).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    root = CACHE_DIR
    if args.quick:
        args.seeds = args.seeds[:1]
        args.out = Path(tempfile.gettempdir()) / "polytask-distill-quick"
        root = args.out / "cache"
    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            jobs = list(
                pool.map(
                    seed_job,
                    args.seeds,
                    [str(root)] * len(args.seeds),
                    [args.quick] * len(args.seeds),
                )
            )
    else:
        jobs = [seed_job(s, str(root), args.quick) for s in args.seeds]
    info = worker_run_info(args.workers, time.perf_counter() - started)
    summary = summarise(jobs)
    lines = report(summary, jobs, info)
    write_results(
        "distill_tox21", lines, {"info": info, "summary": summary, "jobs": jobs}, args.out
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
