"""``benchmarks/run_gpu.py --smoke``: the GPU benchmark's CPU part on tiny sizes runs end to end
and writes its results file (issue 18); the numbers themselves mean nothing here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _smoke(script: str, out: Path, timeout: float) -> str:
    """Run ``benchmarks/SCRIPT --smoke --out OUT``; its stdout, or a failure showing both ends
    of its stderr."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--out", str(out)],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-3000:]
    return done.stdout


def test_run_gpu_smoke_writes_every_section(tmp_path: Path) -> None:
    _smoke("run_gpu.py", tmp_path, 600)
    payload = json.loads((tmp_path / "gpu.json").read_text())
    assert payload["smoke"] is True
    for k in ("2", "3"):
        cells = payload["balancing"][k]
        assert not cells["errors"], cells["errors"]
        assert {"equal", "upgrad exact", "upgrad representation"} <= set(cells["ms"])
        assert all(v > 0 for v in cells["ms"].values())
    assert payload["precision"]["samples_per_s"]["fp32"] > 0
    assert set(payload["trainer"]["samples_per_s"]) == {"hand loop", "polytask Trainer"}
    assert payload["image"]["epochs_per_s"] > 0
    text = (tmp_path / "gpu.md").read_text()
    assert "Smoke run on the CPU" in text and "## 4. Image workload" in text


def test_run_distributed_smoke_runs_both_world_sizes(tmp_path: Path) -> None:
    """``benchmarks/run_distributed.py --smoke`` (issue 19): 1 process, then 2 under torchrun
    on loopback, every row and the local-Gramian error; prints only, writes nothing."""
    text = _smoke("run_distributed.py", tmp_path, 300)
    assert not list(tmp_path.iterdir())  # --smoke writes no results
    for row in (
        "equal (plain data parallel)",
        "upgrad exact mode, gramian=exact",
        "upgrad exact mode, gramian=local",
        "upgrad representation mode",
    ):
        assert f"| 2 | {row} |" in text, text[-3000:]
    assert "cannot show a speed-up" in text
    assert "## 2. The local Gramian's weight error against exact" in text
