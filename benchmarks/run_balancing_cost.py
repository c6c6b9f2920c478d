"""Cost of loss balancing: step time and memory of every balancer relative to equal weighting.

Run it with::

    .venv/bin/python benchmarks/run_balancing_cost.py            # full run, ~15-20 min
    .venv/bin/python benchmarks/run_balancing_cost.py --quick    # smoke run, prints only

Problem: polytask's own hard-sharing model (``build_model``: MLP trunk 64 → 512 → 512 → 512,
ReLU, no normalisation, no dropout, a linear head per task) on K synthetic regression tasks with
every label present, batch 256, AdamW. One step is exactly what the Trainer does::

    outputs = balancer.forward(model, inputs); losses = task_losses(...)
    optimizer.zero_grad(); balancer.backward(losses, model); optimizer.step()

Rows, for each K:

* every balancer registered in ``polytask.balance.BALANCERS`` (the registry is iterated, so a
  method added later shows up); gradient-level ones once per engine mode they accept;
* ``K backward passes (LibMTL way)``: one ``autograd.grad(L_k, shared + head_k,
  retain_graph=True)`` per task, the K × P Jacobian flattened, the *same* Gramian weighting as
  the polytask row (the balancer's own ``method`` module) applied to ``J Jᵀ``, shared ``.grad``
  set to ``Jᵀ w``, each head keeping its own task's gradient;
* ``torchjd autojac mtl_backward``: ``mtl_backward(losses, features=z)`` then
  ``jac_to_grad(shared, aggregator)`` with torchjd's ``UPGrad()`` / ``MGDA()`` aggregator;
* ``torchjd autogram (direct)``: torchjd's documented autogram loop, one ``Engine`` over the
  trunk for the whole run (``batch_dim=None``: the losses are per-task means), the same
  weighting, ``losses.backward(weights)``. The heads get ``w_k ∇L_k`` here (the polytask engine
  gives them ``∇L_k``), which costs the same.

Timing, for a shared and noisy 2-core machine: ``torch.set_num_threads(1)``; every cell gets its
own freshly initialised model (same seed) and optimiser; warm-up steps; then rounds in which
every cell runs a few steps (about ``--round-seconds`` worth, at least one), the order rotated
each round. A cell's step time is the median over rounds; its ratio to equal weighting is the
median over rounds of (its time / equal's time in the same round), so slow drifts of the machine
cancel. Cells slower than ``--cell-budget`` seconds in total take part in fewer rounds (at
least 3); the number of timed steps is recorded per cell.

Memory: two extra steps per cell under ``torch.profiler`` with ``profile_memory=True``, the
second one measured (the first makes every tensor it frees one the profiler saw allocated); the
figure is the peak of tensor memory allocated during the step minus what was allocated when it
began (activations, graphs, Jacobians, gradients, optimiser temporaries). It counts tensors
only (not Python objects or a solver's own buffers) and is exact and deterministic for them;
peak RSS was not used because a fresh process per cell costs seconds of imports each, and RSS
in a shared process only ever shows the first, largest allocation.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile, record_function
from torchjd.aggregation import MGDA, UPGrad
from torchjd.autogram import Engine
from torchjd.autojac import jac_to_grad, mtl_backward

from common import REPO_DIR, RESULTS_DIR, machine_info, machine_lines, markdown_table
from polytask.balance import BALANCERS, Balancer, EngineParams, GradientBalancer, build_balancer
from polytask.balance.gradient_engine import GRADIENT_MODES, GramianWeighting
from polytask.balance.gradient_methods import MGDAParams
from polytask.config import ModelConfig
from polytask.errors import ConfigError, PolytaskError
from polytask.losses import TaskLoss, task_losses
from polytask.models.encoders import InputSpec
from polytask.models.model import MultiTaskModel, build_model
from polytask.state_io import atomic_write_text
from polytask.tasks import Task

N_FEATURES = 64
TRUNK = [512, 512, 512]
BATCH = 256
POOL = 8  # distinct batches each cell cycles through
LR = 1e-3
WEIGHT_DECAY = 1e-4
KS = (2, 4, 8, 16, 40)
#: Weightings also run the LibMTL way, through autojac and through a direct autogram loop.
REFERENCE_METHODS = ("mgda", "upgrad")
LOSS_LEVEL_TARGET = 1.1  # × equal, every loss-level method, every K
REPRESENTATION_TARGET = 1.5  # × equal at K = TARGET_K
EXACT_SPEEDUP_TARGET = 1.5  # K backward passes / exact mode at K = TARGET_K
TARGET_K = 8
EQUAL = "equal"
#: Computes exactly what ``equal`` does: its distance from 1 is the measurement noise.
NOISE_REFERENCE = "static"

Step = Callable[[], None]


@dataclass
class Problem:
    """K regression tasks, their losses and a pool of batches shared (read-only) by all cells."""

    tasks: list[Task]
    losses: dict[str, TaskLoss]
    batches: list[tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]]

    def model(self) -> MultiTaskModel:
        cfg = ModelConfig.model_validate(
            {
                "encoder": {"name": "mlp", "widths": TRUNK, "norm": "none", "dropout": 0.0},
                "head": {"widths": []},
            }
        )
        return build_model(self.tasks, InputSpec(n_numeric=N_FEATURES), cfg, seed=0)


def make_problem(k: int, seed: int = 0) -> Problem:
    """Related regression tasks: y_k = tanh(x A) b_k + noise, one shared A, every label present."""
    g = torch.Generator().manual_seed(seed)
    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(k)]
    mix = torch.randn(N_FEATURES, 16, generator=g) / math.sqrt(N_FEATURES)
    coef = torch.randn(16, k, generator=g) / 4.0
    batches = []
    for _ in range(POOL):
        x = torch.randn(BATCH, N_FEATURES, generator=g)
        y = torch.tanh(x @ mix) @ coef + 0.1 * torch.randn(BATCH, k, generator=g)
        targets = {t.name: y[:, i].contiguous() for i, t in enumerate(tasks)}
        masks = {t.name: torch.ones(BATCH, dtype=torch.bool) for t in tasks}
        batches.append(({"numeric": x}, targets, masks))
    return Problem(tasks, {t.name: TaskLoss(t) for t in tasks}, batches)


class Batches:
    def __init__(self, problem: Problem) -> None:
        self.problem, self.i = problem, 0

    def next(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        batch = self.problem.batches[self.i % POOL]
        self.i += 1
        return batch


def _optimizer(model: MultiTaskModel, balancer: Balancer | None = None) -> torch.optim.Optimizer:
    # As the Trainer builds it: balancer parameters in their own group without weight decay.
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    learned = [p for p in balancer.parameters() if p.requires_grad] if balancer else []
    if learned:
        groups.append({"params": learned, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=LR, weight_decay=WEIGHT_DECAY)


# -- step builders --------------------------------------------------------------------------------
def balancer_step(problem: Problem, name: str, params: dict[str, Any]) -> Step:
    """The Trainer's step with polytask balancer ``name``."""
    model, data = problem.model(), Batches(problem)
    balancer = build_balancer(name, params, problem.tasks)
    balancer.check_model(model)
    optimizer = _optimizer(model, balancer)

    def step() -> None:
        inputs, targets, masks = data.next()
        outputs = balancer.forward(model, inputs)
        losses = task_losses(problem.losses, outputs, targets, masks)
        optimizer.zero_grad(set_to_none=True)
        balancer.backward(losses, model)
        optimizer.step()

    return step


def _weighting(problem: Problem, method: str) -> GramianWeighting:
    """The Gramian weighting polytask's ``method`` uses, with its default parameters."""
    balancer = build_balancer(method, {"mode": "exact"}, problem.tasks)
    assert isinstance(balancer, GradientBalancer)
    assert isinstance(balancer.method, GramianWeighting)
    return balancer.method


def k_backward_step(problem: Problem, method: str) -> Step:
    """LibMTL's way: K backward passes with retain_graph, a K × P Jacobian, J Jᵀ, Jᵀ w."""
    model, data = problem.model(), Batches(problem)
    optimizer = _optimizer(model)
    weighting = _weighting(problem, method)
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    idx = list(range(len(problem.tasks)))

    def step() -> None:
        inputs, targets, masks = data.next()
        outputs = model(inputs)
        losses = task_losses(problem.losses, outputs, targets, masks)
        optimizer.zero_grad(set_to_none=True)
        rows = []
        for name, loss in losses.items():
            own = model.task_parameters(name)
            grads = torch.autograd.grad(loss, [*shared, *own], retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
            for p, g in zip(own, grads[len(shared) :], strict=True):
                p.grad = g
        jacobian = torch.stack(rows)
        stacked = torch.stack(list(losses.values())).detach()
        weights = weighting(jacobian @ jacobian.T, stacked, idx)
        update = weights.to(jacobian.dtype) @ jacobian
        offset = 0
        for p in shared:
            p.grad = update[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        optimizer.step()

    return step


def autojac_step(problem: Problem, method: str) -> Step:
    """torchjd's mtl_backward (Jacobian of the shared parameters via the features) + jac_to_grad."""
    model, data = problem.model(), Batches(problem)
    optimizer = _optimizer(model)
    mgda = MGDAParams()
    aggregator = (
        MGDA(epsilon=mgda.epsilon, max_iters=mgda.max_iters) if method == "mgda" else UPGrad()
    )
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    names = [t.name for t in problem.tasks]

    def step() -> None:
        inputs, targets, masks = data.next()
        z = model.represent(inputs)
        outputs = {n: model.task_output(n, z) for n in names}
        losses = task_losses(problem.losses, outputs, targets, masks)
        optimizer.zero_grad(set_to_none=True)
        mtl_backward(
            list(losses.values()),
            features=z,
            tasks_params=[model.task_parameters(n) for n in losses],
            shared_params=shared,
        )
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return step


def autogram_step(problem: Problem, method: str) -> Step:
    """torchjd's documented autogram loop: one Engine for the run, Gramian, weights, backward."""
    model, data = problem.model(), Batches(problem)
    optimizer = _optimizer(model)
    weighting = _weighting(problem, method)
    engine = Engine(*model.shared_modules(), batch_dim=None)
    idx = list(range(len(problem.tasks)))

    def step() -> None:
        inputs, targets, masks = data.next()
        outputs = model(inputs)
        losses = task_losses(problem.losses, outputs, targets, masks)
        stacked = torch.stack(list(losses.values()))
        gramian = engine.compute_gramian(stacked)
        weights = weighting(gramian, stacked.detach(), idx)
        optimizer.zero_grad(set_to_none=True)
        stacked.backward(weights.to(stacked.dtype))  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


KBACK = "K backward passes (LibMTL way)"
REFERENCES: dict[str, Callable[[Problem, str], Step]] = {
    KBACK: k_backward_step,
    "torchjd autojac mtl_backward": autojac_step,
    "torchjd autogram (direct)": autogram_step,
}


# -- cells ----------------------------------------------------------------------------------------
@dataclass
class Cell:
    method: str
    mode: str
    kind: str  # loss-level / gradient-level / reference
    make: Callable[[], Step]
    step: Step | None = None
    error: str | None = None
    warm_seconds: float = math.nan
    steps_per_round: int = 1
    max_rounds: int = 0
    seconds: list[float] = field(default_factory=list)  # per-step time of each round taken
    rounds: list[int] = field(default_factory=list)  # which rounds it took part in
    peak_mb: float = math.nan

    @property
    def label(self) -> str:
        return f"{self.method} / {self.mode}"


def is_gradient_level(name: str) -> bool:
    params = BALANCERS.get(name).params
    return isinstance(params, type) and issubclass(params, EngineParams)


def make_cells(problem: Problem, skipped: list[dict[str, str]]) -> list[Cell]:
    """Equal first, then every loss-level balancer, every gradient-level one per mode, then
    the reference implementations. A mode a method rejects (GradDrop: exact) goes to
    ``skipped`` with the reason."""
    names = BALANCERS.names()
    loss_level = [n for n in names if not is_gradient_level(n) and n != EQUAL]
    gradient = [n for n in names if is_gradient_level(n)]
    cells = [Cell(EQUAL, "-", "loss-level", partial(balancer_step, problem, EQUAL, {}))]
    for name in loss_level:
        cells.append(Cell(name, "-", "loss-level", partial(balancer_step, problem, name, {})))
    for name in gradient:
        for mode in GRADIENT_MODES:
            try:  # a mode the method cannot run in is refused when the balancer is built
                build_balancer(name, {"mode": mode}, problem.tasks)
            except ConfigError as exc:
                skipped.append({"method": name, "mode": mode, "reason": str(exc)})
                continue
            make = partial(balancer_step, problem, name, {"mode": mode})
            cells.append(Cell(name, mode, "gradient-level", make))
    for name in REFERENCE_METHODS:
        if name not in BALANCERS:
            continue
        for mode, builder in REFERENCES.items():
            cells.append(Cell(name, mode, "reference", partial(builder, problem, name)))
    return cells


def _run_steps(step: Step, n: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def _fail(cell: Cell, exc: Exception) -> None:
    cell.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    cell.step = None
    print(f"  {cell.label}: failed ({cell.error})", flush=True)


#: What a method may raise mid-run (solver failures surface as PolytaskError); the cell is
#: reported as failed and the benchmark goes on.
FAILURES = (PolytaskError, ValueError, RuntimeError, ArithmeticError)


def time_cells(
    cells: list[Cell], rounds: int, warmup: int, round_seconds: float, cell_budget: float
) -> None:
    """Build and warm up every cell, then time them in rotating round-robin rounds."""
    for cell in cells:
        try:
            cell.step = cell.make()
            for _ in range(max(warmup - 1, 0)):
                cell.step()
            cell.warm_seconds = _run_steps(cell.step, 1)
        except FAILURES as exc:
            _fail(cell, exc)
            continue
        cell.steps_per_round = max(1, round(round_seconds / cell.warm_seconds))
        per_round = cell.steps_per_round * cell.warm_seconds
        cell.max_rounds = min(rounds, max(3, int(cell_budget / per_round)))
    live = [c for c in cells if c.step is not None]
    for r in range(rounds):
        shift = r % len(live)
        for cell in live[shift:] + live[:shift]:
            if cell.step is None or len(cell.rounds) >= cell.max_rounds:
                continue
            try:
                seconds = _run_steps(cell.step, cell.steps_per_round)
            except FAILURES as exc:
                _fail(cell, exc)
                continue
            cell.seconds.append(seconds)
            cell.rounds.append(r)
        print(
            f"  round {r + 1}/{rounds}: equal {1000 * cells[0].seconds[-1]:.1f} ms/step",
            flush=True,
        )


SPAN = "balancing_cost_cell_"


def measure_memory(cells: list[Cell]) -> None:
    """Peak tensor memory of one step of each cell above what was allocated at its start.

    Each cell first runs one unmeasured step inside the profiler session: the profiler only
    records frees of tensors it saw allocated, and the measured step frees the previous step's
    gradients (``zero_grad(set_to_none=True)``), which must count."""
    live = [c for c in cells if c.step is not None]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for i, cell in enumerate(live):
            try:
                assert cell.step is not None
                cell.step()
                with record_function(f"{SPAN}{i}"):
                    cell.step()
            except FAILURES as exc:
                _fail(cell, exc)
    events = list(prof.profiler.kineto_results.events())  # type: ignore[union-attr]
    memory = sorted(
        ((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"),
        key=lambda item: item[0],
    )
    spans = {e.name(): (e.start_ns(), e.end_ns()) for e in events if e.name().startswith(SPAN)}
    for i, cell in enumerate(live):
        if cell.step is None or f"{SPAN}{i}" not in spans:
            continue
        start, end = spans[f"{SPAN}{i}"]
        current = peak = 0
        for t, nbytes in memory:
            if start <= t <= end:
                current += nbytes
                peak = max(peak, current)
        cell.peak_mb = peak / 2**20


# -- statistics and output ------------------------------------------------------------------------
def ratios(cell: Cell, other: Cell) -> list[float]:
    """``cell``'s time over ``other``'s, per round in which both ran."""
    theirs = dict(zip(other.rounds, other.seconds, strict=True))
    return [s / theirs[r] for r, s in zip(cell.rounds, cell.seconds, strict=True) if r in theirs]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def cell_record(cell: Cell, equal: Cell) -> dict[str, Any]:
    rel = ratios(cell, equal)
    return {
        "method": cell.method,
        "mode": cell.mode,
        "kind": cell.kind,
        "ms_per_step": round(1000 * median(cell.seconds), 3),
        "ms_per_step_rounds": [round(1000 * s, 3) for s in cell.seconds],
        "ratio_to_equal": round(median(rel), 4),
        "ratio_to_equal_rounds": [round(v, 4) for v in rel],
        "rounds": len(cell.seconds),
        "steps_per_round": cell.steps_per_round,
        "steps_timed": cell.steps_per_round * len(cell.seconds),
        "peak_mb": round(cell.peak_mb, 2),
        "error": cell.error,
    }


def _fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def k_table(records: list[dict[str, Any]]) -> list[str]:
    rows = []
    for rec in records:
        if rec["error"]:
            rows.append([rec["method"], rec["mode"], "failed", "-", "-", "-", rec["error"]])
            continue
        spread = rec["ratio_to_equal_rounds"]
        span = f"{min(spread):.2f} – {max(spread):.2f}" if spread else "-"
        rows.append(
            [
                rec["method"],
                rec["mode"],
                _fmt(rec["ms_per_step"], 1),
                f"**{_fmt(rec['ratio_to_equal'], 2)}**",
                span,
                str(rec["steps_timed"]),
                _fmt(rec["peak_mb"], 1),
            ]
        )
    header = ["method", "mode", "ms/step", "× equal", "× equal range", "steps", "peak MB"]
    return markdown_table(header, rows, left=2)


def evaluate_targets(
    results: dict[int, list[dict[str, Any]]], speedups_by_k: dict[int, dict[str, float]]
) -> dict[str, Any]:
    """The three targets of the issue, with the numbers behind each verdict."""
    loss_level: dict[str, dict[str, float]] = {}
    for k, records in results.items():
        for rec in records:
            if rec["kind"] == "loss-level" and rec["method"] != EQUAL and not rec["error"]:
                loss_level.setdefault(rec["method"], {})[str(k)] = rec["ratio_to_equal"]
    noise: dict[str, float] = {}
    same = [r for recs in results.values() for r in recs if r["method"] == NOISE_REFERENCE]
    rounds = [v for r in same for v in r["ratio_to_equal_rounds"]]
    if rounds:
        medians = [r["ratio_to_equal"] for r in same]
        noise = {
            "min": min(rounds),
            "max": max(rounds),
            "median_min": min(medians),
            "median_max": max(medians),
        }
    loss_misses = sorted(
        m for m, by_k in loss_level.items() if any(v > LOSS_LEVEL_TARGET for v in by_k.values())
    )
    representation: dict[str, float] = {}
    for rec in results.get(TARGET_K, []):
        if rec["mode"] == "representation" and not rec["error"]:
            representation[rec["method"]] = rec["ratio_to_equal"]
    rep_misses = sorted(m for m, v in representation.items() if v > REPRESENTATION_TARGET)
    speedups = speedups_by_k.get(TARGET_K, {})
    exact_misses = sorted(m for m, v in speedups.items() if not v >= EXACT_SPEEDUP_TARGET)

    def verdict(measured: bool, misses: list[str]) -> str:
        return "not measured" if not measured else ("MISS" if misses else "PASS")

    return {
        "loss_level": {
            "target": f"<= {LOSS_LEVEL_TARGET} x equal at every K",
            "ratios": loss_level,
            "misses": loss_misses,
            "verdict": verdict(bool(loss_level), loss_misses),
            "noise": noise,
        },
        "representation": {
            "target": f"<= {REPRESENTATION_TARGET} x equal at K = {TARGET_K}",
            "ratios": representation,
            "misses": rep_misses,
            "verdict": verdict(bool(representation), rep_misses),
        },
        "exact": {
            "target": f"K backward passes / exact >= {EXACT_SPEEDUP_TARGET} at K = {TARGET_K}",
            "speedups": speedups,
            "speedups_by_k": {str(k): v for k, v in speedups_by_k.items()},
            "misses": exact_misses,
            "verdict": verdict(bool(speedups), exact_misses),
        },
    }


def exact_speedups(cells: list[Cell]) -> dict[str, float]:
    """Per reference method: median over rounds of (K backward passes time / exact mode time)."""
    by_key = {(c.method, c.mode): c for c in cells if c.step is not None}
    out = {}
    for method in REFERENCE_METHODS:
        exact = by_key.get((method, "exact"))
        kback = by_key.get((method, KBACK))
        if exact is not None and kback is not None:
            out[method] = round(median(ratios(kback, exact)), 4)
    return out


def summary_lines(targets: dict[str, Any], ks: list[int]) -> list[str]:
    loss, rep, exact = targets["loss_level"], targets["representation"], targets["exact"]
    lines = ["## Targets", ""]
    lines.append(f"1. Loss-level methods {loss['target']}: **{loss['verdict']}**")
    if loss["ratios"]:
        lines.append("")
        rows = [
            [m, *(_fmt(by_k.get(str(k), math.nan), 2) for k in ks)]
            for m, by_k in sorted(loss["ratios"].items())
        ]
        lines += markdown_table(["method", *(f"K={k}" for k in ks)], rows)
        if loss["misses"]:
            lines += ["", f"   Above {LOSS_LEVEL_TARGET}× at some K: {', '.join(loss['misses'])}."]
        noise = loss.get("noise")
        if noise:
            lines += [
                "",
                f"   Noise: `{NOISE_REFERENCE}` does exactly what `equal` does; its per-round "
                f"ratios ranged {noise['min']:.2f}–{noise['max']:.2f} over all K (medians "
                f"{noise['median_min']:.2f}–{noise['median_max']:.2f}).",
            ]
    lines += ["", f"2. Representation mode {rep['target']}: **{rep['verdict']}**"]
    if rep["ratios"]:
        worst = max(rep["ratios"].items(), key=lambda item: item[1])
        detail = ", ".join(f"{m} {v:.2f}" for m, v in sorted(rep["ratios"].items()))
        lines += ["", f"   × equal at K={TARGET_K}: {detail}; worst {worst[0]} {worst[1]:.2f}."]
        if rep["misses"]:
            lines.append(f"   Misses: {', '.join(rep['misses'])}.")
    lines += ["", f"3. Exact mode: {exact['target']}: **{exact['verdict']}**"]
    if exact["speedups"]:
        detail = ", ".join(f"{m} {v:.2f}×" for m, v in sorted(exact["speedups"].items()))
        lines += ["", f"   K backward passes / exact (same weighting, same rounds): {detail}."]
    by_k = exact["speedups_by_k"]
    methods = sorted({m for v in by_k.values() for m in v})
    if methods:
        lines += ["", "   The same ratio at every K (> 1: exact mode is faster):", ""]
        rows = [[m, *(_fmt(by_k.get(str(k), {}).get(m, math.nan), 2) for k in ks)] for m in methods]
        lines += markdown_table(["weighting", *(f"K={k}" for k in ks)], rows)
    return lines


def git_state() -> str:
    """The commit the run measured, and whether ``src`` had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (src with uncommitted changes)" if dirty else head


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="numbers of tasks")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per K")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per cell")
    parser.add_argument(
        "--round-seconds", type=float, default=0.3, help="time a cell spends per round (>= 1 step)"
    )
    parser.add_argument(
        "--cell-budget", type=float, default=25.0, help="seconds per cell before fewer rounds"
    )
    parser.add_argument("--quick", action="store_true", help="K 2 and 8, 2 rounds; prints only")
    parser.add_argument("--out", default=None, help=f"results folder (default {RESULTS_DIR})")
    args = parser.parse_args()
    ks = [2, TARGET_K] if args.quick else [int(k) for k in args.ks.split(",")]
    rounds = 2 if args.quick else args.rounds
    warmup = 1 if args.quick else args.warmup
    round_seconds = 0.05 if args.quick else args.round_seconds
    out_dir = Path(args.out) if args.out else (None if args.quick else RESULTS_DIR)

    torch.set_num_threads(1)
    info = machine_info()
    info["cpu"] = cpu_model()
    info["commit"] = git_state()
    info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    started = time.perf_counter()
    results: dict[int, list[dict[str, Any]]] = {}
    speedups_by_k: dict[int, dict[str, float]] = {}
    skipped: list[dict[str, str]] = []
    for k in ks:
        print(f"K = {k}", flush=True)
        problem = make_problem(k)
        skipped.clear()
        cells = make_cells(problem, skipped)
        time_cells(cells, rounds, warmup, round_seconds, args.cell_budget)
        measure_memory(cells)
        results[k] = [cell_record(c, cells[0]) for c in cells]
        speedups_by_k[k] = exact_speedups(cells)
        for rec in results[k]:
            print(
                f"  {rec['method']:>12} {rec['mode']:<32} {_fmt(rec['ms_per_step'], 1):>8} ms "
                f"{_fmt(rec['ratio_to_equal'], 2):>6}× {_fmt(rec['peak_mb'], 1):>7} MB",
                flush=True,
            )
        del cells, problem
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    info["wall_time"] = f"{time.perf_counter() - started:.0f} s"
    targets = evaluate_targets(results, speedups_by_k)

    markdown = [
        "# Cost of loss balancing: step time relative to equal weighting",
        "",
        *machine_lines(info),
        f"- cpu: {info['cpu']}",
        f"- commit: {info['commit']}",
        f"- load average (1, 5, 15 min) at start {info['load_average_start']}, "
        f"at end {info['load_average_end']}",
        f"- wall time: {info['wall_time']}",
        "",
        f"Model: polytask hard sharing, MLP trunk {N_FEATURES} → "
        f"{' → '.join(map(str, TRUNK))} (ReLU, no norm, no dropout), one linear head per task; "
        f"K synthetic regression tasks, batch {BATCH}, every label present, AdamW. A step is the "
        "Trainer's: `balancer.forward`, `task_losses`, `zero_grad`, `balancer.backward`, "
        "`optimizer.step` (no clipping). Reference rows implement the same update outside "
        "polytask (see the script's docstring).",
        "",
        f"Timing: 1 torch thread, {warmup} warm-up step(s) per cell, then {rounds} rotating "
        f"round-robin rounds, each cell running about {round_seconds} s (at least 1 step) per "
        f"round; cells whose rounds would exceed {args.cell_budget:.0f} s in total run fewer "
        "rounds (at least 3). ms/step is the median over rounds; × equal is the median over "
        "rounds of the cell's time divided by equal weighting's time in the same round, and its "
        "range the smallest and largest of those per-round ratios; steps is the number of timed "
        "steps. `static` computes exactly what `equal` does, so its distance from 1.00 shows the "
        "measurement noise.",
        "",
        "Peak MB: the second of two extra steps per cell under `torch.profiler` "
        "(`profile_memory=True`; the first makes every free one the profiler saw), the peak of "
        "tensor memory allocated during the step above what was allocated when it began "
        "(activations, autograd graph, Jacobians, gradients, optimiser temporaries; not Python "
        "objects or solver buffers). Parameters and AdamW state (the same for every row) are "
        "not included.",
        "",
        *summary_lines(targets, ks),
    ]
    if skipped:
        markdown += ["", "Not run (the method refuses the mode):", ""]
        markdown += [f"- {s['method']} / {s['mode']}: {s['reason']}" for s in skipped]
    for k, records in results.items():
        markdown += ["", f"## K = {k}", "", *k_table(records)]
    payload: dict[str, Any] = {
        "info": info,
        "settings": {
            "features": N_FEATURES,
            "trunk": TRUNK,
            "batch": BATCH,
            "ks": ks,
            "rounds": rounds,
            "warmup": warmup,
            "round_seconds": round_seconds,
            "cell_budget": args.cell_budget,
            "memory": "torch.profiler profile_memory: peak tensor bytes above step start",
        },
        "targets": targets,
        "skipped": skipped,
        "results": {str(k): v for k, v in results.items()},
    }
    text = "\n".join(markdown) + "\n"
    if out_dir is not None:
        atomic_write_text(out_dir / "balancing_cost.md", text)
        atomic_write_text(
            out_dir / "balancing_cost.json", json.dumps(payload, indent=2, allow_nan=True) + "\n"
        )
    print(text)


if __name__ == "__main__":
    main()
