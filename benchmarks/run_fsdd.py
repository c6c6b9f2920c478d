"""Spoken digit + speaker from one recording: single-task vs multi-task nets on FSDD.

The Free Spoken Digit Dataset (3,000 recordings at 8 kHz, 6 speakers x 10 digits x 50 takes;
:mod:`polytask.data.datasets.fsdd`) with its official test set (takes 0-4, 300 recordings),
validation on takes 5-9 (300) and training on takes 10-49 (2,400). Two multiclass tasks: the
digit (10 classes) and the speaker (6 classes).

Models, all with the ``audio_cnn`` encoder (log-mel front end, 40 bands of a 32 ms window every
16 ms on 1 s of audio, then a ResNet-style CNN whose last 10 mel rows are folded into the
channels) and a linear head per task on the time-averaged features:

* ``single:digit`` / ``single:speaker``: one net per task, CNN widths 16/32/64;
* ``hard``: one shared CNN (16/32/64), two heads;
* ``mmoe``: MMoE (Ma et al., KDD 2018) with 3 expert CNNs of widths 8/16/32 and a gate per task
  (the gates read one more 8/16/32 CNN), about the parameters and compute of one 16/32/64 CNN.

Every run: AdamW (lr 2e-3, weight decay 1e-4), cosine schedule, batch 64, a fixed number of
epochs, the checkpoint of the epoch with the lowest mean validation loss scored on the test
split. Reported: test accuracy per task (mean ± std over seeds), the multi-task models' Δm
against the single-task nets of the same seed (:func:`polytask.evaluate.delta.delta_m` on
accuracy; lower is better), and time. The settings were chosen on the validation split, never
on test (validation accuracies are in the JSON). Target: >= 97% test accuracy on both tasks
with a multi-task net.

Each run is on one torch thread; ``--workers`` runs go in parallel.

Usage::

    python benchmarks/run_fsdd.py            # 4 models x 3 seeds, 25-40 min on 2 shared cores
    python benchmarks/run_fsdd.py --quick    # smoke: 1 seed, 1 epoch, results in /tmp
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
    machine_lines,
    markdown_table,
    mean_std,
    worker_run_info,
    write_results,
)
from polytask.config import config_from_dict
from polytask.evaluate.delta import delta_m

TASKS = ("digit", "speaker")
MODELS = ("single:digit", "single:speaker", "hard", "mmoe")
MULTI = ("hard", "mmoe")
TARGET = 0.97
WIDTHS = [16, 32, 64]
MMOE_WIDTHS, MMOE_EXPERTS = [8, 16, 32], 3
ENCODER: dict[str, Any] = {"name": "audio_cnn", "n_fft": 256, "hop": 128, "n_mels": 40}
INPUT: dict[str, Any] = {"name": "audio", "column": "path", "sample_rate": 8000, "seconds": 1.0}


def model_section(model: str) -> dict[str, Any]:
    """The ``[model]`` config section of ``model``."""
    if model == "mmoe":
        return {
            "encoder": {**ENCODER, "widths": MMOE_WIDTHS},
            "architecture": {"name": "mmoe", "n_experts": MMOE_EXPERTS},
            "head": {"widths": []},
        }
    return {
        "encoder": {**ENCODER, "widths": WIDTHS},
        "architecture": {"name": "hard"},
        "head": {"widths": []},
    }


def model_tasks(model: str) -> list[str]:
    return [model.split(":", 1)[1]] if model.startswith("single:") else list(TASKS)


def raw_config(job: dict[str, Any]) -> dict[str, Any]:
    """The run configuration (a raw dict, validated by ``config_from_dict``) of one job."""
    return {
        "seed": job["seed"],
        "baselines": False,
        "data": {
            "dataset": "fsdd",
            "input": INPUT,
            "split": {"method": "column", "column": "split"},
        },
        "tasks": [
            {"name": t, "kind": "multiclass", "target": t} for t in model_tasks(job["model"])
        ],
        "model": model_section(job["model"]),
        "balancer": {"name": "equal"},
        "train": {
            "epochs": job["epochs"],
            "batch_size": 64,
            "lr": 2e-3,
            "weight_decay": 1e-4,
            "scheduler": "cosine",
            # A fixed budget; the checkpoint is the epoch with the lowest validation loss.
            "patience": None,
            "criterion": "val_loss",
            "progress": False,
        },
    }


def parameter_count(model: str) -> int:
    """Trainable parameters of ``model`` (built on the FSDD input spec, no data read)."""
    from polytask.data.spec import InputSpec
    from polytask.models.model import build_model
    from polytask.tasks import Task

    cfg = config_from_dict(raw_config({"seed": 0, "model": model, "epochs": 1}))
    classes = {"digit": [str(d) for d in range(10)], "speaker": [f"s{i}" for i in range(6)]}
    tasks = [Task(t, "multiclass", t, classes=classes[t]) for t in model_tasks(model)]
    spec = InputSpec(kind="audio", shape=[8000], sample_rate=8000)
    net = build_model(tasks, spec, cfg.model, seed=0)
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One training run (in a worker process, on one torch thread)."""
    import torch

    from polytask.run.pipeline import run

    torch.set_num_threads(1)
    cfg = config_from_dict(raw_config(job))
    started = time.perf_counter()
    result = run(cfg, quiet=True)
    seconds = time.perf_counter() - started
    best = next(r for r in result.fit.history if r.epoch == result.fit.best_epoch)
    tasks = model_tasks(job["model"])
    return {
        "model": job["model"],
        "seed": job["seed"],
        "test_accuracy": {t: result.metrics[t]["accuracy"] for t in tasks},
        "val_accuracy": {t: best.val_metrics[t]["accuracy"] for t in tasks},
        "best_epoch": result.fit.best_epoch,
        "epochs": len(result.fit.history),
        "train_seconds": sum(r.seconds for r in result.fit.history),
        "seconds": seconds,
    }


def single_reference(runs: list[dict[str, Any]], seed: int) -> dict[str, float]:
    """The single-task nets' test accuracy of ``seed``."""
    ref: dict[str, float] = {}
    for r in runs:
        if r["seed"] == seed and r["model"].startswith("single:"):
            ref.update(r["test_accuracy"])
    return ref


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds per model, and each multi-task model's Δm per seed."""
    out: dict[str, Any] = {}
    for model in MODELS:
        group = [r for r in runs if r["model"] == model]
        if not group:
            continue
        tasks = model_tasks(model)
        entry: dict[str, Any] = {
            "seeds": sorted(r["seed"] for r in group),
            "test_accuracy": {t: mean_std([r["test_accuracy"][t] for r in group]) for t in tasks},
            "min_test_accuracy": {t: min(r["test_accuracy"][t] for r in group) for t in tasks},
            "val_accuracy": {t: mean_std([r["val_accuracy"][t] for r in group]) for t in tasks},
            "seconds": mean_std([r["seconds"] for r in group]),
            "best_epoch": mean_std([float(r["best_epoch"]) for r in group]),
        }
        if model in MULTI:
            deltas = []
            for r in group:
                ref = single_reference(runs, r["seed"])
                if all(t in ref for t in TASKS):
                    better = dict.fromkeys(TASKS, True)
                    deltas.append(delta_m(r["test_accuracy"], ref, better))
            entry["delta_m"] = mean_std(deltas)
            entry["delta_m_per_seed"] = deltas
            entry["meets_target"] = all(entry["test_accuracy"][t][0] >= TARGET for t in TASKS)
        out[model] = entry
    return out


def _pct(value: tuple[float, float]) -> str:
    mean, std = value
    return "-" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def report(
    summary: dict[str, Any], counts: dict[str, int], info: dict[str, Any], args: argparse.Namespace
) -> list[str]:
    lines = [
        "# FSDD: spoken digit + speaker, single-task vs multi-task",
        "",
        *machine_lines(info),
        f"- seeds: {args.seeds}; {args.epochs} epochs, batch 64, AdamW lr 2e-3 wd 1e-4, cosine "
        "schedule, checkpoint = lowest mean validation loss, equal task weights",
        "- data: FSDD, 3,000 recordings at 8 kHz; train = takes 10-49 (2,400), val = takes 5-9 "
        "(300), test = the official takes 0-4 (300); every clip zero-padded/cropped to 1 s",
        "- encoder `audio_cnn`: log-mel (n_fft 256, hop 128, 40 HTK mel bands 0-4 kHz, "
        "log(mel + 1e-6), per-utterance mean/std), ResNet-style CNN, mel rows folded into "
        "channels, linear heads on the time-averaged features; no SpecAugment",
        f"- hard and single-task: CNN widths {WIDTHS}; mmoe: {MMOE_EXPERTS} expert CNNs of "
        f"widths {MMOE_WIDTHS} + one gate-input CNN of the same size, a softmax gate per task",
        "",
        "Test accuracy (%), mean ± std over seeds. Δm: mean relative accuracy change of the "
        "multi-task net against the single-task nets of the same seed, in % (lower is better; "
        "negative = the multi-task net is better). Time: wall seconds per run (data loading "
        "included) with two runs sharing the machine.",
        "",
    ]
    header = ["model", "params", "digit acc.", "speaker acc.", "Δm (%)", "time (s)"]
    rows = []
    for model, entry in summary.items():
        acc = entry["test_accuracy"]
        dm = entry.get("delta_m")
        rows.append(
            [
                model,
                f"{counts[model]:,}",
                _pct(acc["digit"]) if "digit" in acc else "-",
                _pct(acc["speaker"]) if "speaker" in acc else "-",
                "-" if dm is None or math.isnan(dm[0]) else f"{dm[0]:+.2f} ± {dm[1]:.2f}",
                f"{entry['seconds'][0]:.0f}",
            ]
        )
    lines += markdown_table(header, rows)
    lines += ["", f"## Target: ≥ {100 * TARGET:.0f}% test accuracy on both tasks, multi-task", ""]
    for model in MULTI:
        if model not in summary:
            continue
        entry = summary[model]
        acc = entry["test_accuracy"]
        low = entry["min_test_accuracy"]
        word = "MET" if entry["meets_target"] else "MISSED"
        lines.append(
            f"- {model}: {word} on the mean over seeds (digit {_pct(acc['digit'])}%, speaker "
            f"{_pct(acc['speaker'])}%); lowest single seed: digit {100 * low['digit']:.2f}%, "
            f"speaker {100 * low['speaker']:.2f}%"
        )
    lines += [
        "",
        "Validation accuracy (%) of the selected epochs: "
        + "; ".join(
            f"{m} " + ", ".join(f"{t} {_pct(v)}" for t, v in entry["val_accuracy"].items())
            for m, entry in summary.items()
        )
        + ".",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs = [0], 1
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results.
            args.out = Path(tempfile.gettempdir()) / "polytask-fsdd-quick"

    # Import the whole training stack before the workers fork: every run then uses the same
    # code, even if the source tree changes while the benchmark runs.
    import polytask.run.pipeline  # noqa: F401

    counts = {model: parameter_count(model) for model in args.models}
    print(f"parameter counts: {counts}")
    # Slowest first, so that the two workers finish together.
    order = {"mmoe": 0, "hard": 1}
    jobs = [
        {"model": model, "seed": seed, "epochs": args.epochs}
        for seed in args.seeds
        for model in sorted(args.models, key=lambda m: order.get(m, 2))
    ]
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for future in as_completed(futures):
            r = future.result()
            runs.append(r)
            accs = " ".join(f"{t} {100 * a:.2f}%" for t, a in r["test_accuracy"].items())
            print(
                f"[{len(runs)}/{len(jobs)}] {r['model']:<14} seed={r['seed']} {accs} "
                f"(best epoch {r['best_epoch']}, {r['seconds']:.0f}s)",
                flush=True,
            )
    wall = time.perf_counter() - started
    runs.sort(key=lambda r: (MODELS.index(r["model"]), r["seed"]))
    summary = summarise(runs)
    info = worker_run_info(args.workers, wall)
    # Run times depend on what else the machine runs: record how busy it was at the end.
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    lines = report(summary, counts, info, args)
    lines += ["", f"Wall time: {wall / 60:.1f} min with {args.workers} workers."]
    data = {
        "info": info,
        "settings": {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "target": TARGET,
            "input": INPUT,
            "models": {m: model_section(m) for m in args.models},
        },
        "parameter_counts": counts,
        "summary": summary,
        "runs": runs,
    }
    write_results("fsdd", lines, data, args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
