"""Modern tabular encoders against gradient boosting, on the same split, in the same run.

For each dataset (``examples/<name>.toml``: Census income / never-married, Diabetes
readmission / length of stay) and seed, the data are prepared once (``data.numeric_bins = 48``
quantile bins fitted on the training rows; optionally a random subset of the training rows,
``--train-fraction``, the same for every model) and then:

* polytask multi-task nets, each family a small grid chosen on the validation split: hard
  sharing with the ``mlp`` encoder (plain: today's polytask; piecewise-linear and periodic
  numeric embeddings), hard sharing with the ``tabm`` encoder (piecewise-linear embeddings),
  MMoE with piecewise-linear ``mlp`` experts;
* per task, scikit-learn's HistGradientBoosting, LightGBM and CatBoost, each a small grid
  chosen on the validation split, early stopping on it.

The budget rule is the same for every model family: ``--grid`` configurations (the first
``--grid`` rows of each family's grid below), each trained once per seed, the one with the
best validation score kept (nets: the multi-task Δm on the validation primary metrics against
the family's first configuration; boosting: each task's validation primary metric), and its
test metrics reported. Nets stop early on the validation loss (patience 5, at most
``--epochs``); boosting on the validation loss (50 rounds without improvement, at most 2000).

Features for boosting are the nets' prepared tensors (``benchmarks/run_tables.py``'s
``GBDTFeatures``): the dense block (standardised numbers, missing indicators, one-hot
blocks) as numbers and each embedded categorical column as a native categorical feature.
The regression task is fitted with the loss its primary metric scores (L1 for MAE), as the
nets are.

Usage::

    python benchmarks/run_tabular.py                      # both datasets, seed 0
    python benchmarks/run_tabular.py --seeds 0 1 2 --train-fraction 1.0
    python benchmarks/run_tabular.py --quick              # CI smoke: tiny, not a benchmark
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common import (
    EXAMPLES_DIR,
    RESULTS_DIR,
    fmt_mean_std,
    machine_info,
    machine_lines,
    markdown_table,
    write_results,
)
from polytask.config import RunConfig, config_from_dict
from polytask.data.prepare import PreparedData, prepare_data
from polytask.evaluate.delta import delta_m
from polytask.evaluate.evaluation import evaluate_data
from polytask.evaluate.metrics import compute_metrics, higher_is_better
from polytask.run.build import train_model
from polytask.tasks import Task
from run_tables import GBDTFeatures

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DATASETS = ("census", "diabetes")
NUMERIC_BINS = 48

#: Net families: (label, model section, train overrides) per grid point; the first is the
#: family's reference for the validation Δm. Widths follow the example configs.
_PLE = {"numeric_embedding": "piecewise_linear", "numeric_embedding_dim": 16}
_PERIODIC = {"numeric_embedding": "periodic", "numeric_embedding_dim": 16, "periodic_scale": 0.1}
_TABM = {"name": "tabm", "k": 8, "n_blocks": 2, "d_block": 256, **_PLE}


def _mlp(dataset: str, **extra: Any) -> dict[str, Any]:
    widths = [256, 128] if dataset == "census" else [512, 256]
    dropout = 0.3 if dataset == "census" else 0.2
    return {"name": "mlp", "widths": widths, "dropout": dropout, **extra}


def net_grid(dataset: str) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Family -> grid of (model section, train overrides)."""
    head = {"widths": [64]}
    lr = [{"lr": 1e-3}, {"lr": 2e-3}]

    def grid(encoder: dict[str, Any], arch: dict[str, Any]) -> list[Any]:
        model = {"encoder": encoder, "architecture": arch, "head": head}
        return [(model, t) for t in lr]

    hard, mmoe = {"name": "hard"}, {"name": "mmoe", "n_experts": 4}
    return {
        "hard mlp (plain)": grid(_mlp(dataset), hard),
        "hard mlp + PLE": grid(_mlp(dataset, **_PLE), hard),
        "hard mlp + periodic": grid(_mlp(dataset, **_PERIODIC), hard),
        "hard tabm + PLE": grid(dict(_TABM), hard),
        "mmoe mlp + PLE": grid(_mlp(dataset, **_PLE), mmoe),
    }


#: Boosting grids (keyword arguments of each library), the same size as the nets'.
GBDT_GRIDS: dict[str, list[dict[str, Any]]] = {
    "HGB": [
        {"learning_rate": 0.1, "max_leaf_nodes": 31},
        {"learning_rate": 0.05, "max_leaf_nodes": 63},
    ],
    "LightGBM": [
        {"learning_rate": 0.1, "num_leaves": 31},
        {"learning_rate": 0.05, "num_leaves": 63},
    ],
    "CatBoost": [{"learning_rate": 0.1, "depth": 6}, {"learning_rate": 0.05, "depth": 8}],
}
MAX_ROUNDS = 2000
#: Threads of torch and of the boosting libraries (``--threads``).
THREADS = 1
#: The order models are run in: the cheap ones first (a run cut short keeps them).
FAMILY_ORDER = (
    "hard mlp (plain)",
    "hard mlp + PLE",
    "HGB",
    "LightGBM",
    "CatBoost",
    "hard mlp + periodic",
    "mmoe mlp + PLE",
    "hard tabm + PLE",
)
#: The CI smoke run's net families (the new encoders; the plain MLP is run_tables.py's).
QUICK_FAMILIES = ("hard mlp + PLE", "hard tabm + PLE")
PATIENCE_ROUNDS = 50


# -- config and data -------------------------------------------------------------------------
def base_raw(dataset: str) -> dict[str, Any]:
    raw = tomllib.loads((EXAMPLES_DIR / f"{dataset}.toml").read_text(encoding="utf-8"))
    raw["baselines"] = False
    return raw


def make_config(
    raw: dict[str, Any],
    seed: int,
    fraction: float,
    model: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    epochs: int | None = None,
) -> RunConfig:
    raw = copy.deepcopy(raw)
    raw["seed"] = seed
    raw["data"]["numeric_bins"] = NUMERIC_BINS
    raw["data"]["train_fraction"] = fraction
    if model is not None:
        raw["model"] = copy.deepcopy(model)
    raw["train"] = {**raw["train"], **(train or {}), "progress": False, "threads": THREADS}
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    return config_from_dict(raw, base_dir=EXAMPLES_DIR)


def val_delta(
    tasks: list[Task], values: dict[str, dict[str, float]], ref: dict[str, dict[str, float]]
) -> float:
    return delta_m(
        {t.name: values[t.name][t.primary] for t in tasks},
        {t.name: ref[t.name][t.primary] for t in tasks},
        {t.name: higher_is_better(t, t.primary) for t in tasks},
    )


# -- nets ------------------------------------------------------------------------------------
def run_net_family(
    raw: dict[str, Any],
    data: PreparedData,
    seed: int,
    fraction: float,
    grid: list[tuple[dict[str, Any], dict[str, Any]]],
    epochs: int | None,
) -> dict[str, Any]:
    """Every grid point trained on the prepared data; the best on validation, its test
    metrics."""
    assert data.test is not None
    tasks = data.tasks
    tried = []
    for model_section, train in grid:
        cfg = make_config(raw, seed, fraction, model_section, train, epochs)
        started = time.perf_counter()
        model, fit = train_model(cfg, data, tasks, None, quiet=True)
        seconds = time.perf_counter() - started
        batch = cfg.train.eval_batch_size
        _, val = evaluate_data(model, tasks, data.val, batch)
        _, test = evaluate_data(model, tasks, data.test, batch)
        tried.append(
            {
                "model": model_section,
                "train": train,
                "val": val,
                "test": test,
                "seconds": seconds,
                "epochs": len(fit.history),
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    ref = tried[0]["val"]
    for entry in tried:
        entry["val_delta_m_pct"] = val_delta(tasks, entry["val"], ref)
    best = min(range(len(tried)), key=lambda i: tried[i]["val_delta_m_pct"])
    return {"best": best, "tried": tried}


# -- boosting --------------------------------------------------------------------------------
def _frames(features: GBDTFeatures, data: PreparedData) -> tuple[np.ndarray, ...]:
    assert data.test is not None
    return features(data.train), features(data.val), features(data.test)


def _fit_hgb(
    kind: str, params: dict[str, Any], seed: int, cat: np.ndarray, regression_loss: str
) -> Callable[..., Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    def fit(
        x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray
    ) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
        common = {
            "max_iter": MAX_ROUNDS,
            "early_stopping": True,
            "n_iter_no_change": PATIENCE_ROUNDS,
            "categorical_features": cat,
            "random_state": seed,
            **params,
        }
        if kind == "binary":
            m = HistGradientBoostingClassifier(**common)
            m.fit(x_tr, y_tr.astype(np.int64), X_val=x_va, y_val=y_va.astype(np.int64))
            return m.decision_function, int(m.n_iter_)
        loss = "absolute_error" if regression_loss == "l1" else "squared_error"
        r = HistGradientBoostingRegressor(loss=loss, **common)
        r.fit(x_tr, y_tr, X_val=x_va, y_val=y_va)
        return r.predict, int(r.n_iter_)

    return fit


def _fit_lgbm(
    kind: str, params: dict[str, Any], seed: int, cat: np.ndarray, regression_loss: str
) -> Callable[..., Any]:
    import lightgbm as lgb

    cats = [int(i) for i in np.flatnonzero(cat)]

    def fit(
        x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray
    ) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
        objective = "binary" if kind == "binary" else ("l1" if regression_loss == "l1" else "l2")
        booster = lgb.train(
            {
                "objective": objective,
                "seed": seed,
                "num_threads": THREADS,
                "verbose": -1,
                **params,
            },
            lgb.Dataset(x_tr, y_tr, categorical_feature=cats),
            num_boost_round=MAX_ROUNDS,
            valid_sets=[lgb.Dataset(x_va, y_va, categorical_feature=cats)],
            callbacks=[lgb.early_stopping(PATIENCE_ROUNDS, verbose=False)],
        )
        best = int(booster.best_iteration)

        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(booster.predict(x, num_iteration=best, raw_score=True))

        return predict, best

    return fit


def _fit_catboost(
    kind: str, params: dict[str, Any], seed: int, cat: np.ndarray, regression_loss: str
) -> Callable[..., Any]:
    import catboost as cb

    cats = [int(i) for i in np.flatnonzero(cat)]

    def frame(x: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(x)
        for j in cats:  # CatBoost's categorical columns must hold integers or text
            df[j] = df[j].astype(np.int64)
        return df

    def fit(
        x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, y_va: np.ndarray
    ) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
        common = {
            "iterations": MAX_ROUNDS,
            "od_type": "Iter",
            "od_wait": PATIENCE_ROUNDS,
            "random_seed": seed,
            "thread_count": THREADS,
            "verbose": False,
            "allow_writing_files": False,
            "use_best_model": True,
            **params,
        }
        model: Any
        if kind == "binary":
            model = cb.CatBoostClassifier(**common)
        else:
            loss = "MAE" if regression_loss == "l1" else "RMSE"
            model = cb.CatBoostRegressor(loss_function=loss, **common)
        model.fit(frame(x_tr), y_tr, cat_features=cats, eval_set=(frame(x_va), y_va))

        def predict(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict(frame(x), prediction_type="RawFormulaVal"))

        return predict, int(model.get_best_iteration()) + 1

    return fit


FITTERS = {"HGB": _fit_hgb, "LightGBM": _fit_lgbm, "CatBoost": _fit_catboost}


def run_gbdt_family(
    name: str, data: PreparedData, seed: int, grid: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per task, every grid point with early stopping on validation; the best on the
    validation primary metric; its test metrics."""
    assert data.test is not None
    features = GBDTFeatures(data.train)
    x_tr, x_va, x_te = _frames(features, data)
    out: dict[str, Any] = {}
    for task in data.tasks:
        if task.kind not in ("binary", "regression"):
            raise NotImplementedError(f"task kind {task.kind!r} is not benchmarked")
        t = task.name
        rows_tr, rows_va = data.train.masks[t].numpy(), data.val.masks[t].numpy()
        y_tr = data.train.targets[t].numpy()[rows_tr].astype(np.float64)
        y_va = data.val.targets[t].numpy()[rows_va].astype(np.float64)
        up = higher_is_better(task, task.primary)
        tried = []
        for params in grid:
            fitter = FITTERS[name](task.kind, params, seed, features.categorical_mask, task.loss)
            started = time.perf_counter()
            predict, rounds = fitter(x_tr[rows_tr], y_tr, x_va[rows_va], y_va)
            seconds = time.perf_counter() - started

            def metrics(
                x: np.ndarray,
                split: Any,
                predict: Callable[[np.ndarray], np.ndarray] = predict,
                task: Task = task,
            ) -> dict[str, float]:
                raw_out = torch.as_tensor(np.asarray(predict(x), dtype=np.float32))
                t = task.name
                return compute_metrics(task, raw_out, split.targets[t], split.masks[t])

            tried.append(
                {
                    "params": params,
                    "val": metrics(x_va, data.val),
                    "test": metrics(x_te, data.test),
                    "seconds": seconds,
                    "rounds": rounds,
                }
            )
        scores = [e["val"][task.primary] for e in tried]
        best = int(np.argmax(scores) if up else np.argmin(scores))
        out[t] = {"best": best, "tried": tried}
    return out


# -- report ----------------------------------------------------------------------------------
def _best_test(entry: dict[str, Any]) -> Any:
    """The test metrics of the configuration chosen on validation: per task for a net
    family, the one task's for a boosting family's entry of that task."""
    return entry["tried"][entry["best"]]["test"]


def primary_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Model -> task -> the test primary metric of each seed's chosen configuration."""
    first = runs[0]
    table: dict[str, dict[str, list[float]]] = {}
    for family in first["nets"]:
        table[family] = {
            t: [_best_test(r["nets"][family])[t][p] for r in runs] for t, p in first["tasks"]
        }
    for family in first["gbdt"]:
        table[family] = {
            t: [_best_test(r["gbdt"][family][t])[p] for r in runs] for t, p in first["tasks"]
        }
    return table


def target_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per dataset and task: the best multi-task net against the best boosting model (each
    the best mean over seeds of its family's chosen configurations)."""
    checks = []
    for dataset, entry in results.items():
        runs = entry["runs"]
        table = primary_table(runs)
        nets, gbdts = list(runs[0]["nets"]), list(runs[0]["gbdt"])
        if not nets or not gbdts:  # a run still going: nothing to compare yet
            continue
        for task, primary in runs[0]["tasks"]:
            up = primary != "mae"

            def score(model: str, task: str = task, table: dict[str, Any] = table) -> float:
                return float(np.mean(table[model][task]))

            best_net = (max if up else min)(nets, key=score)
            best_gbdt = (max if up else min)(gbdts, key=score)
            net, gbdt = score(best_net), score(best_gbdt)
            checks.append(
                {
                    "dataset": dataset,
                    "task": task,
                    "metric": primary,
                    "best_net": best_net,
                    "net": net,
                    "best_gbdt": best_gbdt,
                    "gbdt": gbdt,
                    "met": bool(net >= gbdt if up else net <= gbdt),
                }
            )
    return checks


def _brief(tasks: list[Task], test: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{t.name} {t.primary} {test[t.name][t.primary]:.4f}" for t in tasks)


def _values(tasks: list[list[str]], metrics: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{metrics[t][p]:.4f}" for t, p in tasks)


def dataset_lines(dataset: str, entry: dict[str, Any], fraction: float) -> list[str]:
    runs = entry["runs"]
    first = runs[0]
    tasks = first["tasks"]
    table = primary_table(runs)
    rows = [[m, *(_cell(table[m][t]) for t, _ in tasks)] for m in table]
    n = first["rows"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [
        f"## {dataset}",
        "",
        f"Rows: train {n['train']} (a random {fraction:g} of the split's training rows, the "
        f"same for every model), validation {n['val']}, test {n['test']}. Test primary metric "
        "of each family's configuration chosen on validation, "
        + (f"seed {seeds}." if len(runs) == 1 else f"mean ± std over seeds {seeds}."),
        "",
    ]
    header = ["model", *(f"{t} {p} {'↓' if p == 'mae' else '↑'}" for t, p in tasks)]
    lines += [*markdown_table(header, rows), ""]
    detail = []
    for family, fam in first["nets"].items():
        for i, e in enumerate(fam["tried"]):
            detail.append(
                [
                    family + (" *" if i == fam["best"] else ""),
                    f"lr {e['train']['lr']:g}",
                    f"{e['val_delta_m_pct']:+.2f}",
                    _values(tasks, e["val"]),
                    _values(tasks, e["test"]),
                    str(e["epochs"]),
                    f"{e['seconds']:.0f}",
                    f"{e['parameters']:,}",
                ]
            )
    lines += [
        f"Nets, seed {first['seed']}, every grid point (* chosen: lowest validation Δm, "
        "%, against the family's first point):",
        "",
        *markdown_table(
            ["net", "grid", "val Δm", "val", "test", "epochs", "s", "parameters"], detail
        ),
        "",
    ]
    primary = dict((t, p) for t, p in tasks)
    gdetail = []
    for family, fam in first["gbdt"].items():
        for task, e in fam.items():
            for i, g in enumerate(e["tried"]):
                gdetail.append(
                    [
                        family + (" *" if i == e["best"] else ""),
                        task,
                        ", ".join(f"{k} {v}" for k, v in g["params"].items()),
                        f"{g['val'][primary[task]]:.4f}",
                        f"{g['test'][primary[task]]:.4f}",
                        str(g["rounds"]),
                        f"{g['seconds']:.0f}",
                    ]
                )
    lines += [
        f"Boosting, seed {first['seed']}, every grid point (* chosen on validation):",
        "",
        *markdown_table(["model", "task", "grid", "val", "test", "rounds", "s"], gdetail),
        "",
    ]
    return lines


def _cell(values: list[float]) -> str:
    """Mean ± std over seeds; one seed has no spread to show."""
    return f"{values[0]:.4f}" if len(values) == 1 else fmt_mean_std(values)


def budget_note(results: dict[str, Any], info: dict[str, Any]) -> str:
    """What was run, and what the budget cut short, in words."""
    cap = info.get("epochs")
    nets = [
        e
        for entry in results.values()
        for r in entry["runs"]
        for f in r["nets"].values()
        for e in f["tried"]
    ]
    capped = sum(1 for e in nets if cap is not None and e["epochs"] >= cap)
    seeds = sorted({r["seed"] for entry in results.values() for r in entry["runs"]})
    text = (
        f"Budget: seeds {', '.join(map(str, seeds))}; {info['train_fraction']:g} of the "
        "training rows"
    )
    if cap is not None:
        text += (
            f"; nets capped at {cap} epochs, and {capped} of the {len(nets)} net runs reached "
            "the cap (still improving or not, the cap stopped them)"
        )
    parallel = info.get("parallel", 1)
    text += (
        f". Run on a 2-core machine shared with other jobs (load average about 14), "
        f"{parallel} process(es) in parallel, {info.get('threads', 1)} thread(s) each: the "
        "seconds measure this machine's contention as much as the models."
    )
    return text


def write_report(results: dict[str, Any], info: dict[str, Any], out: Path) -> None:
    checks = target_checks(results)
    lines = ["# Modern tabular encoders vs gradient boosting (issue 23)", ""]
    if info["quick"]:
        lines += ["**Quick smoke run (2 % of the rows, 1 epoch, 20 rounds): not a benchmark.**", ""]
    lines += [*machine_lines(info), f"- wall time: {info['wall_seconds'] / 60:.1f} min", ""]
    lines += [
        "Every model sees the same prepared split (the example configs' split; numbers "
        f"standardised, {NUMERIC_BINS} quantile bins fitted on the training rows). Nets: "
        "polytask multi-task models, each family a grid of "
        f"{info['grid']} learning rates chosen by the validation Δm, early stopping on the "
        "validation loss. Boosting: one model per task, each library a grid of "
        f"{info['grid']} settings chosen on the task's validation primary metric, early "
        f"stopping on the validation loss ({PATIENCE_ROUNDS} rounds). Same budget rule for "
        "all: the same number of grid points, each trained once per seed. "
        "PLE = piecewise-linear numeric embeddings.",
        "",
        budget_note(results, info),
        "",
        "## Target: the best multi-task net at or above the best boosting model",
        "",
    ]
    rows = [
        [
            c["dataset"],
            f"{c['task']} {c['metric']}",
            f"{c['best_net']}: {c['net']:.4f}",
            f"{c['best_gbdt']}: {c['gbdt']:.4f}",
            "met" if c["met"] else "**missed**",
        ]
        for c in checks
    ]
    lines += markdown_table(["dataset", "task", "best net", "best boosting", "target"], rows, 2)
    lines.append("")
    for dataset, entry in results.items():
        lines += dataset_lines(dataset, entry, info["train_fraction"])
    data = {"info": info, "targets": checks, "results": _jsonable(results)}
    write_results("tabular", lines, data, out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--train-fraction", type=float, default=1.0)
    parser.add_argument("--grid", type=int, default=2, help="grid points per model family")
    parser.add_argument("--epochs", type=int, default=None, help="net epochs (default: config)")
    parser.add_argument("--families", nargs="+", default=None, help="net families to run")
    parser.add_argument("--quick", "--smoke", action="store_true", help="CI smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--threads", type=int, default=1, help="torch and boosting threads")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="write the report of these results files (one dataset each, run in parallel)",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    global MAX_ROUNDS, THREADS
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    grid_n, fraction, epochs, seeds = args.grid, args.train_fraction, args.epochs, args.seeds
    if args.quick:
        grid_n, fraction, epochs, seeds, MAX_ROUNDS = 1, 0.02, 1, seeds[:1], 20
    info = machine_info()
    info.update(
        train_fraction=fraction, grid=grid_n, quick=bool(args.quick), threads=THREADS, epochs=epochs
    )
    started = time.perf_counter()
    results: dict[str, Any] = {}
    wanted = QUICK_FAMILIES if args.quick else args.families
    for dataset in args.datasets:
        raw = base_raw(dataset)
        runs: list[dict[str, Any]] = []
        results[dataset] = {"runs": runs}
        for seed in seeds:
            data = prepare_data(make_config(raw, seed, fraction))
            assert data.test is not None
            entry: dict[str, Any] = {
                "seed": seed,
                "tasks": [[t.name, t.primary] for t in data.tasks],
                "rows": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
                "nets": {},
                "gbdt": {},
            }
            runs.append(entry)
            families = net_grid(dataset)
            # Cheapest first, boosting among them, and the report rewritten after each
            # model: a run cut short still leaves everything it finished.
            for family in FAMILY_ORDER:
                if family in GBDT_GRIDS:
                    t0 = time.perf_counter()
                    entry["gbdt"][family] = run_gbdt_family(
                        family, data, seed, GBDT_GRIDS[family][:grid_n]
                    )
                    best = {t: _best_test(e) for t, e in entry["gbdt"][family].items()}
                elif wanted and family not in wanted:
                    continue
                else:
                    t0 = time.perf_counter()
                    entry["nets"][family] = run_net_family(
                        raw, data, seed, fraction, families[family][:grid_n], epochs
                    )
                    best = _best_test(entry["nets"][family])
                print(
                    f"{dataset} seed {seed} {family}: {_brief(data.tasks, best)} "
                    f"({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
                info["wall_seconds"] = round(time.perf_counter() - started, 1)
                write_report(results, info, args.out)


def merge(paths: list[Path], out: Path) -> None:
    """One report from several results files (each dataset run in its own process)."""
    payloads = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    info = dict(payloads[0]["info"])
    info["wall_seconds"] = max(p["info"]["wall_seconds"] for p in payloads)
    info["command"] = " & ".join(p["info"]["command"] for p in payloads)
    if "epochs" not in info:  # results written before the cap was recorded: from the command
        words = info["command"].split()
        info["epochs"] = int(words[words.index("--epochs") + 1]) if "--epochs" in words else None
    info["parallel"] = len(payloads)
    results = {k: v for p in payloads for k, v in p["results"].items()}
    write_report(results, info, out)


if __name__ == "__main__":
    sys.exit(main())
