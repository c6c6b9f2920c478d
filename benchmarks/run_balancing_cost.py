"""Cost of loss balancing: step time and memory of every balancer relative to equal weighting.

Run it with::

    .venv/bin/python benchmarks/run_balancing_cost.py                  # both sections, ~20-25 min
    .venv/bin/python benchmarks/run_balancing_cost.py --section main   # main section, ~15-20 min
    .venv/bin/python benchmarks/run_balancing_cost.py --section wide   # wide input only, ~2-4 min
    .venv/bin/python benchmarks/run_balancing_cost.py --quick          # smoke run, prints only

Two sections, each with its own date and machine state in the results. A run of one section
reads ``balancing_cost.json``, replaces that section's part and rewrites both result files
(each atomically), so the other section's numbers stay. The JSON keeps the main section at the
top level (``info``, ``settings``, ``targets``, ``skipped``, ``results``) and the wide-input
section under ``wide``.

Main section. Problem: polytask's own hard-sharing model (``build_model``: MLP trunk
64 → 512 → 512 → 512, ReLU, no normalisation, no dropout, a linear head per task) on K
synthetic regression tasks with every label present, batch 256, AdamW. One step is exactly what
the Trainer does::

    outputs = balancer.forward(model, inputs) if balancer.changes_forward else model(inputs)
    losses = task_losses(...)
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

Wide-input section: the shape of a molecular-fingerprint problem like Tox21 (a 2048-bit
fingerprint, 12 assays), where the exact mode's layer-wise Gramian takes its kernel form for
the dense layers (``N²·in + K·N²·out`` instead of ``K·N·in·out`` operations). The same model
builder with input 2048, trunk 512 → 256 (ReLU, no norm, no dropout), linear heads, K = 12
synthetic regression tasks, batch 128. Rows: ``equal``; ``static`` (the noise reference, as
below); mgda and upgrad in exact and representation modes; the same two weightings the LibMTL
way and through torchjd's autojac ``mtl_backward`` (the step builders above, with the shape as
a parameter). Its summary reports K backward passes / exact per weighting; it sets no target.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
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
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError, PolytaskError
from polytask.losses import TaskLoss, task_losses
from polytask.models.config import ModelConfig
from polytask.models.model import MultiTaskModel, build_model
from polytask.state_io import atomic_write_text
from polytask.tasks import Task
from polytask.train.optimizer import StepFusedAdamW

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
#: Wide-input section: the gradient engine modes run for each of ``REFERENCE_METHODS``.
WIDE_MODES = ("exact", "representation")
WIDE_K = 12  # Tox21's 12 assays
SECTIONS = ("all", "main", "wide")
#: Top-level keys of the results JSON that belong to the main section.
MAIN_KEYS = ("info", "settings", "targets", "skipped", "results")

Step = Callable[[], None]


@dataclass(frozen=True)
class Shape:
    """Size of the benchmark problem: input features, trunk widths and batch."""

    features: int
    trunk: tuple[int, ...]
    batch: int

    def describe(self) -> str:
        """``in → w1 → w2 …``, the trunk as the results print it."""
        return " → ".join(map(str, (self.features, *self.trunk)))


MAIN_SHAPE = Shape(features=64, trunk=(512, 512, 512), batch=256)
#: A molecular-fingerprint problem like Tox21: a 2048-bit fingerprint into a 512 → 256 trunk.
WIDE_SHAPE = Shape(features=2048, trunk=(512, 256), batch=128)


@dataclass
class Problem:
    """K regression tasks, their losses and a pool of batches shared (read-only) by all cells."""

    shape: Shape
    tasks: list[Task]
    losses: dict[str, TaskLoss]
    batches: list[tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]]

    def model(self) -> MultiTaskModel:
        cfg = ModelConfig.model_validate(
            {
                "encoder": {
                    "name": "mlp",
                    "widths": list(self.shape.trunk),
                    "norm": "none",
                    "dropout": 0.0,
                },
                "head": {"widths": []},
            }
        )
        return build_model(self.tasks, InputSpec(n_numeric=self.shape.features), cfg, seed=0)


def make_problem(k: int, shape: Shape, seed: int = 0) -> Problem:
    """Related regression tasks: y_k = tanh(x A) b_k + noise, one shared A, every label present.

    The inputs are Gaussian whatever the shape: every layer is dense, so the cost of a step does
    not depend on the values (a binary fingerprint would cost the same)."""
    g = torch.Generator().manual_seed(seed)
    tasks = [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(k)]
    mix = torch.randn(shape.features, 16, generator=g) / math.sqrt(shape.features)
    coef = torch.randn(16, k, generator=g) / 4.0
    batches = []
    for _ in range(POOL):
        x = torch.randn(shape.batch, shape.features, generator=g)
        y = torch.tanh(x @ mix) @ coef + 0.1 * torch.randn(shape.batch, k, generator=g)
        targets = {t.name: y[:, i].contiguous() for i, t in enumerate(tasks)}
        masks = {t.name: torch.ones(shape.batch, dtype=torch.bool) for t in tasks}
        batches.append(({"numeric": x}, targets, masks))
    return Problem(shape, tasks, {t.name: TaskLoss(t) for t in tasks}, batches)


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
    return StepFusedAdamW(groups, lr=LR, weight_decay=WEIGHT_DECAY)


# -- step builders --------------------------------------------------------------------------------
def balancer_step(problem: Problem, name: str, params: dict[str, Any]) -> Step:
    """The Trainer's step with polytask balancer ``name``."""
    model, data = problem.model(), Batches(problem)
    balancer = build_balancer(name, params, problem.tasks)
    balancer.check_model(model)
    optimizer = _optimizer(model, balancer)

    def step() -> None:
        inputs, targets, masks = data.next()
        # As the Trainer: a balancer declaring changes_forward runs the model itself.
        outputs = balancer.forward(model, inputs) if balancer.changes_forward else model(inputs)
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
        # One loss call per task, as torchjd's examples do: mtl_backward frees each task's
        # graph after its pass, so losses stacked by task_losses (one shared graph) would fail.
        losses = {n: problem.losses[n](outputs[n], targets[n], masks[n]) for n in names}
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
AUTOJAC = "torchjd autojac mtl_backward"
REFERENCES: dict[str, Callable[[Problem, str], Step]] = {
    KBACK: k_backward_step,
    AUTOJAC: autojac_step,
    "torchjd autogram (direct)": autogram_step,
}
#: The reference implementations the wide-input section runs.
WIDE_REFERENCES = (KBACK, AUTOJAC)


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
    cells += gradient_cells(problem, gradient, GRADIENT_MODES, skipped)
    return cells + reference_cells(problem, tuple(REFERENCES))


def gradient_cells(
    problem: Problem, names: list[str], modes: Sequence[str], skipped: list[dict[str, str]]
) -> list[Cell]:
    """One cell per gradient-level method and engine mode; a mode the method refuses when its
    balancer is built is recorded in ``skipped`` instead."""
    cells = []
    for name in names:
        for mode in modes:
            try:
                build_balancer(name, {"mode": mode}, problem.tasks)
            except ConfigError as exc:
                skipped.append({"method": name, "mode": mode, "reason": str(exc)})
                continue
            make = partial(balancer_step, problem, name, {"mode": mode})
            cells.append(Cell(name, mode, "gradient-level", make))
    return cells


def reference_cells(problem: Problem, references: tuple[str, ...]) -> list[Cell]:
    """Each of ``REFERENCE_METHODS`` through each of the named reference implementations."""
    cells = []
    for name in REFERENCE_METHODS:
        if name not in BALANCERS:
            continue
        for mode in references:
            make = partial(REFERENCES[mode], problem, name)
            cells.append(Cell(name, mode, "reference", make))
    return cells


def make_wide_cells(problem: Problem, skipped: list[dict[str, str]]) -> list[Cell]:
    """The wide-input section's rows: equal, static (the noise reference), mgda and upgrad in
    ``WIDE_MODES``, then the same two through ``WIDE_REFERENCES``."""
    cells = [
        Cell(EQUAL, "-", "loss-level", partial(balancer_step, problem, EQUAL, {})),
        Cell(
            NOISE_REFERENCE, "-", "loss-level", partial(balancer_step, problem, NOISE_REFERENCE, {})
        ),
    ]
    for name in REFERENCE_METHODS:
        if name not in BALANCERS:
            continue
        cells += gradient_cells(problem, [name], WIDE_MODES, skipped)
    return cells + reference_cells(problem, WIDE_REFERENCES)


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


def exact_speedups(cells: list[Cell], reference: str = KBACK) -> dict[str, float]:
    """Per reference method: median over rounds of (``reference``'s time / exact mode's time)."""
    by_key = {(c.method, c.mode): c for c in cells if c.step is not None}
    out = {}
    for method in REFERENCE_METHODS:
        exact = by_key.get((method, "exact"))
        other = by_key.get((method, reference))
        if exact is not None and other is not None:
            out[method] = round(median(ratios(other, exact)), 4)
    return out


def summary_lines(targets: dict[str, Any], ks: list[int]) -> list[str]:
    loss, rep, exact = targets["loss_level"], targets["representation"], targets["exact"]
    lines = ["### Targets", ""]
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


def gramian_costs(shape: Shape, k: int) -> list[dict[str, Any]]:
    """Per shared dense layer, the multiply-adds of the two Gramian forms ``gramian.py`` chooses
    between (K weight gradients ``K·N·in·out``, kernel form ``N²·in + K·N²·out``), with the
    same rule, so the results say which form the exact mode took for this shape."""
    n, out = shape.batch, []
    for d_in, d_out in pairwise((shape.features, *shape.trunk)):
        weights, kernel = k * n * d_in * d_out, n * n * (d_in + k * d_out)
        out.append(
            {
                "layer": f"{d_in}→{d_out}",
                "weight_gradients": weights,
                "kernel": kernel,
                "form": "kernel" if kernel < weights else "weight gradients",
            }
        )
    return out


# -- sections -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    rounds: int
    warmup: int
    round_seconds: float
    cell_budget: float

    def settings(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "warmup": self.warmup,
            "round_seconds": self.round_seconds,
            "cell_budget": self.cell_budget,
        }


MakeCells = Callable[[Problem, list[dict[str, str]]], list[Cell]]


def start_info() -> dict[str, Any]:
    """Date, machine, software, commit and load when a section starts."""
    info = machine_info()
    info["cpu"] = cpu_model()
    info["commit"] = git_state()
    info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def finish_info(info: dict[str, Any], started: float) -> None:
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    info["wall_time"] = f"{time.perf_counter() - started:.0f} s"


def run_ks(
    ks: list[int],
    shape: Shape,
    make: MakeCells,
    timing: Timing,
    skipped: list[dict[str, str]],
    references: tuple[str, ...],
) -> tuple[dict[int, list[dict[str, Any]]], dict[int, dict[str, dict[str, float]]]]:
    """Time and measure every cell at every K: the records, and per K and per reference
    implementation its time over the exact mode's (``exact_speedups``)."""
    results: dict[int, list[dict[str, Any]]] = {}
    speedups: dict[int, dict[str, dict[str, float]]] = {}
    for k in ks:
        print(f"K = {k}, trunk {shape.describe()}, batch {shape.batch}", flush=True)
        problem = make_problem(k, shape)
        skipped.clear()  # the same methods refuse the same modes at every K
        cells = make(problem, skipped)
        time_cells(cells, timing.rounds, timing.warmup, timing.round_seconds, timing.cell_budget)
        measure_memory(cells)
        results[k] = [cell_record(c, cells[0]) for c in cells]
        speedups[k] = {ref: exact_speedups(cells, ref) for ref in references}
        for rec in results[k]:
            print(
                f"  {rec['method']:>12} {rec['mode']:<32} {_fmt(rec['ms_per_step'], 1):>8} ms "
                f"{_fmt(rec['ratio_to_equal'], 2):>6}× {_fmt(rec['peak_mb'], 1):>7} MB",
                flush=True,
            )
        del cells, problem
    return results, speedups


def run_main(ks: list[int], timing: Timing) -> dict[str, Any]:
    """The main section: every balancer and reference at ``MAIN_SHAPE`` for each K."""
    info, started = start_info(), time.perf_counter()
    skipped: list[dict[str, str]] = []
    results, speedups = run_ks(ks, MAIN_SHAPE, make_cells, timing, skipped, (KBACK,))
    finish_info(info, started)
    speedups_by_k = {k: by_ref[KBACK] for k, by_ref in speedups.items()}
    return {
        "info": info,
        "settings": {
            "features": MAIN_SHAPE.features,
            "trunk": list(MAIN_SHAPE.trunk),
            "batch": MAIN_SHAPE.batch,
            "ks": ks,
            **timing.settings(),
            "memory": "torch.profiler profile_memory: peak tensor bytes above step start",
        },
        "targets": evaluate_targets(results, speedups_by_k),
        "skipped": skipped,
        "results": {str(k): v for k, v in results.items()},
    }


def run_wide(timing: Timing) -> dict[str, Any]:
    """The wide-input section: ``make_wide_cells`` at ``WIDE_SHAPE``, K = ``WIDE_K``."""
    info, started = start_info(), time.perf_counter()
    skipped: list[dict[str, str]] = []
    results, speedups = run_ks(
        [WIDE_K], WIDE_SHAPE, make_wide_cells, timing, skipped, WIDE_REFERENCES
    )
    finish_info(info, started)
    records = results[WIDE_K]
    by_mode: dict[str, dict[str, float]] = {}
    for rec in records:
        if rec["kind"] != "loss-level" and not rec["error"]:
            by_mode.setdefault(rec["mode"], {})[rec["method"]] = rec["ratio_to_equal"]
    return {
        "info": info,
        "settings": {
            "features": WIDE_SHAPE.features,
            "trunk": list(WIDE_SHAPE.trunk),
            "batch": WIDE_SHAPE.batch,
            "k": WIDE_K,
            **timing.settings(),
            "memory": "torch.profiler profile_memory: peak tensor bytes above step start",
        },
        "summary": {
            "kback_over_exact": speedups[WIDE_K][KBACK],
            "autojac_over_exact": speedups[WIDE_K][AUTOJAC],
            "ratio_to_equal": by_mode,
            "gramian_costs": gramian_costs(WIDE_SHAPE, WIDE_K),
        },
        "skipped": skipped,
        "results": records,
    }


# -- results files --------------------------------------------------------------------------------
TITLE = "# Cost of loss balancing: step time relative to equal weighting"


def run_lines(info: dict[str, Any]) -> list[str]:
    """When, where and on what a section ran."""
    return [
        *machine_lines(info),
        f"- cpu: {info['cpu']}",
        f"- commit: {info['commit']}",
        f"- load average (1, 5, 15 min) at start {info['load_average_start']}, "
        f"at end {info['load_average_end']}",
        f"- wall time: {info['wall_time']}",
    ]


def timing_line(settings: dict[str, Any]) -> str:
    return (
        f"Timing settings: {settings['warmup']} warm-up step(s) per cell, {settings['rounds']} "
        f"rounds, each cell running about {settings['round_seconds']} s (at least 1 step) per "
        f"round; cells whose rounds would exceed {settings['cell_budget']:.0f} s in total run "
        "fewer rounds (at least 3)."
    )


def protocol_lines() -> list[str]:
    """How both sections time and measure (their settings are given with each)."""
    return [
        "Two sections, run together or alone (`--section main|wide`); each shows its own date, "
        "commit and machine load. A step is the Trainer's: the forward pass (the balancer's own "
        "where it declares `changes_forward`), `task_losses`, "
        "`zero_grad`, `balancer.backward`, `optimizer.step` (no clipping). Reference rows "
        "implement the same update outside polytask (see the script's docstring).",
        "",
        "Timing: 1 torch thread, warm-up steps per cell, then rotating round-robin rounds, "
        "each cell running a few steps per round. ms/step is the median over rounds; × equal is "
        "the median over rounds of the cell's time divided by equal weighting's time in the same "
        "round, and its range the smallest and largest of those per-round ratios; steps is the "
        "number of timed steps. `static` computes exactly what `equal` does, so its distance "
        "from 1.00 shows the measurement noise.",
        "",
        "Peak MB: the second of two extra steps per cell under `torch.profiler` "
        "(`profile_memory=True`; the first makes every free one the profiler saw), the peak of "
        "tensor memory allocated during the step above what was allocated when it began "
        "(activations, autograd graph, Jacobians, gradients, optimiser temporaries; not Python "
        "objects or solver buffers). Parameters and AdamW state (the same for every row) are "
        "not included.",
    ]


def skipped_lines(skipped: list[dict[str, str]]) -> list[str]:
    if not skipped:
        return []
    lines = ["", "Not run (the method refuses the mode):", ""]
    return lines + [f"- {s['method']} / {s['mode']}: {s['reason']}" for s in skipped]


def main_section_lines(payload: dict[str, Any]) -> list[str]:
    """The main section, from its part of the results JSON."""
    settings = payload["settings"]
    ks = [int(k) for k in settings["ks"]]
    shape = Shape(settings["features"], tuple(settings["trunk"]), settings["batch"])
    lines = [
        f"## Main section: MLP {shape.describe()}, K = {', '.join(map(str, ks))}",
        "",
        *run_lines(payload["info"]),
        "",
        f"Model: polytask hard sharing, MLP trunk {shape.describe()} (ReLU, no norm, no dropout), "
        f"one linear head per task; K synthetic regression tasks, batch {shape.batch}, every "
        "label present, AdamW. Rows: every registered balancer (gradient-level ones in each "
        "mode they accept), and mgda and upgrad through the three reference implementations.",
        "",
        timing_line(settings),
        "",
        *summary_lines(payload["targets"], ks),
        *skipped_lines(payload["skipped"]),
    ]
    for k, records in payload["results"].items():
        lines += ["", f"### K = {k}", "", *k_table(records)]
    return lines


def wide_section_lines(wide: dict[str, Any]) -> list[str]:
    """The wide-input section, from the ``wide`` part of the results JSON."""
    settings, summary = wide["settings"], wide["summary"]
    shape = Shape(settings["features"], tuple(settings["trunk"]), settings["batch"])
    k = settings["k"]
    costs = "; ".join(
        f"{c['layer']}: {c['weight_gradients'] / 1e6:.0f} M (K weight gradients) vs "
        f"{c['kernel'] / 1e6:.0f} M (kernel), {c['form']} form"
        for c in summary["gramian_costs"]
    )
    lines = [
        f"## Wide input: MLP {shape.describe()}, K = {k}, batch {shape.batch}",
        "",
        *run_lines(wide["info"]),
        "",
        "The shape of a molecular-fingerprint problem like Tox21 (a 2048-bit fingerprint, 12 "
        f"assays): polytask hard sharing, MLP trunk {shape.describe()} (ReLU, no norm, no "
        f"dropout), one linear head per task; K = {k} synthetic regression tasks, batch "
        f"{shape.batch}, every label present, AdamW. Rows: equal, static (noise reference), "
        f"mgda and upgrad in {' and '.join(WIDE_MODES)} modes, and the same two weightings "
        "computed the LibMTL way (K backward passes) and with torchjd's autojac `mtl_backward`.",
        "",
        f"Multiply-adds of the exact mode's Gramian per shared dense layer: {costs}.",
        "",
        timing_line(settings),
        "",
    ]
    kback, autojac = summary["kback_over_exact"], summary["autojac_over_exact"]
    if kback:
        detail = ", ".join(f"{m} {v:.2f}×" for m, v in sorted(kback.items()))
        lines.append(
            "**K backward passes / exact** (same weighting, same rounds; > 1: exact mode is "
            f"faster): {detail}."
        )
    else:
        lines.append("K backward passes / exact: not measured (a cell failed).")
    if autojac:
        detail = ", ".join(f"{m} {v:.2f}×" for m, v in sorted(autojac.items()))
        lines += ["", f"torchjd autojac mtl_backward / exact: {detail}."]
    for mode in WIDE_MODES:
        by_method = summary["ratio_to_equal"].get(mode, {})
        if by_method:
            detail = ", ".join(f"{m} {v:.2f}" for m, v in sorted(by_method.items()))
            lines += ["", f"{mode.capitalize()} mode × equal: {detail}."]
    lines += skipped_lines(wide["skipped"])
    return [*lines, "", *k_table(wide["results"])]


def render(payload: dict[str, Any]) -> str:
    """The markdown results file: both sections, whichever of them have run."""
    lines = [TITLE, "", *protocol_lines(), ""]
    if all(key in payload for key in MAIN_KEYS):
        lines += main_section_lines(payload)
    else:
        lines += ["## Main section", "", "Not run yet (`--section main`)."]
    lines.append("")
    if "wide" in payload:
        lines += wide_section_lines(payload["wide"])
    else:
        lines += ["## Wide input", "", "Not run yet (`--section wide`)."]
    return "\n".join(lines) + "\n"


def load_results(path: Path) -> dict[str, Any]:
    """The existing results JSON (empty if there is none); an unreadable one stops the run
    rather than being overwritten with one section."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        message = f"{path}: cannot read the existing results ({exc}); not overwriting"
        raise SystemExit(message) from exc
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a JSON object; not overwriting")
    return data


def merge(
    existing: dict[str, Any], main_part: dict[str, Any] | None, wide_part: dict[str, Any] | None
) -> dict[str, Any]:
    """``existing`` with the sections that ran replaced; the others kept as they were."""
    payload = dict(existing)
    if main_part is not None:
        for key in MAIN_KEYS:
            payload.pop(key, None)
        payload = {**main_part, **payload}  # main keys first, as before the wide section existed
    if wide_part is not None:
        payload["wide"] = wide_part
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--section", choices=SECTIONS, default="all", help="which section(s) to run"
    )
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="numbers of tasks (main)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per K (main)")
    parser.add_argument("--wide-rounds", type=int, default=30, help="timed rounds (wide)")
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
    warmup = 1 if args.quick else args.warmup
    round_seconds = 0.05 if args.quick else args.round_seconds
    main_timing = Timing(2 if args.quick else args.rounds, warmup, round_seconds, args.cell_budget)
    wide_timing = Timing(
        2 if args.quick else args.wide_rounds, warmup, round_seconds, args.cell_budget
    )
    out_dir = Path(args.out) if args.out else (None if args.quick else RESULTS_DIR)
    json_path = out_dir / "balancing_cost.json" if out_dir is not None else None
    if json_path is not None and args.section != "all":
        load_results(json_path)  # fail now, not after the run, if it cannot be merged into

    torch.set_num_threads(1)
    main_part = run_main(ks, main_timing) if args.section in ("all", "main") else None
    wide_part = run_wide(wide_timing) if args.section in ("all", "wide") else None
    # Read again just before writing: another run may have rewritten the file meanwhile.
    existing = {} if json_path is None or args.section == "all" else load_results(json_path)
    payload = merge(existing, main_part, wide_part)
    text = render(payload)
    if out_dir is not None and json_path is not None:
        # Each file is replaced atomically; the JSON first, since the markdown derives from it.
        atomic_write_text(json_path, json.dumps(payload, indent=2, allow_nan=True) + "\n")
        atomic_write_text(out_dir / "balancing_cost.md", text)
    print(text)


if __name__ == "__main__":
    main()
