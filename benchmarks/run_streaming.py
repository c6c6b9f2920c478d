"""Streaming a Parquet table larger than memory: peak memory and rows per second.

Writes a synthetic table (24 float64 features, a binary and a regression target built from
them) in row groups of 262,144 rows, then trains one epoch of a two-task MLP on it:

1. **in memory vs streamed, on a table that fits** (``--fits`` rows, default 2 million): the
   same config with ``data.stream`` false and true, side by side, interleaved over
   ``--rounds`` rounds; rows per second of the training epoch and the ratio;
2. **the large table** (``--rows``, default 20 million, about 4 GB on disk), streamed: peak
   resident memory of the whole run (data preparation, one epoch, validation) and rows per
   second. Target: peak RSS under 2 GiB.

Every run is a fresh child process so that its peak RSS (``ru_maxrss``) is its own.

Usage::

    python benchmarks/run_streaming.py                 # 20M rows (several minutes to write)
    python benchmarks/run_streaming.py --quick         # smoke: 300k / 100k rows
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from common import RESULTS_DIR, machine_lines, markdown_table, worker_run_info, write_results

N_FEATURES = 24
GROUP_ROWS = 262_144
CACHE = Path(__file__).resolve().parent / ".cache"


def write_table(path: Path, rows: int, seed: int = 0) -> float:
    """Write ``rows`` synthetic rows to ``path`` one row group at a time; seconds taken."""
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == rows:
        return 0.0
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    w = rng.normal(size=N_FEATURES) / np.sqrt(N_FEATURES)
    v = rng.normal(size=N_FEATURES) / np.sqrt(N_FEATURES)
    names = [f"x{i}" for i in range(N_FEATURES)]
    tmp = path.with_suffix(".part")
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, rows, GROUP_ROWS):
            n = min(GROUP_ROWS, rows - start)
            x = rng.normal(size=(n, N_FEATURES))
            columns = {name: x[:, i] for i, name in enumerate(names)}
            columns["label"] = ((x @ w + 0.5 * rng.normal(size=n)) > 0).astype(np.int64)
            columns["value"] = np.sin(x @ v) + 0.1 * rng.normal(size=n)
            table = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table, row_group_size=GROUP_ROWS)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    return time.perf_counter() - started


def _config(path: Path, stream: bool, val: float) -> dict[str, Any]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {
            "path": str(path),
            "stream": stream,
            "split": {"method": "random", "val": val, "test": val},
        },
        "tasks": [
            {"name": "label", "kind": "binary", "target": "label"},
            {"name": "value", "kind": "regression", "target": "value"},
        ],
        "model": {"encoder": {"widths": [64, 32], "dropout": 0.0}, "head": {"widths": [16]}},
        "train": {
            "epochs": 1,
            "batch_size": 4096,
            "lr": 3e-3,
            "progress": False,
            "eval_batch_size": 65536,
            "threads": 1,
        },
    }


def _child(raw: dict[str, Any], out: Any) -> None:
    from polytask.config import config_from_dict
    from polytask.run.pipeline import run

    started = time.perf_counter()
    result = run(config_from_dict(raw), quiet=True)
    record = result.fit.history[0]
    out.put(
        {
            "wall_s": time.perf_counter() - started,
            "epoch_s": record.seconds,
            "train_rows": sum(record.sources.values()),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "auroc": result.metrics["label"]["auroc"],
            "r2": result.metrics["value"]["r2"],
        }
    )


def measure(raw: dict[str, Any]) -> dict[str, Any]:
    """Run ``raw`` in a fresh process and return its timings and peak memory."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(raw, queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    result["rows_per_s"] = result["train_rows"] / result["epoch_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--fits", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.fits, args.rounds = 300_000, 100_000, 1
    CACHE.mkdir(exist_ok=True)
    small, large = CACHE / f"stream_{args.fits}.parquet", CACHE / f"stream_{args.rows}.parquet"
    write_s = {"fits": write_table(small, args.fits), "large": write_table(large, args.rows)}
    side: dict[str, list[dict[str, Any]]] = {"in memory": [], "streamed": []}
    for _ in range(args.rounds):
        for label, stream in (("in memory", False), ("streamed", True)):
            side[label].append(measure(_config(small, stream, 0.05)))
            print(label, json.dumps(side[label][-1]), flush=True)
    big = measure(_config(large, True, 0.005))
    print("large", json.dumps(big), flush=True)

    def best(runs: list[dict[str, Any]], key: str) -> float:
        return max(r[key] for r in runs)

    mem_rate, stream_rate = (
        best(side["in memory"], "rows_per_s"),
        best(side["streamed"], "rows_per_s"),
    )
    info = worker_run_info()
    size_gb = large.stat().st_size / 1e9
    rows = [
        [
            label,
            f"{args.fits:,}",
            f"{best(runs, 'rows_per_s'):,.0f}",
            f"{max(r['peak_rss_mib'] for r in runs):,.0f}",
            f"{runs[0]['auroc']:.4f}",
        ]
        for label, runs in side.items()
    ]
    rows.append(
        [
            "streamed (large)",
            f"{args.rows:,}",
            f"{big['rows_per_s']:,.0f}",
            f"{big['peak_rss_mib']:,.0f}",
            f"{big['auroc']:.4f}",
        ]
    )
    target = "PASS" if big["peak_rss_mib"] < 2048 else "MISS"
    md = [
        "# Streaming a Parquet table larger than memory",
        "",
        *machine_lines(info),
        "",
        f"Synthetic table: {N_FEATURES} float64 features, a binary and a regression target; row "
        f"groups of {GROUP_ROWS:,} rows; the large file is {size_gb:.2f} GB on disk. One epoch "
        "of a two-task MLP ([64, 32], towers [16], batch 4096, 1 thread); each run in a fresh "
        "process. Rows/s = training rows / training-epoch seconds (best of "
        f"{args.rounds} interleaved rounds for the side-by-side pair); peak RSS = the whole "
        "run's `ru_maxrss` (reading, fitting, training, validation).",
        "",
        *markdown_table(["path", "rows", "train rows/s", "peak RSS MiB", "test AUROC"], rows),
        "",
        f"- streamed / in-memory throughput on the table that fits: {stream_rate / mem_rate:.2f}x",
        f"- peak RSS of the {args.rows:,}-row run: {big['peak_rss_mib']:,.0f} MiB "
        f"(target < 2048 MiB: **{target}**); wall {big['wall_s']:.0f} s",
    ]
    data = {
        "info": info,
        "write_seconds": write_s,
        "side_by_side": side,
        "large": big,
        "ratio_streamed_over_memory": stream_rate / mem_rate,
    }
    write_results("streaming", md, data, args.out)
    print("\n".join(md))


if __name__ == "__main__":
    main()
