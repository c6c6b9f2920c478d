"""Run configuration: unknown keys, bad values and ``--set`` overrides give one-line errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from polytask.balance import BALANCERS
from polytask.config import config_from_dict, load_config
from polytask.errors import ConfigError
from polytask.models.architectures import ARCHITECTURES
from polytask.models.encoders import ENCODERS
from polytask.tasks.kinds import KINDS


def _raw() -> dict[str, Any]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {"path": "train.csv", "split": {"method": "random", "val": 0.2, "test": 0.2}},
        "tasks": [
            {"name": "risk", "kind": "binary", "target": "readmitted"},
            {"name": "stay", "kind": "regression", "target": "days"},
        ],
        "model": {"encoder": {"name": "mlp", "widths": [64, 32]}},
        "train": {"epochs": 5, "batch_size": 64, "progress": False},
    }


def _error(overrides: list[str], raw: dict[str, Any] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw if raw is not None else _raw(), overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_config_and_defaults() -> None:
    cfg = config_from_dict(_raw(), base_dir="/some/dir")
    assert cfg.train.epochs == 5 and cfg.train.scheduler == "cosine"
    assert cfg.model.encoder.name == "mlp" and cfg.model.encoder.params() == {"widths": [64, 32]}
    assert cfg.model.architecture.name == "hard" and cfg.balancer.name == "static"
    assert [t.name for t in cfg.task_objects()] == ["risk", "stay"]
    assert cfg.resolve("train.csv") == Path("/some/dir/train.csv")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "train.epoch=3",
            "config error: train.epoch: unknown key; valid keys: epochs, batch_size, "
            "eval_batch_size, lr, weight_decay, scheduler, warmup, grad_clip, patience, "
            "min_delta, criterion, log_format, progress, threads, checkpoint_every, tensorboard, "
            "nonfinite, max_skipped, device, precision, compile, diagnostics, "
            "nonfinite_check_every",
        ),
        (
            "data.split.methd=random",
            "config error: data.split.methd: unknown key; valid keys: method, val, test, seed, "
            "val_path, test_path, column, unit",
        ),
        (
            "colour=1",
            "config error: colour: unknown key; valid keys: seed, out, baselines, data, tasks, "
            "model, balancer, train, sampling, schedule, finetune, distributed, compare, pareto, "
            "affinity, distill",
        ),
        (
            "model.encoder.widthz=[3]",
            "config error: model.encoder.widthz: unknown key; valid keys: numeric_embedding, "
            "numeric_embedding_dim, periodic_frequencies, periodic_scale, widths, activation, "
            "dropout, norm, embedding_dim",
        ),
        (
            "model.head.depth=2",
            "config error: model.head.depth: unknown key; valid keys: widths, activation, "
            "dropout, norm, decoder_channels",
        ),
        ("balancer.foo=1", "config error: balancer.foo: unknown key; valid keys: weights"),
    ],
)
def test_unknown_key_names_path_and_valid_keys(override: str, expected: str) -> None:
    assert _error([override]) == expected


def test_unknown_task_key_names_the_task_entry() -> None:
    assert _error(["tasks.risk.colour=1"]).startswith(
        "config error: tasks.0.colour: unknown key; valid keys: name, kind, target, classes, "
    )


def test_unknown_key_of_a_source_lists_the_valid_ones() -> None:
    raw = _raw()
    raw["data"] = {"sources": [{"name": "a", "tasks": ["risk"], "pth": "a.csv"}]}
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert str(info.value).startswith(
        "config error: data.sources.0.pth: unknown key; valid keys: name, tasks, path, dataset, "
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "train.epochs=-1",
            "config error: train.epochs: Input should be greater than or equal to 1 (got -1)",
        ),
        (
            "train.scheduler='foo'",
            "config error: train.scheduler: Input should be 'none', 'cosine' or 'linear' "
            "(got 'foo')",
        ),
        (
            "model.encoder.name=nope",
            "config error: model.encoder.name: unknown encoder 'nope'; valid choices: "
            + ", ".join(ENCODERS.names()),
        ),
        (
            "model.architecture.name=nas",
            "config error: model.architecture.name: unknown architecture 'nas'; "
            "valid choices: " + ", ".join(ARCHITECTURES.names()),
        ),
        (
            "balancer.name=magic",
            "config error: balancer.name: unknown balancer 'magic'; "
            f"valid choices: {', '.join(sorted(BALANCERS.names()))}",
        ),
        (
            "train.criterion=risk.mae",
            "config error: train.criterion: 'risk.mae' is not valid; valid choices: "
            "mean_relative, val_loss, risk.auroc, risk.accuracy, risk.f1, "
            "risk.average_precision, stay.mae, stay.rmse, stay.r2",
        ),
        (
            "model.encoder.activation=sigmoid",
            "config error: model.encoder.activation: Input should be 'relu', 'gelu', 'silu', "
            "'tanh' or 'leaky_relu' (got 'sigmoid')",
        ),
        (
            "tasks.risk.kind=ranking",
            # Every registered kind is offered, plug-ins' ones included (tests/plugins).
            "config error: tasks.0.kind: Input should be "
            + ", ".join(f"'{k}'" for k in KINDS.names()[:-1])
            + f" or '{KINDS.names()[-1]}' (got 'ranking')",
        ),
        (
            "tasks.risk.loss=mse",
            "task 'risk': loss 'mse' does not fit kind 'binary'; valid choices: bce",
        ),
        (
            "tasks.stay.metrics=['auroc']",
            "task 'stay': metric 'auroc' does not fit kind 'regression'; "
            "valid choices: mae, rmse, r2",
        ),
        (
            "train.epochs=abc",
            # Strict types: a string is never read as a number, even one that looks like it.
            "config error: train.epochs: Input should be a valid integer (got 'abc')",
        ),
        (
            "data.split.val=0",
            "config error: data.split.val: must be > 0 (validation drives training)",
        ),
        (
            "data.split.method=group",
            "config error: data.group: split method 'group' needs a group column",
        ),
        ("tasks.stay.name=risk", "task name 'risk' is used twice"),
    ],
)
def test_bad_value_one_line_naming_key_and_choices(override: str, expected: str) -> None:
    assert _error([override]) == expected


def test_balancer_weights_for_unknown_task_fail_at_config_time() -> None:
    message = _error(["balancer.name=static", "balancer.weights={risk=1.0, nope=2.0}"])
    assert "balancer.weights" in message and "'nope'" in message and "risk, stay" in message
    assert "'risk'" in _error(["balancer.name=equal", "tasks.risk.weight=2"])


def test_overrides_are_applied() -> None:
    raw = _raw()
    before = copy.deepcopy(raw)
    cfg = config_from_dict(
        raw, ["train.epochs=3", "model.encoder.widths=[8,4]", "tasks.risk.weight=2"]
    )
    assert cfg.train.epochs == 3
    assert cfg.model.encoder.params() == {"widths": [8, 4]}
    assert cfg.tasks[0].weight == 2.0 and cfg.tasks[1].weight == 1.0
    assert raw == before  # the caller's dict is not modified
    # By index, strings without quotes, booleans, nested tables.
    cfg = config_from_dict(
        raw,
        [
            "tasks.1.loss=huber",
            "train.scheduler=linear",
            "train.progress=true",
            "data.split.seed=11",
            "balancer.weights={risk=0.5}",
        ],
    )
    assert cfg.tasks[1].loss == "huber" and cfg.train.scheduler == "linear"
    assert cfg.train.progress is True and cfg.data.split.seed == 11
    assert cfg.balancer.params() == {"weights": {"risk": 0.5}}


def test_overrides_into_absent_component_sections_keep_default_names() -> None:
    raw = _raw()
    del raw["model"]
    cfg = config_from_dict(raw, ["model.encoder.widths=[8,4]", "balancer.weights={stay=3}"])
    assert cfg.model.encoder.name == "mlp" and cfg.model.encoder.params() == {"widths": [8, 4]}
    assert cfg.balancer.name == "static" and cfg.balancer.params() == {"weights": {"stay": 3.0}}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs", "--set 'train.epochs': expected key=value, e.g. train.epochs=5"),
        ("tasks.nope.weight=1", "--set tasks.nope: no list item with index or name 'nope'"),
        ("train.epochs.x=1", "--set train.epochs.x: 'epochs' is not a section"),
    ],
)
def test_bad_override_syntax(override: str, expected: str) -> None:
    assert _error([override]) == expected


def test_load_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'seed = 3\nbaselines = false\n[data]\npath = "train.csv"\n'
        '[[tasks]]\nname = "risk"\nkind = "binary"\ntarget = "y"\n'
        "[train]\nepochs = 2\n"
    )
    cfg = load_config(path, ["train.lr=0.01"])
    assert cfg.seed == 3 and cfg.train.epochs == 2 and cfg.train.lr == 0.01
    assert cfg.resolve(cfg.data.path or "") == tmp_path.resolve() / "train.csv"
    path.write_text("seed = \n")
    with pytest.raises(ConfigError, match=r"run\.toml': not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"config file '.*missing\.toml' not found"):
        load_config(tmp_path / "missing.toml")
    path.write_text('base_dir = "/"\n')
    with pytest.raises(ConfigError, match="base_dir is set by polytask"):
        load_config(path)


@pytest.mark.parametrize("command", ["compare", "pareto", "affinity", "distill"])
def test_studies_refuse_a_task_template_in_one_line(command: str) -> None:
    raw = {
        "data": {"dataset": "synthetic_school", "task_column": "task"},
        "tasks": [{"name": "score", "kind": "regression", "target": "score"}],
    }
    cfg = config_from_dict(raw)
    with pytest.raises(ConfigError) as info:
        cfg.named_tasks(command)
    message = str(info.value)
    assert "\n" not in message and f"`polytask {command}` plans one run per task" in message
    assert config_from_dict(_raw()).named_tasks(command) == ["risk", "stay"]
