"""Which balancing methods reach the Pareto front of a two-objective toy with losses on very
different scales, from several starting points (issue 8, benchmark 1).

The problem: the two-objective toy of Liu et al. ("Conflict-Averse Gradient Descent for
Multi-task Learning", CAGrad, NeurIPS 2021) on a 2-D parameter, with the first objective scaled
by 0.1 as Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al., NeurIPS 2023) use it, so the
two losses differ tenfold in scale. FAMO's code shifts the objectives by their lower bounds
(``min_losses = (-21 * 0.1, -21)``); the same shift is applied here for every method, so every
method sees positive losses (log-based methods need them) and the Pareto set is unchanged (a
shift by constants preserves dominance).

Protocol (FAMO's ``experiments/toy``): the five starting points ``(-8.5, 7.5), (0, 0), (9, 9),
(-7.5, -0.5), (9, -1)``; Adam with learning rate 1e-3 on the parameter (a balancer's own
parameters in the same optimiser, as the trainer does); ``--steps`` iterations (FAMO: 50,000;
default here 25,000, after which the trajectories below have stopped moving). Every method
runs through polytask's own balancers (``polytask.balance``): the parameter is a one-layer
"shared network" whose output the two losses read, so the gradient engine builds the Gramian
exactly as for a real model. Methods: every registered balancer that applies to a shared
parameter with no data (DWA and GradNorm need epochs or a representation layer, GradDrop a
representation, COSMOS a conditioned model: left out), Nash-MTL also as its authors' code
runs it (``nash_mtl:previous``: a step without a bargaining solution reuses the previous
weights), plus EPO at the preferences 0.2/0.8,
0.5/0.5 and 0.8/0.2.

The Pareto front is computed numerically: the non-dominated points of the objective on a
3001 × 801 grid of the band ``x1 ∈ [-7.5, 7.5], x2 ∈ [-9.5, -7.5]`` (the Pareto set is near
``x2 = -8.36``), checked against the non-dominated points of a coarse grid over the whole
plane. A trajectory *reaches the front* when its end point lies within 1% of the front's range
(objectives normalised by the front's extent, Euclidean distance to the nearest front point).
For EPO the table also gives ``r1 L1 / (r2 L2)`` at the end (1 on the preference ray; the
losses being the shifted ones).

Two things the protocol adds. A trajectory that has *settled* (its objectives moved less than
1e-5, in units of each objective's scale, over the last 1,000 steps) stops there: Adam at
learning rate 1e-3 would not move its end point measurably in the remaining steps, and the
benchmark fits the session (the table says how many settled, and by which step). A method that
*cannot take a step* (polytask raises, e.g. Nash-MTL's bargaining problem has no solution
where the two gradients point exactly against each other, which is what Pareto stationarity
means for two objectives of a 2-D parameter) ends its trajectory there and the failure is
reported with its step; the authors' code would silently reuse the previous weights. Finished
methods are kept in ``benchmarks/.cache/pareto_toy/``: an interrupted run resumes.

Output: ``benchmarks/results/pareto_toy.md`` / ``.json`` / ``.png`` (one panel per method:
trajectories in objective space over the front).

Wall time (one torch thread per process, idle 2-core machine): per step, equal weights
0.7 ms, FAMO 1.2, Nash-MTL 2.3 (4.1 reusing weights), MGDA 2.9, EPO 3.6, CAGrad 8.2, FairGrad
10.2. All 21 methods from the 5 starts took 3,077 s with ``--workers 2`` (the results file of a
run that reads every method back from the cache shows only that run's wall time), and
``nash_mtl:previous`` 255 s on one worker. ``--quick`` takes ~35 s, most of it the front.

Usage::

    python benchmarks/run_pareto_toy.py                 # all methods, 5 starts, 25,000 steps
    python benchmarks/run_pareto_toy.py --quick         # smoke: 2 starts, 2,000 steps, temp dir
    python benchmarks/run_pareto_toy.py --methods mgda nash_mtl famo epo:0.5
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common import RESULTS_DIR, machine_lines, markdown_table, worker_run_info, write_results
from polytask.balance import build_balancer
from polytask.errors import ConfigError, PolytaskError
from polytask.studies.pareto import non_dominated
from polytask.tasks import Task

SCALE = 0.1  # the first objective's scale (Nash-MTL, FAMO)
SHIFT = (21.0 * SCALE, 21.0)  # FAMO's lower bounds, moved to 0
LOWER = 5e-6
INITS = [(-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0)]
METHODS = [
    "equal", "uncertainty", "imtl_l", "rlw", "gls", "famo", "stch",
    "mgda", "pcgrad", "gradvac", "cagrad", "imtl_g", "nash_mtl", "nash_mtl:previous",
    "aligned_mtl", "upgrad", "dualproj", "fairgrad", "db_mtl", "epo:0.2", "epo:0.5", "epo:0.8",
]  # fmt: skip
TOLERANCE = 0.01
SETTLE, SETTLE_EVERY = 1e-5, 1000  # stationarity test: objective movement per 1,000 steps
RUN_KEYS = ("x_end", "end", "distance", "reached", "seconds", "steps", "settled", "failed")
CACHE_DIR = Path(__file__).resolve().parent / ".cache" / "pareto_toy"
TASKS = [
    Task(name="f1", kind="regression", target="f1"),
    Task(name="f2", kind="regression", target="f2"),
]


def objectives(x: Tensor) -> Tensor:
    """``[..., 2]`` parameters -> ``[..., 2]`` shifted objectives (CAGrad's toy, f1 × 0.1)."""
    x1, x2 = x[..., 0], x[..., 1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    f1 = (f1 * c1 + f1_sq * c2) * SCALE + SHIFT[0]
    f2 = f2 * c1 + f2_sq * c2 + SHIFT[1]
    return torch.stack([f1, f2], dim=-1)


class _Point(nn.Module):
    def __init__(self, x0: tuple[float, float]) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(x0))

    def forward(self) -> Tensor:
        return self.x * 1.0


class ToyModel(nn.Module):
    """The 2-D parameter as a multi-task model: one shared layer, no task-specific parts."""

    single_representation = False

    def __init__(self, x0: tuple[float, float]) -> None:
        super().__init__()
        self.point = _Point(x0)

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        f = objectives(self.point())
        return {"f1": f[0], "f2": f[1]}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [self.point.x]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return []

    def shared_modules(self) -> list[nn.Module]:
        return [self.point]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [self.point.x]


def make_balancer(method: str) -> nn.Module:
    name, _, pref = method.partition(":")
    params: dict[str, Any] = {}
    if name == "epo":
        r = float(pref)
        params = {"preference": [r, 1.0 - r]}
    elif name == "nash_mtl" and pref:
        params = {"on_failure": pref}  # nash_mtl:previous, the authors' behaviour
    return build_balancer(name, params, TASKS)


def trajectory(method: str, x0: tuple[float, float], steps: int, every: int) -> dict[str, Any]:
    """Optimise from ``x0``; the objective values every ``every`` steps and at the end."""
    torch.manual_seed(0)  # RLW draws its weights from the global generator
    model = ToyModel(x0)
    balancer = make_balancer(method)
    balancer.check_model(model)  # type: ignore[arg-type]
    params = [{"params": model.parameters()}]
    own = [p for p in balancer.parameters() if p.requires_grad]
    if own:
        params.append({"params": own})
    optimiser = torch.optim.Adam(params, lr=1e-3)
    path = []
    failed, settled, taken = None, None, steps
    last = objectives(model.point.x).detach()
    started = time.perf_counter()
    for step in range(steps):
        if step % every == 0:
            with torch.no_grad():
                path.append(objectives(model.point.x).tolist())
        if step > 0 and step % SETTLE_EVERY == 0:
            # Stationary: the objectives moved less than SETTLE (in units of each objective's
            # scale) over the last SETTLE_EVERY Adam steps; the rest of the run would not move
            # the end point measurably, so it is skipped (it only saves time).
            now = objectives(model.point.x).detach()
            moved = float(((now - last).abs() / torch.tensor([SCALE, 1.0])).sum())
            if moved < SETTLE:
                settled = taken = step
                break
            last = now
        optimiser.zero_grad(set_to_none=True)
        try:
            losses = balancer.forward(model, {})  # type: ignore[arg-type]
            balancer.backward(losses, model)  # type: ignore[arg-type]
        except PolytaskError as exc:  # a method that cannot take a step: a result, recorded
            failed, taken = str(exc), step
            break
        optimiser.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        end = objectives(model.point.x).tolist()
    path.append(end)
    return {
        "x_end": model.point.x.detach().tolist(),
        "end": end,
        "path": path,
        "seconds": seconds,
        "steps": taken,
        "settled": settled,
        "failed": failed,
    }


def run_method(method: str, inits: list[tuple[float, float]], steps: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    try:
        make_balancer(method)
    except ConfigError as exc:  # e.g. an optional solver missing
        return {"method": method, "skipped": str(exc)}
    every = max(1, steps // 400)
    runs = [trajectory(method, x0, steps, every) for x0 in inits]
    return {"method": method, "runs": runs}


def numerical_front() -> np.ndarray:
    """Non-dominated objective vectors of a dense grid over the band holding the Pareto set."""
    x1 = torch.linspace(-7.5, 7.5, 3001, dtype=torch.float64)
    x2 = torch.linspace(-9.5, -7.5, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(x1, x2, indexing="ij"), dim=-1).reshape(-1, 2)
    values = objectives(grid).numpy()
    front = values[non_dominated(values)]
    # The band holds the whole front: no point of a coarse grid over the plane beats it.
    coarse_axis = torch.linspace(-10, 10, 401, dtype=torch.float64)
    coarse = torch.stack(torch.meshgrid(coarse_axis, coarse_axis, indexing="ij"), dim=-1)
    cvalues = objectives(coarse.reshape(-1, 2)).numpy()
    cfront = cvalues[non_dominated(cvalues)]
    beaten = [bool(np.any(np.all(front <= p + 1e-9, axis=1))) for p in cfront]
    assert all(beaten), "the band misses part of the Pareto front"
    return front[np.argsort(front[:, 0])]


def distance_to_front(point: list[float], front: np.ndarray) -> float:
    span = front.max(axis=0) - front.min(axis=0)
    return float(np.min(np.linalg.norm((front - np.asarray(point)) / span, axis=1)))


def plot(results: list[dict[str, Any]], front: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    shown = [r for r in results if "runs" in r]
    cols = 5
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
    for ax, result in zip(axes, shown, strict=False):
        ax.plot(front[:, 0], front[:, 1], color="#9aa0a6", lw=4, zorder=1)
        for i, run in enumerate(result["runs"]):
            p = np.asarray(run["path"])
            ax.plot(p[:, 0], p[:, 1], color=colours[i], lw=1.1, zorder=2)
            ax.scatter(*p[0], color="black", s=14, zorder=3)
            ax.scatter(
                *p[-1], color=colours[i], marker="*", s=70, zorder=4, edgecolor="black", lw=0.4
            )
        reached = sum(r["reached"] for r in result["runs"])
        ax.set_title(f"{result['method']} ({reached}/{len(result['runs'])} on front)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    fig.supxlabel("L1 = 0.1 · f1 + 2.1", fontsize=9)
    fig.supylabel("L2 = f2 + 21", fontsize=9)
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small and fast")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--steps", type=int, default=25_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    inits = INITS
    if args.quick:
        args.steps, inits = 2000, INITS[:2]
        if args.methods == METHODS:
            args.methods = ["equal", "famo", "mgda", "nash_mtl", "epo:0.5"]
        if args.out == RESULTS_DIR:
            args.out = Path(tempfile.mkdtemp(prefix="polytask-pareto-toy-"))
    started = time.perf_counter()
    front = numerical_front()
    results: dict[str, dict[str, Any]] = {}
    # One file per method and protocol: an interrupted benchmark keeps what it finished.
    cache = (
        args.out / "cache"
        if args.quick
        else CACHE_DIR / f"steps{args.steps}-settle{SETTLE:g}-inits{len(inits)}"
    )
    cache.mkdir(parents=True, exist_ok=True)
    todo = []
    for m in args.methods:
        stored = cache / f"{m.replace(':', '_')}.json"
        if stored.is_file():
            results[m] = json.loads(stored.read_text(encoding="utf-8"))
        else:
            todo.append(m)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_method, m, inits, args.steps) for m in todo]
        for future in as_completed(futures):
            result = future.result()
            results[result["method"]] = result
            stored = cache / f"{result['method'].replace(':', '_')}.json"
            stored.write_text(json.dumps(result), encoding="utf-8")
            print(f"{result['method']}: done", flush=True)
    ordered = [results[m] for m in args.methods]
    for result in ordered:
        for run in result.get("runs", []):
            run["distance"] = distance_to_front(run["end"], front)
            run["reached"] = run["distance"] <= TOLERANCE
    wall = time.perf_counter() - started
    rows = []
    for result in ordered:
        if "skipped" in result:
            rows.append([result["method"], "skipped", "–", "–", "–", result["skipped"]])
            continue
        runs = result["runs"]
        dist = [r["distance"] for r in runs]
        ms = 1000 * sum(r["seconds"] for r in runs) / max(sum(r["steps"] for r in runs), 1)
        notes = []
        if result["method"].startswith("epo:"):
            r1 = float(result["method"].partition(":")[2])
            ratios = [r1 * r["end"][0] / ((1 - r1) * r["end"][1]) for r in runs]
            notes.append("r1 L1 / r2 L2 = " + ", ".join(f"{v:.3g}" for v in ratios))
        failed = [(i, r) for i, r in enumerate(runs) if r["failed"]]
        if failed:
            starts = ", ".join(f"start {i + 1} at step {r['steps']}" for i, r in failed)
            notes.append(f"failed ({starts}): {failed[0][1]['failed']}")
        settled = [r["settled"] for r in runs if r["settled"] is not None]
        if settled:
            notes.append(f"{len(settled)} settled by step {max(settled)}")
        note = "; ".join(notes)
        rows.append(
            [
                result["method"],
                f"{sum(r['reached'] for r in runs)}/{len(runs)}",
                f"{np.median(dist):.3g}",
                f"{max(dist):.3g}",
                f"{ms:.2f}",
                note,
            ]
        )
    info = worker_run_info(args.workers, wall)
    lines = [
        "# Pareto toy: which methods reach the front (two objectives, 10× apart in scale)",
        "",
        *machine_lines(info),
        f"- workers: {args.workers}, wall time: {wall:.0f} s",
        f"- steps: {args.steps}, Adam lr 1e-3, starting points: {inits}",
        f"- reached: end point within {TOLERANCE:g} of the front (objectives normalised by the "
        "front's range); front: non-dominated points of a 3001 × 801 grid of the band holding it",
        "",
        *markdown_table(
            ["method", "reached", "median distance", "max distance", "ms / step", "note"],
            rows,
        ),
        "",
        "![trajectories](pareto_toy.png)",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    plot(ordered, front, args.out / "pareto_toy.png")
    summary = {
        "info": info,
        "steps": args.steps,
        "inits": inits,
        "tolerance": TOLERANCE,
        "results": [
            {
                "method": r["method"],
                **(
                    {"skipped": r["skipped"]}
                    if "skipped" in r
                    else {"runs": [{k: run[k] for k in RUN_KEYS} for run in r["runs"]]}
                ),
            }
            for r in ordered
        ],
    }
    write_results("pareto_toy", lines, summary, args.out)
    print("\n".join(lines))
    print(f"wrote {args.out / 'pareto_toy.md'}")


if __name__ == "__main__":
    main()
