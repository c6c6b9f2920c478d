"""Training throughput: polytask's Trainer vs a minimal hand-written PyTorch loop.

Both train the same architecture (``polytask.models.model.build_model`` from the census example
config, freshly initialised from the same seed for every run) on the same training tensors with
the same batch size and AdamW settings, in the same process. Variants:

* ``hand loop``: randperm, ``index_select`` batches, summed per-task losses, ``backward``,
  ``AdamW.step``; nothing else.
* ``polytask, like-for-like``: ``Trainer.fit`` with ``grad_clip = None``, ``scheduler = "none"``,
  no early stopping, no progress bar. Its time includes what ``fit`` always does each epoch:
  masked losses, the balancer, per-task running statistics and the validation pass.
* ``polytask, defaults``: the same with the default gradient clipping (1.0) and cosine schedule.

Runs alternate between variants (rotating the order each round) after one warm-up round; the
reported figure is the median over rounds of training samples per second. Without the census
data, the synthetic MMoE data of the demo is used instead.

Usage::

    python benchmarks/run_throughput.py [--rounds 9] [--epochs 2] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common import (
    RESULTS_DIR,
    example_config,
    machine_info,
    machine_lines,
    markdown_table,
    write_results,
)
from polytask.balance.base import BALANCERS
from polytask.config import RunConfig, config_from_dict
from polytask.data.datasets import data_available
from polytask.data.prepare import PreparedData, prepare_data
from polytask.data.tensors import TensorData
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task
from polytask.train.config import TrainConfig
from polytask.train.schedule import lr_factor
from polytask.train.trainer import Trainer

TARGET_RATIO = 0.8


def load_data(synthetic: bool) -> tuple[RunConfig, PreparedData, str]:
    """The census example's config and tensors, or the synthetic demo data."""
    if not synthetic and data_available("census"):
        cfg = example_config("census", ["baselines=false"])
        return cfg, prepare_data(cfg), "census (examples/census.toml)"
    from polytask.data.synthetic import make_mmoe_synthetic
    from polytask.demo import demo_config

    frame = make_mmoe_synthetic(70_000, 0.9, seed=0)
    cfg = config_from_dict(demo_config())
    return cfg, prepare_data(cfg, frame), "synthetic MMoE (70,000 rows, demo config)"


def fresh_model(cfg: RunConfig, data: PreparedData) -> MultiTaskModel:
    return build_model(data.tasks, data.input_spec, cfg.model, seed=cfg.seed)


def hand_loop(
    model: MultiTaskModel,
    tasks: list[Task],
    train: TensorData,
    cfg: TrainConfig,
    epochs: int,
    seed: int,
) -> None:
    """What one would write by hand: no masks (labels are complete); ``cfg.grad_clip`` and
    ``cfg.scheduler`` as the Trainer reads them (none and a fixed lr in the like-for-like run;
    ``run_trainer_overhead.py`` times the defaults)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    total_steps = epochs * -(-len(train) // cfg.batch_size)
    step = 0
    generator = torch.Generator().manual_seed(seed)
    losses: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        t.name: F.binary_cross_entropy_with_logits if t.kind == "binary" else F.mse_loss
        for t in tasks
    }
    n = len(train)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            inputs = {k: v.index_select(0, index) for k, v in train.inputs.items()}
            outputs = model(inputs)
            loss = sum(
                fn(outputs[name], train.targets[name].index_select(0, index))
                for name, fn in losses.items()
            )
            if cfg.scheduler != "none":
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, total_steps, cfg.scheduler, 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            step += 1


def trainer_run(
    cfg: RunConfig,
    data: PreparedData,
    model: MultiTaskModel,
    train_cfg: TrainConfig,
) -> Callable[[], None]:
    """Build the Trainer outside the timed region; return the call that trains."""
    entry = BALANCERS.get(cfg.balancer.name)
    params = BALANCERS.validate_params(cfg.balancer.name, cfg.balancer.params(), "balancer")
    balancer = entry.factory(data.tasks, params)
    trainer = Trainer(model, data.tasks, balancer, train_cfg, seed=cfg.seed, quiet=True)

    def train() -> None:
        trainer.fit(data.train, data.val)

    return train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (after 1 warm-up)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed run")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic data")
    parser.add_argument("--quick", action="store_true", help="2 rounds: a smoke run")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="results folder")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds

    cfg, data, source = load_data(args.synthetic)
    for name, mask in data.train.masks.items():
        if not bool(mask.all()):
            raise SystemExit(f"task {name} has missing labels; the hand loop assumes none")
    base = cfg.train.model_copy(update={"epochs": args.epochs, "patience": None, "progress": False})
    like = base.model_copy(update={"grad_clip": None, "scheduler": "none"})
    defaults = base.model_copy(
        update={"grad_clip": TrainConfig().grad_clip, "scheduler": TrainConfig().scheduler}
    )

    def make_hand() -> Callable[[], None]:
        model = fresh_model(cfg, data)
        return lambda: hand_loop(model, data.tasks, data.train, like, args.epochs, cfg.seed)

    variants: dict[str, Callable[[], Callable[[], None]]] = {
        "hand loop": make_hand,
        "polytask, like-for-like": lambda: trainer_run(cfg, data, fresh_model(cfg, data), like),
        "polytask, defaults (clip 1.0 + cosine)": lambda: trainer_run(
            cfg, data, fresh_model(cfg, data), defaults
        ),
    }
    names = list(variants)
    samples = len(data.train) * args.epochs
    times: dict[str, list[float]] = {k: [] for k in names}
    started = time.perf_counter()
    for r in range(rounds + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            call = variants[name]()
            t0 = time.perf_counter()
            call()
            elapsed = time.perf_counter() - t0
            if r > 0:  # round 0 warms up imports, allocator and thread pools
                times[name].append(elapsed)
        if r > 0:
            print(
                f"round {r}: " + ", ".join(f"{k} {samples / times[k][-1]:,.0f}/s" for k in names),
                flush=True,
            )
    total = time.perf_counter() - started

    rates = {k: [samples / t for t in v] for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in rates.items()}
    hand = median["hand loop"]
    ratio = median["polytask, like-for-like"] / hand
    info = machine_info()
    info["wall_time"] = f"{total:.0f} s"
    rows = [
        [
            k,
            f"{median[k]:,.0f}",
            f"{min(rates[k]):,.0f} – {max(rates[k]):,.0f}",
            f"{median[k] / hand:.3f}",
        ]
        for k in names
    ]
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
    markdown = [
        "# Training throughput: polytask Trainer vs a hand-written loop",
        "",
        *machine_lines(info),
        f"- wall time: {info['wall_time']}",
        "",
        f"Data: {source}; {len(data.train):,} training rows, batch size {like.batch_size}, "
        f"AdamW lr {like.lr}, weight decay {like.weight_decay}, {args.epochs} epoch(s) per run, "
        f"median of {rounds} alternating rounds after one warm-up round. The Trainer's time "
        "includes its per-epoch validation pass "
        f"({len(data.val):,} rows) and bookkeeping; the hand loop does only the steps.",
        "",
        *markdown_table(["variant", "samples/s (median)", "range", "ratio to hand loop"], rows),
        "",
        f"Like-for-like ratio {ratio:.3f} (target >= {TARGET_RATIO}): **{verdict}**",
    ]
    payload: dict[str, Any] = {
        "info": info,
        "data": source,
        "train_rows": len(data.train),
        "val_rows": len(data.val),
        "batch_size": like.batch_size,
        "epochs_per_run": args.epochs,
        "rounds": rounds,
        "seconds": times,
        "samples_per_second": rates,
        "median_samples_per_second": median,
        "ratio_like_for_like": ratio,
        "ratio_defaults": median["polytask, defaults (clip 1.0 + cosine)"] / hand,
        "target_ratio": TARGET_RATIO,
        "pass": ratio >= TARGET_RATIO,
    }
    write_results("throughput", markdown, payload, Path(args.out))
    print("\n".join(markdown))


if __name__ == "__main__":
    main()
