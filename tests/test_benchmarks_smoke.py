"""``benchmarks/run_gpu.py --smoke``: the GPU benchmark's CPU part on tiny sizes runs end to end
and writes its results file (issue 18); the numbers themselves mean nothing here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_data

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


def test_run_tabular_quick_runs_every_model(tmp_path: Path) -> None:
    """``benchmarks/run_tabular.py --quick`` (issue 23): on 2 % of Census's training rows, the
    new encoders' nets and the three boosting libraries train, and the results name the
    target verdict; the numbers mean nothing at this size."""
    # lightgbm and catboost come with the dev extra (through bench): the test imports them
    # rather than skipping, so a CI without them fails instead of passing unseen.
    import catboost  # noqa: F401
    import lightgbm  # noqa: F401

    require_data("census")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run_tabular.py"),
            *("--quick", "--datasets", "census", "--out", str(tmp_path)),
        ],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "tabular.json").read_text())
    run = payload["results"]["census"]["runs"][0]
    assert set(run["nets"]) == {"hard mlp + PLE", "hard tabm + PLE"}
    assert set(run["gbdt"]) == {"HGB", "LightGBM", "CatBoost"}
    for entry in run["gbdt"].values():
        auroc = entry["income"]["tried"][0]["test"]["auroc"]
        assert 0.5 < auroc <= 1.0
    text = (tmp_path / "tabular.md").read_text()
    assert "Quick smoke run" in text and "## Target" in text


def test_run_detection_quick_trains_single_and_joint(tmp_path: Path) -> None:
    """``benchmarks/run_detection.py --quick`` (issue 22): on 160 MNIST canvases, the three
    single-task nets and the joint net train one epoch and the results table is written; the
    numbers mean nothing at this size."""
    require_data("mnist_detection")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run_detection.py"),
            *("--quick", "--out", str(tmp_path)),
        ],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "detection.json").read_text())
    assert payload["complete"] and len(payload["runs"]) == 4
    joint = next(r for r in payload["runs"] if r["model"] == "joint")
    assert set(joint["metrics"]) == {"detection", "count", "segmentation"}
    assert 0.0 <= joint["all_metrics"]["detection"]["map"] <= 1.0
    assert "| joint |" in (tmp_path / "detection.md").read_text()


def test_run_ud_ewt_quick_tags_and_parses_jointly_and_alone(tmp_path: Path) -> None:
    """``benchmarks/run_ud_ewt.py --quick`` (issue 22): on the first 300 / 100 / 100 sentences
    of UD EWT, the joint tagger-parser and the single-task parser train one epoch and the
    results name the anchors and the target verdicts; the numbers mean nothing at this size."""
    require_data("ud-ewt/en_ewt-train.conllu.gz")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run_ud_ewt.py"),
            *("--quick", "--models", "joint", "single:dep", "--out", str(tmp_path)),
        ],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "ud_ewt.json").read_text())
    assert payload["quick"] and [r["model"] for r in payload["runs"]] == ["joint", "single:dep"]
    joint = payload["runs"][0]["test"]
    assert set(joint) == {"upos", "xpos", "ufeats", "dep"}
    assert 0.0 <= joint["dep"]["las"] <= joint["dep"]["uas"] <= 1.0
    text = (tmp_path / "ud_ewt.md").read_text()
    assert "Smoke run" in text and "Targets from scratch (issue 22): UPOS >= 95.5: missed" in text


def test_run_molecules_quick_trains_graph_and_fingerprint_nets(tmp_path: Path) -> None:
    """``benchmarks/run_molecules.py --quick`` (issue 23): on 300 Tox21 molecules and one
    epoch, the D-MPNN multi-task net and the fingerprint MLP train on the written split file
    and are scored per task; the numbers mean nothing at this size (chemprop is not given)."""
    pytest.importorskip("rdkit", reason="rdkit is in the chem extra")
    require_data("tox21")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run_molecules.py"),
            *("--quick", "--methods", "dmpnn (multi-task)", "fingerprint MLP"),
            *("--out", str(tmp_path)),
        ],
        cwd=ROOT / "benchmarks",
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "molecules.json").read_text())
    runs = payload["results"]["tox21"]["1"]
    assert set(runs) == {"dmpnn (multi-task)", "fingerprint MLP"}
    for (result,) in runs.values():
        assert len(result["scores"]) == 12
        assert any(0.0 <= s <= 1.0 for s in result["scores"])
    text = (tmp_path / "molecules.md").read_text()
    assert "Quick smoke run" in text and "Tox21 target" in text
