"""Serving cost: one multi-task model against one single-task model per task, over HTTP.

For each dataset (Census: 2 tasks, Tox21: 12) one run is trained with its single-task
baselines (``baselines = true``, a few epochs: serving cost does not depend on accuracy). Then,
for each runtime (torch, onnxruntime):

* **multi-task**: one ``polytask serve`` process serving every task; a client request is one
  HTTP request.
* **single-task**: one ``polytask serve`` process per task, side by side; a client request is
  answered by querying every per-task server at once (its latency is the slowest of them).

Every server is a subprocess on loopback with one torch thread (``OMP_NUM_THREADS=1``), so the
setups differ only in how many models and processes serve the same tasks. The client is one
asyncio process with httpx: ``C`` concurrent clients (1, 16, 64), each sending one-row JSON
requests of test rows back to back; each level stops after ``--requests`` requests or
``--seconds`` seconds, whichever comes first, after a short warm-up. Reported per level:
p50/p99 latency, throughput, and the servers' CPU time per request (from /proc); per setup the
servers' resident memory after the load and their start-up time. Client and servers share the
machine's cores, and the client sends K requests per single-task answer, so its own work grows
with K too: that is part of what fanning out costs.

Usage::

    python benchmarks/run_serve_load.py [--quick] [--datasets census,tox21]
        [--runtimes torch,onnx] [--requests 600] [--seconds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from safetensors.torch import load_file

from common import (
    EXAMPLES_DIR,
    RESULTS_DIR,
    machine_info,
    machine_lines,
    markdown_table,
    write_results,
)
from polytask.config import config_from_dict
from polytask.data.datasets import DATASETS, data_available, load_dataset
from polytask.models.model import build_model
from polytask.run.pipeline import run
from polytask.run.predictor import Predictor, load

POLYTASK = Path(sys.executable).parent / "polytask"
LEVELS = (1, 16, 64)
WARMUP = 20


@dataclass
class Server:
    """One ``polytask serve`` subprocess."""

    model_dir: Path
    runtime: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready_after: float = math.nan

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path) -> None:
        self.port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(POLYTASK),
                "serve",
                str(self.model_dir),
                "--port",
                str(self.port),
                "--runtime",
                self.runtime,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            env=env,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return math.nan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _wait_ready(servers: list[Server], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        for server in servers:
            while True:
                assert server.proc is not None
                if server.proc.poll() is not None:
                    raise RuntimeError(f"server for {server.model_dir} exited at start-up")
                try:
                    if (await client.get(server.url + "/ready")).status_code == 200:
                        server.ready_after = time.monotonic() - server.started
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server for {server.model_dir} not ready in {timeout} s")
                await asyncio.sleep(0.2)


@dataclass
class Level:
    """What one concurrency level measured."""

    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        lat = np.array(self.latencies) * 1000
        done = len(self.latencies)
        return {
            "clients": self.clients,
            "requests": done,
            "errors": self.errors,
            "p50_ms": float(np.percentile(lat, 50)) if done else math.nan,
            "p99_ms": float(np.percentile(lat, 99)) if done else math.nan,
            "throughput_rps": done / self.seconds if self.seconds else math.nan,
            "server_cpu_ms_per_request": 1000 * self.cpu_seconds / done if done else math.nan,
        }


async def _load(
    servers: list[Server], bodies: list[bytes], clients: int, requests: int, seconds: float
) -> Level:
    """``clients`` concurrent clients sending ``bodies`` (one row each) until ``requests`` are
    answered or ``seconds`` have passed. A request to the single-task setup is sent to every
    server at once; it is answered when all have answered."""
    level = Level(clients)
    limits = httpx.Limits(max_connections=clients * len(servers) + 8)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(body: bytes) -> bool:
            try:
                answers = await asyncio.gather(
                    *(
                        client.post(s.url + "/predict", content=body, headers=headers)
                        for s in servers
                    )
                )
            except httpx.TransportError:
                # A kept-alive connection the server closed as the request went out (its idle
                # timeout, under load): counted as an error, not retried.
                return False
            return all(a.status_code == 200 for a in answers)

        for i in range(WARMUP):
            await one(bodies[i % len(bodies)])
        cpu_before = sum(s.cpu_seconds() for s in servers)
        started = time.perf_counter()
        deadline = started + seconds
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                ok = await one(body)
                if ok:
                    level.latencies.append(time.perf_counter() - t0)
                else:
                    level.errors += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
        level.seconds = time.perf_counter() - started
        level.cpu_seconds = sum(s.cpu_seconds() for s in servers) - cpu_before
    return level


def _bodies(frame: pd.DataFrame, columns: list[str], n: int) -> list[bytes]:
    """One-row JSON request bodies of the model's input columns (null for a missing value)."""
    rows = frame[columns].head(n).astype(object).where(frame[columns].head(n).notna(), None)
    return [
        httpx.Request("POST", "http://x", json={"records": [row]}).content
        for row in rows.to_dict(orient="records")
    ]


def _train(name: str, out: Path, epochs: int, rows: int | None) -> Path:
    """The dataset's example run with its baselines, for ``epochs`` epochs, on ``rows`` rows
    drawn from it (all when None): serving cost depends on the features and the network, not
    on how many rows trained it."""
    if (out / "model" / "model.json").is_file():
        return out
    raw = tomllib.loads((EXAMPLES_DIR / f"{name}.toml").read_text())
    raw["baselines"] = True
    raw["train"]["epochs"] = epochs
    frame = None
    if rows is not None:
        # The registered dataset's column roles, applied to a sample given as a frame.
        info = DATASETS[raw["data"].pop("dataset")]
        frame = load_dataset(name).sample(n=rows, random_state=0)
        ignore = set(raw["data"].get("ignore", [])) | set(info.ignore) | set(info.targets)
        raw["data"]["ignore"] = sorted(ignore - {t["target"] for t in raw["tasks"]})
    run(
        config_from_dict(raw, base_dir=EXAMPLES_DIR),
        frame=frame,
        out=out,
        quiet=True,
        overwrite=True,
    )
    return out


def _single_task_dirs(run_dir: Path, out: Path) -> list[Path]:
    """A model directory per single-task baseline of ``run_dir``. A run keeps its baselines'
    weights as checkpoints (``baselines/<task>/checkpoints/best``), not as model directories:
    each is rebuilt here as the baseline was built (same encoder config, one task, the run's
    preprocessing) and saved, so every server loads a trained model the same way."""
    multi = load(run_dir)
    dirs = []
    for task in multi.tasks:
        target = out / task.name
        if not (target / "model.json").is_file():
            best = run_dir / "baselines" / task.name / "checkpoints" / "best" / "state.safetensors"
            state = load_file(str(best))
            weights = {
                k.removeprefix("/model/"): v for k, v in state.items() if k.startswith("/model/")
            }
            single = [dataclasses.replace(task, weight=1.0)]
            model = build_model(single, multi.input_spec, multi.model_config, seed=0)
            model.load_state_dict(weights, strict=True)
            Predictor(
                model,
                single,
                multi.preprocessor,
                multi.model_config,
                multi.input_spec,
                id_column=multi.id_column,
                na_values=multi.na_values,
            ).save(target)
        dirs.append(target)
    return dirs


def _serve_setup(
    dirs: list[Path], runtime: str, bodies: list[bytes], args: argparse.Namespace, logs: Path
) -> dict[str, Any]:
    servers = [Server(d, runtime) for d in dirs]
    for i, s in enumerate(servers):
        s.start(logs / f"{runtime}-{d_name(s.model_dir)}-{i}.log")
    try:
        asyncio.run(_wait_ready(servers, timeout=args.startup_timeout))
        levels = [
            asyncio.run(_load(servers, bodies, c, args.requests, args.seconds)).summary()
            for c in args.levels
        ]
        return {
            "servers": len(servers),
            "startup_s": max(s.ready_after for s in servers),
            "rss_mib": sum(s.rss_mib() for s in servers),
            "levels": levels,
        }
    finally:
        for s in servers:
            s.stop()


def d_name(path: Path) -> str:
    return path.parent.name if path.name == "model" else path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="census,tox21")
    parser.add_argument("--runtimes", default="torch,onnx")
    parser.add_argument("--requests", type=int, default=600, help="per level at most")
    parser.add_argument("--seconds", type=float, default=12.0, help="per level at most")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--train-rows", type=int, default=None, help="train on a sample of this many rows"
    )
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse trained runs here")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="census, torch, 100 requests")
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the datasets of results/serve.json that this run does not measure",
    )
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.runtimes, args.requests, args.seconds = "census", "torch", 100, 5.0
    args.levels = [int(c) for c in args.levels.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r]
    if "onnx" in runtimes:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime not installed: torch only", file=sys.stderr)
            runtimes.remove("onnx")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polytask-serve-bench-"))
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    wall = time.monotonic()
    results: dict[str, Any] = {}
    for name in args.datasets.split(","):
        if not data_available(name):
            print(f"{name}: data not found, skipped", file=sys.stderr)
            continue
        t0 = time.monotonic()
        run_dir = _train(name, workdir / name, args.epochs, args.train_rows)
        trained = time.monotonic() - t0
        single = _single_task_dirs(run_dir, workdir / f"{name}-single")
        columns = load(run_dir).preprocessor.columns
        frame = load_dataset(name).sample(frac=1.0, random_state=0)
        bodies = _bodies(frame, columns, 500)
        results[name] = {
            "tasks": len(single),
            "train_s": round(trained, 1),
            "train_rows": args.train_rows or "all",
            "runtimes": {},
        }
        for runtime in runtimes:
            print(f"{name} / {runtime}: multi-task", file=sys.stderr)
            multi = _serve_setup([run_dir / "model"], runtime, bodies, args, logs)
            print(f"{name} / {runtime}: {len(single)} single-task servers", file=sys.stderr)
            many = _serve_setup(single, runtime, bodies, args, logs)
            results[name]["runtimes"][runtime] = {"multi": multi, "single": many}
        results[name]["measured"] = {
            "date": machine_info()["date"],
            "load_average": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        }
    previous = RESULTS_DIR / "serve.json"
    if args.append and previous.is_file():
        kept = json.loads(previous.read_text())["results"]
        results = {**{k: v for k, v in kept.items() if k not in results}, **results}
    info = machine_info()
    info["wall_seconds"] = round(time.monotonic() - wall, 1)
    info["load_average"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    # Servers run one torch thread each; the client process's own count is not the point.
    info["torch_threads"] = "1 per server process"
    write_results(
        "serve", _markdown(results, info, args), {"machine": info, "results": results}, RESULTS_DIR
    )
    print("\n".join(_markdown(results, info, args)))


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b and math.isfinite(a) and math.isfinite(b) else "n/a"


def _pair(m: dict[str, Any], s: dict[str, Any], key: str, digits: int, invert: bool = False) -> str:
    """``multi / single (ratio)``; the ratio is single÷multi (multi÷single for ``invert``:
    throughput, where more is better), so above 1 always means single-task costs more."""
    ratio = _ratio(m[key], s[key]) if invert else _ratio(s[key], m[key])
    return f"{m[key]:.{digits}f} / {s[key]:.{digits}f} ({ratio})"


def _markdown(results: dict[str, Any], info: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [
        "# Serving: one multi-task model vs one single-task model per task",
        "",
        "`polytask serve` on loopback, one-row JSON requests from a bounded asyncio client "
        f"(per level at most {args.requests} requests or {args.seconds:g} s after {WARMUP} "
        "warm-up requests). Multi-task: one server answers every task. Single-task: one server "
        "per task side by side; a request is sent to all of them and is answered when the "
        "slowest has answered. Every server runs one torch thread; models trained for "
        f"{args.epochs} epoch(s) (serving cost does not depend on accuracy). Ratios are "
        "single-task / multi-task: above 1 means the single-task setup costs more.",
        "",
        *machine_lines(info),
        f"- wall time of the whole benchmark: {info['wall_seconds']} s",
        f"- load average at the end (other jobs shared the cores): {info['load_average']}",
        "",
    ]
    for name, data in results.items():
        when = data.get("measured", {})
        lines += [
            f"## {name} ({data['tasks']} tasks)",
            "",
            f"Measured {when.get('date', '?')} "
            f"(load average then: {when.get('load_average', '?')}); models trained on "
            f"{data.get('train_rows', 'all')} rows.",
            "",
        ]
        for runtime, setups in data["runtimes"].items():
            multi, single = setups["multi"], setups["single"]
            lines += [
                f"### {runtime}",
                "",
                f"- processes: 1 vs {single['servers']}; resident memory "
                f"{multi['rss_mib']:.0f} MiB vs {single['rss_mib']:.0f} MiB "
                f"({_ratio(single['rss_mib'], multi['rss_mib'])}); start-up until ready "
                f"{multi['startup_s']:.1f} s vs {single['startup_s']:.1f} s (all started at once)",
                "",
            ]
            rows = []
            for m, s in zip(multi["levels"], single["levels"], strict=True):
                rows.append(
                    [
                        str(m["clients"]),
                        _pair(m, s, "p50_ms", 1),
                        _pair(m, s, "p99_ms", 1),
                        _pair(m, s, "throughput_rps", 0, invert=True),
                        _pair(m, s, "server_cpu_ms_per_request", 2),
                        f"{m['requests']} / {s['requests']}",
                        f"{m['errors']} / {s['errors']}",
                    ]
                )
            lines += markdown_table(
                [
                    "clients",
                    "p50 ms multi / single",
                    "p99 ms multi / single",
                    "requests/s multi / single",
                    "server CPU ms per request",
                    "answered",
                    "errors",
                ],
                rows,
            )
            lines.append("")
    lines += _runtime_comparison(results)
    return lines


def _runtime_comparison(results: dict[str, Any]) -> list[str]:
    """ONNX against torch, the multi-task server, per dataset and level: the ratios the
    issue's target is about (server CPU per one-row request: onnx / torch, below 1.5)."""
    rows = []
    for name, data in results.items():
        runtimes = data["runtimes"]
        if "torch" not in runtimes or "onnx" not in runtimes:
            continue
        by_torch = runtimes["torch"]["multi"]["levels"]
        by_onnx = runtimes["onnx"]["multi"]["levels"]
        for t, o in zip(by_torch, by_onnx, strict=True):
            rows.append(
                [
                    name,
                    str(t["clients"]),
                    f"{t['p50_ms']:.1f} / {o['p50_ms']:.1f} ({_ratio(o['p50_ms'], t['p50_ms'])})",
                    f"{t['server_cpu_ms_per_request']:.2f} / "
                    f"{o['server_cpu_ms_per_request']:.2f} "
                    f"({_ratio(o['server_cpu_ms_per_request'], t['server_cpu_ms_per_request'])})",
                ]
            )
    if not rows:
        return []
    return [
        "## ONNX runtime vs torch runtime (multi-task server)",
        "",
        "The same rows of the tables above; ratios are onnx / torch (above 1: ONNX costs more). "
        "Each runtime's servers ran one after the other, not interleaved, so a change in the "
        "machine's load between them shows in the ratio (load averages above).",
        "",
        *markdown_table(
            ["dataset", "clients", "p50 ms torch / onnx", "server CPU ms per request torch / onnx"],
            rows,
        ),
        "",
    ]


if __name__ == "__main__":
    main()
