"""Reading and preparing a table: ``prepare_data`` against ``pandas.read_csv`` alone.

Writes a synthetic table of ``--rows`` rows (default 1 million) and 50 columns: 40 float
features and 8 categorical ones (4 with a handful of values, one-hot encoded; 4 with hundreds,
embedded), each with about 5% missing cells, plus a binary and a regression target with some
labels missing. The table goes to ``benchmarks/.cache`` as CSV and as Parquet.

Then, each in a fresh child process so that every peak is its own, side by side:

1. ``pandas.read_csv`` of the CSV alone (the reference time);
2. ``prepare_data`` of the CSV (read, split, fit, encode every split);
3. ``prepare_data`` of the Parquet file.

Reported: wall seconds (best of ``--rounds`` interleaved rounds), CPU seconds (the least of
the rounds: on a shared machine the steadier measure of the work), the peak resident memory
above the process's memory after imports (``ru_maxrss`` minus the RSS before the work), the
bytes of the final tensors (every split's inputs, targets and masks), and the ratios the issue
sets targets for: prepare(CSV) / read_csv ≤ 1.5, peak / final tensors ≤ 2, Parquet < CSV.

Usage::

    python benchmarks/run_prepare.py                # 1M rows (writes ~0.5 GB once)
    python benchmarks/run_prepare.py --rows 20000   # smoke (seconds)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common import RESULTS_DIR, machine_info, machine_lines, markdown_table, write_results

CACHE = Path(__file__).resolve().parent / ".cache"
N_NUMERIC = 40
N_SMALL_CATEGORICAL = 4
N_LARGE_CATEGORICAL = 4
MISSING = 0.05


def write_tables(rows: int, seed: int = 0) -> tuple[Path, Path]:
    """The synthetic table as CSV and Parquet under ``.cache`` (written once per size)."""
    CACHE.mkdir(exist_ok=True)
    csv, parquet = CACHE / f"prepare_{rows}.csv", CACHE / f"prepare_{rows}.parquet"
    if csv.is_file() and parquet.is_file():
        return csv, parquet
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    signal = np.zeros(rows)
    for i in range(N_NUMERIC):
        x = rng.normal(loc=i % 5, scale=1.0 + i % 3, size=rows)
        signal += x * ((-1) ** i) / N_NUMERIC
        x[rng.random(rows) < MISSING] = np.nan
        columns[f"num{i}"] = x
    for i in range(N_SMALL_CATEGORICAL + N_LARGE_CATEGORICAL):
        values = 5 if i < N_SMALL_CATEGORICAL else 300
        labels = np.array([f"c{i}_{v}" for v in range(values)], dtype=object)
        cells = labels[rng.integers(0, values, size=rows)]
        cells[rng.random(rows) < MISSING] = None
        columns[f"cat{i}"] = cells
    y_binary = (signal + rng.normal(size=rows) > 0).astype(np.float64)
    y_binary[rng.random(rows) < MISSING] = np.nan
    y_reg = 3.0 * signal + rng.normal(size=rows)
    y_reg[rng.random(rows) < MISSING] = np.nan
    columns["label"] = y_binary
    columns["target"] = y_reg
    frame = pd.DataFrame(columns)
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)
    return csv, parquet


def _config(path: Path) -> Any:
    from polytask.config import config_from_dict

    raw = {
        "seed": 0,
        "data": {"path": str(path)},
        "tasks": [
            {"name": "label", "kind": "binary", "target": "label"},
            {"name": "target", "kind": "regression", "target": "target"},
        ],
    }
    return config_from_dict(raw, base_dir=path.parent)


def _rss_mib() -> float:
    """The current resident memory in MiB (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(job: str, path: str, queue: Any) -> None:
    """One measurement in this fresh process: seconds, peak MiB above the start, tensor MiB."""
    import torch

    torch.set_num_threads(1)
    from polytask.data.prepare import prepare_data

    cfg = _config(Path(path)) if job != "read_csv" else None
    before = _rss_mib()
    cpu = time.process_time()
    started = time.perf_counter()
    final = 0
    if job == "read_csv":
        frame = pd.read_csv(path)
        final = int(frame.memory_usage(deep=False).sum())
    else:
        data = prepare_data(cfg)
        splits = [data.train, data.val] + ([data.test] if data.test is not None else [])
        final = sum(t.numel() * t.element_size() for s in splits for t in s._all())
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(
        {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_mib": peak - before,
            "final_mib": final / 2**20,
            "load_average": os.getloadavg()[0],
        }
    )


def measure(job: str, path: Path) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, str(path), queue))
    proc.start()
    result: dict[str, float] = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    info = machine_info()
    csv, parquet = write_tables(args.rows)
    jobs = {"read_csv": csv, "prepare_csv": csv, "prepare_parquet": parquet}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in jobs}
    for round_ in range(args.rounds):
        for name, path in jobs.items():
            runs[name].append(measure(name, path))
            print(f"round {round_ + 1}: {name}: {runs[name][-1]}", flush=True)
    best = {name: min(r, key=lambda x: x["seconds"]) for name, r in runs.items()}
    cpu = {name: min(x["cpu_seconds"] for x in r) for name, r in runs.items()}
    loads = [x["load_average"] for r in runs.values() for x in r]
    peak = {name: max(x["peak_mib"] for x in r) for name, r in runs.items()}
    final = best["prepare_csv"]["final_mib"]
    time_ratio = best["prepare_csv"]["seconds"] / best["read_csv"]["seconds"]
    parquet_ratio = best["prepare_parquet"]["seconds"] / best["prepare_csv"]["seconds"]
    cpu_ratio = cpu["prepare_csv"] / cpu["read_csv"]
    cpu_parquet = cpu["prepare_parquet"] / cpu["prepare_csv"]
    mem_csv = peak["prepare_csv"] / final
    mem_parquet = peak["prepare_parquet"] / final

    def verdict(ok: bool) -> str:
        return "**PASS**" if ok else "**MISS**"

    rows = [
        [
            name,
            f"{best[name]['seconds']:.2f}",
            f"{cpu[name]:.2f}",
            f"{peak[name]:,.0f}",
            f"{best[name]['final_mib']:,.0f}",
        ]
        for name in jobs
    ]
    md = [
        "# Preparing a table: prepare_data against pandas.read_csv",
        "",
        *machine_lines(info),
        "",
        f"Synthetic table: {args.rows:,} rows × 50 columns ({N_NUMERIC} float, "
        f"{N_SMALL_CATEGORICAL} categorical with 5 values, {N_LARGE_CATEGORICAL} with 300, a "
        f"binary and a regression target), {MISSING:.0%} of cells missing; CSV "
        f"{csv.stat().st_size / 2**20:,.0f} MiB, Parquet {parquet.stat().st_size / 2**20:,.0f} "
        "MiB. Each measurement in a fresh process (1 torch thread); seconds are the best of "
        f"{args.rounds} interleaved rounds, CPU seconds (user + system, one thread: the work "
        "itself, less sensitive than wall seconds to other processes on the machine) the "
        "least of the rounds, peak = `ru_maxrss` minus the RSS after imports (largest of the "
        "rounds); final = bytes of the result (read_csv: the frame; prepare: every split's "
        f"tensors). 1-minute load average during the runs: {min(loads):.1f} to "
        f"{max(loads):.1f} on {os.cpu_count()} cores.",
        "",
        *markdown_table(["job", "seconds", "CPU seconds", "peak MiB", "final MiB"], rows),
        "",
        f"- prepare_data(CSV) / read_csv time: {time_ratio:.2f}x (target ≤ 1.5x: "
        f"{verdict(time_ratio <= 1.5)}); in CPU seconds: {cpu_ratio:.2f}x",
        f"- peak / final tensors, CSV: {mem_csv:.2f}x; Parquet: {mem_parquet:.2f}x (target ≤ 2x: "
        f"{verdict(max(mem_csv, mem_parquet) <= 2.0)})",
        f"- prepare_data(Parquet) / prepare_data(CSV) time: {parquet_ratio:.2f}x (target < 1: "
        f"{verdict(parquet_ratio < 1.0)}); in CPU seconds: {cpu_parquet:.2f}x",
    ]
    data = {
        "info": info,
        "rows": args.rows,
        "runs": runs,
        "time_ratio": time_ratio,
        "cpu_ratio": cpu_ratio,
        "parquet_over_csv_cpu": cpu_parquet,
        "memory_ratio_csv": mem_csv,
        "memory_ratio_parquet": mem_parquet,
        "parquet_over_csv": parquet_ratio,
    }
    stem = "prepare" if args.rows == 1_000_000 else f"prepare_{args.rows}"
    write_results(stem, md, data, args.out)
    print("\n".join(md))


if __name__ == "__main__":
    main()
