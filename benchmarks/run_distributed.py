"""Data-parallel training (issue 19) on one machine: what 2 processes cost per step, what they
send, and how far the ``local`` Gramian's weights are from the exact ones.

Run it with::

    .venv/bin/python benchmarks/run_distributed.py            # ~3-5 min on 2 shared cores
    .venv/bin/python benchmarks/run_distributed.py --smoke    # tiny sizes, prints only

(``--smoke`` runs tiny sizes, so its numbers mean
nothing; it checks that every path runs.)

The script measures everything twice: once in this process (no ``torchrun``, ``WORLD_SIZE``
unset, so every collective is the identity: the 1-process reference), then under
``python -m torch.distributed.run --nproc-per-node 2`` on loopback (gloo), which starts this same
file with ``--worker OUT.json``; rank 0 writes the workers' numbers there and this process
writes ``benchmarks/results/distributed.{md,json}``. Every process runs one torch thread.

Caveat: 2 processes on a 2-core machine (shared with other jobs) cannot show a speed-up. Each
rank computes half of the global batch, but the step of a small MLP is dominated by fixed
per-layer and per-call costs, and the collectives run over loopback on the same cores. The
ratios below show what data parallelism *costs* (communication and the extra work of the
exact Gramian), not how it scales.

1. **Step time and bytes per step.** Problem: ``run_balancing_cost``'s synthetic regression
   tasks (``y_k = tanh(x A) b_k + noise``, every label present) at K ∈ {8, 40}, on polytask's
   hard-sharing model with a smaller trunk than that benchmark (64 → 256 → 256, ReLU, no
   normalisation, no dropout, a linear head per task), global batch 256, AdamW, trained by
   :class:`polytask.train.trainer.Trainer` (``fit``, one epoch, ``diagnostics`` off, no
   learning-rate schedule) in rows:

   * ``equal (plain data parallel)``: equal weighting; the ranks all-reduce the P gradient
     numbers of the network, as DDP does;
   * ``upgrad exact mode, gramian=exact``: the default for gradient methods; under 2 processes
     each rank takes its K per-task gradients of the shared parameters (K backward passes) and
     one all-reduce sums the K × P matrix;
   * ``upgrad exact mode, gramian=local``: each rank's layer-wise Gramian (one batched
     backward, as in 1 process), K² numbers all-reduced, then the weighted gradient (P);
   * ``upgrad representation mode``: the Gramian of the K gradients at the shared
     representation (K² numbers), then the weighted gradient (P).

   Timing: a callback records ``time.perf_counter()`` and the process group's
   ``bytes_reduced`` at the trainer's ``before_step`` and ``after_step`` hooks, so a step is
   the forward pass, the losses (with their all-reduce), the balancer's backward, the gradient
   all-reduce, clipping and ``optimizer.step()`` (not the batch draw, not validation). On rank
   0; the collectives keep the ranks in step. Each cell (K, row) trains a fresh model (same
   seed) for ``--steps`` steps; the first ``--warmup`` are dropped and the cell's time in a
   round is the median of the rest. Cells run in rounds, the order rotated each round; a
   cell's ms/step is the median over rounds, its ratio to equal the median over rounds of the
   per-round ratio (same K, same number of processes). 2-process / 1-process is the ratio of
   the two medians (different phases of the run, so noisier). Bytes per step are divided by
   4·P, P the shared parameter count: plain data parallelism moves about P floats (plus the
   heads), the exact Gramian mode about K·P.

2. **The local Gramian's weight error.** For a per-rank batch of b rows (global 2b) and 20
   random global batches, each rank computes its share of every task's mean loss (its own
   mean over b rows / W, what ``polytask.train.parallel.global_losses`` gives when every label
   is present) and the K × P Jacobian ``J_r`` of the shares over the shared parameters
   (``task_jacobian``, no collective). Exact: ``G = (Σ_r J_r)(Σ_r J_r)ᵀ``; local:
   ``W · Σ_r J_r J_rᵀ`` (the engine's ``_reduced``: each rank's Gramian rescaled to the whole
   loss and averaged). Both go through the same UPGrad weighting (the balancer's ``method``);
   reported: ``‖w_local − w_exact‖ / ‖w_exact‖``, mean and max over the batches, the
   Gramian's relative Frobenius error and the relative error of the update
   ``Jᵀ w`` (J the global Jacobian). The model is the freshly initialised one of section 1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from common import (
    RESULTS_DIR,
    load_average,
    machine_info,
    machine_lines,
    markdown_table,
    write_results,
)
from polytask.balance import GradientBalancer, build_balancer
from polytask.balance.diagnostics import task_jacobian
from polytask.data.tensors import Batch, TensorData
from polytask.distributed import Collective, DistributedConfig, launched
from polytask.losses import TaskLoss
from polytask.tasks import Task
from polytask.train.callbacks.base import TrainerCallback
from polytask.train.config import TrainConfig
from polytask.train.trainer import Trainer
from run_balancing_cost import Problem, Shape

SHAPE = Shape(features=64, trunk=(256, 256), batch=256)
#: label -> (balancer, its parameters, ``distributed.gramian``)
ROWS: dict[str, tuple[str, dict[str, Any], str]] = {
    "equal (plain data parallel)": ("equal", {}, "exact"),
    "upgrad exact mode, gramian=exact": ("upgrad", {"mode": "exact"}, "exact"),
    "upgrad exact mode, gramian=local": ("upgrad", {"mode": "exact"}, "local"),
    "upgrad representation mode": ("upgrad", {"mode": "representation"}, "exact"),
}
EQUAL = "equal (plain data parallel)"
NPROC = 2

FULL = {
    "ks": [8, 40],
    "steps": 16,
    "warmup": 3,
    "rounds": 4,
    "val_rows": 64,
    "local_batches": [4, 16, 64, 256],
    "local_draws": 20,
    "local_ks": [8, 40],
}
SMOKE = {
    "ks": [2],
    "steps": 4,
    "warmup": 1,
    "rounds": 1,
    "val_rows": 16,
    "local_batches": [4],
    "local_draws": 3,
    "local_ks": [2],
}


# -- the problem -------------------------------------------------------------------------------
def make_tasks(k: int) -> list[Task]:
    return [Task(name=f"t{i}", kind="regression", target=f"y{i}") for i in range(k)]


def model_problem(k: int) -> Problem:
    """``run_balancing_cost``'s model builder on :data:`SHAPE` (no batches: only ``model()``)."""
    tasks = make_tasks(k)
    return Problem(SHAPE, tasks, {t.name: TaskLoss(t) for t in tasks}, [])


def make_rows(k: int, rows: int, seed: int) -> TensorData:
    """``run_balancing_cost.make_problem``'s tasks as one table: y_k = tanh(x A) b_k + noise."""
    g = torch.Generator().manual_seed(seed)
    features = SHAPE.features
    mix = torch.randn(features, 16, generator=g) / features**0.5
    coef = torch.randn(16, k, generator=g) / 4.0
    x = torch.randn(rows, features, generator=g)
    y = torch.tanh(x @ mix) @ coef + 0.1 * torch.randn(rows, k, generator=g)
    names = [f"t{i}" for i in range(k)]
    return TensorData(
        {"numeric": x},
        {n: y[:, i].contiguous() for i, n in enumerate(names)},
        {n: torch.ones(rows, dtype=torch.bool) for n in names},
    )


# -- 1. step time and bytes --------------------------------------------------------------------
class StepMeter(TrainerCallback):
    """Seconds and bytes all-reduced of every step, from ``before_step`` to ``after_step``."""

    def __init__(self, group: Collective) -> None:
        self.group = group
        self.seconds: list[float] = []
        self.bytes: list[int] = []
        self._start = 0.0
        self._bytes = 0

    def before_step(self, trainer: Any, batch: Batch) -> None:
        self._bytes = self.group.bytes_reduced
        self._start = time.perf_counter()

    def after_step(self, trainer: Any, losses: Any, result: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.bytes.append(self.group.bytes_reduced - self._bytes)


def run_cell(
    group: Collective, k: int, row: str, data: dict[str, TensorData], settings: dict[str, Any]
) -> tuple[float, float]:
    """One fresh model trained ``steps`` steps: (median step seconds, mean bytes per step)."""
    name, params, gramian = ROWS[row]
    tasks = make_tasks(k)
    model = model_problem(k).model()
    balancer = build_balancer(name, dict(params), tasks)
    group.settings = DistributedConfig(gramian=gramian)  # type: ignore[arg-type]
    config = TrainConfig(
        epochs=1,
        batch_size=SHAPE.batch,
        scheduler="none",
        patience=None,
        progress=False,
        threads=1,
        device="cpu",
        diagnostics=False,
    )
    meter = StepMeter(group)
    trainer = Trainer(model, tasks, balancer, config, seed=0, callbacks=[meter], quiet=True)
    trainer.fit(data["train"], data["val"])
    warm = settings["warmup"]
    return statistics.median(meter.seconds[warm:]), statistics.fmean(meter.bytes[warm:])


def measure_steps(group: Collective, settings: dict[str, Any]) -> dict[str, Any]:
    steps = settings["steps"]
    data = {
        k: {
            "train": make_rows(k, steps * SHAPE.batch, seed=k),
            "val": make_rows(k, settings["val_rows"], seed=1000 + k),
        }
        for k in settings["ks"]
    }
    cells = [(k, row) for k in settings["ks"] for row in ROWS]
    times: dict[str, list[float]] = {f"{k}|{r}": [] for k, r in cells}
    sent: dict[str, float] = {}
    for r in range(settings["rounds"]):
        order = cells[r % len(cells) :] + cells[: r % len(cells)]
        for k, row in order:
            seconds, nbytes = run_cell(group, k, row, data[k], settings)
            times[f"{k}|{row}"].append(seconds)
            sent[f"{k}|{row}"] = nbytes
        if group.writes:
            print(f"[{group.world_size} process(es)] round {r + 1} done", flush=True)
    group.settings = DistributedConfig()
    out: dict[str, Any] = {}
    for k in settings["ks"]:
        shared = sum(p.numel() for p in model_problem(k).model().shared_parameters())
        rows = {}
        for row in ROWS:
            key, base = f"{k}|{row}", f"{k}|{EQUAL}"
            rows[row] = {
                "ms": 1e3 * statistics.median(times[key]),
                "ms_rounds": [1e3 * t for t in times[key]],
                "vs_equal": statistics.median(
                    a / b for a, b in zip(times[key], times[base], strict=True)
                ),
                "bytes_per_step": sent[key],
                "bytes_over_4P": sent[key] / (4 * shared),
            }
        out[str(k)] = {"shared_parameters": shared, "rows": rows}
    return out


# -- 2. the local Gramian's weight error -------------------------------------------------------
def local_error(
    group: Collective, k: int, per_rank: int, draws: int, seed: int
) -> dict[str, float]:
    """UPGrad's weights from the local Gramian against the exact one (module docstring, 2)."""
    world = group.world_size
    tasks = make_tasks(k)
    model = model_problem(k).model()
    balancer = build_balancer("upgrad", {}, tasks)
    assert isinstance(balancer, GradientBalancer)
    losses = {t.name: TaskLoss(t) for t in tasks}
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    idx = list(range(k))
    weight_errors, gramian_errors, update_errors = [], [], []
    for d in range(draws):
        # Every rank draws the same global batch and keeps its share of the rows.
        batch = make_rows(k, world * per_rank, seed=seed + 7919 * d)
        start, stop = group.share(len(batch))
        mine = batch.slice(start, stop)
        outputs = model(mine.inputs)
        shares = []
        for name, loss in losses.items():
            value = loss(outputs[name], mine.targets[name], mine.masks[name])
            assert value is not None
            shares.append(value * ((stop - start) / len(batch)))
        local_jacobian = task_jacobian(shares, shared).double()
        jacobian = local_jacobian.clone()
        own = local_jacobian @ local_jacobian.T
        values = torch.stack([s.detach().double() for s in shares])
        group.sum_([jacobian, own, values])
        exact = jacobian @ jacobian.T
        local = own * world
        w_exact = _weights(balancer, exact, values, idx)
        w_local = _weights(balancer, local, values, idx)
        weight_errors.append(float((w_local - w_exact).norm() / w_exact.norm()))
        gramian_errors.append(float((local - exact).norm() / exact.norm()))
        u_exact, u_local = w_exact @ jacobian, w_local @ jacobian
        update_errors.append(float((u_local - u_exact).norm() / u_exact.norm()))
    return {
        "weight_error_mean": statistics.fmean(weight_errors),
        "weight_error_max": max(weight_errors),
        "gramian_error_mean": statistics.fmean(gramian_errors),
        "update_error_mean": statistics.fmean(update_errors),
        "update_error_max": max(update_errors),
    }


def _weights(balancer: GradientBalancer, gramian: Tensor, losses: Tensor, idx: list[int]) -> Tensor:
    found = balancer.method(gramian, losses.float(), idx)
    return torch.as_tensor(found).detach().double()


def measure_local(group: Collective, settings: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in settings["local_ks"]:
        out[str(k)] = {}
        for b in settings["local_batches"]:
            out[str(k)][str(b)] = local_error(group, k, b, settings["local_draws"], seed=50 + k)
            if group.writes:
                print(f"local error K={k} b={b}: {out[str(k)][str(b)]}", flush=True)
    return out


# -- the worker and the launcher ---------------------------------------------------------------
def worker(settings: dict[str, Any]) -> dict[str, Any]:
    """Every measurement in this process group (one process without ``torchrun``)."""
    torch.set_num_threads(1)
    with launched("cpu", DistributedConfig()) as group:
        previous = group.settings
        try:
            result: dict[str, Any] = {
                "world_size": group.world_size,
                "steps": measure_steps(group, settings),
            }
            if group.active:
                result["local"] = measure_local(group, settings)
        finally:
            group.settings = previous
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(flags: list[str], out: Path) -> subprocess.Popen[str]:
    """Start this script's worker under ``torchrun`` with :data:`NPROC` processes on
    loopback (:func:`finish` waits for it)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(NPROC),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(Path(__file__).resolve()),
        "--worker",
        str(out),
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(process: subprocess.Popen[str], out: Path, timeout: float) -> dict[str, Any]:
    """The workers' results, once ``torchrun`` ended; its output is passed on."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise SystemExit(f"torchrun took more than {timeout:.0f} s") from None
    print(stdout, end="", flush=True)
    if process.returncode != 0:
        sys.stderr.write(stderr[-4000:])
        raise SystemExit(f"torchrun failed with exit status {process.returncode}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


# -- the results -------------------------------------------------------------------------------
def render(
    info: dict[str, Any],
    settings: dict[str, Any],
    single: dict[str, Any],
    double: dict[str, Any],
) -> list[str]:
    lines = ["# Data-parallel training on one machine (issue 19)", ""]
    lines += machine_lines(info)
    load = info["load_average"]
    lines += [
        f"- load average (1 min) at start {load['start']}, at end {load['end']}",
        f"- wall time: {info['wall_seconds']:.0f} s",
        "",
    ]
    lines += [
        f"**Caveat: {NPROC} processes on a {info['nproc']}-core machine shared with other jobs "
        "cannot show a speed-up.** The ratios show what data parallelism costs (communication "
        "over loopback, the exact Gramian's extra work), not how it scales.",
        "",
        f"Problem: hard-sharing MLP {SHAPE.describe()} (ReLU, no norm, no dropout), a linear "
        f"head per task, K synthetic regression tasks, global batch {SHAPE.batch} "
        f"({SHAPE.batch // NPROC} rows per rank under {NPROC} processes), AdamW, the "
        f"Trainer's `fit`. One torch thread per process; gloo on loopback. Step = forward, "
        "losses, balancer backward, all-reduces, clipping and `optimizer.step()` on rank 0 "
        f"(trainer hooks `before_step` → `after_step`); {settings['steps']} steps per cell, "
        f"the first {settings['warmup']} dropped, median of the rest; {settings['rounds']} "
        "rotated rounds, ms = median over rounds, ratio to equal = median over rounds of the "
        "per-round ratio. P = shared parameters; bytes are those all-reduced by "
        "`ProcessGroup.sum_` (the process group's `bytes_reduced`).",
        "",
        "## What this says",
        "",
        *summary(info, single, double),
        "",
        "## 1. Step time and communication per step",
        "",
    ]
    header = [
        "K",
        "row",
        "ms 1 proc",
        "ms 2 proc",
        "× equal (1 proc)",
        "× equal (2 proc)",
        "2 proc / 1 proc",
        "bytes / step",
        "bytes / 4P",
    ]
    rows = []
    for k, cell in double["steps"].items():
        for row, two in cell["rows"].items():
            one = single["steps"][k]["rows"][row]
            rows.append(
                [
                    k,
                    row,
                    f"{one['ms']:.1f}",
                    f"{two['ms']:.1f}",
                    f"{one['vs_equal']:.2f}",
                    f"{two['vs_equal']:.2f}",
                    f"{two['ms'] / one['ms']:.2f}",
                    f"{two['bytes_per_step'] / 2**20:.2f} MiB",
                    f"{two['bytes_over_4P']:.2f}",
                ]
            )
    lines += markdown_table(header, rows, 2)
    shared = ", ".join(
        f"K = {k}: P = {c['shared_parameters']:,}" for k, c in double["steps"].items()
    )
    lines += [
        "",
        f"Shared parameters: {shared}. In 1 process the two `upgrad exact mode` rows run the "
        "same computation (the `gramian` setting only matters under torchrun): their "
        "difference is the measurement noise.",
        "",
    ]
    if "local" in double:
        lines += [
            "## 2. The local Gramian's weight error against exact (UPGrad)",
            "",
            f"{settings['local_draws']} random global batches per cell, {NPROC} ranks, the "
            "freshly initialised model; error = ‖w_local − w_exact‖ / ‖w_exact‖; the update is "
            "Jᵀw with J the global Jacobian of the shared parameters.",
            "",
        ]
        rows = []
        for k, per_b in double["local"].items():
            for b, e in per_b.items():
                rows.append(
                    [
                        k,
                        b,
                        str(NPROC * int(b)),
                        f"{e['weight_error_mean']:.4f}",
                        f"{e['weight_error_max']:.4f}",
                        f"{e['gramian_error_mean']:.4f}",
                        f"{e['update_error_mean']:.4f}",
                        f"{e['update_error_max']:.4f}",
                    ]
                )
        lines += markdown_table(
            [
                "K",
                "rows per rank",
                "global batch",
                "weight error mean",
                "weight error max",
                "Gramian error mean",
                "update error mean",
                "update error max",
            ],
            rows,
            0,
        )
        lines.append("")
    return lines


def summary(info: dict[str, Any], single: dict[str, Any], double: dict[str, Any]) -> list[str]:
    """The conclusions, one paragraph each, with this run's numbers."""
    ks = list(double["steps"])
    big = ks[-1]
    two, one = double["steps"][big]["rows"], single["steps"][big]["rows"]
    exact, local = "upgrad exact mode, gramian=exact", "upgrad exact mode, gramian=local"
    rep = "upgrad representation mode"

    def sent(row: str) -> str:
        return " and ".join(f"{double['steps'][k]['rows'][row]['bytes_over_4P']:.2f}" for k in ks)

    def scaling(k: str) -> str:
        ms = double["steps"][k]["rows"][EQUAL]["ms"] / single["steps"][k]["rows"][EQUAL]["ms"]
        return f"{ms:.2f} at K = {k}"

    paragraphs = [
        f"Communication per step, in units of 4P bytes, at K = {' and '.join(ks)}: plain data "
        f"parallelism (equal) {sent(EQUAL)} (the shared gradients plus the heads'), the exact "
        f"Gramian mode {sent(exact)} (the K × P per-task gradients, ≈ K·P floats), the local "
        f"Gramian mode {sent(local)} and representation mode {sent(rep)} (P floats plus K² "
        "numbers).",
        f"Cost under 2 processes at K = {big}: the exact Gramian mode's step is "
        f"{two[exact]['vs_equal']:.1f}× equal's and {two[exact]['ms'] / two[local]['ms']:.1f}× "
        f"the local mode's ({two[exact]['ms']:.0f} vs {two[local]['ms']:.0f} ms): each rank "
        "forms its K full per-parameter gradients (`task_jacobian`, one vectorised backward) "
        "and sends K·P floats, where the local mode's layer-wise Gramian never forms them. "
        f"Representation mode costs {two[rep]['vs_equal']:.1f}× equal. In 1 process the exact "
        f"mode costs {one[exact]['vs_equal']:.1f}× equal at K = {big} (layer-wise Gramian and "
        "UPGrad's solver).",
        f"No speed-up, as the caveat says ({info['nproc']} cores, load average "
        f"{info['load_average']['start']} at the start): 2-process / 1-process step time of "
        f"equal weighting is {', '.join(scaling(k) for k in ks)}.",
    ]
    if "local" in double:
        parts = []
        for k, per_b in double["local"].items():
            bs = list(per_b)
            lo, hi = per_b[bs[0]], per_b[bs[-1]]
            parts.append(
                f"at K = {k} by {100 * lo['weight_error_mean']:.1f}% on average (max "
                f"{100 * lo['weight_error_max']:.1f}%) with {bs[0]} rows per rank and "
                f"{100 * hi['weight_error_mean']:.1f}% (max {100 * hi['weight_error_max']:.1f}%)"
                f" with {bs[-1]}, while the Gramian itself is off by "
                f"{100 * lo['gramian_error_mean']:.0f}% and {100 * hi['gramian_error_mean']:.0f}%"
            )
        paragraphs.append(
            "The local Gramian misses the cross-rank terms (its difference from the exact one "
            "is (J₁ − J₂)(J₁ − J₂)ᵀ, the ranks' gradient noise), so its error falls as the "
            "per-rank batch grows. Its UPGrad weights differ from the exact ones: "
            + "; ".join(parts)
            + ". The weights are much less sensitive than the Gramian; measured at "
            "initialisation only."
        )
    return [line for p in paragraphs for line in (p, "")][:-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, prints only")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    settings = SMOKE if args.smoke else FULL
    if args.worker is not None:  # under torchrun: measure, rank 0 writes
        result = worker(settings)
        if int(os.environ.get("RANK", "0")) == 0:
            args.worker.write_text(json.dumps(result), encoding="utf-8")
        return
    started = time.perf_counter()
    load_start = load_average()
    os.environ.pop("WORLD_SIZE", None)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker.json"
        if args.smoke:
            # Its numbers mean nothing (tiny sizes); one after the other, as the full run, so
            # the 2 processes do not compete with this one for the cores.
            single = worker(settings)
            process = launch(["--smoke"], out)
        else:
            print("1 process ...", flush=True)
            single = worker(settings)
            print(f"{NPROC} processes (torchrun) ...", flush=True)
            process = launch([], out)
        double = finish(process, out, timeout=1800)
    info = machine_info()
    info["torch_threads"] = 1
    info["processes"] = NPROC
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    info["load_average"] = {"start": round(load_start, 2), "end": round(load_average(), 2)}
    lines = render(info, settings, single, double)
    if args.smoke:
        print("\n".join(lines))
        return
    payload = {
        "info": info,
        "settings": {**settings, "shape": SHAPE.describe(), "batch": SHAPE.batch, "nproc": NPROC},
        "one_process": single,
        "two_processes": double,
    }
    write_results("distributed", lines, payload, args.out)


if __name__ == "__main__":
    main()
