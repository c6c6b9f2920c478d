"""Training never ends in a silently wrong model: a non-finite loss, gradient or weight stops
the run with one line naming the step and the tasks (or, with ``train.nonfinite = "skip"``,
the step is skipped, counted and reported); an epoch without an optimiser step is an error;
``batch_size = 1`` trains; a checkpoint that does not fit the config is rejected by name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from conftest import clinical_config, clinical_frame, run_cli, toml_text
from polytask import config_from_dict, run
from polytask.data.prepare import prepare_data
from polytask.data.tensors import Batch
from polytask.errors import ConfigError, PolytaskError
from polytask.run.build import build_run
from polytask.run.pipeline import RunResult
from polytask.state_io import load_state
from polytask.train.callbacks.base import TrainerCallback, TrainerView
from polytask.train.nonfinite import TrainingDiverged
from polytask.train.state_check import CheckpointMismatch
from polytask.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

N_ROWS = 300


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return clinical_frame(N_ROWS)


def _config(**train: Any) -> dict[str, Any]:
    raw = clinical_config()
    del raw["data"]["path"]  # the frame is passed in
    raw["train"].update(train)
    return raw


def _run(frame: pd.DataFrame, raw: dict[str, Any], out: Path | None, **kw: Any) -> RunResult:
    return run(config_from_dict(raw), frame=frame, out=out, quiet=True, **kw)


class NanTargets(TrainerCallback):
    """Makes ``task``'s targets NaN on the given steps of the run (1-based): that task's loss,
    and only that task's, is NaN there."""

    def __init__(self, task: str, steps: set[int] | None) -> None:
        self.task, self.steps, self.step = task, steps, 0

    def before_step(self, trainer: TrainerView, batch: Batch) -> None:
        self.step += 1
        if self.steps is None or self.step in self.steps:
            batch.targets[self.task] = torch.full_like(batch.targets[self.task], math.nan)


class NanInputs(TrainerCallback):
    """Makes every numeric input NaN on the given steps of the run (1-based): every task's
    loss, and the batch-norm statistics of the forward pass, become NaN there."""

    def __init__(self, steps: set[int]) -> None:
        self.steps, self.step = steps, 0

    def before_step(self, trainer: TrainerView, batch: Batch) -> None:
        self.step += 1
        if self.step in self.steps:
            for key, value in batch.inputs.items():
                if value.is_floating_point():
                    batch.inputs[key] = torch.full_like(value, math.nan)


def _finite_checkpoints(out: Path) -> None:
    """Every tensor of every checkpoint written under ``out`` is finite."""
    for state_file in (out / "checkpoints").rglob("state.json"):
        state = load_state(state_file.parent)
        for name, tensor in state["model"].items():
            assert torch.isfinite(tensor).all(), (state_file, name)


# -- non-finite training stops, naming the step and the task ---------------------------------
def test_huge_learning_rate_stops_with_one_line_through_the_cli(tmp_path: Path) -> None:
    clinical_frame(N_ROWS).to_csv(tmp_path / "train.csv", index=False)
    raw = clinical_config()
    raw["train"]["lr"] = 1e6
    config = tmp_path / "run.toml"
    config.write_text(toml_text(raw), encoding="utf-8")
    out = tmp_path / "run"
    res = run_cli("train", config, "--out", out)
    assert res.code == 2, (res.code, res.out, res.err)
    line = res.err.rstrip("\n")
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: training diverged at epoch 1, step ")
    assert "task 'stay' loss is inf" in line and "lower train.lr" in line
    assert not (out / "model").exists()
    assert not (out / "results.json").exists()
    _finite_checkpoints(out)


def test_a_nan_loss_names_its_step_and_only_its_task(frame: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        _run(frame, _config(), out, callbacks=[NanTargets("stay", {3})])
    message = str(caught.value)
    # 180 training rows in batches of 64: three steps an epoch; the third is the run's third.
    assert message.startswith(
        "training diverged at epoch 1, step 3 of 3 (step 3 of the run): task 'stay' loss is nan;"
    )
    assert "'risk'" not in message
    assert not (out / "model").exists()
    assert not list((out / "checkpoints").rglob("state.json"))  # the epoch never ended


def test_a_nan_feature_stops_naming_every_task(frame: pd.DataFrame) -> None:
    with pytest.raises(
        TrainingDiverged,
        match=r"epoch 1, step 1 of .*task 'risk' loss is nan, task 'stay' loss is nan",
    ):
        _run(frame, _config(), None, callbacks=[NanInputs({1})])


def test_non_finite_weights_stop_before_validation_and_checkpoints(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    class PoisonLastStep(TrainerCallback):
        """Corrupts a weight after the optimiser step of the second epoch's last step."""

        def after_step(self, trainer: TrainerView, losses: Any, result: Any) -> None:
            if trainer.epoch == 1 and trainer.step_in_epoch == trainer.steps_in_epoch:
                with torch.no_grad():
                    next(iter(trainer.model.parameters())).fill_(math.inf)

    out = tmp_path / "run"
    with pytest.raises(
        TrainingDiverged,
        match=r"epoch 2, step 3 of 3 .*: weight '.+' is not "
        r"finite after the update \(tasks trained: 'risk', 'stay'\)",
    ):
        _run(frame, _config(epochs=3), out, callbacks=[PoisonLastStep()])
    # The first epoch's checkpoint stays; the poisoned epoch wrote none.
    state = load_state(out / "checkpoints" / "last")
    assert state["trainer"]["epoch"] == 1
    _finite_checkpoints(out)
    assert not (out / "model").exists()


# -- the skip policy ---------------------------------------------------------------------------
def test_skip_policy_counts_and_reports_skipped_steps(frame: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _run(
        frame, _config(epochs=2, nonfinite="skip"), out, callbacks=[NanTargets("stay", {2, 5})]
    )
    assert [r.skipped_steps for r in result.fit.history] == [1, 1]
    assert result.fit.skipped_steps == 2
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["skipped_steps"] for row in logged] == [1, 1]
    assert json.loads((out / "results.json").read_text())["skipped_steps"] == 2
    for name, tensor in result.predictor.model.state_dict().items():
        assert torch.isfinite(tensor).all(), name
    # The mean training loss is over the steps taken: the skipped NaN is not in it.
    assert all(math.isfinite(r.train_loss["stay"]) for r in result.fit.history)
    _finite_checkpoints(out)


def test_skip_policy_leaves_the_weights_of_a_skipped_step_untouched(frame: pd.DataFrame) -> None:
    class Watch(TrainerCallback):
        """The model's state before and after the run's second step (the skipped one)."""

        def __init__(self) -> None:
            self.step = 0
            self.before: dict[str, torch.Tensor] = {}
            self.after: dict[str, torch.Tensor] = {}

        def before_step(self, trainer: TrainerView, batch: Batch) -> None:
            self.step += 1
            if self.step == 2:
                self.before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

        def after_step(self, trainer: TrainerView, losses: Any, result: Any) -> None:
            if self.step == 2:
                self.after = {k: v.clone() for k, v in trainer.model.state_dict().items()}
                assert result is None  # hooks see a skipped step as one without a result

    watch = Watch()
    raw = _config(epochs=1, nonfinite="skip")
    # NaN inputs: the forward pass moves the batch-norm statistics to NaN, which the skipped
    # step puts back (parameters, buffers and step counts all as before the step).
    result = _run(frame, raw, None, callbacks=[NanInputs({2}), watch])
    assert result.fit.skipped_steps == 1
    assert any("running_mean" in k for k in watch.before)
    assert watch.before and watch.before.keys() == watch.after.keys()
    for name, value in watch.before.items():
        assert torch.equal(value, watch.after[name]), name


def test_skip_policy_stops_past_max_skipped(frame: pd.DataFrame) -> None:
    raw = _config(epochs=3, nonfinite="skip", max_skipped=3)
    with pytest.raises(
        TrainingDiverged,
        match=r"epoch 2, step 2 of 3 .*task 'stay' loss is nan; 4 steps skipped as non-finite, "
        r"more than train.max_skipped = 3",
    ):
        _run(frame, raw, None, callbacks=[NanTargets("stay", {2, 3, 4, 5})])


def test_an_epoch_of_skipped_steps_is_an_error(frame: pd.DataFrame) -> None:
    raw = _config(nonfinite="skip")
    raw["train"]["max_skipped"] = None
    with pytest.raises(
        PolytaskError,
        match=r"^epoch 1 took no optimiser step: all 3 steps were skipped as non-finite",
    ):
        _run(frame, raw, None, callbacks=[NanTargets("stay", None)])


def test_an_infinite_learning_rate_is_refused_before_training(frame: pd.DataFrame) -> None:
    cfg = config_from_dict(_config())
    cfg.train.lr = math.inf  # past the schema, as a program could set it
    with pytest.raises(ConfigError, match=r"train.lr: expected a finite number > 0, found inf"):
        run(cfg, frame=frame, quiet=True)


# -- batch size 1 --------------------------------------------------------------------------------
def test_batch_size_one_trains_every_row(frame: pd.DataFrame) -> None:
    raw = _config(epochs=1, batch_size=1)
    raw["model"]["encoder"]["norm"] = "layer"
    result = _run(frame, raw, None)
    record = result.fit.history[0]
    rows = len(prepare_data(config_from_dict(raw), frame).train)
    assert rows > 100
    assert record.sources == {"data": rows}  # every training row, one step each
    assert math.isfinite(record.train_loss["stay"])


def test_batch_size_one_with_batch_norm_is_refused_before_the_run_directory(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with pytest.raises(
        ConfigError,
        match=r"train.batch_size: 1 row per batch cannot train the "
        r"model's batch normalisation",
    ):
        _run(frame, _config(batch_size=1), out)
    assert not out.exists()


# -- resuming from a checkpoint that does not fit ------------------------------------------------
@pytest.fixture(scope="module")
def trained(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "run"
    _run(frame, _config(epochs=1, checkpoint_every=1), out)
    return out


def _resume_error(frame: pd.DataFrame, out: Path, raw: dict[str, Any]) -> str:
    raw["train"]["epochs"] = 2
    with pytest.raises(PolytaskError) as caught:
        _run(frame, raw, out, resume=True)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"checkpoint '{out / 'checkpoints' / 'last'}' does not match the config: "
    )
    return message.split("does not match the config: ", 1)[1]


def test_resume_with_other_widths_names_the_tensor(
    frame: pd.DataFrame, trained: Path, tmp_path: Path
) -> None:
    raw = _config()
    raw["model"]["encoder"]["widths"] = [8]  # trained with [16]
    detail = _resume_error(frame, trained, raw)
    assert detail.startswith(
        "model.architecture.encoder.body.0.weight: expected shape [8, 9], found shape [16, 9] "
        "(and 7 more differences)"
    )


def test_resume_with_another_balancer_names_its_state(frame: pd.DataFrame, trained: Path) -> None:
    raw = _config()
    raw["balancer"] = {"name": "uncertainty"}  # learned scales: a second optimiser group
    detail = _resume_error(frame, trained, raw)
    assert detail.startswith(
        "balancer.scales.risk: expected a float32 tensor of shape [], found nothing"
    )


def _trainer_and_state(frame: pd.DataFrame, out: Path) -> tuple[Trainer, dict[str, Any]]:
    """A trainer of the run's config, and the checkpoint's state read back."""
    cfg = config_from_dict(_config())
    data = prepare_data(cfg, frame, {})
    built = build_run(cfg, data.input_spec, data.tasks)
    trainer = Trainer(built.model, built.tasks, built.balancer, cfg.train)
    return trainer, load_state(out / "checkpoints" / "last")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s: s["optimizer"]["param_groups"].append({}),
            "optimizer.param_groups: expected 1 parameter groups, found a list of 2",
        ),
        (
            lambda s: s["optimizer"]["param_groups"][0].update(eps="x"),
            "optimizer.param_groups[0].eps: expected float",
        ),
        (
            lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)),
            "optimizer.state[0].exp_avg: expected shape [",
        ),
        # Found by the fuzz campaign: a moment or a step count edited to null passed the
        # optimiser's own reader and failed inside the next step.
        (
            lambda s: s["optimizer"]["state"][0].update(exp_avg=None),
            "optimizer.state[0].exp_avg: expected a float32 tensor of shape [",
        ),
        (
            lambda s: s["optimizer"]["state"][0].update(step=None),
            "optimizer.state[0].step: expected a float32 tensor of shape [], found null",
        ),
        (
            lambda s: s["optimizer"]["param_groups"][0]["params"].__setitem__(0, []),
            "optimizer.param_groups[0].params: expected parameter numbers 0..",
        ),
        (
            lambda s: s["optimizer"]["param_groups"][0]["params"].__setitem__(1, False),
            "optimizer.param_groups[0].params: expected parameter numbers 0..",
        ),
        (
            lambda s: s["optimizer"]["state"][0].pop("exp_avg_sq"),
            "optimizer.state[0]: expected keys 'exp_avg', 'exp_avg_sq', 'step'",
        ),
        (lambda s: s["trainer"].update(epoch="1"), "trainer.epoch: expected int 0, found str '1'"),
        (
            lambda s: s["trainer"].update(step=-4),
            "trainer.step: expected a count of 0 or more, found -4",
        ),
        (
            lambda s: s["trainer"].update(best_epoch=1.5),
            "trainer.best_epoch: expected int 0, found float 1.5",
        ),
        (
            lambda s: s["trainer"]["history"][0].update(lr="fast"),
            "trainer.history[0].lr: expected float 0.0, found str 'fast'",
        ),
        (
            lambda s: s["scheduler"].update(position=None),
            "scheduler.position: expected int 0, found null",
        ),
        (
            lambda s: s["rng"].update(torch=torch.zeros(3, dtype=torch.uint8)),
            "rng.torch: expected a uint8 tensor of shape [",
        ),
        (lambda s: s["model"].pop(next(iter(s["model"]))), "found nothing"),
        (
            lambda s: s["model"].update(extra=torch.zeros(2)),
            "model.extra: expected no such tensor in the model, found a float32 tensor",
        ),
        (
            lambda s: next(iter(s["model"].values())).fill_(math.nan),
            "expected finite values, found NaN or inf",
        ),
        (lambda s: s.pop("balancer"), "balancer: expected the balancer state, found nothing"),
    ],
)
def test_a_tampered_checkpoint_is_rejected_before_anything_changes(
    frame: pd.DataFrame, trained: Path, edit: Any, expected: str
) -> None:
    trainer, state = _trainer_and_state(frame, trained)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    edit(state)
    with pytest.raises(CheckpointMismatch) as caught:
        trainer.load_state(state)
    assert expected in caught.value.detail, caught.value.detail
    assert trainer.epoch == 0 and trainer.step == 0
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_the_untampered_checkpoint_loads(frame: pd.DataFrame, trained: Path) -> None:
    trainer, state = _trainer_and_state(frame, trained)
    trainer.load_state(state)  # the control of the test above: its edits are what fails
    assert trainer.epoch == 1


def test_resume_after_a_config_edit_is_one_line_through_the_cli(tmp_path: Path) -> None:
    clinical_frame(N_ROWS).to_csv(tmp_path / "train.csv", index=False)
    raw = clinical_config()
    raw["train"]["epochs"] = 1
    config = tmp_path / "run.toml"
    config.write_text(toml_text(raw), encoding="utf-8")
    out = tmp_path / "run"
    assert run_cli("train", config, "--out", out, "-q").code == 0
    raw["train"]["epochs"] = 2
    raw["model"]["encoder"]["widths"] = [8]  # trained with [16]
    config.write_text(toml_text(raw), encoding="utf-8")
    res = run_cli("train", config, "--out", out, "--resume", "-q")
    assert res.code == 2, (res.code, res.out, res.err)
    assert res.err == (
        f"error: checkpoint '{out / 'checkpoints' / 'last'}' does not match the config: "
        "model.architecture.encoder.body.0.weight: expected shape [8, 9], found shape [16, 9] "
        "(and 7 more differences)\n"
    )


class _Stop(Exception):
    pass


def test_a_tampered_mid_epoch_point_is_rejected(frame: pd.DataFrame, tmp_path: Path) -> None:
    class StopAfterTwoSteps(TrainerCallback):
        def after_step(self, trainer: TrainerView, losses: Any, result: Any) -> None:
            if trainer.step_in_epoch == 2:
                raise _Stop

    out = tmp_path / "run"
    with pytest.raises(_Stop):
        _run(frame, _config(checkpoint_every=1), out, callbacks=[StopAfterTwoSteps()])
    trainer, state = _trainer_and_state(frame, out)
    assert state["partial"]["step_in_epoch"] == 2
    trainer.check_state(state)  # as written, it fits
    state["partial"]["stats"]["loss_sum"]["other"] = state["partial"]["stats"]["loss_sum"]["risk"]
    with pytest.raises(CheckpointMismatch) as caught:
        trainer.load_state(state)
    assert caught.value.detail == (
        "partial.stats.loss_sum: expected keys 'risk', 'stay', found keys 'risk', 'stay', 'other'"
    )
    # Through a resume, with the run's data: a truncated list of sources is named.
    del state["partial"]["stats"]["loss_sum"]["other"]
    state["partial"]["start"]["sampler"]["streams"] = []
    trainer._resuming = _training_sources(frame)
    with pytest.raises(CheckpointMismatch, match=r"partial.start.sampler.streams: expected a list"):
        trainer.check_state(state)


def _training_sources(frame: pd.DataFrame) -> Any:
    cfg = config_from_dict(_config())
    return prepare_data(cfg, frame).training_sources(cfg.sampling)
