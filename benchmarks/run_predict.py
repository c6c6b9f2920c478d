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
times. The batch table is written as
Parquet by resampling Census rows, and ``polytask predict`` runs on it in a subprocess whose
peak RSS is read with ``resource.getrusage(RUSAGE_CHILDREN)``. Results go to
``benchmarks/results/predict.md`` and ``.json``; with ``--skip-batch`` the batch result already
in ``predict.json`` is kept (with the date and command of its run).
"""

from __future__ import annotations

import argparse
import json
import resource
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


def interleaved_ms(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """The median of ``repeats`` timings of each call, the calls taken in turn each round."""
    for call in calls.values():
        for _ in range(10):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def latency(predictor: polytask.Predictor, frame: pd.DataFrame, repeats: int) -> dict[str, float]:
    features = frame.drop(columns=["income_50k", "never_married"], errors="ignore")
    row = features.sample(1, random_state=1)
    record = row.to_dict("records")
    one = pd.DataFrame(record)  # a fresh one-row frame, as a caller builds it
    inputs = predictor.preprocessor.transform(one, "row")

    def network() -> object:
        with torch.no_grad():
            return predictor.model(inputs)

    def pandas_path() -> object:
        predictor.fast_rows = 0
        try:
            return predictor.predict(one)
        finally:
            predictor.fast_rows = 256

    result = interleaved_ms(
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
    result["predict(DataFrame) (pandas path)"] = median_ms(pandas_path, max(20, repeats // 10))
    return result


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


def batch(model: Path, data: Path, out: Path, chunk_rows: int) -> dict[str, Any]:
    command = [
        str(Path(sys.executable).with_name("polytask")),
        "predict",
        str(model),
        str(data),
        "-o",
        str(out),
        "--chunk-rows",
        str(chunk_rows),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rows = pq.ParquetFile(out).metadata.num_rows
    return {
        "rows": rows,
        "seconds": wall,
        "rows_per_s": rows / wall,
        "peak_rss_mib": peak_kib / 1024,
        "chunk_rows": chunk_rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the batch table")
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
        lat = latency(predictor, frame, args.repeats)
        result: dict[str, Any] = {
            "machine": machine_info(),
            "data": described,
            "latency_ms": lat,
            "back_to_back_ms": back_to_back(predictor, frame, args.repeats),
        }
        earlier = RESULTS_DIR / "predict.json"
        if args.skip_batch and earlier.exists():
            kept = json.loads(earlier.read_text()).get("batch")
            if kept is not None:
                previous = json.loads(earlier.read_text())["machine"]
                kept.setdefault("run", f"{previous['date']}, `{previous['command']}`")
                result["batch"] = kept
        if not args.skip_batch:
            data = root / "table.parquet"
            write_table(frame, data, args.rows)
            result["batch"] = batch(model, data, root / "out.parquet", args.chunk_rows)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "predict.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS_DIR / "predict.md").write_text(report(result))
    print(report(result))


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    lat = result["latency_ms"]
    net = lat["network forward"]
    lines = [
        "# Prediction speed",
        "",
        f"{m['date']}; {m['machine']}, {m['nproc']} CPUs visible, torch {m['torch']} on 1 "
        f"thread; `{m['command']}`. Data: {result['data']}; model: MLP 256-128, heads 64, two "
        "binary tasks, trained one epoch.",
        "",
        "## One-row latency (median)",
        "",
        "| path | ms | × network forward |",
        "|---|---:|---:|",
    ]
    for name, ms in lat.items():
        lines.append(f"| {name} | {ms:.3f} | {ms / net:.2f} |")
    if "back_to_back_ms" in result:
        alone = result["back_to_back_ms"]
        lines += [
            "",
            "Each path in a loop of its own (the method of earlier runs; the forward pass in a "
            "tight loop is at its quickest):",
            "",
            "| path | ms | × network forward |",
            "|---|---:|---:|",
        ]
        for name, ms in alone.items():
            lines.append(f"| {name} | {ms:.3f} | {ms / alone['network forward']:.2f} |")
    if "batch" in result:
        b = result["batch"]
        lines += ["", "## Batch prediction (`polytask predict`, Parquet in and out)", ""]
        if "run" in b:
            lines += [
                f"From an earlier run ({b['run']}); the subprocess used torch's default threads.",
                "",
            ]
        lines += [
            "| rows | chunk rows | seconds | rows/s | peak RSS (MiB) |",
            "|---:|---:|---:|---:|---:|",
            f"| {b['rows']:,} | {b['chunk_rows']:,} | {b['seconds']:.1f} | "
            f"{b['rows_per_s']:,.0f} | {b['peak_rss_mib']:,.0f} |",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
