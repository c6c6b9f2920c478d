"""The Pareto front of two tasks from a sweep, from one preference-conditioned model, and from
each balancing method's single point: hypervolume and training cost (issue 8, benchmark 2).

Everything runs through ``polytask pareto`` (:func:`polytask.studies.pareto.sweep`), nothing is
re-implemented here. For each dataset and seed:

(a) an 11-point sweep of static weights: ``balancer = static`` with weights ``r`` for 11
    preferences ``r`` on a grid of the simplex, each weight at least 0.05 (a weight of exactly
    0 would leave that task's head untrained): ``r_1 = 0.95, 0.86, ..., 0.05``;
(b) one COSMOS model (Ruchte & Grabocka, ICDM 2021): ``balancer = cosmos`` (Dirichlet α = 1.2,
    λ = 0.5, the cosine to the EPO ray, one preference per example: see
    :class:`polytask.balance.preference_methods.COSMOS`)
    on a FiLM-conditioned network (``model.preference_conditioning = "film"``: FiLM after every
    batch-norm layer of the shared encoder), trained once, for twice the epochs of a sweep run
    (``[pareto] conditioned_epochs``; early stopping still applies), and evaluated at the same
    11 preferences;
(c) one run of each balancing method: equal weights, uncertainty weighting (Kendall et al.
    2018), DB-MTL (Lin et al. 2023), Nash-MTL (Navon et al. 2022), FAMO (Liu et al. 2023);
(d) the budget control: equal weights trained for the conditioned model's (doubled) epochs
    (``[pareto] budget_control``), so what COSMOS gains from its longer budget alone is visible.

Objectives: each task's primary test metric (checkpoints selected on validation). Every
hypervolume of a dataset is taken against one reference point: the nadir of every evaluated
point of every set and seed, moved out by 10% of the range
(:data:`polytask.studies.pareto.front.REFERENCE_RULE`), so the sets' hypervolumes divide. Reported:
hypervolume (mean ± sd over seeds), its ratio to the sweep's of the same seed, training cost
(sum of the epochs' seconds of all the set's runs) and its ratio to the sweep's. Target: the
conditioned model reaches ≥ 95% of the sweep's hypervolume at ≤ 25% of its cost.

Data (``examples/<dataset>.toml``, the tuned recipes otherwise unchanged):

* ``census``: UCI Census-Income (KDD), income > $50K vs never married (Ma et al., KDD 2018),
  AUROC both; MLP [256, 128] with batch norm, dropout 0.3, towers [64], up to 20 epochs
  (patience 5);
* ``multimnist``: MultiMNIST, left and right digit (accuracy), the example's segmentation task
  dropped and its MTAN replaced by hard sharing (FiLM conditioning needs the shared encoder's
  normalisation layers; the sweep and the balancers use the same architecture), CNN
  [8, 16, 32], 6 epochs instead of the example's 3 (after 3 every model is still improving,
  ``multimnist.md``), patience 3.

Besides hypervolume and cost, the results say whether each front follows its preference: a
task's test metric where the preference weights it most and least, next to the seed noise
(:func:`preference_response`). Measured (``pareto.md``): on MultiMNIST the 6-epoch sweep's
trade-off is large (left accuracy 0.89 to 0.25 along it) while the COSMOS model is nearly the
same at every preference (and better than any sweep point); on Census every set lies within
a few thousandths of AUROC, about the seed noise.

Runs live in ``benchmarks/.cache/pareto/<dataset>/runs/`` and are never retrained (``polytask
pareto`` is resumable: an interrupted benchmark continues where it stopped). Results:
``benchmarks/results/pareto.md`` / ``.json`` and the front of each dataset
(``pareto_<dataset>_front.png``, from the ``polytask report`` of its directory).

Wall time (one torch thread per run, ``--workers 1``, the 2-core machine with one other
one-thread benchmark running): 64.4 min for both datasets and 3 seeds (census 17 min), plus
5.5 min when the budget-control runs were added to the finished cache. Per run: a census sweep
run ~20 s (early stopping at ~10-13 epochs), MultiMNIST ~45 s for 6 epochs, its COSMOS run
~108 s for 12. The ``--quick`` run takes ~3 min.

Usage::

    python benchmarks/run_pareto.py                       # both datasets, seeds 0 1 2
    python benchmarks/run_pareto.py --datasets census     # one dataset (resumes its cache)
    python benchmarks/run_pareto.py --quick               # smoke: small, 1 seed, temp dir
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    example_config,
    machine_lines,
    markdown_table,
    subset_tasks,
    worker_run_info,
    write_results,
)
from polytask.config import RunConfig, config_from_dict
from polytask.studies.pareto import sweep
from polytask.studies.pareto.summary import mean_points, summary_rows

DATASETS: dict[str, dict[str, Any]] = {
    "census": {"title": "Census-Income (KDD): income vs never married", "tasks": None},
    "multimnist": {"title": "MultiMNIST: left vs right digit", "tasks": ["left", "right"]},
}
BALANCERS = ["equal", "uncertainty", "db_mtl", "nash_mtl", "famo"]
CACHE_DIR = BENCH_DIR / ".cache" / "pareto"
HV_TARGET, COST_TARGET = 0.95, 0.25


def build_config(
    dataset: str, seeds: list[int], workers: int, quick: bool, cosmos: dict[str, Any]
) -> RunConfig:
    """The example config of ``dataset`` with the benchmark's ``[pareto]`` section."""
    base = example_config(dataset)
    raw = base.model_dump(mode="json", exclude={"base_dir"})
    spec = DATASETS[dataset]
    if spec["tasks"] is not None:
        raw = subset_tasks(raw, spec["tasks"])
        raw["model"]["architecture"] = {"name": "hard"}
    raw["baselines"] = False
    raw["model"]["preference_conditioning"] = "film"
    raw["balancer"] = {"name": "cosmos", **cosmos}
    raw["train"]["progress"] = False
    # One thread for every run, also one trained in the main process (when a single run is
    # left): the cost ratios compare like with like. Cosmetic for the resumable runner.
    raw["train"]["threads"] = 1
    pareto: dict[str, Any] = {
        "n_points": 11,
        "method": "static",
        "min_weight": 0.05,
        "seeds": seeds,
        "balancers": BALANCERS,
        "workers": workers,
    }
    if dataset == "multimnist":
        # The example's 3 epochs leave every model still improving (multimnist.md): 6 here.
        raw["train"]["epochs"] = 6
    # One model for every preference learns more per run: twice the epochs of a sweep run
    # (early stopping still applies), about 20-25% of the sweep's cost.
    pareto["conditioned_epochs"] = 2 * raw["train"]["epochs"]
    if quick:
        raw["train"]["epochs"] = 2 if dataset == "census" else 1
        if dataset == "census":
            raw["data"]["train_fraction"] = 0.1
        pareto.update(n_points=3, balancers=["equal"], conditioned_epochs=None)
    raw["pareto"] = pareto
    return config_from_dict(raw, base_dir=base.base_dir)


def preference_response(doc: dict[str, Any]) -> list[list[str]]:
    """Does a set's trade-off follow the preference? For the sweep and the conditioned model,
    each task's test metric (mean over seeds) at the preference that weights it most and at the
    one that weights it least, and the gain from favouring it (signed so that positive means
    better when favoured): a conditioned model that ignores its preference shows ~0 here. Next
    to it the seed noise: the standard deviation over seeds at one preference, averaged over
    the preferences (a gain below it is not a trade-off one can rely on)."""
    rows = []
    for entry in doc["summary"]:
        if entry["kind"] not in ("sweep", "conditioned"):
            continue
        points = mean_points(doc, entry["name"])
        if not points:
            continue
        seeds = [e for e in doc["sets"] if e["name"] == entry["name"] and e["complete"]]
        for k, (task, spec) in enumerate(doc["tasks"].items()):
            most = max(points, key=lambda p: p["preference"][k])["test"][task]
            least = min(points, key=lambda p: p["preference"][k])["test"][task]
            sign = 1.0 if spec["higher_is_better"] else -1.0
            noise = (
                statistics.fmean(
                    statistics.stdev(e["points"][i]["test"][task] for e in seeds)
                    for i in range(len(points))
                )
                if len(seeds) > 1
                else math.nan
            )
            rows.append(
                [
                    entry["name"],
                    f"{task} {spec['metric']}",
                    f"{most:.4f}",
                    f"{least:.4f}",
                    f"{sign * (most - least):+.4f}",
                    f"{noise:.4f}",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small, 1 seed, temp dir")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=1.2, help="COSMOS Dirichlet concentration")
    parser.add_argument("--lam", type=float, default=0.5, help="COSMOS cosine weight λ")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.seeds = args.seeds[:1]
        tmp = Path(tempfile.mkdtemp(prefix="polytask-pareto-"))
        args.cache = tmp / "cache" if args.cache == CACHE_DIR else args.cache
        args.out = tmp if args.out == RESULTS_DIR else args.out
    cosmos = {"alpha": args.alpha, "lambda": args.lam}
    started = time.perf_counter()
    docs: dict[str, dict[str, Any]] = {}
    for dataset in args.datasets:
        cfg = build_config(dataset, args.seeds, args.workers, args.quick, cosmos)
        t0 = time.perf_counter()
        result = sweep(cfg, out=args.cache / dataset, quiet=True)
        docs[dataset] = {"doc": result.summary, "wall_seconds": time.perf_counter() - t0}
        print(f"{dataset}: {len(result.trained)} runs trained, {len(result.reused)} read back")
        from polytask.report import report

        index = report(args.cache / dataset)
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(index.parent / "pareto_front.png", args.out / f"pareto_{dataset}_front.png")
    wall = time.perf_counter() - started
    info = worker_run_info(args.workers, wall)
    lines = [
        "# Pareto fronts: static-weight sweep vs one COSMOS model vs balancing methods",
        "",
        *machine_lines(info),
        f"- workers: {args.workers}, wall time of this invocation: {wall / 60:.1f} min",
        f"- seeds: {args.seeds}; COSMOS α = {args.alpha}, λ = {args.lam} (EPO ray); target: "
        f"conditioned HV ≥ {HV_TARGET:.0%} of the sweep's at ≤ {COST_TARGET:.0%} of its cost",
        "",
    ]
    verdicts = {}
    for dataset, entry in docs.items():
        doc = entry["doc"]
        cosmos_row = next(r for r in doc["summary"] if r["kind"] == "conditioned")
        hv, cost = cosmos_row["hypervolume_ratio"]["mean"], cosmos_row["cost_ratio"]["mean"]
        met = math.isfinite(hv) and hv >= HV_TARGET and math.isfinite(cost) and cost <= COST_TARGET
        verdicts[dataset] = {"hv_ratio": hv, "cost_ratio": cost, "target_met": met}
        ref = doc["reference"].get("metric", {})
        objectives = ", ".join(f"{k} {v['metric']}" for k, v in doc["tasks"].items())
        reference = ", ".join(f"{k} {v:.4g}" for k, v in ref.items())
        lines += [
            f"## {DATASETS[dataset]['title']}",
            "",
            f"- objectives: test {objectives}; reference point {reference}",
            f"- target {'met' if met else 'NOT met'}: COSMOS reaches {hv:.1%} of the sweep's "
            f"hypervolume at {cost:.1%} of its training cost",
            "",
            *markdown_table(
                ["set", "kind", "seeds", "hypervolume", "HV / sweep", "train s", "cost / sweep"],
                summary_rows(doc),
                left=2,
            ),
            "",
            "Does the trade-off follow the preference? (test metric at the preference that "
            "weights the task most / least, mean over seeds; gain > 0: favouring helps)",
            "",
            *markdown_table(
                ["set", "task", "weighted most", "weighted least", "gain", "seed sd"],
                preference_response(doc),
                left=2,
            ),
            "",
            f"![front](pareto_{dataset}_front.png)",
            "",
            "<details><summary>pareto.md of the sweep directory</summary>",
            "",
            (args.cache / dataset / "pareto.md").read_text(encoding="utf-8"),
            "</details>",
            "",
        ]
    data = {"info": info, "seeds": args.seeds, "cosmos": cosmos, "verdicts": verdicts}
    data["datasets"] = {k: v["doc"] for k, v in docs.items()}
    write_results("pareto", lines, json.loads(json.dumps(data)), args.out)
    print("\n".join(lines))
    print(f"wrote {args.out / 'pareto.md'}")


if __name__ == "__main__":
    main()
