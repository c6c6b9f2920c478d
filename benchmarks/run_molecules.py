"""Molecular graph encoders on MoleculeNet, beside chemprop, on identical split files (issue 23).

Datasets (``/work/shared/data/molecules``): Tox21 (12 binary assays), ToxCast (617 binary
assays, 71 % of the labels missing), SIDER (27 binary), ClinTox (2 binary) and QM8 (12
regression targets, the repeated PBE0 block dropped by :func:`read_qm8`). Rows RDKit cannot
parse are dropped before splitting, for every method alike.

Per dataset and seed, one random 80/10/10 split (``numpy.random.default_rng(seed)``) is written
to ``benchmarks/.cache/molecules/<dataset>-seed<k>.csv``: the SMILES, the targets and a
``split`` column (train / val / test). Every method reads that one file: polytask through
``data.split.method = "column"``, chemprop through ``--splits-column split``. Methods:

* ``dmpnn (multi-task)``: polytask's D-MPNN encoder (Yang et al. 2019; chemprop's defaults:
  hidden 300, depth 3, mean readout, no dropout) + hard sharing, one tower [300] per task,
  batch 64, AdamW without weight decay at peak lr 1e-3 with a 4 % linear warm-up and cosine
  decay (chemprop: Adam, Noam schedule from 1e-4 up to 1e-3 over 2 epochs, then down to 1e-4);
* ``dmpnn (single-task)``: the same network, one per task (12x the cost on Tox21);
* ``fingerprint MLP``: the Morgan fingerprint (radius 2, 2048 bits) MLP of
  ``examples/tox21.toml`` (widths [512, 256], dropout 0.3, towers [64]);
* ``chemprop 2.3.1``: ``chemprop train`` with its defaults but the epoch budget (``--chemprop``
  names its interpreter: chemprop 2.3.1 needs ``cuik-molmaker-pin``, which pins an older RDKit
  than ``constraints.txt``, so it lives in its own environment).

Every method in a table row trains for the same number of epochs (``--epochs``, one table per
budget; chemprop's default is 50) and keeps the weights of its best validation epoch (polytask:
the mean relative change of the validation metrics; chemprop: validation loss). Every number is
scored here, by the same function, from each method's test predictions: mean ROC-AUC over tasks
(classification) or mean MAE over targets in the original units (QM8).

Each finished run is cached under ``benchmarks/.cache/molecules/`` (polytask: ``runs/``;
chemprop: its output folder); ``--cached-only`` writes the table from the cache and runs
nothing, so runs started side by side in several processes end up in one table.

Usage::

    python benchmarks/run_molecules.py --datasets tox21 --epochs 10 50 \\
        --methods "dmpnn (multi-task)" "fingerprint MLP" --chemprop /tmp/chemprop-venv/bin/python
    python benchmarks/run_molecules.py --quick        # CI smoke: 300 molecules, 1 epoch
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    load_average,
    machine_info,
    machine_lines,
    markdown_table,
)
from common import write_results as write_files
from polytask.config import config_from_dict
from polytask.data.datasets.molecules import read_qm8, read_tox21
from polytask.data.molgraph import featurise_graphs
from polytask.run.pipeline import run

CACHE_DIR = BENCH_DIR / ".cache" / "molecules"
DATA_ROOT = Path(os.environ.get("POLYTASK_DATA", BENCH_DIR.parent.parent / "shared" / "data"))
SPLIT = "split"
SMILES = "smiles"


@dataclass(frozen=True)
class Dataset:
    """One MoleculeNet table: how to read it and how it is scored."""

    name: str
    read: Callable[[Path], pd.DataFrame]
    kind: str  # "binary" or "regression"

    @property
    def metric(self) -> str:
        return "ROC-AUC" if self.kind == "binary" else "MAE"


def _read_plain(relpath: str) -> Callable[[Path], pd.DataFrame]:
    def read(root: Path) -> pd.DataFrame:
        frame = pd.read_csv(root / relpath, keep_default_na=False, na_values=[""])
        labels = frame.drop(columns=[SMILES]).apply(pd.to_numeric, errors="raise")
        return pd.concat([frame[[SMILES]], labels.astype("float64")], axis=1)

    return read


DATASETS: dict[str, Dataset] = {
    "tox21": Dataset("tox21", read_tox21, "binary"),
    "toxcast": Dataset("toxcast", _read_plain("molecules/toxcast.csv.gz"), "binary"),
    "sider": Dataset("sider", _read_plain("molecules/sider.csv"), "binary"),
    "clintox": Dataset("clintox", _read_plain("molecules/clintox.csv"), "binary"),
    "qm8": Dataset("qm8", read_qm8, "regression"),
}


def split_file(dataset: Dataset, seed: int, limit: int | None = None) -> tuple[Path, list[str]]:
    """The dataset's split file for ``seed`` (written once, then read back): the parsable rows,
    targets as floats, and a ``split`` column from a random 80/10/10 permutation."""
    suffix = f"-n{limit}" if limit else ""
    path = CACHE_DIR / f"{dataset.name}-seed{seed}{suffix}.csv"
    table = dataset.read(DATA_ROOT)
    targets = [c for c in table.columns if c != SMILES]
    if path.exists():
        return path, targets
    if limit:  # a smoke run parses a few more rows than it keeps, not the whole table
        table = table.iloc[: 2 * limit]
    parsed = featurise_graphs(table[SMILES].tolist()).parsed
    table = table[parsed].reset_index(drop=True)
    if limit:
        table = table.iloc[:limit].reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(table))
    n_train, n_val = int(0.8 * len(table)), int(0.1 * len(table))
    split = np.empty(len(table), dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_val]] = "val"
    split[order[n_train + n_val :]] = "test"
    out = table[[SMILES]].copy()
    for column in targets:
        out[column] = pd.to_numeric(table[column]).astype("float64")
    out[SPLIT] = split
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    out.to_csv(partial, index=False)
    partial.replace(path)
    return path, targets


def score(kind: str, truth: np.ndarray, pred: np.ndarray) -> list[float]:
    """Per-task test score over the labelled rows: ROC-AUC (NaN for a task whose test rows
    hold one class only) or MAE."""
    from sklearn.metrics import roc_auc_score

    out = []
    for j in range(truth.shape[1]):
        seen = ~np.isnan(truth[:, j])
        y, p = truth[seen, j], pred[seen, j]
        if kind == "binary":
            out.append(float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else math.nan)
        else:
            out.append(float(np.mean(np.abs(y - p))) if len(y) else math.nan)
    return out


def job_key(text: str) -> str:
    """A short stable hash of a method's description, for cache file names."""
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def run_chemprop(
    python: str, dataset: Dataset, path: Path, targets: list[str], seed: int, epochs: int
) -> dict[str, Any]:
    """``chemprop train`` with its defaults on the split file; test predictions scored here."""
    out_dir = CACHE_DIR / "chemprop" / f"{path.stem}-e{epochs}"
    preds_file = out_dir / "model_0" / "test_predictions.csv"
    start = time.perf_counter()
    if not preds_file.exists():
        # The target list goes through a file: ToxCast's 617 column names exceed no limit of
        # argv, but chemprop reads --target-columns as it is given.
        cmd = [
            python,
            "-c",
            "import sys; from chemprop.cli.main import main; sys.argv[0] = 'chemprop'; main()",
            "train",
            "--data-path",
            str(path),
            "--splits-column",
            SPLIT,
            "--smiles-columns",
            SMILES,
            "--target-columns",
            *targets,
            "--task-type",
            "classification" if dataset.kind == "binary" else "regression",
            "--epochs",
            str(epochs),
            "--pytorch-seed",
            str(seed),
            "--num-workers",
            "0",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--output-dir",
            str(out_dir),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        log = out_dir.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    timing = out_dir / "polytask_bench.json"
    if timing.exists():
        wall = json.loads(timing.read_text())["seconds"]
    elif wall > 1.0:
        timing.write_text(json.dumps({"seconds": wall}))
    else:  # trained by a run that kept no timing: from its first and last files
        wall = preds_file.stat().st_mtime - (out_dir / "config.toml").stat().st_mtime
    table = pd.read_csv(path)
    test = table[table[SPLIT] == "test"]
    preds = pd.read_csv(preds_file)
    if preds[SMILES].tolist() != test[SMILES].tolist():
        raise RuntimeError(f"{preds_file}: rows differ from the test rows of {path}")
    truth = test[targets].to_numpy(dtype=np.float64)
    scores = score(dataset.kind, truth, preds[targets].to_numpy(dtype=np.float64))
    return {"scores": scores, "seconds": wall}


#: polytask's methods: the model and training sections over the split file (chemprop's defaults
#: for the D-MPNN: hidden 300, depth 3, a 300-unit FFN per task, batch 64, peak lr 1e-3).
DMPNN = {
    "model": {"encoder": {"name": "dmpnn"}, "head": {"widths": [300]}},
    "train": {"batch_size": 64, "lr": 1e-3, "weight_decay": 0.0, "warmup": 0.04},
}
#: The fingerprint MLP of examples/tox21.toml (Morgan radius 2, 2048 bits).
FINGERPRINT = {
    "model": {
        "encoder": {"name": "mlp", "widths": [512, 256], "dropout": 0.3},
        "head": {"widths": [64]},
    },
    "train": {"batch_size": 128, "lr": 1e-3, "weight_decay": 1e-4},
}
METHODS = {"dmpnn (multi-task)": DMPNN, "fingerprint MLP": FINGERPRINT}


def polytask_config(
    method: dict[str, Any], dataset: Dataset, tasks: list[str], seed: int, epochs: int
) -> dict[str, Any]:
    """A run configuration on the split file: its ``split`` column, the SMILES as graphs (or
    fingerprints for the MLP), every target a task, checkpoint of the best validation epoch."""
    graph = method["model"]["encoder"]["name"] != "mlp"
    kind = "binary" if dataset.kind == "binary" else "regression"
    return {
        "seed": seed,
        "baselines": False,
        "data": {
            "input": {
                "name": "smiles",
                "column": SMILES,
                "features": "graph" if graph else "fingerprint",
                "invalid": "missing",
                "cache_dir": str(CACHE_DIR / "features"),
            },
            "split": {"method": "column", "column": SPLIT},
        },
        "tasks": [{"name": f"t{i}", "kind": kind, "target": t} for i, t in enumerate(tasks)],
        "model": method["model"],
        "train": {**method["train"], "epochs": epochs, "patience": None, "progress": False},
    }


def run_polytask(
    method: dict[str, Any],
    dataset: Dataset,
    path: Path,
    targets: list[str],
    seed: int,
    epochs: int,
    single: bool = False,
) -> dict[str, Any]:
    """One polytask run (or one per target with ``single``), scored on the test rows; the
    result is kept in the cache folder and read back by a later invocation."""
    key = json.dumps([method, single], sort_keys=True)
    cached = CACHE_DIR / "runs" / f"{path.stem}-e{epochs}-{job_key(key)}.json"
    if cached.exists():
        found: dict[str, Any] = json.loads(cached.read_text())
        return found
    table = pd.read_csv(path)
    test = table[table[SPLIT] == "test"].reset_index(drop=True)
    groups = [[t] for t in targets] if single else [targets]
    preds = np.full((len(test), len(targets)), np.nan)
    start = time.perf_counter()
    for group in groups:
        cfg = config_from_dict(polytask_config(method, dataset, group, seed, epochs))
        result = run(cfg, frame=table, quiet=True)
        out = result.predictor.predict(test[[SMILES]])
        for i, target in enumerate(group):
            column = f"t{i}_proba" if dataset.kind == "binary" else f"t{i}"
            preds[:, targets.index(target)] = out[column].to_numpy(dtype=np.float64)
    wall = time.perf_counter() - start
    truth = test[targets].to_numpy(dtype=np.float64)
    result = {"scores": score(dataset.kind, truth, preds), "seconds": wall}
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result))
    return result


SINGLE = "dmpnn (single-task)"
CHEMPROP = "chemprop 2.3.1"
#: Targets of the issue (Tox21): mean test ROC-AUC at least this, and above chemprop.
TOX21_TARGET = 0.85


def cached_only(
    kind: str, method: str, dataset: Dataset, path: Path, epochs: int
) -> dict[str, Any] | None:
    """A result an earlier invocation left in the cache, or None (``--cached-only``)."""
    if kind == CHEMPROP:
        preds = CACHE_DIR / "chemprop" / f"{path.stem}-e{epochs}" / "model_0"
        return None if not (preds / "test_predictions.csv").exists() else {}
    single = method == SINGLE
    key = json.dumps([METHODS[DMPNN_NAME if single else method], single], sort_keys=True)
    cached = CACHE_DIR / "runs" / f"{path.stem}-e{epochs}-{job_key(key)}.json"
    return json.loads(cached.read_text()) if cached.exists() else None


DMPNN_NAME = "dmpnn (multi-task)"


def one(
    method: str,
    args: argparse.Namespace,
    dataset: Dataset,
    path: Path,
    targets: list[str],
    seed: int,
    epochs: int,
) -> dict[str, Any] | None:
    """One method's result on one split and budget (None: not run, with ``--cached-only``)."""
    if args.cached_only and cached_only(method, method, dataset, path, epochs) is None:
        return None
    if method == CHEMPROP:
        return run_chemprop(args.chemprop, dataset, path, targets, seed, epochs)
    if method == SINGLE:
        return run_polytask(METHODS[DMPNN_NAME], dataset, path, targets, seed, epochs, True)
    return run_polytask(METHODS[method], dataset, path, targets, seed, epochs)


def fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def report(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> list[str]:
    """The markdown page: per dataset and epoch budget, each method's mean test score, its
    per-task scores, and the Tox21 target verdict."""
    lines = ["# Molecular graph encoders beside chemprop (MoleculeNet)", ""]
    lines += machine_lines(info)
    lines += [
        f"- seeds: {args.seeds}; epoch budgets: {args.epochs} (every method the same budget "
        "in a row; chemprop's default is 50)",
        "- split: random 80/10/10 per seed (`numpy.random.default_rng(seed)`), written once to "
        "`benchmarks/.cache/molecules/<dataset>-seed<k>.csv` and read by every method "
        '(polytask: `data.split.method = "column"`; chemprop: `--splits-column split`)',
        "- scores: computed by this script from each method's test predictions (ROC-AUC per "
        "task over its labelled test rows, then the mean over tasks; MAE for QM8)",
        f"- chemprop: {'`' + args.chemprop + '`' if args.chemprop else 'not given'} (chemprop "
        "2.3.1 needs cuik-molmaker-pin, which pins RDKit 2026.03, older than "
        "constraints.txt's 2026.9.1: it runs from its own environment)",
        "- wall times are on a 2-core machine shared with other jobs (load average "
        f"{info.get('load', '?')}): compare them only as a rough guide",
        "",
    ]
    lines += [f"- note: {note}" for note in args.note] + ([""] if args.note else [])
    if args.quick:
        lines += ["**Quick smoke run** (300 molecules, 1 epoch): the numbers mean nothing.", ""]
    for name, per_budget in results.items():
        dataset = DATASETS[name]
        for epochs, per_method in per_budget.items():
            lines += [f"## {name}, {epochs} epochs", ""]
            rows = []
            for method, runs in per_method.items():
                if not runs:
                    rows.append([method, "not finished", "-", "-"])
                    continue
                means = [float(np.nanmean(r["scores"])) for r in runs]
                secs = [r["seconds"] for r in runs]
                rows.append(
                    [method, fmt(float(np.mean(means))), str(len(runs)), f"{np.mean(secs):.0f}"]
                )
            lines += markdown_table(
                ["method", f"mean test {dataset.metric}", "seeds", "wall s"], rows
            )
            lines.append("")
            done = {m: r for m, r in per_method.items() if r}
            if done and dataset.kind == "binary" and len(done[next(iter(done))][0]["scores"]) <= 30:
                targets = per_method_targets[name]
                header = ["task", *done]
                body = [
                    [t]
                    + [
                        fmt(float(np.mean([r["scores"][j] for r in runs])))
                        for runs in done.values()
                    ]
                    for j, t in enumerate(targets)
                ]
                lines += ["Per task (test ROC-AUC, mean over seeds):", ""]
                lines += markdown_table(header, body)
                lines.append("")
            if name == "tox21" and DMPNN_NAME in done:
                ours = float(np.mean([np.nanmean(r["scores"]) for r in done[DMPNN_NAME]]))
                verdict = [
                    f"- Tox21 target mean test ROC-AUC >= {TOX21_TARGET}: polytask D-MPNN "
                    f"multi-task {ours:.3f}: **{'met' if ours >= TOX21_TARGET else 'missed'}**"
                ]
                if CHEMPROP in done:
                    theirs = float(np.mean([np.nanmean(r["scores"]) for r in done[CHEMPROP]]))
                    verdict.append(
                        f"- above chemprop on the same split and budget: {ours:.3f} vs "
                        f"{theirs:.3f}: **{'met' if ours > theirs else 'missed'}**"
                    )
                for other, others in per_budget.items():
                    runs = others.get(CHEMPROP) or []
                    if other != epochs and runs:
                        best = float(np.mean([np.nanmean(r["scores"]) for r in runs]))
                        verdict.append(
                            f"- beside chemprop at {other} epochs on the same split: {ours:.3f} "
                            f"vs {best:.3f} ({'above' if ours > best else 'below'})"
                        )
                lines += [*verdict, ""]
    return lines


per_method_targets: dict[str, list[str]] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["tox21"], choices=sorted(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", nargs="+", type=int, default=[50])
    parser.add_argument("--chemprop", help="python interpreter with chemprop 2.3 installed")
    parser.add_argument("--only-chemprop", action="store_true")
    parser.add_argument(
        "--methods", nargs="+", default=[*METHODS, SINGLE], choices=[*METHODS, SINGLE]
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="write the table from the runs earlier invocations cached; run nothing",
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: 300 molecules, 1 epoch")
    parser.add_argument("--note", action="append", default=[], help="a line for the page")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds = [1], [0]
    methods = [] if args.only_chemprop else list(args.methods)
    if args.chemprop:
        methods.append(CHEMPROP)
    info = machine_info()
    results: dict[str, Any] = {}
    for name in args.datasets:
        dataset = DATASETS[name]
        results[name] = {}
        for epochs in args.epochs:
            per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
            for seed in args.seeds:
                path, targets = split_file(dataset, seed, 300 if args.quick else None)
                per_method_targets[name] = targets
                for method in methods:
                    result = one(method, args, dataset, path, targets, seed, epochs)
                    if result is not None:
                        per_method[method].append(result)
                        print(name, epochs, seed, method, np.nanmean(result["scores"]), flush=True)
            results[name][epochs] = per_method
    info["load"] = round(load_average(), 1)
    stem = "molecules"
    data = {"info": info, "quick": args.quick, "results": results, "targets": per_method_targets}
    write_files(stem, report(results, args, info), data, args.out)


if __name__ == "__main__":
    main()
