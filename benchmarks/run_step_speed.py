"""The CPU ratios of issue 18's "speed on the step", measured side by side in one run.

Run it with::

    .venv/bin/python benchmarks/run_step_speed.py            # ~3-5 min on 2 shared cores
    .venv/bin/python benchmarks/run_step_speed.py --quick    # smoke run, prints only

Three measurements:

1. **Equal-weighting step at K = 100 vs K = 2 tasks.** Problem: ``run_balancing_cost``'s main
   shape (polytask's hard-sharing MLP 64 → 512 → 512 → 512, batch 256, K synthetic regression
   tasks, AdamW) with a linear head per task (``heads = "linear"``) and, second, with the
   default head tower of 64 units (``heads = "tower 64"``). Rows: the Trainer's step with the
   ``equal`` balancer (heads batched by ``polytask.models.heads.run_heads``, losses stacked by
   ``polytask.losses.task_losses``); the same model driven one head and one loss call at a
   time (the previous code path: ``{t: head(z)}``, ``TaskLoss`` per task); and a hand-written
   net whose trunk ends in one fused ``K``-wide output (the issue's reference, 1.08× there).
   The ratio is step(K = 100) / step(K = 2) of the same row.
2. **Exact gradient mode vs K backward passes at K = 8**: ``upgrad`` in ``exact`` mode (the
   engine: one batched backward of the K directions, layer-wise Gramian) against
   ``run_balancing_cost``'s LibMTL-style step (K ``autograd.grad`` calls, K × P Jacobian, the
   same weighting), same shape, linear heads.
3. **``polytask --help`` and ``polytask list``**: user + sys CPU seconds of the child process
   (``resource.getrusage(RUSAGE_CHILDREN)``), median of 5 runs; ``list`` twice: as installed
   (in the dev environment the test plug-in ``polytask-example-plugin`` is installed, and
   loading it imports torch and torchmetrics) and with no plug-in (the entry points hidden).
   ``--cli-only`` measures this part alone and rewrites its table in the results file.

Timing of 1 and 2: ``torch.set_num_threads(1)``, warm-up steps, then rounds in which every cell
runs a few steps in rotated order; a cell's time is the median over rounds and a ratio is the
median over rounds of the per-round ratio, so slow drifts of a shared machine cancel.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import REPO_DIR, RESULTS_DIR, machine_info, machine_lines, markdown_table, write_results
from polytask.data.spec import InputSpec
from polytask.models.config import ModelConfig
from polytask.models.model import MultiTaskModel, build_model
from run_balancing_cost import (
    MAIN_SHAPE,
    Batches,
    Problem,
    _optimizer,
    balancer_step,
    k_backward_step,
    make_problem,
)

Step = Callable[[], None]
HEADS = {"linear": [], "tower 64": [64]}
STEP_KS = (2, 100)
STEP_TARGET = 1.3  # step(K = 100) / step(K = 2), equal weighting
EXACT_K = 8
EXACT_TARGET = 1.3  # K backward passes / exact mode at K = 8
CLI_TARGET = 1.0  # CPU seconds


class HeadsProblem(Problem):
    """``run_balancing_cost``'s problem with a chosen head tower."""

    head_widths: list[int]

    def model(self) -> MultiTaskModel:
        cfg = ModelConfig.model_validate(
            {
                "encoder": {
                    "name": "mlp",
                    "widths": list(self.shape.trunk),
                    "norm": "none",
                    "dropout": 0.0,
                },
                "head": {"widths": self.head_widths},
            }
        )
        return build_model(self.tasks, InputSpec(n_numeric=self.shape.features), cfg, seed=0)


def heads_problem(k: int, widths: list[int]) -> HeadsProblem:
    base = make_problem(k, MAIN_SHAPE)
    problem = HeadsProblem(base.shape, base.tasks, base.losses, base.batches)
    problem.head_widths = widths
    return problem


def one_by_one_step(problem: Problem) -> Step:
    """The previous code path: each head called alone, each task's loss computed alone."""
    model, data = problem.model(), Batches(problem)
    optimizer = _optimizer(model)
    heads = model.architecture.heads  # hard sharing

    def step() -> None:
        inputs, targets, masks = data.next()
        z = model.represent(inputs)
        outputs = {n: model._shape(n, head(z)) for n, head in heads.items()}
        losses: dict[str, Tensor] = {}
        for name, loss in problem.losses.items():
            value = loss(outputs[name], targets[name], masks[name])
            if value is not None:
                losses[name] = value
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(losses.values())).sum().backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def fused_step(problem: Problem) -> Step:
    """A hand-written net: the same trunk, one fused ``K``-wide output, one masked MSE."""
    shape, k = problem.shape, len(problem.tasks)
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    width = shape.features
    for w in shape.trunk:
        layers += [nn.Linear(width, w), nn.ReLU()]
        width = w
    net = nn.Sequential(*layers, nn.Linear(width, k))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    names = [t.name for t in problem.tasks]
    pool = [
        (x["numeric"], torch.stack([y[n] for n in names], 1), torch.stack([m[n] for n in names], 1))
        for x, y, m in problem.batches
    ]
    state = {"i": 0}

    def step() -> None:
        x, y, m = pool[state["i"] % len(pool)]
        state["i"] += 1
        units = F.mse_loss(net(x), y, reduction="none") * m
        loss = (units.sum(0) / m.sum(0)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def polytask_step(problem: Problem) -> Step:
    return balancer_step(problem, "equal", {})


def time_rounds(cells: dict[str, Step], rounds: int, seconds: float) -> dict[str, list[float]]:
    """Per-round mean step time of every cell (rotated order, warm-up first)."""
    for step in cells.values():
        for _ in range(2):
            step()
    per_step = {}
    for name, step in cells.items():
        start = time.perf_counter()
        step()
        per_step[name] = max(time.perf_counter() - start, 1e-4)
    times: dict[str, list[float]] = {name: [] for name in cells}
    names = list(cells)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            n = max(1, int(seconds / per_step[name]))
            start = time.perf_counter()
            for _ in range(n):
                cells[name]()
            times[name].append((time.perf_counter() - start) / n)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


def measure_steps(rounds: int, seconds: float, quick: bool) -> list[dict[str, Any]]:
    rows = []
    ks = (2, 10) if quick else STEP_KS
    for label, widths in HEADS.items():
        cells: dict[str, Step] = {}
        for k in ks:
            problem = heads_problem(k, widths)
            cells[f"polytask equal|{k}"] = polytask_step(problem)
            cells[f"one head, one loss at a time|{k}"] = one_by_one_step(problem)
            if widths == []:
                cells[f"fused {k}-wide output (hand-written)|{k}"] = fused_step(problem)
        times = time_rounds(cells, rounds, seconds)
        for variant in ("polytask equal", "one head, one loss at a time", "fused"):
            keys = [c for c in cells if c.startswith(variant)]
            if not keys:
                continue
            lo, hi = keys
            rows.append(
                {
                    "heads": label,
                    "variant": lo.split("|")[0].replace(f"{ks[0]}-wide", "K-wide"),
                    "ms_small": 1e3 * statistics.median(times[lo]),
                    "ms_large": 1e3 * statistics.median(times[hi]),
                    "ratio": ratio(times, hi, lo),
                }
            )
        print(rows[-3:] if widths == [] else rows[-2:], flush=True)
    return rows


def measure_exact(rounds: int, seconds: float, quick: bool) -> dict[str, Any]:
    problem = heads_problem(4 if quick else EXACT_K, [])
    cells = {
        "upgrad exact (polytask engine)": balancer_step(problem, "upgrad", {"mode": "exact"}),
        "upgrad, K backward passes": k_backward_step(problem, "upgrad"),
        "equal": polytask_step(problem),
    }
    times = time_rounds(cells, rounds, seconds)
    result = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    speedup = ratio(times, "upgrad, K backward passes", "upgrad exact (polytask engine)")
    print(result, speedup, flush=True)
    return {"ms": result, "speedup": speedup, "k": len(problem.tasks)}


#: ``polytask list`` with the plug-in entry points hidden (what a plain install runs).
_NO_PLUGINS = (
    "import sys, polytask.plugins as p; p.entry_points = lambda: []; "
    "sys.argv = ['polytask', 'list']; from polytask.cli import main; main()"
)


def cli_cpu(args: list[str], repeats: int) -> float:
    """Median user + sys CPU seconds of ``polytask <args>`` in a child process (``args``
    ``["list", "no plug-ins"]``: the listing with the plug-ins' entry points hidden)."""
    exe = Path(sys.executable).with_name("polytask")
    command = [str(exe), *args]
    if args == ["list", "no plug-ins"]:
        command = [sys.executable, "-c", _NO_PLUGINS]
    values = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, check=True, capture_output=True, cwd=REPO_DIR)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        values.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return statistics.median(values)


def render(
    info: dict[str, Any],
    steps: list[dict[str, Any]],
    exact: dict[str, Any],
    cli: dict[str, float],
    settings: dict[str, Any],
) -> list[str]:
    lines = ["# Speed on the step (issue 18): CPU ratios, one run", ""]
    lines += machine_lines(info)
    lines += [f"- wall time: {info['wall']:.0f} s", ""]
    lines += [
        f"Timing: 1 torch thread, {settings['rounds']} rotated rounds of about "
        f"{settings['seconds']} s per cell after warm-up; ms is the median over rounds, a ratio "
        "the median over rounds of the per-round ratio. Problem: hard-sharing MLP "
        "64 → 512 → 512 → 512, batch 256, K synthetic regression tasks, AdamW (see the "
        "script's docstring).",
        "",
        "## 1. Equal-weighting step, K = 100 vs K = 2",
        "",
    ]
    ks = settings["step_ks"]
    rows = [
        [
            r["heads"],
            r["variant"],
            f"{r['ms_small']:.1f}",
            f"{r['ms_large']:.1f}",
            f"{r['ratio']:.2f}",
        ]
        for r in steps
    ]
    lines += markdown_table(
        ["heads", "variant", f"ms K={ks[0]}", f"ms K={ks[1]}", f"K={ks[1]} / K={ks[0]}"], rows, 2
    )
    ours = {r["heads"]: r["ratio"] for r in steps if r["variant"] == "polytask equal"}
    lines += [
        "",
        f"Target ≤ {STEP_TARGET}× (polytask equal): "
        + ", ".join(
            f"{h} {v:.2f}× **{'PASS' if v <= STEP_TARGET else 'MISS'}**" for h, v in ours.items()
        ),
        "",
        f"## 2. Exact gradient mode vs K backward passes, K = {exact['k']}",
        "",
    ]
    lines += markdown_table(["step", "ms/step"], [[n, f"{v:.1f}"] for n, v in exact["ms"].items()])
    lines += [
        "",
        f"K backward passes / exact = {exact['speedup']:.2f}× (target ≥ {EXACT_TARGET}×: "
        f"**{'PASS' if exact['speedup'] >= EXACT_TARGET else 'MISS'}**). The GPU targets "
        "(≥ 3× at K = 40, faster than torchjd) are measured by `benchmarks/run_gpu.py`.",
        "",
        "## 3. Command line start-up (user + sys CPU seconds, median of 5)",
        "",
    ]
    lines += markdown_table(
        ["command", "CPU s", f"target < {CLI_TARGET} s"],
        [
            [f"`polytask {c}`", f"{v:.2f}", "PASS" if v < CLI_TARGET else "MISS"]
            for c, v in cli.items()
        ],
    )
    return lines


CLI_COMMANDS = ("--help", "list", "list (no plug-ins)")


def measure_cli(repeats: int) -> dict[str, float]:
    return {
        c: cli_cpu(["list", "no plug-ins"] if c == "list (no plug-ins)" else [c], repeats)
        for c in CLI_COMMANDS
    }


def rewrite_cli(out: Path, cli: dict[str, float], repeats: int) -> None:
    """Replace section 3 of ``step_speed.md`` (and ``cli`` in its JSON) by a new measurement,
    dated, leaving sections 1 and 2 as their run measured them."""
    md_path, json_path = out / "step_speed.md", out / "step_speed.json"
    text = md_path.read_text()
    head, rest = text.split("## 3. ", 1)
    tail = rest[rest.index("\n## ") :] if "\n## " in rest else "\n"
    info = machine_info()
    table = markdown_table(
        ["command", "CPU s", f"target < {CLI_TARGET} s"],
        [
            [f"`polytask {c}`", f"{v:.2f}", "PASS" if v < CLI_TARGET else "MISS"]
            for c, v in cli.items()
        ],
    )
    section = [
        f"## 3. Command line start-up (user + sys CPU seconds, median of {repeats})",
        "",
        f"Measured {info['date']} on {info['machine']} ({info['nproc']} cores) with "
        f"`{info['command']}`, separately from sections 1 and 2.",
        "",
        *table,
        "",
    ]
    md_path.write_text(head + "\n".join(section) + tail)
    payload = json.loads(json_path.read_text())
    payload["cli"] = cli
    payload["cli_info"] = info
    json_path.write_text(json.dumps(payload, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.4, help="per cell per round")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, prints only")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--cli-only", action="store_true", help="section 3 alone, rewritten")
    parser.add_argument("--cli-repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rounds, seconds = (2, 0.05) if args.quick else (args.rounds, args.seconds)
    cli = measure_cli(1 if args.quick else args.cli_repeats)
    if args.cli_only:
        print(cli, flush=True)
        if not args.quick:
            rewrite_cli(args.out, cli, args.cli_repeats)
        return
    print(cli, flush=True)
    steps = measure_steps(rounds, seconds, args.quick)
    exact = measure_exact(rounds, seconds, args.quick)
    info = machine_info()
    info["torch_threads"] = 1
    info["wall"] = time.perf_counter() - started
    settings = {"rounds": rounds, "seconds": seconds, "step_ks": (2, 10) if args.quick else STEP_KS}
    lines = render(info, steps, exact, cli, settings)
    if args.quick:
        print("\n".join(lines))
        return
    payload = {"info": info, "settings": settings, "steps": steps, "exact": exact, "cli": cli}
    write_results("step_speed", lines, payload, args.out)


if __name__ == "__main__":
    main()
