"""Benchmark tables on real data: multi-task net vs single-task nets vs gradient boosting.

For each dataset (the example configs ``examples/<name>.toml``) and each seed:

* ``polytask.run.pipeline.run`` with ``baselines = true`` trains the multi-task net and one
  single-task net per task with the same encoder, heads and training budget, and evaluates
  them on the test split;
* scikit-learn's ``HistGradientBoostingClassifier``/``Regressor`` is trained per task on the
  same training rows and evaluated with the same metric code on the same test rows.

Gradient-boosting features come from the same prepared tensors as the nets (the split, the
training-fitted preprocessing and the targets are therefore identical): the dense block
(standardised numbers, missing indicators, one-hot blocks of small categoricals) as numeric
features, and each embedded categorical column as a native categorical feature. Columns with
more than 255 categories (the ICD-9 diagnosis codes of the diabetes data) keep their 254 most
frequent training categories and pool the rest into one. Boosting stops early on the validation
split (its loss, 20 rounds without improvement, at most 1000 rounds); regression targets are
used on the nets' standardised scale and metrics are reported in the original unit.

Usage::

    python benchmarks/run_tables.py                       # both datasets, seeds 0 1 2
    python benchmarks/run_tables.py --quick               # smoke run: 1 epoch, seed 0
    python benchmarks/run_tables.py --datasets census --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from common import (
    RESULTS_DIR,
    example_config,
    fmt_mean_std,
    machine_info,
    machine_lines,
    markdown_table,
    mean_std,
    write_results,
)
from polytask.config import RunConfig
from polytask.data.prepare import PreparedData, prepare_data
from polytask.data.tensors import TensorData
from polytask.evaluate.delta import delta_m
from polytask.evaluate.evaluation import evaluate_data
from polytask.evaluate.metrics import compute_metrics, higher_is_better
from polytask.run.pipeline import run
from polytask.tasks import Task

DATASETS = ("census", "diabetes")
#: (dataset, task, metric, threshold): multi-task test metric (mean over seeds) must reach it.
METRIC_TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("census", "income", "auroc", 0.94),
    ("census", "never_married", "auroc", 0.99),
)
MODELS = ("multi_task", "single_task", "gbdt")
MODEL_LABELS = {"multi_task": "multi-task net", "single_task": "single-task nets", "gbdt": "HGB"}
MAX_CATEGORIES = 255  # HistGradientBoosting's limit on a native categorical feature


# -- gradient boosting ---------------------------------------------------------------------
class GBDTFeatures:
    """Turns a split's tensors into one float matrix plus a categorical-column mask."""

    def __init__(self, train: TensorData) -> None:
        cats = train.inputs.get("categorical")
        self.luts: list[np.ndarray | None] = []
        if cats is not None:
            codes = cats.numpy()
            for j in range(codes.shape[1]):
                card = int(codes[:, j].max()) + 1
                if card <= MAX_CATEGORIES:
                    self.luts.append(None)
                    continue
                counts = np.bincount(codes[:, j], minlength=card)
                order = np.argsort(-counts, kind="stable")
                lut = np.full(card, MAX_CATEGORIES - 1, dtype=np.int64)
                lut[order[: MAX_CATEGORIES - 1]] = np.arange(MAX_CATEGORIES - 1)
                self.luts.append(lut)
        self.n_numeric = int(train.inputs["numeric"].shape[1])

    @property
    def categorical_mask(self) -> np.ndarray:
        return np.array([False] * self.n_numeric + [True] * len(self.luts))

    def __call__(self, data: TensorData) -> np.ndarray:
        blocks = [data.inputs["numeric"].numpy().astype(np.float64)]
        cats = data.inputs.get("categorical")
        if cats is not None and self.luts:
            codes = cats.numpy().astype(np.int64)
            mapped = np.empty_like(codes)
            for j, lut in enumerate(self.luts):
                column = codes[:, j]
                # Codes never seen in training (not possible for val/test: the preprocessor
                # maps them to 0) would fall in the pooled bucket.
                if lut is None:
                    mapped[:, j] = column
                else:
                    mapped[:, j] = lut[np.minimum(column, len(lut) - 1)]
            blocks.append(mapped.astype(np.float64))
        return np.hstack(blocks)


def run_gbdt(
    data: PreparedData, seed: int, max_iter: int
) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, int]]:
    """Fit one boosted-trees model per task; test metrics, fit seconds and rounds per task."""
    assert data.test is not None
    features = GBDTFeatures(data.train)
    x_train, x_val, x_test = features(data.train), features(data.val), features(data.test)
    metrics: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    rounds: dict[str, int] = {}
    for task in data.tasks:
        if task.kind not in ("binary", "regression"):
            raise NotImplementedError(f"task kind {task.kind!r} is not benchmarked")
        name = task.name
        rows_tr = data.train.masks[name].numpy()
        rows_va = data.val.masks[name].numpy()
        y_tr = data.train.targets[name].numpy()[rows_tr]
        y_va = data.val.targets[name].numpy()[rows_va]
        params: dict[str, Any] = {
            "max_iter": max_iter,
            "early_stopping": True,
            "n_iter_no_change": 20,
            "categorical_features": features.categorical_mask,
            "random_state": seed,
        }
        started = time.perf_counter()
        model: HistGradientBoostingClassifier | HistGradientBoostingRegressor
        if task.kind == "binary":
            model = HistGradientBoostingClassifier(**params)
            model.fit(x_train[rows_tr], y_tr.astype(np.int64), X_val=x_val[rows_va], y_val=y_va)
            output = model.decision_function(x_test)  # logits, as the nets' binary outputs
        else:
            model = HistGradientBoostingRegressor(**params)
            model.fit(x_train[rows_tr], y_tr, X_val=x_val[rows_va], y_val=y_va)
            output = model.predict(x_test)  # standardised scale, as the nets' outputs
        seconds[name] = time.perf_counter() - started
        rounds[name] = int(model.n_iter_)
        out = torch.as_tensor(np.asarray(output, dtype=np.float32))
        metrics[name] = compute_metrics(task, out, data.test.targets[name], data.test.masks[name])
    return metrics, seconds, rounds


# -- one dataset and seed ------------------------------------------------------------------
def _epoch_seconds(path: Path) -> tuple[float, int]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return sum(float(r["seconds"]) for r in rows), len(rows)


def primary_delta_m(
    tasks: list[Task], values: dict[str, dict[str, float]], refs: dict[str, dict[str, float]]
) -> float:
    """Δm (percent, lower = better) of ``values`` against ``refs`` on the primary metrics."""
    return delta_m(
        {t.name: values[t.name][t.primary] for t in tasks},
        {t.name: refs[t.name][t.primary] for t in tasks},
        {t.name: higher_is_better(t, t.primary) for t in tasks},
    )


def run_one(cfg: RunConfig, gbdt_iter: int) -> dict[str, Any]:
    """Nets via the pipeline, then boosted trees on the same prepared split."""
    with tempfile.TemporaryDirectory(prefix="polytask-bench-") as tmp:
        out = Path(tmp) / "run"
        started = time.perf_counter()
        result = run(cfg, out=out, quiet=True)
        pipeline_seconds = time.perf_counter() - started
        stl_seconds, stl_epochs = {}, {}
        for name in result.baseline_metrics:
            stl_seconds[name], stl_epochs[name] = _epoch_seconds(
                out / "baselines" / name / "metrics.jsonl"
            )
    data = prepare_data(cfg)
    assert data.test is not None
    tasks = data.tasks
    # The split is a function of the config and seed; check that the trees see the nets' rows.
    _, check = evaluate_data(result.predictor.model, tasks, data.test, cfg.train.eval_batch_size)
    for task in tasks:
        for metric, value in result.metrics[task.name].items():
            if not math.isclose(value, check[task.name][metric], rel_tol=1e-5, abs_tol=1e-6):
                raise RuntimeError(f"test split mismatch on {task.name}.{metric}")
    gbdt, gbdt_seconds, gbdt_rounds = run_gbdt(data, cfg.seed, gbdt_iter)
    return {
        "seed": cfg.seed,
        "n_rows": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "primary": {t.name: t.primary for t in tasks},
        "higher_is_better": {
            t.name: {m: higher_is_better(t, m) for m in t.metric_names} for t in tasks
        },
        "metrics": {
            "multi_task": result.metrics,
            "single_task": result.baseline_metrics,
            "gbdt": gbdt,
        },
        "delta_m_pct": {
            "multi_task_vs_single_task": result.comparison.delta_m_pct,
            "multi_task_vs_gbdt": primary_delta_m(tasks, result.metrics, gbdt),
            "single_task_vs_gbdt": primary_delta_m(tasks, result.baseline_metrics, gbdt),
        },
        "seconds": {
            "multi_task": sum(r.seconds for r in result.fit.history),
            "single_task": sum(stl_seconds.values()),
            "gbdt": sum(gbdt_seconds.values()),
            "pipeline_total": pipeline_seconds,
        },
        "epochs": {
            "multi_task": {"run": len(result.fit.history), "best": result.fit.best_epoch},
            "single_task": stl_epochs,
            "gbdt_rounds": gbdt_rounds,
        },
    }


# -- aggregation and report ----------------------------------------------------------------
def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every metric, Δm and time."""
    first = runs[0]
    metrics: dict[str, Any] = {}
    for model in MODELS:
        metrics[model] = {}
        for task, values in first["metrics"][model].items():
            metrics[model][task] = {
                m: mean_std([r["metrics"][model][task][m] for r in runs]) for m in values
            }
    return {
        "metrics": metrics,
        "delta_m_pct": {
            k: mean_std([r["delta_m_pct"][k] for r in runs]) for k in first["delta_m_pct"]
        },
        "seconds": {k: mean_std([r["seconds"][k] for r in runs]) for k in first["seconds"]},
    }


def check_targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for dataset, task, metric, threshold in METRIC_TARGETS:
        if dataset not in results:
            continue
        value = results[dataset]["summary"]["metrics"]["multi_task"][task][metric][0]
        checks.append(
            {
                "dataset": dataset,
                "check": f"multi-task {task} {metric} (test, mean over seeds)",
                "value": value,
                "shown": f"{value:.4f}",
                "target": f">= {threshold}",
                "pass": bool(value >= threshold),
            }
        )
    for dataset in results:
        value = results[dataset]["summary"]["delta_m_pct"]["multi_task_vs_single_task"][0]
        checks.append(
            {
                "dataset": dataset,
                "check": "Δm multi-task vs single-task, % (mean over seeds)",
                "value": value,
                "shown": f"{value:+.3f}",
                "target": "<= 0",
                "pass": bool(value <= 0),
            }
        )
    return checks


def dataset_markdown(name: str, entry: dict[str, Any]) -> list[str]:
    runs = entry["runs"]
    first = runs[0]
    rows: list[list[str]] = []
    for task, metric_names in first["higher_is_better"].items():
        for metric, up in metric_names.items():
            mark = " (primary)" if first["primary"][task] == metric else ""
            cells = [
                fmt_mean_std([r["metrics"][model][task][metric] for r in runs]) for model in MODELS
            ]
            rows.append([task, f"{metric} {'↑' if up else '↓'}{mark}", *cells])
    rows.append(["training time (s)", "", *(_seconds(runs, model) for model in MODELS)])
    epochs = [
        fmt_mean_std([r["epochs"]["multi_task"]["run"] for r in runs], 1),
        " + ".join(
            fmt_mean_std([r["epochs"]["single_task"][t] for r in runs], 1) for t in first["primary"]
        ),
        " + ".join(
            fmt_mean_std([r["epochs"]["gbdt_rounds"][t] for r in runs], 0) for t in first["primary"]
        ),
    ]
    rows.append(["epochs / boosting rounds", "", *epochs])
    n = first["n_rows"]
    lines = [
        f"## {name}",
        "",
        f"Rows: train {n['train']}, validation {n['val']}, test {n['test']}. "
        f"Test-split metrics, mean ± std over seeds {', '.join(str(r['seed']) for r in runs)}.",
        "",
    ]
    header = ["task", "metric", *(MODEL_LABELS[m] for m in MODELS)]
    lines += markdown_table(header, rows, left=2)
    deltas = entry["summary"]["delta_m_pct"]
    lines += [
        "",
        "Δm (%, primary metrics, lower = better): "
        f"multi-task vs single-task {_pm(deltas['multi_task_vs_single_task'])}; "
        f"multi-task vs HGB {_pm(deltas['multi_task_vs_gbdt'])}; "
        f"single-task vs HGB {_pm(deltas['single_task_vs_gbdt'])}. "
        "Per seed, multi-task vs single-task: "
        + ", ".join(f"{r['delta_m_pct']['multi_task_vs_single_task']:+.3f}" for r in runs)
        + ".",
        "",
    ]
    return lines


def _seconds(runs: list[dict[str, Any]], model: str) -> str:
    return fmt_mean_std([r["seconds"][model] for r in runs], 1)


def _pm(pair: list[float] | tuple[float, float]) -> str:
    return f"{pair[0]:+.3f} ± {pair[1]:.3f}"


def report(
    results: dict[str, dict[str, Any]],
    checks: list[dict[str, Any]],
    info: dict[str, Any],
    quick: bool,
) -> list[str]:
    lines = ["# Benchmark tables: multi-task vs single-task nets vs gradient boosting", ""]
    if quick:
        lines += ["**Quick smoke run (1 epoch, few boosting rounds): not a benchmark.**", ""]
    lines += [*machine_lines(info), f"- wall time of the whole benchmark: {info['wall_time']}", ""]
    lines += [
        "Nets: `examples/<dataset>.toml` through `polytask.run.pipeline.run` with "
        "`baselines = true` (single-task nets: same encoder, heads and budget, one task each). "
        "HGB: scikit-learn HistGradientBoosting, one model per task, on the nets' prepared "
        "tensors (same split, rows and preprocessing; embedded categoricals as native "
        "categorical features, >255 categories pooled to the 254 most frequent), early "
        "stopping on the validation split. Training time: nets, sum of epoch times "
        "(training + per-epoch validation, no checkpoint I/O); single-task and HGB, summed "
        "over tasks. Δm = 100 · mean_k s_k (M_k − B_k) / |B_k| on primary metrics, "
        "s_k = −1 when higher is better: negative means the first model is better. "
        "Hyperparameters were chosen on the validation split only.",
        "",
        "## Targets",
        "",
    ]
    rows = [
        [c["dataset"], c["check"], c["shown"], c["target"], _verdict(c["pass"])] for c in checks
    ]
    header = ["dataset", "check", "value", "target", "PASS/MISS"]
    lines += markdown_table(header, rows, left=2)
    lines.append("")
    for name, entry in results.items():
        lines += dataset_markdown(name, entry)
    return lines


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="1 epoch, seed 0: a smoke run")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override key=value"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args()

    seeds = [args.seeds[0]] if args.quick else args.seeds
    overrides = ["baselines=true", "train.progress=false", *args.overrides]
    gbdt_iter = 1000
    if args.quick:
        overrides.append("train.epochs=1")
        gbdt_iter = 20
    info = machine_info()
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name in args.datasets:
        runs = []
        for seed in seeds:
            cfg = example_config(name, [*overrides, f"seed={seed}"])
            t0 = time.perf_counter()
            runs.append(run_one(cfg, gbdt_iter))
            dm = runs[-1]["delta_m_pct"]["multi_task_vs_single_task"]
            print(
                f"{name} seed {seed}: Δm(MTL vs STL) {dm:+.3f}%  ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        results[name] = {
            "config": cfg.model_dump(mode="json", exclude={"base_dir", "seed"}),
            "runs": runs,
            "summary": summarise(runs),
        }
    info["wall_time"] = f"{(time.perf_counter() - started) / 60:.1f} min"
    info["quick"] = args.quick
    checks = check_targets(results)
    markdown = report(results, checks, info, args.quick)
    payload = {"info": info, "checks": checks, "results": results}
    write_results("tables", markdown, payload, args.out)
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
