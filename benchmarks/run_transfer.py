"""FDU-MTL transfer: train on 15 domains, then add the 16th with 5%, 20% and 100% of its data.

Issue 7, benchmark 2. The claim measured is the one multi-task pretraining makes for a new
task: a model trained on related tasks "improves performance even when the data set for the
new task is small". The 16 binary sentiment domains of FDU-MTL (Liu, Qiu & Huang, ACL 2017)
are split into 15 base domains and one new domain, **MR** (movie-review sentences, Pang & Lee
2005). MR is the last domain in the paper's order and the one a single-domain net learns worst
(67.6% test accuracy against 84-91% for the others in ``fdu_mtl.md``): its texts are single
sentences, not reviews, so it is the domain where help from the other 15 matters most and is
least guaranteed; IMDB, DVD and video reviews among the base domains make the transfer
plausible.

The base is the multi-task net of ``run_fdu_mtl.py`` (``embedding_bag``: the mean of word and
bigram embeddings, 64-d, a linear output per domain; the ``multi`` budget there), trained on the
15 base domains, one base per seed. Its vocabulary is fitted on their texts only: MR's words
unseen in them are unknown to the fine-tuned model, as they would be to any model trained
before the new domain arrived (the realistic transfer setting; the out-of-vocabulary rate of
MR's test tokens is reported for both vocabularies).

Settings, per seed and fraction of MR's 1,400 training sentences (``data.train_fraction``: a
seeded subset, the same rows for every setting of a seed; dev 200 and test 400 whole):

* ``finetune frozen``: ``polytask finetune`` with the base's encoder frozen: only the new MR head
  (a logistic regression on the base's 64-d text features) trains;
* ``finetune unfrozen``: ``finetune.freeze = "none"``, the shared encoder trains at 0.1 x the
  head's learning rate (``shared_lr_scale``); the 15 old domains are then re-measured on their
  test sets with the base and the fine-tuned model (``finetune.reference_data``);
* ``scratch``: the same architecture trained on MR alone, vocabulary from MR's training rows
  (the single-domain setting and budget of ``run_fdu_mtl.py``);
* ``minilm finetuned``: the pretrained all-MiniLM-L6-v2 sentence encoder (Wang et al., NeurIPS
  2020) fine-tuned on MR with a linear head (``minilm`` encoder, ``minilm_tokens`` input, 64 word
  pieces; ``[finetune]`` in a training run: encoder at 0.05 x the head's learning rate of 1e-3,
  linear decay with 10% warm-up, at most ``MINILM_EPOCHS`` epochs);
* ``minilm frozen``: the frozen MiniLM's sentence embeddings and an MLP (the ``frozen_minilm``
  single-domain setting of ``run_fdu_mtl.py``), the cheap variant.

The fine-tuning runs (and ``scratch``) use the single-domain budget of ``run_fdu_mtl.py``:
batch 32, learning rate 1e-2, at most 30 epochs, early stopping on dev accuracy (patience 6).
Reported: MR test accuracy per setting and fraction (mean ± std over seeds), the paired
difference of each transfer setting with ``scratch`` (paired t-test over seeds), and what
fine-tuning did to the 15 old domains.

Wall time: ``--quick`` (2 base domains, 1 seed, 1 epoch, all settings and fractions) took 1.4
to 2.3 minutes with 1 worker on the shared 2-core machine (one epoch of MiniLM fine-tuning on
MR's 1,400 sentences: 40-75 s). The full run (15 base domains, 3 seeds, 3 fractions, 5
settings: 3 bases, 45 runs on MR) is estimated from it at 45-75 minutes with 2 workers, about
half of it the three fine-tuned MiniLM runs at 100% (up to 8 epochs each).

Usage::

    python benchmarks/run_transfer.py --workers 2       # the full benchmark
    python benchmarks/run_transfer.py --quick           # smoke: writes to a temp folder
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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
from run_fdu_mtl import ENCODERS, precompute_embeddings, raw_config

NEW_DOMAIN = "MR"
FRACTIONS = (0.05, 0.2, 1.0)
SETTINGS = ("finetune frozen", "finetune unfrozen", "scratch", "minilm finetuned", "minilm frozen")
TRANSFER = ("finetune frozen", "finetune unfrozen", "minilm finetuned", "minilm frozen")
#: The single-domain budget of run_fdu_mtl.py, for the fine-tuning runs and scratch.
SINGLE = dict(ENCODERS["embedding_bag"]["train"]["single"])
MINILM_TOKENS = 64
MINILM_EPOCHS = 8
MINILM_TRAIN = {
    "batch_size": 32,
    "lr": 1e-3,
    "patience": 3,
    "scheduler": "linear",
    "warmup": 0.1,
    "weight_decay": 0.01,
}
#: Fine-tuning the pretrained encoder: 0.05 x 1e-3 = 5e-5, the usual rate for a BERT encoder.
MINILM_FINETUNE = {"freeze": "none", "shared_lr_scale": 0.05}
UNFROZEN = {"freeze": "none", "shared_lr_scale": 0.1}


def _frame(domains: list[str]) -> pd.DataFrame:
    from polytask.data.datasets import load_dataset

    frame = load_dataset("fdu_mtl")
    kept: pd.DataFrame = frame[frame["domain"].isin(domains)].reset_index(drop=True)
    return kept


def _train(epochs: int | None, budget: dict[str, Any]) -> dict[str, Any]:
    train = {"weight_decay": 0.0, "criterion": "mean_relative", "progress": False, **budget}
    if epochs is not None:
        train["epochs"] = epochs
    return train


def base_job(seed: int, domains: list[str], epochs: int | None, work: str) -> dict[str, Any]:
    """The 15-domain base of one seed (in a worker process, on one torch thread)."""
    import torch

    from polytask.config import config_from_dict
    from polytask.run.pipeline import run

    torch.set_num_threads(1)
    job = {"encoder": "embedding_bag", "mode": "multi", "seed": seed, "domains": domains}
    raw = raw_config({**job, "epochs": epochs, "cache_dir": None, "minilm_tokens": 0})
    out = Path(work) / f"base-seed{seed}"
    started = time.perf_counter()
    result = run(config_from_dict(raw), frame=_frame(domains), out=out, overwrite=True, quiet=True)
    return {
        "seed": seed,
        "directory": str(out / "model"),
        "test": {d: result.metrics[d]["accuracy"] for d in domains},
        "vocab_size": result.predictor.input_spec.vocab_size,
        "epochs": len(result.fit.history),
        "seconds": time.perf_counter() - started,
    }


def _settings_config(
    setting: str, seed: int, fraction: float, args: dict[str, Any]
) -> dict[str, Any]:
    """The raw run configuration of one MR run."""
    epochs = args["epochs"]
    if setting.startswith("finetune"):
        raw: dict[str, Any] = {
            "seed": seed,
            "data": {"split": {"method": "column", "column": "split"}},
            "tasks": [
                {
                    "name": NEW_DOMAIN,
                    "kind": "binary",
                    "target": NEW_DOMAIN,
                    "primary_metric": "accuracy",
                }
            ],
            "train": _train(epochs, SINGLE),
        }
        if setting == "finetune unfrozen":
            raw["finetune"] = {**UNFROZEN, "reference_data": args["reference"]}
    elif setting == "minilm finetuned":
        raw = {
            "seed": seed,
            "baselines": False,
            "data": {
                "split": {"method": "column", "column": "split"},
                "input": {"name": "minilm_tokens", "max_tokens": args["minilm_tokens"]},
            },
            "tasks": [
                {
                    "name": NEW_DOMAIN,
                    "kind": "binary",
                    "target": NEW_DOMAIN,
                    "primary_metric": "accuracy",
                }
            ],
            "model": {"encoder": {"name": "minilm"}, "head": {"widths": []}},
            "train": _train(epochs, {**MINILM_TRAIN, "epochs": MINILM_EPOCHS}),
            "finetune": dict(MINILM_FINETUNE),
        }
    else:
        encoder = "embedding_bag" if setting == "scratch" else "frozen_minilm"
        job = {"encoder": encoder, "mode": "single", "seed": seed, "domains": [NEW_DOMAIN]}
        raw = raw_config(
            {
                **job,
                "epochs": epochs,
                "cache_dir": args["cache_dir"],
                "minilm_tokens": args["minilm_tokens"],
            }
        )
    raw["data"]["train_fraction"] = fraction
    return raw


def mr_job(setting: str, seed: int, fraction: float, args: dict[str, Any]) -> dict[str, Any]:
    """One run on the new domain (in a worker process, on one torch thread)."""
    import torch

    from polytask.config import config_from_dict
    from polytask.run.pipeline import run
    from polytask.studies.finetune import finetune

    torch.set_num_threads(1)
    cfg = config_from_dict(_settings_config(setting, seed, fraction, args), base_dir=args["work"])
    frame = _frame([NEW_DOMAIN])
    started = time.perf_counter()
    if setting.startswith("finetune"):
        result = finetune(args["bases"][seed], cfg, frame=frame, quiet=True)
    else:
        result = run(cfg, frame=frame, quiet=True)
    seconds = time.perf_counter() - started
    best = result.fit.history[result.fit.best_epoch - 1]
    record: dict[str, Any] = {
        "setting": setting,
        "seed": seed,
        "fraction": fraction,
        "test": result.metrics[NEW_DOMAIN]["accuracy"],
        "val": best.val_metrics[NEW_DOMAIN]["accuracy"],
        "train_rows": _train_rows(frame, fraction, seed),
        "best_epoch": result.fit.best_epoch,
        "epochs": len(result.fit.history),
        "seconds": seconds,
    }
    if setting.startswith("finetune"):
        old = result.predictor.metrics["old_tasks"]
        checks = old["outputs"]["per_task"].values()
        record["old_outputs_unchanged"] = all(c["unchanged"] for c in checks)
        record["old_max_abs_diff"] = max((c["max_abs_diff"] for c in checks), default=0.0)
        if old.get("measured"):
            record["old_change"] = {t: r["change"] for t, r in old["per_task"].items()}
    return record


def _train_rows(frame: pd.DataFrame, fraction: float, seed: int) -> int:
    """MR training sentences a run with ``data.train_fraction = fraction`` keeps."""
    from polytask.data.prepare import train_subset

    rows = np.flatnonzero((frame["split"] == "train").to_numpy())
    return len(train_subset(rows, fraction, seed))


def oov_rates(base_dir: str) -> dict[str, float]:
    """Share of MR test tokens unknown to the base's vocabulary and to MR's own (the scratch
    model's, fitted on all of MR's training rows)."""
    from polytask.data.inputs.base import build_input
    from polytask.data.inputs.text import UNKNOWN_ID, TextInput
    from polytask.run.predictor import load

    frame = _frame([NEW_DOMAIN])
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    base = load(base_dir).preprocessor
    family = ENCODERS["embedding_bag"]
    params = {k: v for k, v in {**family["input"], **family["input_single"]}.items()}
    own = build_input(params.pop("name"), params)
    own.fit(train, "MR", None)
    rates = {}
    for name, processor in (("base vocabulary", base), ("MR vocabulary", own)):
        assert isinstance(processor, TextInput)
        ids = [i for text in test["text"] for i in processor.encode(text)[0]]
        rates[name] = float(np.mean(np.array(ids) == UNKNOWN_ID))
    return rates


def _fmt(values: list[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(
    runs: list[dict[str, Any]], seeds: list[int], fractions: list[float], settings: list[str]
) -> dict[str, Any]:
    """Accuracy (%) per setting and fraction; paired differences with scratch."""
    from polytask.evaluate.statistics import paired_verdict

    def acc(setting: str, fraction: float) -> dict[int, float]:
        return {
            r["seed"]: 100 * r["test"]
            for r in runs
            if r["setting"] == setting and r["fraction"] == fraction
        }

    out: dict[str, Any] = {"accuracy": {}, "vs_scratch": {}}
    for setting in settings:
        out["accuracy"][setting] = {
            str(f): mean_std(list(acc(setting, f).values())) for f in fractions
        }
    for setting in [s for s in settings if s in TRANSFER]:
        out["vs_scratch"][setting] = {}
        for f in fractions:
            mine, ref = acc(setting, f), acc("scratch", f)
            paired = [s for s in seeds if s in mine and s in ref]
            diffs = [mine[s] - ref[s] for s in paired]
            verdict = paired_verdict([mine[s] for s in paired], [ref[s] for s in paired], True)
            out["vs_scratch"][setting][str(f)] = {
                "difference": mean_std(diffs),
                "wins": sum(d > 0 for d in diffs),
                "pairs": len(diffs),
                "verdict": verdict.verdict,
                "p_value": verdict.p_value,
            }
    return out


def main() -> None:
    from polytask.data.datasets.fdu_mtl import DOMAINS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--epochs", type=int, default=None, help="override every budget")
    parser.add_argument("--minilm-tokens", type=int, default=MINILM_TOKENS)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    base_domains = [d for d in DOMAINS if d != NEW_DOMAIN]
    if args.quick:
        base_domains, args.seeds, args.epochs = base_domains[:2], [0], 1
        args.minilm_tokens = min(args.minilm_tokens, 32)
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results.
            args.out = Path(tempfile.gettempdir()) / "polytask-transfer-quick"
    temp = tempfile.TemporaryDirectory(prefix="polytask-transfer-")
    work = (args.work_dir or Path(temp.name)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # The old domains' test rows: what the unfrozen runs re-measure them on.
    frame = _frame(base_domains)
    frame[frame["split"] == "test"].to_parquet(work / "old_domains_test.parquet", index=False)
    shared: dict[str, Any] = {
        "epochs": args.epochs,
        "minilm_tokens": args.minilm_tokens,
        "cache_dir": str(work / "embeddings"),
        "reference": "old_domains_test.parquet",
        "work": str(work),
        "bases": {},
    }
    needs_base = [s for s in args.settings if s.startswith("finetune")]
    independent = [s for s in args.settings if not s.startswith("finetune")]

    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    bases: dict[int, dict[str, Any]] = {}
    embed_seconds = None
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        if "minilm frozen" in args.settings:
            texts = _frame([NEW_DOMAIN])["text"].tolist()
            embed_seconds = precompute_embeddings(
                texts, shared["cache_dir"], args.minilm_tokens, pool, args.workers
            )
            print(f"embedded {len(texts)} MR texts in {embed_seconds:.0f}s", flush=True)
        pending: dict[Future[dict[str, Any]], str] = {}
        if needs_base:
            # The bases gate most runs: they go first.
            for seed in args.seeds:
                future = pool.submit(base_job, seed, base_domains, args.epochs, str(work))
                pending[future] = "base"
        for setting in independent:
            for seed in args.seeds:
                for fraction in args.fractions:
                    pending[pool.submit(mr_job, setting, seed, fraction, shared)] = "mr"
        total = len(pending) + len(needs_base) * len(args.seeds) * len(args.fractions)
        done_count = 0
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                kind = pending.pop(future)
                result = future.result()
                done_count += 1
                if kind == "base":
                    seed = result["seed"]
                    bases[seed] = result
                    shared["bases"][seed] = result["directory"]
                    avg = 100 * float(np.mean(list(result["test"].values())))
                    print(
                        f"[{done_count}/{total}] base seed={seed}: {len(base_domains)} domains, "
                        f"avg test acc {avg:.2f} ({result['seconds']:.0f}s)",
                        flush=True,
                    )
                    for setting in needs_base:
                        for fraction in args.fractions:
                            job = pool.submit(mr_job, setting, seed, fraction, dict(shared))
                            pending[job] = "mr"
                    continue
                runs.append(result)
                print(
                    f"[{done_count}/{total}] {result['setting']} seed={result['seed']} "
                    f"{result['fraction']:.0%}: MR test acc {100 * result['test']:.1f} "
                    f"(best epoch {result['best_epoch']}/{result['epochs']}, "
                    f"{result['seconds']:.0f}s)",
                    flush=True,
                )
    wall = time.perf_counter() - started
    oov = oov_rates(bases[min(bases)]["directory"]) if bases else {}
    temp.cleanup()
    runs.sort(key=lambda r: (SETTINGS.index(r["setting"]), r["fraction"], r["seed"]))
    summary = summarise(runs, args.seeds, args.fractions, args.settings)
    info = worker_run_info(args.workers, wall)
    lines, data = report(args, info, base_domains, bases, runs, summary, oov, embed_seconds)
    lines += ["", f"Wall time: {wall / 60:.1f} min with {args.workers} workers."]
    write_results("transfer_fdu", lines, data, args.out)
    print("\n".join(lines))


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    base_domains: list[str],
    bases: dict[int, dict[str, Any]],
    runs: list[dict[str, Any]],
    summary: dict[str, Any],
    oov: dict[str, float],
    embed_seconds: float | None,
) -> tuple[list[str], dict[str, Any]]:
    rows_at = {
        f: next((r["train_rows"] for r in runs if r["fraction"] == f and r["train_rows"]), None)
        for f in args.fractions
    }
    header = ["setting"] + [
        f"{f:.0%}" + (f" ({rows_at[f]} sentences)" if rows_at[f] else "") for f in args.fractions
    ]
    table = [
        [s] + [_fmt_pair(summary["accuracy"][s][str(f)]) for f in args.fractions]
        for s in args.settings
    ]
    base_avg = [100 * float(np.mean(list(b["test"].values()))) for b in bases.values()]
    lines = [
        f"# FDU-MTL transfer: {len(base_domains)} domains, then {NEW_DOMAIN} with little data",
        "",
        *machine_lines(info),
        f"- seeds: {args.seeds}; fractions of {NEW_DOMAIN}'s training sentences: "
        f"{args.fractions}; base domains: {', '.join(base_domains)}",
        f"- bases (`embedding_bag`, multi-task on the base domains): average test accuracy "
        f"{_fmt(base_avg, 2)}%"
        + (f", {bases[min(bases)]['vocab_size']} token ids" if bases else ""),
        f"- fine-tuning and scratch budget: {SINGLE}; unfrozen: {UNFROZEN}; MiniLM fine-tuned: "
        f"{MINILM_TRAIN}, at most {MINILM_EPOCHS} epochs, {MINILM_FINETUNE}, "
        f"{args.minilm_tokens} word pieces"
        + (f"; epochs overridden: {args.epochs}" if args.epochs else ""),
    ]
    if oov:
        lines.append(
            f"- {NEW_DOMAIN} test tokens out of vocabulary: "
            + ", ".join(f"{100 * v:.1f}% under the {k}" for k, v in oov.items())
        )
    if embed_seconds is not None:
        lines.append(
            f"- frozen MiniLM embeddings of {NEW_DOMAIN} computed once: {embed_seconds:.0f}s"
        )
    lines += [
        "",
        __doc__.split("\n\n")[1].strip(),
        "",
        f"## {NEW_DOMAIN} test accuracy (%), mean ± std over seeds",
        "",
        *markdown_table(header, table),
    ]
    vs = summary["vs_scratch"]
    if vs:
        rows = [
            [s]
            + [
                f"{_fmt_pair(v['difference'])} ({v['wins']}/{v['pairs']}, {v['verdict']})"
                for f in args.fractions
                for v in [vs[s][str(f)]]
            ]
            for s in vs
        ]
        lines += [
            "",
            "## Against scratch, paired by seed",
            "",
            "Accuracy points gained over training MR from scratch (mean ± std over seeds), seeds "
            "won, and the verdict of a two-sided paired t-test over seeds (α = 0.05).",
            "",
            *markdown_table(["setting"] + [f"{f:.0%}" for f in args.fractions], rows),
        ]
    lines += ["", "## The old domains", "", *_old_domain_lines(runs, args.fractions)]
    lines += ["", "## The claim", "", *_claim_lines(summary, args.fractions)]
    data = {
        "info": info,
        "settings": {
            "new_domain": NEW_DOMAIN,
            "base_domains": base_domains,
            "seeds": args.seeds,
            "fractions": args.fractions,
            "settings": args.settings,
            "single_budget": SINGLE,
            "unfrozen": UNFROZEN,
            "minilm": {
                "train": MINILM_TRAIN,
                "epochs": MINILM_EPOCHS,
                "finetune": MINILM_FINETUNE,
                "tokens": args.minilm_tokens,
            },
            "epochs_override": args.epochs,
        },
        "bases": list(bases.values()),
        "oov": oov,
        "summary": summary,
        "embed_seconds": embed_seconds,
        "runs": runs,
    }
    return lines, data


def _fmt_pair(value: tuple[float, float], digits: int = 1) -> str:
    mean, std = value
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _old_domain_lines(runs: list[dict[str, Any]], fractions: list[float]) -> list[str]:
    lines = []
    frozen = [r for r in runs if r["setting"] == "finetune frozen"]
    if frozen:
        same = sum(r["old_outputs_unchanged"] for r in frozen)
        lines.append(
            f"- frozen encoder: the old domains' outputs were bit-identical to the base's in "
            f"{same}/{len(frozen)} runs (checked on MR's dev and test sentences)."
        )
    for f in fractions:
        mine = [r for r in runs if r["setting"] == "finetune unfrozen" and r["fraction"] == f]
        changes = [r["old_change"] for r in mine if "old_change" in r]
        if not changes:
            continue
        means = [100 * float(np.mean(list(c.values()))) for c in changes]
        worst = min(100 * min(c.values()) for c in changes)
        moved = max(r["old_max_abs_diff"] for r in mine)
        lines.append(
            f"- unfrozen encoder, {f:.0%}: the old domains' test accuracy changed by "
            f"{_fmt(means, 2)} points on average (worst domain of any seed {worst:+.1f}; their "
            f"logits moved by up to {moved:.3g})."
        )
    return lines or ["- no fine-tuning run."]


def _claim_lines(summary: dict[str, Any], fractions: list[float]) -> list[str]:
    if not any(s in summary["vs_scratch"] for s in ("finetune frozen", "finetune unfrozen")):
        return ["Not measured: no fine-tuning run."]
    small = [f for f in fractions if f < 1.0]
    lines = []
    for setting in ("finetune frozen", "finetune unfrozen"):
        if setting not in summary["vs_scratch"]:
            continue
        parts = []
        for f in small:
            v = summary["vs_scratch"][setting][str(f)]
            parts.append(f"{f:.0%}: {v['difference'][0]:+.1f} points ({v['verdict']})")
        lines.append(f"- {setting} vs scratch with little MR data: " + "; ".join(parts) + ".")
    return lines or ["Not measured: every fraction is 100%."]


if __name__ == "__main__":
    main()
