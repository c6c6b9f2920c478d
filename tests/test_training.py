"""End-to-end training on the MMoE synthetic data: learning, determinism, save/load, resume,
missing labels and early stopping."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import r2_score, roc_auc_score

from conftest import synthetic_raw
from polytask.config import RunConfig, config_from_dict
from polytask.data.split import random_split
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.run.pipeline import RunResult, run
from polytask.run.predictor import load
from polytask.state_io import load_state
from polytask.train.trainer import EpochRecord, Trainer

N_ROWS = 3000
EPOCHS = 4
SEED = 0
# Measured with these settings: test R² 0.957, AUROC 0.960 after 4 epochs (chance: 0, 0.5).
MIN_R2 = 0.9
MIN_AUROC = 0.92


@pytest.fixture(scope="module", autouse=True)
def _restore_threads() -> Iterator[None]:
    # The runs below use train.threads = 1 (tiny matrices: a second thread only adds
    # synchronisation, which on a busy 2-core machine costs 10-30x); the trainer sets it
    # process-wide, so put it back for the other test modules.
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_mmoe_synthetic(N_ROWS, 0.9, n_features=16, seed=SEED)


def _config(seed: int = SEED, **train: Any) -> RunConfig:
    settings = {"epochs": EPOCHS, "batch_size": 64, "lr": 3e-3, "patience": None, "threads": 1}
    raw = synthetic_raw(("reg", "cls"), dropout=0.1, head=(16,), seed=seed, **{**settings, **train})
    return config_from_dict(raw)


def _test_rows(frame: pd.DataFrame) -> pd.DataFrame:
    _, _, test = random_split(len(frame), 0.15, 0.15, SEED)
    return frame.iloc[test]


def _log_rows(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        assert row.pop("seconds") >= 0
    return rows


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def full_run(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("full") / "run"
    return run(_config(), frame=frame, out=out, quiet=True)


def test_multi_task_model_learns(full_run: RunResult, frame: pd.DataFrame) -> None:
    metrics = full_run.metrics
    print(f"test R2={metrics['reg']['r2']:.4f} AUROC={metrics['cls']['auroc']:.4f}")
    assert metrics["reg"]["r2"] > MIN_R2
    assert metrics["cls"]["auroc"] > MIN_AUROC
    assert len(full_run.fit.history) == EPOCHS and not full_run.fit.stopped_early
    # The reported metrics are those of the returned model on the test rows, in original units.
    test = _test_rows(frame)
    pred = full_run.predictor.predict(test)
    assert r2_score(test["y_regression"], pred["reg"]) == pytest.approx(
        metrics["reg"]["r2"], abs=1e-4
    )
    assert roc_auc_score(test["y_binary"], pred["cls_proba"]) == pytest.approx(
        metrics["cls"]["auroc"], abs=1e-4
    )
    assert set(pred["cls"]) <= {"0", "1"}


def test_run_directory_contents(full_run: RunResult) -> None:
    out = full_run.out_dir
    assert out is not None
    for name in ("model.safetensors", "model.json", "tasks.json", "preprocessing.json"):
        assert (out / "model" / name).is_file(), name
    assert (out / "checkpoints" / "last" / "state.json").is_file()
    assert (out / "checkpoints" / "best" / "state.json").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "test" and results["multi_task"] == full_run.metrics
    rows = _log_rows(out)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    # The model holds the best epoch's weights, as saved in checkpoints/best.
    best = load_state(out / "checkpoints" / "best")
    assert best["epoch"] == full_run.fit.best_epoch
    _assert_same_weights(best["model"], full_run.predictor.model.state_dict())


def test_same_seed_gives_identical_weights(
    full_run: RunResult, frame: pd.DataFrame, tmp_path: Path
) -> None:
    again = run(_config(), frame=frame, out=tmp_path / "again", quiet=True)
    _assert_same_weights(full_run.predictor.model.state_dict(), again.predictor.model.state_dict())
    assert again.metrics == full_run.metrics
    assert full_run.out_dir is not None
    assert _log_rows(tmp_path / "again") == _log_rows(full_run.out_dir)
    # ... and the seed matters (same data split, different initialisation and shuffling).
    other = run(_config(seed=1), frame=frame, quiet=True)
    weights = full_run.predictor.model.state_dict()
    assert not torch.equal(
        weights["architecture.heads.reg.out.weight"],
        other.predictor.model.state_dict()["architecture.heads.reg.out.weight"],
    )


def test_save_load_predict_bit_identical(full_run: RunResult, frame: pd.DataFrame) -> None:
    assert full_run.out_dir is not None
    loaded = load(full_run.out_dir / "model")
    _assert_same_weights(full_run.predictor.model.state_dict(), loaded.model.state_dict())
    assert [t.to_dict() for t in loaded.tasks] == [t.to_dict() for t in full_run.predictor.tasks]
    before = full_run.predictor.predict(frame)
    after = loaded.predict(frame)
    assert list(before.columns) == list(after.columns) == ["reg", "cls", "cls_proba"]
    for col in before.columns:
        assert np.array_equal(before[col].to_numpy(), after[col].to_numpy()), col
    assert loaded.evaluate(_test_rows(frame)) == full_run.metrics


class _Interrupt(Exception):
    pass


def _interrupt_after_epoch_2(trainer: Trainer, record: EpochRecord) -> None:
    if record.epoch == 2:
        raise _Interrupt


def test_resume_matches_uninterrupted_run(
    full_run: RunResult, frame: pd.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        run(_config(), frame=frame, out=out, quiet=True, callbacks=[_interrupt_after_epoch_2])
    assert [r["epoch"] for r in _log_rows(out)] == [1, 2]
    assert not (out / "model").exists()
    epochs_run: list[int] = []
    resumed = run(
        _config(),
        frame=frame,
        out=out,
        resume=True,
        quiet=True,
        callbacks=[lambda trainer, record: epochs_run.append(record.epoch)],
    )
    assert epochs_run == [3, 4]  # continued, not restarted
    assert full_run.out_dir is not None
    _assert_same_weights(
        full_run.predictor.model.state_dict(), resumed.predictor.model.state_dict()
    )
    last_full = load_state(full_run.out_dir / "checkpoints" / "last")
    last_resumed = load_state(out / "checkpoints" / "last")
    _assert_same_weights(last_full["model"], last_resumed["model"])
    assert _log_rows(out) == _log_rows(full_run.out_dir)
    assert resumed.metrics == full_run.metrics
    assert resumed.fit.best_epoch == full_run.fit.best_epoch


def test_missing_labels_are_skipped(frame: pd.DataFrame) -> None:
    rng = np.random.default_rng(1)
    holed = frame.copy()
    holed["y_binary"] = holed["y_binary"].astype("float64")
    holed.loc[rng.random(len(holed)) < 0.4, "y_binary"] = np.nan
    result = run(_config(epochs=3), frame=holed, quiet=True)
    train_idx, _, test_idx = random_split(len(holed), 0.15, 0.15, SEED)
    n_valid = int(holed["y_binary"].iloc[train_idx].notna().sum())
    assert 0.5 * len(train_idx) < n_valid < 0.7 * len(train_idx)
    for record in result.fit.history:
        assert record.examples == {"reg": len(train_idx), "cls": n_valid}
        assert all(math.isfinite(v) for v in record.train_loss.values())
    auroc = result.metrics["cls"]["auroc"]
    print(f"AUROC with 40% missing labels: {auroc:.4f}")
    assert auroc > MIN_AUROC - 0.02
    test = holed.iloc[test_idx]
    valid = test["y_binary"].notna()
    proba = result.predictor.predict(test)["cls_proba"]
    expected = roc_auc_score(test.loc[valid, "y_binary"], proba[valid])
    assert auroc == pytest.approx(expected, abs=1e-4)
    assert result.predictor.evaluate(test) == result.metrics


def test_early_stopping_on_a_plateau(tmp_path: Path) -> None:
    # Labels independent of the features: validation stops improving at once.
    rng = np.random.default_rng(3)
    n = 800
    noise = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    noise["y_regression"] = rng.normal(size=n)
    noise["y_binary"] = rng.integers(0, 2, n)
    noise["y2_raw"] = 0.0
    epochs = 10
    result = run(
        _config(epochs=epochs, patience=1, lr=1e-2), frame=noise, out=tmp_path / "es", quiet=True
    )
    fit = result.fit
    print(f"early stopping: {len(fit.history)} epochs, best {fit.best_epoch}")
    assert fit.stopped_early
    assert len(fit.history) < epochs
    # patience = 1: the run stops right after the first epoch that does not improve.
    assert not fit.history[-1].best
    assert all(r.best for r in fit.history[:-1])
    assert fit.best_epoch == len(fit.history) - 1
    best = load_state(tmp_path / "es" / "checkpoints" / "best")
    _assert_same_weights(best["model"], result.predictor.model.state_dict())
