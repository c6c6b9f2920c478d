"""Optional TensorBoard logging (``train.tensorboard``): the event files, read back with
TensorBoard's own reader, hold the numbers of the metrics log; a missing package fails before
training with the extra's name."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from conftest import run_interrupted_and_resumed, synthetic_raw
from polytask import config_from_dict, run
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.errors import ConfigError
from polytask.train.callbacks.tensorboard import TensorBoardLogger
from polytask.train.trainer import EpochRecord

pytestmark = pytest.mark.usefixtures("torch_single_thread")

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard extra is not installed",
)


def _raw(**train: Any) -> dict[str, Any]:
    return synthetic_raw(widths=(8,), batch_size=64, threads=1, tensorboard=True, **train)


def _events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``log_dir`` as (step, value) pairs, as TensorBoard reads them."""
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The series the metrics log implies, written out independently of the logger: each
    number as TensorBoard stores it (float32), null entries absent."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    series: dict[str, list[tuple[int, float]]] = {}

    def put(tag: str, epoch: int, value: float | None) -> None:
        if value is not None:
            series.setdefault(tag, []).append((epoch, float(np.float32(value))))

    groups = {
        "loss/train": "train_loss",
        "loss/val": "val_loss",
        "weight": "weights",
        "grad_norm": "grad_norms",
        "grad_cosine": "grad_cosines",
        "conflict": "conflicts",
        "dominance": "dominance",
        "sampling": "sampling",
        "schedule": "schedule",
    }
    for row in rows:
        epoch = row["epoch"]
        for prefix, field in groups.items():
            for key, value in row[field].items():
                put(f"{prefix}/{key}", epoch, value)
        for task, metrics in row["val_metrics"].items():
            for metric, value in metrics.items():
                put(f"metric/{task}/{metric}", epoch, value)
        put("lr", epoch, row["lr"])
        put("criterion", epoch, row["criterion"])
    return series


def test_two_epoch_run_logs_what_the_metrics_log_holds(tmp_path: Path) -> None:
    frame = make_mmoe_synthetic(400, 0.8, n_features=6, seed=0)
    raw = _raw(epochs=2)
    raw["baselines"] = True
    out = tmp_path / "run"
    run(config_from_dict(raw), frame=frame, out=out, quiet=True)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    logged = _events(out / "tensorboard")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The validation losses, epoch by epoch, are the metrics log's (to float32).
    for task in ("value", "label"):
        assert logged[f"loss/val/{task}"] == [
            (row["epoch"], float(np.float32(row["val_loss"][task]))) for row in rows
        ]
    # So is every other number, and nothing else is written.
    assert logged == _expected(out)
    assert {"grad_cosine/value|label", "conflict/value|label", "metric/label/auroc"} <= set(logged)
    # Each baseline's run directory has its own log of its own (one-task) run.
    for task in ("value", "label"):
        base = out / "baselines" / task
        assert _events(base / "tensorboard") == _expected(base)
        assert {k for k in _expected(base) if k.startswith("loss/val/")} == {f"loss/val/{task}"}


def test_resumed_run_logs_each_epoch_once(tmp_path: Path) -> None:
    # Interrupted after epoch 2 (the logger runs before the interrupting callback), resumed to
    # epoch 3: the resumed log rewrites epochs 1-2 over the old file's events (purged), so
    # TensorBoard shows every epoch once, with the uninterrupted run's numbers.
    frame = make_mmoe_synthetic(300, 0.8, n_features=6, seed=0)
    run_interrupted_and_resumed(_raw(epochs=3), frame, tmp_path)
    cut, full = (
        _events(tmp_path / "cut" / "tensorboard"),
        _events(tmp_path / "full" / "tensorboard"),
    )
    assert len(list((tmp_path / "cut" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert [step for step, _ in cut["loss/val/value"]] == [1, 2, 3]
    assert cut == full == _expected(tmp_path / "cut")


def test_missing_package_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import tensorboard` raise ImportError, as if the
    # package were not installed; torch.utils.tensorboard too, in case it was imported already.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    frame = make_mmoe_synthetic(200, 0.8, n_features=6, seed=0)
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as caught:
        run(config_from_dict(_raw(epochs=1)), frame=frame, out=out, quiet=True)
    message = str(caught.value)
    assert message.startswith(
        "config error: train.tensorboard: logging to TensorBoard needs the tensorboard package; "
        "run: pip install 'polytask[tensorboard]'"
    )
    assert not out.exists()  # nothing trained, nothing written
    # The logger itself refuses too (the pipeline attaches it per run directory).
    with pytest.raises(ConfigError, match=r"polytask\[tensorboard\]"):
        TensorBoardLogger(tmp_path / "tb")
    # Without the option nothing is imported and training runs.
    plain = synthetic_raw(widths=(8,), batch_size=64, threads=1, epochs=1)
    run(config_from_dict(plain), frame=frame, out=out, quiet=True)
    assert (out / "metrics.jsonl").is_file() and not (out / "tensorboard").exists()


def test_logging_needs_a_run_directory() -> None:
    frame = make_mmoe_synthetic(200, 0.8, n_features=6, seed=0)
    with pytest.raises(ConfigError, match=r"train\.tensorboard: logs go to <run dir>/tensorboard"):
        run(config_from_dict(_raw(epochs=1)), frame=frame, quiet=True)


def _record(epoch: int, val: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        lr=1e-3,
        train_loss={"a": 1.0, "b": float("nan")},  # b took no step: left out
        val_loss={"a": val, "b": 2 * val},
        val_metrics={"a": {"rmse": val}, "b": {"rmse": float("nan")}},
        criterion=-val,
        weights={"a": 1.0, "b": 1.0},
        examples={"a": 10, "b": 0},
        seconds=0.1,
    )


def test_an_epoch_lost_before_logging_is_written_on_resume(tmp_path: Path) -> None:
    # The callback runs after the checkpoint: a crash in between leaves epoch 2 in the restored
    # history but not in the event file. The resumed logger writes it, and epoch 1 once.
    history = [_record(1, 0.5), _record(2, 0.4), _record(3, 0.3)]
    first = TensorBoardLogger(tmp_path)
    first(SimpleNamespace(history=history[:1]), history[0])  # type: ignore[arg-type]
    first.close()
    resumed = TensorBoardLogger(tmp_path)
    resumed(SimpleNamespace(history=history), history[2])  # type: ignore[arg-type]
    resumed.close()
    logged = _events(tmp_path)
    f32 = np.float32
    assert logged["loss/val/b"] == [(1, f32(1.0)), (2, f32(0.8)), (3, f32(0.6))]
    assert logged["criterion"] == [(1, f32(-0.5)), (2, f32(-0.4)), (3, f32(-0.3))]
    assert "loss/train/b" not in logged and "metric/b/rmse" not in logged
    assert [step for step, _ in logged["metric/a/rmse"]] == [1, 2, 3]
