"""Prediction speed: one-row latency (fast path vs pandas path vs the network alone) and batch
prediction (rows/s, peak memory) of ``polytask predict`` in chunks.

    python benchmarks/run_predict.py --rows 10000000

A model is trained for one epoch on Census-Income (``../shared/data`` or ``POLYTASK_DATA``; a
generated table of the same shape when absent): 41 features (7 numeric, 34 categorical, of
which 22 one-hot and 12 embedded at the example's settings), two binary tasks, the example's
MLP. Latency is the median of many calls on one torch thread, the paths timed in turn within
each round (the network alone, then each prediction path, then the next round), so that a
change of load on a shared machine reaches every path alike and each call finds the caches as
a server's call does, after other work; the slow pandas path is timed on its own, fewer
times. Each call is timed twice: by the wall clock and by the thread's CPU time
(``time.thread_time``), which leaves out the time other processes held the CPU: on a shared
machine a call of a millisecond or two is often preempted for a whole time slice, so wall-clock
medians there measure the load, not the code.

The batch table is written as Parquet by resampling Census rows (one table per ``--rows``
value), and ``polytask predict`` runs on it in a subprocess with one torch and one OpenMP
thread (``OMP_NUM_THREADS=1``: the issue's "one core"), whose CPU time is read from
``os.wait4`` and whose peak RSS is its own ``VmHWM`` (``/proc/self/status``, written at exit).
Not ``ru_maxrss``: Linux carries the high-water mark of the process that forked the child
across ``exec`` into it, so a child of this benchmark (which holds the Census frame and a
model, ~1.5 GiB) reported ~1.5 GiB whatever it used itself. Rows per CPU-second is
the throughput the code gives one core; rows per wall-second also counts the load. Results go
to ``benchmarks/results/predict.md`` and ``.json``; with ``--skip-batch`` the batch results
already in ``predict.json`` are kept (with the date and command of their run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import polytask
from common import RESULTS_DIR, machine_info
from polytask.data.datasets.census import load_census
from polytask.data.datasets.root import resolve_data_root
from polytask.evaluate.evaluation import predict_outputs
from polytask.tasks import Task


def census_frame() -> tuple[pd.DataFrame, str]:
    try:
        return load_census(resolve_data_root()), "Census-Income (KDD), 99,762 rows"
    except Exception:
        rng = np.random.default_rng(0)
        n = 20_000
        frame = pd.DataFrame({f"n{i}": rng.normal(size=n) for i in range(7)})
        for i in range(34):
            frame[f"c{i}"] = rng.integers(0, 3 + 2 * i, n).astype(str)
        frame["income_50k"] = rng.integers(0, 2, n)
        frame["never_married"] = rng.integers(0, 2, n)
        return frame, "generated Census-shaped table (7 numeric, 34 categorical columns)"


def median_ms(call: Callable[[], object], repeats: int) -> float:
    for _ in range(10):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def interleaved_ms(
    calls: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    """The median wall-clock and thread-CPU milliseconds of ``repeats`` timings of each call,
    the calls taken in turn each round."""
    for call in calls.values():
        for _ in range(10):
            call()
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            call()
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return (
        {name: statistics.median(t) * 1e3 for name, t in wall.items()},
        {name: statistics.median(t) * 1e3 for name, t in cpu.items()},
    )


def latency(
    predictor: polytask.Predictor, frame: pd.DataFrame, repeats: int
) -> tuple[dict[str, float], dict[str, float]]:
    features = frame.drop(columns=["income_50k", "never_married"], errors="ignore")
    row = features.sample(1, random_state=1)
    record = row.to_dict("records")
    one = pd.DataFrame(record)  # a fresh one-row frame, as a caller builds it
    inputs = predictor.preprocessor.transform(one, "row")

    def network() -> object:
        with torch.no_grad():
            return predictor.model(inputs)

    def pandas_path() -> object:
        predictor.fast_frames = False
        try:
            return predictor.predict(one)
        finally:
            predictor.fast_frames = True

    wall, cpu = interleaved_ms(
        {
            "network forward": network,
            "predict_outputs (network, eval toggles)": lambda: predict_outputs(
                predictor.model, inputs, 8192
            ),
            "predict_records (fast path)": lambda: predictor.predict_records(record),
            "predict(DataFrame) (fast path)": lambda: predictor.predict(one),
        },
        repeats,
    )
    wall["predict(DataFrame) (pandas path)"] = median_ms(pandas_path, max(20, repeats // 10))
    return wall, cpu


def back_to_back(
    predictor: polytask.Predictor, frame: pd.DataFrame, repeats: int
) -> dict[str, float]:
    """The method of earlier runs: each path in a loop of its own (the network's forward in
    a tight loop keeps its weights and code in the caches, so it is the quickest it gets)."""
    features = frame.drop(columns=["income_50k", "never_married"], errors="ignore")
    record = features.sample(1, random_state=1).to_dict("records")
    inputs = predictor.preprocessor.transform(pd.DataFrame(record), "row")

    def network() -> object:
        with torch.no_grad():
            return predictor.model(inputs)

    return {
        "network forward": median_ms(network, repeats),
        "predict_records (fast path)": median_ms(
            lambda: predictor.predict_records(record), repeats
        ),
    }


def write_table(frame: pd.DataFrame, path: Path, rows: int) -> None:
    features = frame.drop(columns=["income_50k", "never_married"], errors="ignore")
    rng = np.random.default_rng(0)
    block = 500_000
    writer: pq.ParquetWriter | None = None
    done = 0
    while done < rows:
        take = min(block, rows - done)
        part = features.iloc[rng.integers(0, len(features), take)].reset_index(drop=True)
        part.insert(0, "row_id", np.arange(done, done + take))
        table = pa.Table.from_pandas(part, preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table.cast(writer.schema))
        done += take
    assert writer is not None
    writer.close()


#: Runs ``polytask`` (its arguments after the report file's path) and writes the process's
#: own peak RSS (``VmHWM``, KiB; the memory of this image only, reset by ``exec``) at exit.
PEAK_WRAPPER = """
import atexit, sys
from pathlib import Path
report = Path(sys.argv.pop(1))
def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            report.write_text(line.split()[1])
atexit.register(peak)
sys.argv[0] = "polytask"
from polytask.__main__ import main
main()
"""


def batch(model: Path, data: Path, out: Path, chunk_rows: int) -> dict[str, Any]:
    """``polytask predict`` of ``data`` in a subprocess on one thread: its wall and CPU time
    and its own peak RSS."""
    peak_file = out.with_name("peak_kib.txt")
    command = [
        sys.executable,
        "-c",
        PEAK_WRAPPER,
        str(peak_file),
        "predict",
        str(model),
        str(data),
        "-o",
        str(out),
        "--chunk-rows",
        str(chunk_rows),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    child = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert child.stderr is not None
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"polytask predict failed ({child.returncode}): {err.strip()}")
    rows = pq.ParquetFile(out).metadata.num_rows
    cpu = usage.ru_utime + usage.ru_stime
    peak_kib = int(peak_file.read_text())
    return {
        "rows": rows,
        "seconds": wall,
        "rows_per_s": rows / wall,
        "cpu_seconds": cpu,
        "rows_per_cpu_s": rows / cpu,
        "peak_rss_mib": peak_kib / 1024,
        "ru_maxrss_mib": usage.ru_maxrss / 1024,
        "chunk_rows": chunk_rows,
        "threads": 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000], help="rows of each batch table"
    )
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=500, help="calls per latency median")
    parser.add_argument("--skip-batch", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    frame, described = census_frame()
    with tempfile.TemporaryDirectory(prefix="polytask-bench-") as tmp:
        root = Path(tmp)
        train = frame.sample(min(len(frame), 20_000), random_state=0)
        polytask.fit(
            train,
            [
                Task("income", "binary", target="income_50k"),
                Task("never_married", "binary", target="never_married"),
            ],
            out=root / "run",
            baselines=False,
            model={"encoder": {"name": "mlp", "widths": [256, 128]}, "head": {"widths": [64]}},
            train={"epochs": 1, "batch_size": 256, "progress": False},
            quiet=True,
        )
        model = root / "run" / "model"
        predictor = polytask.load(model)
        wall, cpu = latency(predictor, frame, args.repeats)
        result: dict[str, Any] = {
            "machine": machine_info(),
            "data": described,
            "latency_ms": wall,
            "latency_cpu_ms": cpu,
            "back_to_back_ms": back_to_back(predictor, frame, args.repeats),
        }
        earlier = RESULTS_DIR / "predict.json"
        if args.skip_batch and earlier.exists():
            kept = json.loads(earlier.read_text()).get("batch")
            if kept is not None:
                previous = json.loads(earlier.read_text())["machine"]
                kept = kept if isinstance(kept, list) else [kept]
                for run in kept:
                    run.setdefault("run", f"{previous['date']}, `{previous['command']}`")
                result["batch"] = kept
        if not args.skip_batch:
            runs = []
            for rows in args.rows:
                data = root / "table.parquet"
                write_table(frame, data, rows)
                runs.append(batch(model, data, root / "out.parquet", args.chunk_rows))
                data.unlink()
            result["batch"] = runs
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "predict.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS_DIR / "predict.md").write_text(report(result))
    print(report(result))


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lat = result["latency_ms"]
    cpu = result.get("latency_cpu_ms", {})
    net, net_cpu = lat["network forward"], cpu.get("network forward")
    lines = [
        "# Prediction speed",
        "",
        f"{m['date']}; {m['machine']}, {m['nproc']} CPUs visible, torch {m['torch']} on 1 "
        f"thread; `{m['command']}`. Data: {result['data']}; model: MLP 256-128, heads 64, two "
        "binary tasks, trained one epoch.",
        "",
        "## One-row latency (median)",
        "",
        "Wall clock and the thread's CPU time of the same calls; on a shared machine the CPU "
        "time is the one to compare (a wall-clock median there counts other processes' time "
        "slices). The pandas path is timed on its own, by the wall clock only.",
        "",
        "| path | wall ms | × forward | CPU ms | × forward |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ms in lat.items():
        row = f"| {name} | {ms:.3f} | {ms / net:.2f} |"
        if name in cpu and net_cpu:
            row += f" {cpu[name]:.3f} | {cpu[name] / net_cpu:.2f} |"
        else:
            row += " | |"
        lines.append(row)
    if "back_to_back_ms" in result:
        alone = result["back_to_back_ms"]
        lines += [
            "",
            "Each path in a loop of its own, wall clock (the method of earlier runs; the "
            "forward pass in a tight loop is at its quickest):",
            "",
            "| path | ms | × network forward |",
            "|---|---:|---:|",
        ]
        for name, ms in alone.items():
            lines.append(f"| {name} | {ms:.3f} | {ms / alone['network forward']:.2f} |")
    if "batch" in result:
        runs = result["batch"] if isinstance(result["batch"], list) else [result["batch"]]
        lines += ["", "## Batch prediction (`polytask predict`, Parquet in and out)", ""]
        if "run" in runs[0]:
            lines += [f"From an earlier run ({runs[0]['run']}).", ""]
        lines += [
            "One torch/OpenMP thread; CPU seconds (`os.wait4`) and peak RSS (its `VmHWM`) are "
            "the subprocess's own, start-up (imports, loading the model) included.",
            "",
            "| rows | chunk rows | wall s | rows/s (wall) | CPU s | rows per CPU-s "
            "| peak RSS (MiB) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for b in runs:
            cpu_s = f"{b['cpu_seconds']:.1f}" if "cpu_seconds" in b else ""
            per_cpu = f"{b['rows_per_cpu_s']:,.0f}" if "rows_per_cpu_s" in b else ""
            lines.append(
                f"| {b['rows']:,} | {b['chunk_rows']:,} | {b['seconds']:.1f} | "
                f"{b['rows_per_s']:,.0f} | {cpu_s} | {per_cpu} | {b['peak_rss_mib']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
