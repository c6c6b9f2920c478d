"""End-to-end tests of the ``polytask`` command line, run in-process through ``polytask.cli.main``
(plus one subprocess run of the installed entry point)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

import polytask
from conftest import clinical_config, clinical_frame, run_cli, toml_text
from polytask.data.split import group_split

EPOCHS = 3
TRAIN_ARGS = ("--set", f"train.epochs={EPOCHS}")

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> SimpleNamespace:
    """One multi-task run with single-task baselines, trained through ``polytask train``."""
    root = tmp_path_factory.mktemp("cli")
    frame = clinical_frame(600)
    frame.to_csv(root / "train.csv", index=False)
    config = root / "run.toml"
    config.write_text(toml_text(clinical_config(baselines=True)), encoding="utf-8")
    run = root / "run"
    result = run_cli("train", config, "--out", run, *TRAIN_ARGS)
    return SimpleNamespace(
        root=root, data=root / "train.csv", config=config, run=run, frame=frame, result=result
    )


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_train_writes_model_log_and_comparison(trained: SimpleNamespace) -> None:
    res, run = trained.result, trained.run
    assert res.code == 0, res.err
    for name in (
        "model.safetensors",
        "model.json",
        "tasks.json",
        "preprocessing.json",
        "metrics.json",
    ):
        assert (run / "model" / name).is_file(), name
    assert f"model saved to {run / 'model'}" in res.out
    # Each epoch is logged to stderr under the model's label (not swallowed as rich markup).
    assert "[multi-task] epoch 1/3" in res.err
    assert "[single:risk] epoch 3/3" in res.err

    log = _jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in log] == [1, 2, 3]  # patience 5 cannot stop 3 epochs early
    for record in log:
        for part in ("train_loss", "val_loss"):
            assert set(record[part]) == {"risk", "stay"}
            assert all(math.isfinite(v) and v > 0 for v in record[part].values())

    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["split"] == "test"
    assert 1 <= results["best_epoch"] <= EPOCHS
    assert set(results["single_task"]) == {"risk", "stay"}
    comparison = results["comparison"]
    rows = {r["task"]: r for r in comparison["tasks"]}
    assert rows["risk"]["metric"] == "auroc" and rows["risk"]["higher_is_better"] is True
    assert rows["stay"]["metric"] == "mae" and rows["stay"]["higher_is_better"] is False
    for task, row in rows.items():
        mtl, stl = row["multi_task"], row["single_task"]
        assert mtl == results["multi_task"][task][row["metric"]]
        assert stl == results["single_task"][task][row["metric"]]
        sign = -1.0 if row["higher_is_better"] else 1.0
        assert row["relative_change_pct"] == pytest.approx(100 * sign * (mtl - stl) / abs(stl))
    delta = comparison["delta_m_pct"]
    assert delta == pytest.approx(np.mean([r["relative_change_pct"] for r in rows.values()]))
    assert f"Δm = {delta:+.2f}%" in res.out
    # The model directory carries the same summary.
    assert json.loads((run / "model" / "metrics.json").read_text(encoding="utf-8")) == results


def test_group_split_keeps_each_patient_in_one_split(trained: SimpleNamespace) -> None:
    frame = trained.frame
    train, val, test = group_split(frame["patient"], 0.2, 0.2, seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(frame)))
    patients = [set(frame["patient"].iloc[idx]) for idx in (train, val, test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    # The run trained on exactly these rows: every epoch saw each labelled training row once.
    seen = _jsonl(trained.run / "metrics.jsonl")[0]["examples"]
    assert seen["stay"] == len(train)
    assert seen["risk"] == int(frame["readmitted"].iloc[train].notna().sum())


def test_evaluate_json_matches_independent_metrics(trained: SimpleNamespace) -> None:
    res = run_cli("evaluate", trained.run, trained.data, "--json")
    assert res.code == 0, res.err
    metrics = json.loads(res.out)
    assert set(metrics) == {"risk", "stay"}
    assert set(metrics["risk"]) == {"auroc", "accuracy", "f1", "average_precision"}
    assert all(0.0 <= v <= 1.0 for v in metrics["risk"].values())
    assert set(metrics["stay"]) == {"mae", "rmse", "r2"}
    assert 0.0 < metrics["stay"]["mae"] <= metrics["stay"]["rmse"]
    assert metrics["stay"]["r2"] <= 1.0

    frame = trained.frame
    pred = polytask.load(trained.run).predict(frame)
    labelled = frame["readmitted"].notna()
    y = frame.loc[labelled, "readmitted"].astype(int)
    assert metrics["risk"]["auroc"] == pytest.approx(
        roc_auc_score(y, pred.loc[labelled, "risk_proba"]), abs=1e-5
    )
    assert metrics["risk"]["accuracy"] == pytest.approx(
        float(np.mean(pred.loc[labelled, "risk"].astype(int) == y)), abs=1e-6
    )
    mae = float(np.mean(np.abs(pred["stay"] - frame["days"])))
    assert metrics["stay"]["mae"] == pytest.approx(mae, rel=1e-4)
    # Features alone learn something here (ICU stays are longer and riskier).
    assert metrics["risk"]["auroc"] > 0.6
    assert metrics["stay"]["r2"] > 0.0


def test_evaluate_json_is_strict_json_without_labels(
    trained: SimpleNamespace, tmp_path: Path
) -> None:
    table = tmp_path / "unlabelled_risk.csv"
    trained.frame.assign(readmitted=pd.NA).to_csv(table, index=False)
    res = run_cli("evaluate", trained.run, table, "--json")
    assert res.code == 0, res.err

    def reject(token: str) -> None:
        raise AssertionError(f"{token} is not JSON")

    metrics = json.loads(res.out, parse_constant=reject)
    assert metrics["risk"] == dict.fromkeys(["auroc", "accuracy", "f1", "average_precision"])
    mae = float(
        np.mean(
            np.abs(
                polytask.load(trained.run).predict(trained.frame)["stay"] - trained.frame["days"]
            )
        )
    )
    assert metrics["stay"]["mae"] == pytest.approx(mae, rel=1e-4)


def test_evaluate_table_and_task_subset(trained: SimpleNamespace) -> None:
    res = run_cli("evaluate", trained.run / "model", trained.data, "--task", "stay")
    assert res.code == 0, res.err
    assert re.search(r"stay\s*│\s*mae\s*│\s*\d+\.\d{4}", res.out)
    assert "risk" not in res.out


def test_predict_writes_one_row_per_input(trained: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    res = run_cli("predict", trained.run, trained.data, "-o", out)
    assert res.code == 0, res.err
    assert res.err.strip() == f"wrote 600 rows to {out}"
    written = pd.read_csv(out, dtype={"risk": str})
    assert list(written.columns) == ["patient", "risk", "risk_proba", "stay"]
    expected = polytask.load(trained.run).predict(trained.frame)
    assert len(written) == len(trained.frame) == len(expected)
    assert written["patient"].tolist() == trained.frame["patient"].tolist()
    assert written["risk"].tolist() == expected["risk"].tolist()
    assert written["risk"].tolist() == np.where(written["risk_proba"] >= 0.5, "1", "0").tolist()
    np.testing.assert_array_equal(written["risk_proba"], expected["risk_proba"])
    np.testing.assert_array_equal(written["stay"], expected["stay"])
    assert ((written["risk_proba"] > 0) & (written["risk_proba"] < 1)).all()

    subset = tmp_path / "stay.csv"
    res = run_cli("predict", trained.run, trained.data, "-o", subset, "--task", "stay")
    assert res.code == 0, res.err
    only = pd.read_csv(subset)
    assert list(only.columns) == ["patient", "stay"]
    np.testing.assert_array_equal(only["stay"], expected["stay"])


def test_list_shows_registered_components(trained: SimpleNamespace) -> None:
    res = run_cli("list")
    assert res.code == 0, res.err
    for kind, name in [
        ("encoder", "mlp"),
        ("architecture", "hard"),
        ("balancer", "static"),
        ("balancer", "equal"),
        ("dataset", "census"),
        ("dataset", "diabetes"),
    ]:
        assert re.search(rf"│\s*{kind}\s*│\s*{name}\s*│", res.out), (kind, name)


def test_existing_run_needs_overwrite(trained: SimpleNamespace, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    weights = (run / "model" / "model.safetensors").read_bytes()
    (run / "stale.txt").write_text("from an older run", encoding="utf-8")

    res = run_cli("train", trained.config, "--out", run, *TRAIN_ARGS)
    assert res.code == 2
    assert res.err.count("\n") == 1 and "--overwrite" in res.err and str(run) in res.err
    assert (run / "model" / "model.safetensors").read_bytes() == weights
    assert (run / "stale.txt").exists()

    res = run_cli("train", trained.config, "--out", run, "--overwrite", "-q", *TRAIN_ARGS)
    assert res.code == 0, res.err
    assert not (run / "stale.txt").exists()
    # Same config and seed: the replacement run reproduces the original one exactly.
    assert (run / "results.json").read_text() == (trained.run / "results.json").read_text()
    assert (run / "model" / "model.safetensors").read_bytes() == weights


def test_resume_finished_run_then_extend_it(trained: SimpleNamespace, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    original_log = (run / "metrics.jsonl").read_text().splitlines()

    res = run_cli("train", trained.config, "--out", run, "--resume", "-q", *TRAIN_ARGS)
    assert res.code == 0, res.err
    assert (run / "metrics.jsonl").read_text().splitlines() == original_log
    assert (run / "results.json").read_text() == (trained.run / "results.json").read_text()
    before = load_file(str(trained.run / "model" / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(bool((before[k] == after[k]).all()) for k in before)

    res = run_cli(
        "train", trained.config, "--out", run, "--resume", "-q", "--set", "train.epochs=4"
    )
    assert res.code == 0, res.err
    log = (run / "metrics.jsonl").read_text().splitlines()
    assert log[:3] == original_log
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3, 4]


def test_demo_prints_comparison(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = run_cli("demo", "--out", out, "--samples", "2000", "--epochs", "2", "-q")
    assert res.code == 0, res.err
    assert re.search(r"regression\s*│\s*mae ↓", res.out)
    assert re.search(r"classification\s*│\s*auroc ↑", res.out)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    delta = results["comparison"]["delta_m_pct"]
    assert math.isfinite(delta)
    assert f"Δm = {delta:+.2f}%" in res.out
    assert (out / "model" / "model.safetensors").is_file()
    assert len(pd.read_csv(out / "data.csv")) == 2000
    assert len(_jsonl(out / "metrics.jsonl")) == 2


def test_installed_entry_point_runs() -> None:
    exe = Path(sys.executable).with_name("polytask")
    assert exe.is_file(), f"console script missing next to {sys.executable}"
    proc = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    # Plain help (no rich markup, so "[finetune]" and "polytask[text]" show): a command a line.
    for command in ("train", "evaluate", "predict", "demo", "list", "fetch"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), command
