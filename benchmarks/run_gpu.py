"""Issue 18's GPU benchmark: one script, one run, under 8 minutes on one GPU.

Run it with::

    .venv/bin/python benchmarks/run_gpu.py                     # on a machine with a GPU
    .venv/bin/python benchmarks/run_gpu.py --smoke --out DIR   # the CPU part, tiny sizes, seconds

Sections, each measured side by side (cells interleaved in rotated rounds, the median kept):

1. **Balancing cost at K = 8 and K = 40** on ``run_balancing_cost``'s main problem
   (hard-sharing MLP 64 → 512 → 512 → 512, batch 256, linear heads, K synthetic regression
   tasks, AdamW): ``equal``; ``uncertainty`` (a loss-level method, Kendall et al. 2018); UPGrad
   (Quinton & Rey 2024) through the engine's ``exact`` and ``representation`` modes; the same
   weighting the LibMTL way (K backward passes, K × P Jacobian); torchjd's autojac
   ``mtl_backward`` + ``jac_to_grad(UPGrad())`` and its autogram ``Engine`` (torchjd 0.18 API).
   The step builders are ``run_balancing_cost``'s, on a problem whose model and batches live on
   the device.
2. **Precision**: the same model at K = 8 with the default head tower, batch 4096, trained
   in fp32, in bf16 and in fp16 (``torch.autocast``; fp16 with a ``GradScaler``): samples/s.
   ``torch.autocast`` is called directly, so the numbers do not depend on the Trainer's
   precision setting.
3. **Trainer vs a hand-written loop**: ``run_throughput``'s like-for-like comparison (synthetic
   MMoE data of the demo, 2 epochs, no clipping, constant lr) with ``train.device`` set to the
   device and the hand loop's model and tensors moved there.
4. **An image workload**: MultiMNIST (left and right digit, 36 × 36) when its MNIST files are
   at hand (``data_available("multimnist")``), generated 36 × 36 images of the same count
   otherwise; polytask's CNN encoder and hard sharing, the Trainer on the device, epochs/s.

Results: ``<out>/gpu.md`` and ``gpu.json`` with the card's name and the date. A cell that fails
(a method or a precision the device cannot run) is recorded with its one-line error instead of
stopping the run. ``--smoke`` runs everything on the CPU on tiny sizes (tests/
test_benchmarks_smoke.py does that in CI); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from common import RESULTS_DIR, machine_info, machine_lines, markdown_table, write_results
from polytask.balance import build_balancer
from polytask.data.datasets import data_available, resolve_data_root
from polytask.data.spec import InputSpec
from polytask.data.tensors import TensorData
from polytask.losses import task_losses
from polytask.models.config import ModelConfig
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task
from polytask.train.config import TrainConfig
from polytask.train.trainer import Trainer
from run_balancing_cost import (
    AUTOJAC,
    KBACK,
    MAIN_SHAPE,
    REFERENCES,
    Shape,
    _optimizer,
    balancer_step,
    make_problem,
)
from run_step_speed import HeadsProblem, time_rounds
from run_throughput import hand_loop, load_data, trainer_run

Step = Callable[[], None]
AUTOGRAM = "torchjd autogram (direct)"
WEIGHTING = "upgrad"


class DeviceProblem(HeadsProblem):
    """A benchmark problem whose models and batches live on ``device``."""

    device: torch.device

    def model(self) -> MultiTaskModel:
        return super().model().to(self.device)


def device_problem(k: int, shape: Shape, widths: list[int], device: torch.device) -> DeviceProblem:
    base = make_problem(k, shape)
    moved = [
        tuple({n: t.to(device) for n, t in part.items()} for part in batch)
        for batch in base.batches
    ]
    problem = DeviceProblem(shape, base.tasks, base.losses, moved)  # type: ignore[arg-type]
    problem.head_widths, problem.device = widths, device
    return problem


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _synced(step: Step, sync: Callable[[], None]) -> Step:
    def run() -> None:
        step()
        sync()

    return run


def _guarded(cells: dict[str, Callable[[], Step]], errors: dict[str, str]) -> dict[str, Step]:
    """Build every cell and run it once; a cell that fails is recorded, not timed."""
    built: dict[str, Step] = {}
    for name, make in cells.items():
        try:
            step = make()
            step()
            built[name] = step
        except Exception as exc:  # a benchmark records what the device cannot run
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return built


# -- 1. balancing cost ---------------------------------------------------------------------------
def balancing_makers(problem: DeviceProblem) -> dict[str, Callable[[], Step]]:
    """The section's cells for one K: polytask's steps and the reference implementations."""
    makers: dict[str, Callable[[], Step]] = {
        "equal": lambda: balancer_step(problem, "equal", {}),
        "uncertainty (loss-level)": lambda: balancer_step(problem, "uncertainty", {}),
        f"{WEIGHTING} exact": lambda: balancer_step(problem, WEIGHTING, {"mode": "exact"}),
        f"{WEIGHTING} representation": lambda: balancer_step(
            problem, WEIGHTING, {"mode": "representation"}
        ),
    }
    for ref in (KBACK, AUTOJAC, AUTOGRAM):
        makers[f"{WEIGHTING} {ref}"] = lambda ref=ref: REFERENCES[ref](problem, WEIGHTING)
    return makers


def balancing(
    ks: tuple[int, ...], shape: Shape, device: torch.device, timing: dict[str, Any]
) -> dict[str, Any]:
    sync = synchronizer(device)
    out: dict[str, Any] = {}
    for k in ks:
        problem = device_problem(k, shape, [], device)
        makers = balancing_makers(problem)
        errors: dict[str, str] = {}
        cells = {n: _synced(s, sync) for n, s in _guarded(makers, errors).items()}
        times = time_rounds(cells, timing["rounds"], timing["seconds"])
        ms = {n: 1e3 * statistics.median(v) for n, v in times.items()}
        out[str(k)] = {"ms": ms, "errors": errors}
        print(f"K={k}", ms, errors, flush=True)
    return out


# -- 2. precision --------------------------------------------------------------------------------
def precision_cell(problem: DeviceProblem, dtype: torch.dtype | None) -> Step:
    """The equal-weighting step under ``torch.autocast(dtype)`` (fp32 without autocast);
    fp16 scales the loss with a ``GradScaler`` as mixed-precision training must."""
    model = problem.model()
    optimizer = _optimizer(model)
    device = problem.device
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    state = {"i": 0}

    def step() -> None:
        inputs, targets, masks = problem.batches[state["i"] % len(problem.batches)]
        state["i"] += 1
        context = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with context:
            outputs = model(inputs)
        # Losses in fp32, outside autocast, as the per-task statistics need.
        losses = task_losses(
            problem.losses, {n: o.float() for n, o in outputs.items()}, targets, masks
        )
        total = torch.stack(list(losses.values())).sum()
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            total.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        else:
            scaler.scale(total).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()

    return step


def precision(shape: Shape, device: torch.device, timing: dict[str, Any]) -> dict[str, Any]:
    problem = device_problem(8, shape, [64], device)
    sync = synchronizer(device)
    makers = {
        "fp32": lambda: precision_cell(problem, None),
        "bf16 (autocast)": lambda: precision_cell(problem, torch.bfloat16),
        "fp16 (autocast + GradScaler)": lambda: precision_cell(problem, torch.float16),
    }
    errors: dict[str, str] = {}
    cells = {n: _synced(s, sync) for n, s in _guarded(makers, errors).items()}
    times = time_rounds(cells, timing["rounds"], timing["seconds"])
    rates = {n: shape.batch / statistics.median(v) for n, v in times.items()}
    print(rates, errors, flush=True)
    return {"samples_per_s": rates, "errors": errors, "batch": shape.batch}


# -- 3. Trainer vs hand loop ---------------------------------------------------------------------
def _to(data: TensorData, device: torch.device) -> TensorData:
    return replace(
        data,
        inputs={k: v.to(device) for k, v in data.inputs.items()},
        targets={k: v.to(device) for k, v in data.targets.items()},
        masks={k: v.to(device) for k, v in data.masks.items()},
    )


def trainer_vs_hand(device: torch.device, rounds: int, rows: int | None) -> dict[str, Any]:
    cfg, data, source = load_data(synthetic=True)
    if rows is not None:  # smoke: a slice of the rows
        index = torch.arange(rows)
        data = replace(data, train=TensorData(**_fields(data.train.take(index))))
    sync = synchronizer(device)
    epochs = 2
    train_cfg = cfg.train.model_copy(
        update={
            "epochs": epochs,
            "patience": None,
            "progress": False,
            "grad_clip": None,
            "scheduler": "none",
            "device": str(device),
        }
    )
    moved = _to(data.train, device)

    def make_hand() -> Step:
        model = build_model(data.tasks, data.input_spec, cfg.model, seed=cfg.seed).to(device)
        return lambda: hand_loop(model, data.tasks, moved, train_cfg, epochs, cfg.seed)

    def make_trainer() -> Step:
        model = build_model(data.tasks, data.input_spec, cfg.model, seed=cfg.seed)
        return trainer_run(cfg, data, model, train_cfg)

    times: dict[str, list[float]] = {"hand loop": [], "polytask Trainer": []}
    errors: dict[str, str] = {}
    makers = {"hand loop": make_hand, "polytask Trainer": make_trainer}
    for r in range(rounds + 1):  # round 0 warms up
        for name in list(makers)[r % 2 :] + list(makers)[: r % 2]:
            if name in errors:
                continue
            try:
                call = makers[name]()
                start = time.perf_counter()
                call()
                sync()
            except Exception as exc:  # recorded: the device may not run one of them yet
                errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            if r > 0:
                times[name].append(time.perf_counter() - start)
    samples = len(data.train) * epochs
    rates = {n: samples / statistics.median(v) for n, v in times.items() if v}
    print(rates, errors, flush=True)
    return {"samples_per_s": rates, "errors": errors, "data": source, "rows": len(data.train)}


def _fields(batch: Any) -> dict[str, Any]:
    return {"inputs": batch.inputs, "targets": batch.targets, "masks": batch.masks}


# -- 4. image workload ---------------------------------------------------------------------------
def image_data(n: int, smoke: bool) -> tuple[Tensor, Tensor, Tensor, str]:
    """MultiMNIST's training images and digits when at hand, else generated ones (36 × 36)."""
    if not smoke and data_available("multimnist"):
        from polytask.data.datasets.multimnist import load_multimnist

        frame = load_multimnist(resolve_data_root("multimnist"))
        frame = frame[frame["split"] == "train"].head(n)
        images = torch.from_numpy(np.stack(frame["image"].to_list())).float() / 255.0
        left = torch.as_tensor(frame["left"].to_numpy())
        right = torch.as_tensor(frame["right"].to_numpy())
        return images.unsqueeze(1), left, right, f"MultiMNIST (first {len(frame)} training images)"
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, 36, 36, generator=g)
    left = torch.randint(0, 10, (n,), generator=g)
    right = torch.randint(0, 10, (n,), generator=g)
    return images, left, right, f"generated 36 × 36 images ({n}; MultiMNIST not at hand)"


def image_workload(
    device: torch.device, n: int, epochs: int, smoke: bool, widths: list[int]
) -> dict[str, Any]:
    images, left, right, source = image_data(n, smoke)
    digits = [str(i) for i in range(10)]
    tasks = [
        Task(name=name, kind="multiclass", target=name, classes=digits)
        for name in ("left", "right")
    ]
    ones = torch.ones(n, dtype=torch.bool)
    train = TensorData(
        {"image": images}, {"left": left, "right": right}, {"left": ones, "right": ones}
    )
    spec = InputSpec(kind="image", shape=[1, 36, 36])
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "cnn", "widths": widths}, "head": {"widths": [64]}}
    )
    model = build_model(tasks, spec, cfg, seed=0)
    train_cfg = TrainConfig.model_validate(
        {
            "epochs": epochs,
            "batch_size": 256,
            "patience": None,
            "progress": False,
            "device": str(device),
        }
    )
    trainer = Trainer(model, tasks, build_balancer("equal", {}, tasks), train_cfg, quiet=True)
    sync = synchronizer(device)
    try:
        start = time.perf_counter()
        trainer.fit(train, train)
        sync()
        elapsed = time.perf_counter() - start
    except Exception as exc:  # recorded, as the other sections' failures
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "data": source}
    result = {"epochs_per_s": epochs / elapsed, "epochs": epochs, "images": n, "data": source}
    print(result, flush=True)
    return result


# -- report --------------------------------------------------------------------------------------
def render(info: dict[str, Any], payload: dict[str, Any]) -> list[str]:
    lines = ["# GPU benchmark (issue 18)", ""]
    if payload["smoke"]:
        lines += ["**Smoke run on the CPU, tiny sizes: the numbers mean nothing.**", ""]
    lines += [f"- device: {info['device_name']}", *machine_lines(info)]
    lines += [f"- wall time: {info['wall']:.0f} s", ""]
    lines += ["## 1. Balancing cost (ms per step; × equal)", ""]
    for k, section in payload["balancing"].items():
        ms = section["ms"]
        base = ms.get("equal", float("nan"))
        rows = [[n, f"{v:.2f}", f"{v / base:.2f}"] for n, v in ms.items()]
        lines += [f"K = {k}:", "", *markdown_table(["step", "ms", "× equal"], rows), ""]
        exact, kback = ms.get(f"{WEIGHTING} exact"), ms.get(f"{WEIGHTING} {KBACK}")
        if exact and kback:
            lines += [f"K backward passes / exact: {kback / exact:.2f}×", ""]
        for ref in (AUTOJAC, AUTOGRAM):
            other = ms.get(f"{WEIGHTING} {ref}")
            if exact and other:
                lines += [f"{ref} / exact: {other / exact:.2f}×", ""]
        lines += [f"- {n}: {e}" for n, e in section["errors"].items()] + [""]
    prec = payload["precision"]
    lines += [f"## 2. Precision (samples/s, batch {prec['batch']}, K = 8)", ""]
    fp32 = prec["samples_per_s"].get("fp32", float("nan"))
    lines += markdown_table(
        ["precision", "samples/s", "× fp32"],
        [[n, f"{v:,.0f}", f"{v / fp32:.2f}"] for n, v in prec["samples_per_s"].items()],
    )
    lines += [""] + [f"- {n}: {e}" for n, e in prec["errors"].items()] + [""]
    tr = payload["trainer"]
    lines += [f"## 3. Trainer vs hand-written loop ({tr['data']}, {tr['rows']} rows)", ""]
    hand = tr["samples_per_s"].get("hand loop", float("nan"))
    lines += markdown_table(
        ["variant", "samples/s", "× hand loop"],
        [[n, f"{v:,.0f}", f"{v / hand:.2f}"] for n, v in tr["samples_per_s"].items()],
    )
    lines += [""] + [f"- {n}: {e}" for n, e in tr["errors"].items()] + [""]
    img = payload["image"]
    lines += ["## 4. Image workload", ""]
    if "error" in img:
        lines += [f"{img['data']}: failed: {img['error']}"]
    else:
        lines += [
            f"{img['data']}: CNN encoder, hard sharing, left/right digit heads, batch 256, "
            f"the Trainer: **{img['epochs_per_s']:.3f} epochs/s** ({img['epochs']} epochs)."
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the CPU part on tiny sizes")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("run_gpu.py: no CUDA device here; use --smoke for the CPU part")
    started = time.perf_counter()
    if args.smoke:
        torch.set_num_threads(1)
        shape, ks = Shape(features=8, trunk=(16,), batch=16), (2, 3)
        timing = {"rounds": 1, "seconds": 0.01}
        prec_shape = shape
        payload: dict[str, Any] = {"smoke": True}
        payload["balancing"] = balancing(ks, shape, device, timing)
        payload["precision"] = precision(prec_shape, device, timing)
        payload["trainer"] = trainer_vs_hand(device, rounds=1, rows=512)
        payload["image"] = image_workload(device, n=32, epochs=1, smoke=True, widths=[4])
    else:
        timing = {"rounds": 5, "seconds": 0.5}
        payload = {"smoke": False}
        payload["balancing"] = balancing((8, 40), MAIN_SHAPE, device, timing)
        prec_shape = replace(MAIN_SHAPE, batch=4096)
        payload["precision"] = precision(prec_shape, device, timing)
        payload["trainer"] = trainer_vs_hand(device, rounds=3, rows=None)
        payload["image"] = image_workload(
            device, n=7000, epochs=3, smoke=False, widths=[32, 64, 128]
        )
    info = machine_info()
    info["device_name"] = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no GPU)"
    )
    info["wall"] = time.perf_counter() - started
    payload["info"] = info
    write_results("gpu", render(info, payload), payload, args.out)


if __name__ == "__main__":
    main()
