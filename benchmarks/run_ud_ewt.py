"""Tagging and parsing the Universal Dependencies English Web Treebank: single-task vs joint.

UD EWT (``ud-ewt/`` of the data root, ``POLYTASK_DATA`` or ``../shared/data``): the official
train / dev / test CoNLL-U files (12,544 / 2,001 / 2,077 sentences), gold tokenisation, read
with ``data.format = "conllu"`` (one row per sentence). Tasks, all on one sentence input
(``data.input.name = "tokens"``: words and their characters):

* ``upos``, ``xpos``, ``ufeats``: ``token_classification`` of the UPOS, XPOS and FEATS
  columns (UFeats is the whole feature string, ``_`` included, as CoNLL 2018 scores it);
  accuracy over all words;
* ``dep``: ``dependency`` (the biaffine parser of Dozat & Manning, ICLR 2017: arc scores, a
  low-rank bilinear relation classifier, Chu-Liu/Edmonds single-root trees); UAS and LAS over
  all words, punctuation included, relations compared on their universal part (CoNLL 2018).

Models, from scratch (``model.encoder.name = "tokens"``: word embeddings + a character CNN,
a BiLSTM): ``joint`` (one encoder, a head per task, equal loss weights) and ``single:<task>``
(one net per task, the same encoder). Every run: the trainer's default optimiser at lr 2e-3,
batch 32 sentences, a fixed number of epochs, the checkpoint of the epoch with the lowest mean
validation loss (dev) scored on test.

With ``--pretrained DIR`` (a ``save_pretrained`` directory, or ``minilm`` for the
all-MiniLM-L6-v2 files of the text extra) the models fine-tune that encoder instead
(``data.input.name = "hf_words"`` + ``model.encoder.name = "hf_words"``: sub-words pooled to
words, ``--pooling first`` as Devlin et al. 2019 or ``mean``): heads at lr 1e-3, the encoder
at 0.05 x that (5e-5, BERT's fine-tuning rate) through ``[finetune] shared_lr_scale``, 10%
warm-up. Nothing is downloaded.

Anchors (gold tokenisation, EWT): UDPipe 1 (no pretrained model) UPOS about 95, LAS about 81;
spaCy's transformer pipeline (UD 2.5) UPOS 96.9, XPOS 96.4, UFeats 96.9, UAS 91.9, LAS 89.4.
Targets of issue 22: from scratch UPOS >= 95.5 and LAS >= 85.

Each run is on one torch thread; ``--workers`` runs go in parallel.

Usage::

    python benchmarks/run_ud_ewt.py --seeds 0 --epochs 8 --models joint single:upos single:dep
    python benchmarks/run_ud_ewt.py --quick   # smoke: a few hundred sentences, 1 epoch, /tmp
    python benchmarks/run_ud_ewt.py --pretrained minilm --seeds 0 --epochs 3 --models joint
    # 20 fine-tuning steps of MiniLM (640 training sentences, batch 32), to time an epoch:
    python benchmarks/run_ud_ewt.py --quick --train-sentences 640 --pretrained minilm \
        --models joint --workers 1
"""

from __future__ import annotations

import argparse
import gzip
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    fmt_mean_std,
    load_average,
    machine_lines,
    markdown_table,
    mean_std,
    worker_run_info,
    write_results,
)
from polytask.config import config_from_dict
from polytask.data.datasets.root import resolve_data_root
from polytask.evaluate.delta import relative_change

#: Task name -> (kind, target column(s), metrics reported, the primary one first).
TASKS: dict[str, tuple[str, str | list[str], tuple[str, ...]]] = {
    "upos": ("token_classification", "upos", ("accuracy",)),
    "xpos": ("token_classification", "xpos", ("accuracy",)),
    "ufeats": ("token_classification", "feats", ("accuracy",)),
    "dep": ("dependency", ["head", "deprel"], ("las", "uas")),
}
SPLITS = {
    "train": "en_ewt-train.conllu.gz",
    "dev": "en_ewt-dev.conllu.gz",
    "test": "en_ewt-test.conllu.gz",
}
#: Sentences of each split kept by ``--quick``.
QUICK_SENTENCES = {"train": 300, "dev": 100, "test": 100}
ANCHORS = {
    "UDPipe 1 (no pretrained model)": {"upos": 0.95, "las": 0.81},
    "spaCy trf (UD 2.5)": {
        "upos": 0.969,
        "xpos": 0.964,
        "ufeats": 0.969,
        "uas": 0.919,
        "las": 0.894,
    },
}
TARGETS = {"upos": 0.955, "las": 0.85}
ENCODER: dict[str, Any] = {
    "name": "tokens",
    "word_dim": 100,
    "char_dim": 32,
    "char_filters": 64,
    "body": "bilstm",
    "width": 256,
    "layers": 2,
    "dropout": 0.33,
}


def model_tasks(model: str, tasks: list[str]) -> list[str]:
    return [model.split(":", 1)[1]] if model.startswith("single:") else list(tasks)


#: Learning rate of the heads when fine-tuning a pretrained encoder, and the encoder's share
#: of it: 5e-5, within the 2e-5 .. 5e-5 Devlin et al. (2019) fine-tune BERT at.
PRETRAINED_LR = 1e-3
PRETRAINED_LR_SCALE = 0.05


def pretrained_dir(name: str) -> str:
    """The directory ``--pretrained`` names (``minilm``: the text extra's all-MiniLM-L6-v2)."""
    if name != "minilm":
        return name
    from polytask.data.inputs.minilm import minilm_dir

    return str(minilm_dir())


def raw_config(job: dict[str, Any]) -> dict[str, Any]:
    """The run configuration (a raw dict, validated by ``config_from_dict``) of one job."""
    files = job["files"]
    pretrained = job.get("pretrained")
    data_input: dict[str, Any] = {"name": "tokens", "column": "form"}
    encoder, lr, extra = ENCODER, 2e-3, {}
    train: dict[str, Any] = {}
    if pretrained is not None:
        data_input = {"name": "hf_words", "column": "form", "path": pretrained}
        encoder = {"name": "hf_words", "path": pretrained, "pooling": job["pooling"]}
        lr, train = PRETRAINED_LR, {"warmup": 0.1}
        extra = {"finetune": {"freeze": "none", "shared_lr_scale": PRETRAINED_LR_SCALE}}
    return {
        "seed": job["seed"],
        "baselines": False,
        "data": {
            "path": files["train"],
            "format": "conllu",
            "input": data_input,
            "split": {"method": "files", "val_path": files["dev"], "test_path": files["test"]},
        },
        "tasks": [
            {"name": t, "kind": TASKS[t][0], "target": TASKS[t][1], "metrics": list(TASKS[t][2])}
            for t in model_tasks(job["model"], job["tasks"])
        ],
        "model": {"encoder": encoder, "architecture": {"name": "hard"}, "head": {"widths": []}},
        "balancer": {"name": "equal"},
        "train": {
            "epochs": job["epochs"],
            "batch_size": 32,
            "lr": lr,
            # A fixed budget; the checkpoint is the epoch with the lowest validation loss.
            "patience": None,
            "criterion": "val_loss",
            "progress": False,
            **train,
        },
        **extra,
    }


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
    tasks = model_tasks(job["model"], job["tasks"])
    return {
        "model": job["model"],
        "seed": job["seed"],
        "test": {t: dict(result.metrics[t]) for t in tasks},
        "dev": {t: dict(best.val_metrics[t]) for t in tasks},
        "best_epoch": result.fit.best_epoch,
        "epochs": len(result.fit.history),
        "train_seconds": sum(r.seconds for r in result.fit.history),
        "seconds": seconds,
    }


def split_files(quick: bool, work: Path, train_sentences: int | None = None) -> dict[str, str]:
    """The three CoNLL-U files (the first sentences of each, written to ``work``, when
    ``quick``: :data:`QUICK_SENTENCES`, or ``train_sentences`` of the training file)."""
    folder = resolve_data_root() / "ud-ewt"
    files = {split: folder / name for split, name in SPLITS.items()}
    for path in files.values():
        if not path.exists():
            raise SystemExit(f"UD EWT file {path} not found; set POLYTASK_DATA to the data root")
    if not quick:
        return {k: str(v) for k, v in files.items()}
    out: dict[str, str] = {}
    for split, path in files.items():
        blocks = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n\n")
        small = work / f"{split}.conllu"
        keep = QUICK_SENTENCES[split]
        if split == "train" and train_sentences is not None:
            keep = train_sentences
        small.write_text("\n\n".join(blocks[:keep]) + "\n\n", encoding="utf-8")
        out[split] = str(small)
    return out


def metric_cells(runs: list[dict[str, Any]], task: str, metric: str) -> list[float]:
    return [r["test"][task][metric] for r in runs if task in r["test"]]


def report(
    runs: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    models = list(dict.fromkeys(r["model"] for r in runs))
    columns = [(t, m) for t in args.tasks for m in TASKS[t][2]]
    header = [
        "model",
        *[f"{t} {m}" if m != "accuracy" else t for t, m in columns],
        "epochs",
        "min/run",
    ]
    rows = []
    summary: dict[str, Any] = {}
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        cells = []
        for t, m in columns:
            values = [100 * v for v in metric_cells(mine, t, m)]
            # One seed has no spread to show: the value alone, not "± 0.00".
            one = f"{values[0]:.2f}" if len(values) == 1 else fmt_mean_std(values, 2)
            cells.append(one if values else "")
            if values:
                summary.setdefault(model, {})[f"{t}.{m}"] = mean_std(values)
        minutes = sum(r["seconds"] for r in mine) / len(mine) / 60
        rows.append([model, *cells, str(mine[0]["epochs"]), f"{minutes:.1f}"])
    lines = [
        "# UD English Web Treebank: tagging and parsing, single-task vs joint",
        "",
        "Official train / dev / test (12,544 / 2,001 / 2,077 sentences), gold tokens; test "
        "scores (%) of the checkpoint with the lowest mean dev loss, mean ± std over seeds "
        f"{args.seeds}; {args.epochs} epochs; every word counted, punctuation included; LAS on "
        "universal relations (CoNLL 2018). "
        + (
            f"Fine-tuned pretrained encoder '{args.pretrained}' (hf_words, {args.pooling} "
            f"sub-word pooling; heads lr {PRETRAINED_LR:g}, encoder x{PRETRAINED_LR_SCALE:g}, "
            "10% warm-up)"
            if getattr(args, "pretrained", None)
            else "From scratch: words + character CNN + 2-layer BiLSTM (256)"
        )
        + ", biaffine parser (arc 256, relation 64, rank 4).",
        "",
        *markdown_table(header, rows),
        "",
        "min/run: wall-clock minutes of one run on one torch thread, with other jobs sharing the "
        "machine's cores, so they overstate the compute a run needs.",
        "",
    ]
    if args.quick:
        lines[2:2] = [
            "**Smoke run** (a few hundred sentences, 1 epoch): the numbers mean nothing.",
            "",
        ]
    # Joint against single-task, per task (same seeds).
    joint = [r for r in runs if r["model"] == "joint"]
    changes: dict[str, float] = {}
    if joint:
        for t in args.tasks:
            metric = TASKS[t][2][0]
            single = [r for r in runs if r["model"] == f"single:{t}"]
            if not single:
                continue
            j = mean_std([r["test"][t][metric] for r in joint])[0]
            s = mean_std([r["test"][t][metric] for r in single])[0]
            # relative_change is negative for an improvement (the Δm convention): flipped here
            # so that the table reads "positive: joint is better".
            changes[t] = -100 * relative_change(j, s, True)
        if changes:
            lines += [
                "Joint vs single-task (relative change of the primary metric, %; positive: "
                "joint is better; "
                + ("one seed, no confidence interval" if len(args.seeds) < 2 else "mean over seeds")
                + "): "
                + ", ".join(f"{t} {v:+.2f}" for t, v in changes.items())
                + ".",
                "",
            ]
    if runs and all(r["best_epoch"] == r["epochs"] for r in runs):
        lines += [
            "Every run's best dev epoch is its last: training stopped before convergence, so "
            "these numbers are lower bounds of what the models reach with more epochs.",
            "",
        ]
    verdicts = []
    best: dict[str, float] = {}
    for key, name in (("upos", "upos.accuracy"), ("las", "dep.las")):
        values = [summary[m][name][0] / 100 for m in summary if name in summary[m]]
        if values:
            best[key] = max(values)
            met = "met" if best[key] >= TARGETS[key] else "missed"
            verdicts.append(
                f"{key.upper()} >= {100 * TARGETS[key]:.1f}: {met} (best model "
                f"{100 * best[key]:.2f})"
            )
    lines += [
        "Anchors: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k.upper()} {100 * v:.1f}" for k, v in a.items())
            for name, a in ANCHORS.items()
        )
        + ".",
        "",
        (
            "Targets (issue 22; set for models from scratch, shown for comparison): "
            if getattr(args, "pretrained", None)
            else "Targets from scratch (issue 22): "
        )
        + ("; ".join(verdicts) if verdicts else "not run")
        + ".",
        "",
        "Not run here: the grid's other seeds and epochs"
        + (
            ""
            if getattr(args, "pretrained", None)
            else ", and the pretrained-encoder rows (`--pretrained DIR`, or `minilm`)"
        )
        + ".",
        "",
        "## Machine",
        "",
        *machine_lines(info),
    ]
    if "load_average_end" in info:
        lines.append(
            f"- load average at the end: {info['load_average_end']:.1f} on {info.get('nproc')} "
            "cores (other jobs shared the machine)"
        )
    data = {
        **info,
        "quick": args.quick,
        "pretrained": getattr(args, "pretrained", None),
        "pooling": getattr(args, "pooling", None),
        "seeds": args.seeds,
        "epochs": args.epochs,
        "tasks": args.tasks,
        "runs": runs,
        "joint_vs_single_pct": changes,
        "anchors": ANCHORS,
        "targets": TARGETS,
        "best": best,
    }
    return lines, data


def results_name(pretrained: str | None) -> str:
    """The results' file name: a pretrained encoder's runs never overwrite the from-scratch
    table."""
    return "ud_ewt" if pretrained is None else "ud_ewt_pretrained"


def rerender(out: Path, name: str) -> None:
    """Rewrite the results from the runs a previous invocation stored (its settings and
    machine description kept; the command that re-rendered them is added)."""
    import json
    import shlex
    import sys

    data = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    args = argparse.Namespace(
        seeds=data["seeds"],
        epochs=data["epochs"],
        tasks=data["tasks"],
        quick=data["quick"],
        pretrained=data.get("pretrained"),
        pooling=data.get("pooling"),
    )
    info = {k: v for k, v in data.items() if k not in ("runs", "joint_vs_single_pct", "best")}
    info["rendered_by"] = "python " + shlex.join(["benchmarks/run_ud_ewt.py", *sys.argv[1:]])
    lines, payload = report(data["runs"], args, info)
    lines.append(f"- report re-rendered from the stored runs by: `{info['rendered_by']}`")
    write_results(name, lines, payload, out)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 sentences, 1 epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--models", nargs="+", default=None, help="joint and/or single:<task> (default: all)"
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="DIR",
        help="fine-tune this Hugging Face model directory (save_pretrained; 'minilm': the text "
        "extra's all-MiniLM-L6-v2) with sub-words pooled to words, instead of the from-scratch "
        "token encoder",
    )
    parser.add_argument(
        "--pooling", choices=["first", "mean"], default="first", help="with --pretrained"
    )
    parser.add_argument(
        "--train-sentences",
        type=int,
        default=None,
        help="with --quick: training sentences kept (default 300)",
    )
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="rewrite <out>/ud_ewt.md from the runs stored in <out>/ud_ewt.json (no training; "
        "with --pretrained: ud_ewt_pretrained.md/.json)",
    )
    args = parser.parse_args()
    if args.rerender:
        rerender(args.out, results_name(args.pretrained))
        return
    models = args.models or ["joint", *(f"single:{t}" for t in args.tasks)]
    for m in models:
        if m != "joint" and not (m.startswith("single:") and m[7:] in args.tasks):
            parser.error(
                f"--models: {m!r} is not 'joint' or 'single:<task>' of --tasks {args.tasks}"
            )
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 1
        if args.out == RESULTS_DIR:
            # A smoke run must not overwrite the committed results.
            args.out = Path(tempfile.gettempdir()) / "polytask-ud-ewt-quick"

    # Import the whole training stack before the workers fork: every run then uses the same
    # code, even if the source tree changes while the benchmark runs.
    import polytask.run.pipeline  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="ud-ewt-"))
    files = split_files(args.quick, work, args.train_sentences)
    pretrained = None if args.pretrained is None else pretrained_dir(args.pretrained)
    jobs = [
        {
            "model": m,
            "seed": s,
            "epochs": args.epochs,
            "tasks": args.tasks,
            "files": files,
            "pretrained": pretrained,
            "pooling": args.pooling,
        }
        for s in args.seeds
        for m in models
    ]
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for future in as_completed(futures):
            r = future.result()
            runs.append(r)
            scores = " ".join(
                f"{t}.{m} {100 * v:.2f}" for t, ms in r["test"].items() for m, v in ms.items()
            )
            print(
                f"[{len(runs)}/{len(jobs)}] {r['model']:<12} seed={r['seed']} {scores} "
                f"(best epoch {r['best_epoch']}, {r['seconds'] / 60:.1f} min)",
                flush=True,
            )
    order = {m: i for i, m in enumerate(models)}
    runs.sort(key=lambda r: (order[r["model"]], r["seed"]))
    info = worker_run_info(args.workers, time.perf_counter() - started)
    info["load_average_end"] = load_average()
    lines, data = report(runs, args, info)
    write_results(results_name(args.pretrained), lines, data, args.out)
    print("\n".join(lines))
    if any(math.isnan(v) for r in runs for ms in r["test"].values() for v in ms.values()):
        raise SystemExit("a metric is NaN")


if __name__ == "__main__":
    main()
