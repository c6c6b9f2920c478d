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
   (``resource.getrusage(RUSAGE_CHILDREN)``), median of 5 interleaved rounds (each round runs
   every command once). ``list`` as installed: in the dev environment the test plug-in
   ``polytask-example-plugin`` is installed, so ``list`` reads the live registries and loads
   the plug-in (which imports torch and torchmetrics); with no plug-in (the entry points
   hidden, as a plain install) ``list`` and ``list --params`` read the committed catalogue
   (``src/polytask/catalog.json``) and import neither torch nor the registries.
   ``--cli-only`` measures this part alone and rewrites its table in the results file.

Timing of 1 and 2: ``torch.set_num_threads(1)``, warm-up steps, then rounds in which every cell
runs a few steps in rotated order; a cell's time is the median over rounds and a ratio is the
median over rounds of the per-round ratio, so slow drifts of a shared machine cancel.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import REPO_DIR, RESULTS_DIR, machine_info, machine_lines, markdown_table, write_results
from polytask.balance import build_balancer
from polytask.data.spec import InputSpec
from polytask.data.tensors import Batch
from polytask.models.config import ModelConfig
from polytask.models.model import MultiTaskModel, build_model
from polytask.train.config import TrainConfig
from polytask.train.record import EpochStats
from polytask.train.trainer import Trainer
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


def fused_towers_step(problem: HeadsProblem) -> Step:
    """The hand-written floor for towers: the same trunk, then every task's tower fused into
    one ``Linear(512, K·H)`` and one batched ``[K, H] → 1`` output (``baddbmm``), one masked
    MSE. The towers' arithmetic (``K·H`` hidden units) is all that grows with K."""
    shape, k, width = problem.shape, len(problem.tasks), problem.head_widths[0]
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    features = shape.features
    for w in shape.trunk:
        layers += [nn.Linear(features, w), nn.ReLU()]
        features = w
    trunk = nn.Sequential(*layers, nn.Linear(features, k * width), nn.ReLU())
    out_w = nn.Parameter(torch.randn(k, width, 1) / width**0.5)
    out_b = nn.Parameter(torch.zeros(k, 1, 1))
    params = [*trunk.parameters(), out_w, out_b]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    names = [t.name for t in problem.tasks]
    pool = [
        (x["numeric"], torch.stack([y[n] for n in names]), torch.stack([m[n] for n in names]))
        for x, y, m in problem.batches
    ]
    state = {"i": 0}

    def step() -> None:
        x, y, m = pool[state["i"] % len(pool)]
        state["i"] += 1
        h = trunk(x).view(x.shape[0], k, width).transpose(0, 1)  # [K, B, H]
        out = torch.baddbmm(out_b, h, out_w).squeeze(-1)  # [K, B]
        units = F.mse_loss(out, y, reduction="none") * m
        loss = (units.sum(1) / m.sum(1)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def polytask_step(problem: Problem) -> Step:
    return balancer_step(problem, "equal", {})


def trainer_step(problem: Problem) -> Step:
    """The ``Trainer``'s own step (``Trainer._step``: no public single-step entry) with the
    ``equal`` balancer and the default ``[train]`` settings: besides forward, losses, backward
    and AdamW, what every step of a run also does (gradient clipping at 1.0, the finiteness
    check, the epoch's running sums)."""
    model = problem.model()
    balancer = build_balancer("equal", {}, problem.tasks)
    trainer = Trainer(model, problem.tasks, balancer, TrainConfig(), quiet=True)
    stats = EpochStats([t.name for t in problem.tasks], ["data"])
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    batches = [Batch(*b) for b in problem.batches]
    state = {"i": 0}

    def step() -> None:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        trainer._step(batch, None, stats, params, 10_000)

    return step


def time_rounds(
    cells: dict[str, Step], rounds: int, seconds: float, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Per-round mean step time of every cell (rotated order, warm-up first); ``cpu``, if
    given, receives the same rounds' CPU time of this thread (``time.thread_time``: time
    other processes take on a shared machine does not count)."""
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
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(n):
                cells[name]()
            times[name].append((time.perf_counter() - start) / n)
            if cpu is not None:
                cpu.setdefault(name, []).append((time.thread_time() - start_cpu) / n)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return statistics.median(a / b for a, b in zip(times[num], times[den], strict=True))


#: Section 1's rows per head shape: (label, step builder, heads it applies to).
STEP_VARIANTS: tuple[tuple[str, Callable[[HeadsProblem], Step], tuple[str, ...]], ...] = (
    ("polytask equal", polytask_step, ("linear", "tower 64")),
    ("polytask Trainer step (equal)", trainer_step, ("linear", "tower 64")),
    ("one head, one loss at a time", one_by_one_step, ("linear", "tower 64")),
    ("fused K-wide output (hand-written)", fused_step, ("linear",)),
    ("fused K towers (hand-written)", fused_towers_step, ("tower 64",)),
)


def measure_steps(rounds: int, seconds: float, quick: bool) -> list[dict[str, Any]]:
    rows = []
    ks = (2, 10) if quick else STEP_KS
    for label, widths in HEADS.items():
        cells: dict[str, Step] = {}
        variants = [(v, build) for v, build, heads in STEP_VARIANTS if label in heads]
        for k in ks:
            problem = heads_problem(k, widths)
            for variant, build in variants:
                cells[f"{variant}|{k}"] = build(problem)
        cpu: dict[str, list[float]] = {}
        times = time_rounds(cells, rounds, seconds, cpu)
        for variant, _ in variants:
            lo, hi = f"{variant}|{ks[0]}", f"{variant}|{ks[1]}"
            rows.append(
                {
                    "heads": label,
                    "variant": variant,
                    "ms_small": 1e3 * statistics.median(times[lo]),
                    "ms_large": 1e3 * statistics.median(times[hi]),
                    "ratio": ratio(times, hi, lo),
                    "cpu_ms_small": 1e3 * statistics.median(cpu[lo]),
                    "cpu_ms_large": 1e3 * statistics.median(cpu[hi]),
                    "cpu_ratio": ratio(cpu, hi, lo),
                }
            )
        print(rows[-len(variants) :], flush=True)
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


#: ``polytask ARGS`` (``python -c _NO_PLUGINS ARGS``) with the plug-ins' entry points hidden:
#: what a plain install runs.
_NO_PLUGINS = (
    "import polytask.plugins as p; p.entry_points = lambda: []; "
    "from polytask.cli import main; main()"
)


def cli_cpu(args: list[str], hide_plugins: bool, cache: Path | None = None) -> float:
    """User + sys CPU seconds of one ``polytask <args>`` in a child process (the console
    script; ``hide_plugins``: the command line with the plug-ins' entry points hidden;
    ``cache``: the folder polytask caches the plug-in listing in)."""
    exe = Path(sys.executable).with_name("polytask")
    command = [sys.executable, "-c", _NO_PLUGINS, *args] if hide_plugins else [str(exe), *args]
    env = {**os.environ, "POLYTASK_CACHE_DIR": str(cache)} if cache is not None else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, capture_output=True, cwd=REPO_DIR, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def render_steps(steps: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """Section 1 of the results file."""
    ks = settings["step_ks"]
    lines = [f"## 1. Equal-weighting step, K = {ks[1]} vs K = {ks[0]}", ""]
    rows = [
        [
            r["heads"],
            r["variant"],
            f"{r['ms_small']:.1f}",
            f"{r['ms_large']:.1f}",
            f"{r['ratio']:.2f}",
            f"{r['cpu_ratio']:.2f}",
        ]
        for r in steps
    ]
    lines += markdown_table(
        [
            "heads",
            "variant",
            f"ms K={ks[0]}",
            f"ms K={ks[1]}",
            f"K={ks[1]} / K={ks[0]}",
            "same, CPU time",
        ],
        rows,
        2,
    )
    lines += [""]
    for variant in ("polytask equal", "polytask Trainer step (equal)"):
        ours = [r for r in steps if r["variant"] == variant]
        lines += [
            f"Target ≤ {STEP_TARGET}× ({variant}): "
            + ", ".join(
                f"{r['heads']} {r['ratio']:.2f}× (CPU time {r['cpu_ratio']:.2f}×) "
                f"**{'PASS' if r['ratio'] <= STEP_TARGET else 'MISS'}**"
                for r in ours
            ),
            "",
        ]
    lines += [
        '"CPU time" is this thread\'s CPU time over the same rounds (`time.thread_time`): on a '
        'shared machine it leaves out the time other processes held the core. "polytask '
        "equal\" is forward, the masked losses, `equal`'s backward and AdamW; the Trainer step "
        "adds what every step of a run does besides (gradient clipping at the default 1.0, the "
        "finiteness check, the epoch's running sums). Each head keeps its own weight and bias "
        "(state-dict names unchanged), so K = 100 linear heads are 200 more parameter tensors "
        "than the hand-written net's one output layer. Their per-tensor costs that no longer "
        "grow with K: the optimiser's bookkeeping (`polytask.train.optimizer.StepFusedAdamW`: "
        "torch's fused AdamW kernel, its lists and step counters kept between steps) and the "
        "batched heads' weight gathering (a native `cat`, no K-input autograd function). What "
        "still does: one gradient accumulation per parameter tensor in the backward pass, the "
        "per-task squeeze of the outputs and, in the Trainer step, gradient clipping's norm "
        "and scaling of each tensor (torch's foreach kernels loop per tensor on the CPU). With "
        "tower heads the towers' arithmetic itself grows: K × 64 hidden units read the "
        "512-wide representation, 6.4 times the trunk's last layer at K = 100, so no step can "
        "stay flat "
        "(the hand-written fused towers are the floor).",
        "",
    ]
    return lines


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
    ]
    lines += render_steps(steps, settings)
    lines += [
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
    lines += ["", CLI_NOTE]
    return lines


#: Under section 3's table: what its rows run.
CLI_NOTE = (
    "`list` as installed here loads the example plug-in `polytask-example-plugin`. The first "
    '`list` after the plug-ins change ("first run": an empty cache folder each round) lists '
    "from the live registries (torch, the registries and the plug-in imported) and caches "
    "the listing under a digest of the installed plug-ins (their versions and the size and "
    'time of each source file, read without importing them); later runs ("cached") read '
    "it. The rows marked (no plug-ins) are a plain install: `list` reads the committed "
    "catalogue `src/polytask/catalog.json` and imports neither torch nor the registries. "
    "typer builds its command line with pydantic, so every row pays that import."
)

#: Row of the table -> (arguments of ``polytask``, whether the plug-ins are hidden, which
#: cache folder: "fresh" (empty each run), "warm" (primed once) or None (not set)).
CLI_COMMANDS: dict[str, tuple[list[str], bool, str | None]] = {
    "--help": (["--help"], False, None),
    "list (plug-in installed, first run)": (["list"], False, "fresh"),
    "list (plug-in installed, cached)": (["list"], False, "warm"),
    "list --params upgrad (plug-in installed, cached)": (
        ["list", "--params", "upgrad"],
        False,
        "warm",
    ),
    "list (no plug-ins)": (["list"], True, None),
    "list --params upgrad (no plug-ins)": (["list", "--params", "upgrad"], True, None),
    "list --json (no plug-ins)": (["list", "--json"], True, None),
}


def measure_cli(repeats: int) -> dict[str, float]:
    """Median CPU seconds of each command over ``repeats`` rounds; every round runs every
    command once, so a slow spell of the shared machine touches all of them alike."""
    values: dict[str, list[float]] = {c: [] for c in CLI_COMMANDS}
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp, "warm")
        cli_cpu(["list"], False, warm)  # primes the cache the "cached" rows read
        for r in range(repeats):
            for c, (args, hide_plugins, cache) in CLI_COMMANDS.items():
                folder = {"warm": warm, "fresh": Path(tmp, f"fresh{r}")}.get(cache or "")
                values[c].append(cli_cpu(args, hide_plugins, folder))
    return {c: statistics.median(v) for c, v in values.items()}


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
        f"## 3. Command line start-up (user + sys CPU seconds, median of {repeats} "
        "interleaved rounds)",
        "",
        f"Measured {info['date']} on {info['machine']} ({info['nproc']} cores) with "
        f"`{info['command']}`, separately from sections 1 and 2.",
        "",
        *table,
        "",
        CLI_NOTE,
        "",
    ]
    md_path.write_text(head + "\n".join(section) + tail)
    payload = json.loads(json_path.read_text())
    payload["cli"] = cli
    payload["cli_info"] = info
    json_path.write_text(json.dumps(payload, indent=2) + "\n")


def rewrite_section(out: Path, number: int, document: list[str], payload: dict[str, Any]) -> None:
    """Replace section ``number`` of ``step_speed.md`` by the same section of ``document``
    (a freshly rendered file) and ``payload``'s keys in its JSON, dated; the other sections
    stay as their runs measured them."""
    md_path, json_path = out / "step_speed.md", out / "step_speed.json"

    def split(text: str) -> tuple[str, str, str]:
        head, rest = text.split(f"## {number}. ", 1)
        cut = rest.find("\n## ")
        body, tail = (rest, "") if cut < 0 else (rest[: cut + 1], rest[cut + 1 :])
        return head, f"## {number}. " + body, tail

    info = machine_info()
    _, fresh, _ = split("\n".join(document) + "\n")
    title, rest = fresh.split("\n", 1)
    note = (
        f"\nMeasured {info['date']} on {info['machine']} ({info['nproc']} cores) with "
        f"`{info['command']}`, separately from the other sections.\n"
    )
    head, _, tail = split(md_path.read_text())
    md_path.write_text(head + title + "\n" + note + rest + tail)
    saved = json.loads(json_path.read_text())
    saved.update(payload)
    saved[f"section_{number}_info"] = info
    json_path.write_text(json.dumps(saved, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.4, help="per cell per round")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, prints only")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--cli-only", action="store_true", help="section 3 alone, rewritten")
    parser.add_argument(
        "--section",
        type=int,
        choices=(1, 2, 3),
        help="measure this section alone and rewrite only its part of the results",
    )
    parser.add_argument("--cli-repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rounds, seconds = (2, 0.05) if args.quick else (args.rounds, args.seconds)
    if args.section == 3:
        args.cli_only = True
    elif args.section is not None:
        settings = {
            "rounds": rounds,
            "seconds": seconds,
            "step_ks": (2, 10) if args.quick else STEP_KS,
        }
        run_section(args.section, args.out, rounds, seconds, args.quick, settings, started)
        return
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


def run_section(
    number: int,
    out: Path,
    rounds: int,
    seconds: float,
    quick: bool,
    settings: dict[str, Any],
    started: float,
) -> None:
    """``--section 1`` or ``2``: measure that section alone, print it (``--quick``) or rewrite
    its part of the results files."""
    steps: list[dict[str, Any]] = []
    exact: dict[str, Any] = {"k": EXACT_K, "ms": {}, "speedup": float("nan")}
    if number == 1:
        steps = measure_steps(rounds, seconds, quick)
        payload: dict[str, Any] = {"steps": steps, "settings": settings}
    else:
        exact = measure_exact(rounds, seconds, quick)
        payload = {"exact": exact}
    info = machine_info()
    info["torch_threads"] = 1
    info["wall"] = time.perf_counter() - started
    document = render(info, steps, exact, {}, settings)
    if quick:
        print("\n".join(document))
        return
    rewrite_section(out, number, document, payload)


if __name__ == "__main__":
    main()
