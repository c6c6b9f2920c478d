"""Launching ``torchrun`` from a test: two processes on loopback (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(
    args: list[str], nproc: int = 2, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node nproc ARGS`` on loopback; fails the test with both ranks'
    output if it fails."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        *args,
    ]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=environ, check=False
    )
    return done


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |a|`` (floats only)."""
    scale = float(a.double().abs().max()) + 1e-6
    return float((a.double() - b.double()).abs().max()) / scale
