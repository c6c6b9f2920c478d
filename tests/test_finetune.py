"""Transfer learning: ``polytask finetune`` and the ``[finetune]`` freeze / learning-rate /
gradual-unfreezing options.

One small base model (an MLP with batch norm and dropout, 3 shared layers, two tasks) is
trained once per module; each test fine-tunes it for a few epochs on a few hundred rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from conftest import run_cli, toml_text
from polytask import config_from_dict, run
from polytask.errors import ConfigError, DataError
from polytask.models.model import build_model
from polytask.run.pipeline import RunResult
from polytask.studies.finetune import finetune, layer_groups, plan_freeze
from polytask.train.config import FinetuneConfig
from polytask.train.trainer import EpochRecord, Trainer
from polytask.train.unfreeze import GradualUnfreezing

pytestmark = pytest.mark.usefixtures("torch_single_thread")

WIDTHS = [16, 16, 8]
TRAIN = {"epochs": 3, "batch_size": 64, "lr": 0.01, "progress": False, "scheduler": "none"}


def toy_table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Four numeric features; ``a`` = [x1 + x2 > 0], ``c`` = x3 - x4 + noise (the base's
    tasks) and ``b`` = [x1 + x2 + x3 - x4 > 0] (a new task: a simple function of what the base
    learned to compute)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    frame = pd.DataFrame(x, columns=["x1", "x2", "x3", "x4"])
    frame["a"] = (x[:, 0] + x[:, 1] > 0).astype(int)
    frame["c"] = x[:, 2] - x[:, 3] + 0.1 * rng.normal(size=n)
    frame["b"] = (x[:, 0] + x[:, 1] + x[:, 2] - x[:, 3] > 0).astype(int)
    return frame  # type: ignore[no-any-return]


def base_raw(**model: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {"ignore": ["b"]},
        "tasks": [
            {"name": "a", "kind": "binary", "target": "a"},
            {"name": "c", "kind": "regression", "target": "c"},
        ],
        # The MLP's default norm is batch norm and its default dropout 0.1: both must stay put
        # in a frozen encoder.
        "model": {"encoder": {"name": "mlp", "widths": WIDTHS}, **model},
        "train": {**TRAIN, "epochs": 6},
    }


def ft_raw(tasks: list[dict[str, Any]] | None = None, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "seed": 1,
        "data": {},
        "tasks": tasks or [{"name": "b", "kind": "binary", "target": "b"}],
        "train": dict(TRAIN),
    }
    raw.update(sections)
    return raw


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return toy_table()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, table: pd.DataFrame) -> Path:
    out = tmp_path_factory.mktemp("base")
    run(config_from_dict(base_raw()), frame=table.drop(columns=["b"]), out=out, quiet=True)
    return out / "model"


@pytest.fixture(scope="module")
def frozen_run(
    tmp_path_factory: pytest.TempPathFactory, base: Path, table: pd.DataFrame
) -> RunResult:
    """The default policy: the whole shared encoder frozen, a new task ``b``."""
    out = tmp_path_factory.mktemp("frozen") / "run"
    return finetune(base, config_from_dict(ft_raw()), frame=table, out=out, quiet=True)


def _state(model_dir: Path) -> dict[str, torch.Tensor]:
    return polytask.load(model_dir).model.state_dict()


def test_frozen_encoder_leaves_every_base_tensor_bit_identical(
    frozen_run: RunResult, base: Path
) -> None:
    before, after = _state(base), _state(frozen_run.out_dir / "model")  # type: ignore[operator]
    # Every base tensor is frozen here (encoder, batch-norm statistics, the kept heads).
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * len(WIDTHS)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    # ... while the new head did train: its weights are not the seed's initialisation.
    fresh = build_model(
        frozen_run.predictor.tasks,
        frozen_run.predictor.input_spec,
        frozen_run.predictor.model_config,
        seed=1,
    ).state_dict()
    head = [k for k in after if ".heads.b." in k]
    assert head and all(not torch.equal(after[k], fresh[k]) for k in head)
    check = frozen_run.predictor.metrics["old_tasks"]
    assert check["frozen_tensors"]["unchanged"] is True
    assert check["frozen_tensors"]["count"] == len(before)


def test_old_heads_outputs_unchanged_under_a_frozen_encoder(
    frozen_run: RunResult, base: Path
) -> None:
    fresh_rows = toy_table(300, seed=7)
    old = polytask.load(base).outputs(fresh_rows)
    new = polytask.load(frozen_run.out_dir / "model").outputs(fresh_rows)  # type: ignore[operator]
    for task in ("a", "c"):
        assert torch.equal(old[task], new[task])
    outputs = frozen_run.predictor.metrics["old_tasks"]["outputs"]
    assert outputs["rows"] == 180 and outputs["split"] == "val+test"
    for task in ("a", "c"):
        assert outputs["per_task"][task] == {"max_abs_diff": 0.0, "unchanged": True}
    assert frozen_run.predictor.metrics["old_tasks"]["measured"] is False


def test_a_new_task_learns_on_the_frozen_features(frozen_run: RunResult) -> None:
    # b = [x1 + x2 + x3 - x4 > 0] combines the directions the base's tasks taught the encoder.
    assert frozen_run.metrics["b"]["auroc"] > 0.9
    assert frozen_run.comparison.reference == "base model"


def test_lineage_records_base_freeze_and_data(frozen_run: RunResult, base: Path) -> None:
    model_dir = frozen_run.out_dir / "model"  # type: ignore[operator]
    lineage = json.loads((model_dir / "lineage.json").read_text())
    digest = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    assert lineage["kind"] == "finetune"
    assert lineage["base"]["directory"] == str(base.resolve())
    assert lineage["base"]["model_sha256"] == digest
    assert lineage["tasks"] == {
        "new": ["b"],
        "continued": [],
        "kept_frozen": ["a", "c"],
        "dropped": [],
    }
    params = [n for n, _ in polytask.load(base).model.named_parameters()]
    assert sorted(lineage["freeze"]["frozen_parameters"]) == sorted(params)
    assert lineage["freeze"]["policy"] == "encoder"
    assert lineage["freeze"]["layer_groups"] == [
        "architecture.encoder.body.0",
        "architecture.encoder.body.4",
        "architecture.encoder.body.8",
    ]
    assert lineage["data"]["rows"] == {"train": 420, "val": 90, "test": 90}
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", lineage["created"])
    assert lineage["polytask_version"] == polytask.__version__
    loaded = polytask.load(model_dir)
    assert loaded.lineage == lineage
    assert loaded.task_names == ["a", "c", "b"]


def test_unfrozen_encoder_re_measures_the_old_tasks(
    base: Path, table: pd.DataFrame, tmp_path: Path
) -> None:
    reference = toy_table(300, seed=3)
    reference.to_csv(tmp_path / "reference.csv", index=False)
    raw = ft_raw(finetune={"freeze": "none", "reference_data": "reference.csv"})
    cfg = config_from_dict(raw, base_dir=tmp_path)
    result = finetune(base, cfg, frame=table, out=tmp_path / "run", quiet=True)
    old = result.predictor.metrics["old_tasks"]
    assert old["measured"] is True and old["on"].startswith("reference data")
    # Reference computation: both models scored on the same table by Predictor.evaluate.
    before = polytask.load(base).evaluate(reference, ["a", "c"])
    after = polytask.load(tmp_path / "run" / "model").evaluate(reference, ["a", "c"])
    for task, metric in (("a", "auroc"), ("c", "mae")):
        row = old["per_task"][task]
        assert row["metric"] == metric
        assert row["base"] == pytest.approx(before[task][metric], abs=1e-6)
        assert row["finetuned"] == pytest.approx(after[task][metric], abs=1e-6)
        assert row["change"] == pytest.approx(row["finetuned"] - row["base"], abs=1e-9)
        worse = (
            row["finetuned"] < row["base"] if metric == "auroc" else row["finetuned"] > row["base"]
        )
        assert row["worse"] is worse
    # The encoder trained, so the old heads' outputs moved (and were reported as moved).
    assert not any(c["unchanged"] for c in old["outputs"]["per_task"].values())

    # Without reference data: the run's own test rows, which hold the old labels here ...
    raw = ft_raw(finetune={"freeze": "none"})
    result = finetune(base, config_from_dict(raw), frame=table, quiet=True)
    assert result.predictor.metrics["old_tasks"]["on"] == "the run's test split"
    # ... and when they do not, the report says so.
    unlabelled = table.drop(columns=["a", "c"])
    result = finetune(base, config_from_dict(raw), frame=unlabelled, quiet=True)
    old = result.predictor.metrics["old_tasks"]
    assert old["measured"] is False and "no label column" in old["reason"]


def test_layers_freezes_exactly_the_first_n_layer_groups(base: Path, table: pd.DataFrame) -> None:
    raw = ft_raw(finetune={"freeze": "layers", "layers": 2})
    result = finetune(base, config_from_dict(raw), frame=table, quiet=True)
    before, after = _state(base), result.predictor.model.state_dict()
    groups = layer_groups(polytask.load(base).model)
    assert [len(g.parameters) for g in groups] == [4, 4, 4]  # Linear + BatchNorm each
    for group in groups[:2]:
        for name in [*group.parameters, *group.buffers]:
            assert torch.equal(before[name], after[name]), name
    top = groups[2]
    assert all(not torch.equal(before[n], after[n]) for n in top.parameters)
    assert not torch.equal(before[top.buffers[0]], after[top.buffers[0]])  # running mean moved
    frozen = set(result.predictor.lineage["freeze"]["frozen_parameters"])
    assert {n for g in groups[:2] for n in g.parameters} <= frozen
    assert not frozen & set(top.parameters)

    too_many = ft_raw(finetune={"freeze": "layers", "layers": 4})
    with pytest.raises(ConfigError, match=r"finetune\.layers: 4 layers .* encoder has 3"):
        finetune(base, config_from_dict(too_many), frame=table, quiet=True)


def test_gradual_unfreezing_releases_groups_top_down(base: Path, table: pd.DataFrame) -> None:
    seen: list[list[bool]] = []

    def trainable_groups(trainer: Trainer, record: EpochRecord) -> None:
        # Runs before the unfreezing callback: the state the epoch just trained with.
        groups = layer_groups(trainer.model)
        seen.append([all(p.requires_grad for p in g.parameters.values()) for g in groups])

    raw = ft_raw(finetune={"unfreeze": "gradual"})
    raw["train"]["patience"] = None
    result = finetune(
        base, config_from_dict(raw), frame=table, quiet=True, callbacks=[trainable_groups]
    )
    assert seen == [[False, False, False], [False, False, True], [False, True, True]]
    released = result.predictor.lineage["freeze"]["released"]
    assert released == [
        {"after_epoch": 1, "group": "architecture.encoder.body.8"},
        {"after_epoch": 2, "group": "architecture.encoder.body.4"},
    ]
    before, after = _state(base), result.predictor.model.state_dict()
    bottom = layer_groups(result.predictor.model)[0]
    assert all(torch.equal(before[n], after[n]) for n in [*bottom.parameters, *bottom.buffers])
    assert result.predictor.lineage["freeze"]["frozen_at_end"][:4] == list(bottom.parameters)


def test_gradual_unfreezing_state_follows_the_epoch_count(base: Path) -> None:
    # A resumed run jumps straight to its epoch: the state (and the record) must be the
    # uninterrupted run's.
    model = polytask.load(base).model
    plan = plan_freeze(model, FinetuneConfig(unfreeze="gradual", unfreeze_every=2), "hard")
    plan.apply(model, 0)
    unfreezing = GradualUnfreezing(model, plan, every=2)
    unfreezing.sync(5)
    assert plan.released == 2
    assert [r["after_epoch"] for r in unfreezing.released] == [2, 4]
    trainable = [all(p.requires_grad for p in g.parameters.values()) for g in plan.groups]
    assert trainable == [False, True, True]
    unfreezing.sync(100)
    assert plan.released == 3 and all(p.requires_grad for p in model.shared_parameters())


def test_learning_rate_scales_reach_the_optimizer(base: Path, table: pd.DataFrame) -> None:
    groups: list[tuple[float, set[int]]] = []

    def record(trainer: Trainer, record: EpochRecord) -> None:
        if not groups:
            groups.extend(
                (g["lr"], {id(p) for p in g["params"]}) for g in trainer.optimizer.param_groups
            )

    raw = ft_raw(finetune={"freeze": "none", "shared_lr_scale": 0.1, "head_lr_scale": 2.0})
    result = finetune(base, config_from_dict(raw), frame=table, quiet=True, callbacks=[record])
    model = result.predictor.model
    shared = {id(p) for p in model.shared_parameters()}
    head = {id(p) for p in model.task_parameters("b")}
    assert len(groups) == 2
    assert groups[0][0] == pytest.approx(0.01 * 0.1) and groups[0][1] == shared
    assert groups[1][0] == pytest.approx(0.01 * 2.0) and groups[1][1] == head
    kept = {id(p) for t in ("a", "c") for p in model.task_parameters(t)}
    assert not kept & (groups[0][1] | groups[1][1])  # the kept heads never train


def test_layer_lr_decay_gives_each_lower_layer_a_smaller_rate(
    base: Path, table: pd.DataFrame
) -> None:
    lrs: list[tuple[float, set[int]]] = []

    def record(trainer: Trainer, record: EpochRecord) -> None:
        if not lrs:
            lrs.extend(
                (g["lr"], {id(p) for p in g["params"]}) for g in trainer.optimizer.param_groups
            )

    policy = {"freeze": "none", "shared_lr_scale": 0.1, "layer_lr_decay": 0.5}
    raw = ft_raw(finetune=policy)
    result = finetune(base, config_from_dict(raw), frame=table, quiet=True, callbacks=[record])
    model = result.predictor.model
    layers = layer_groups(model)
    assert len(layers) == 3 and len(lrs) == 4  # one group per shared layer, then the head
    for layer, (lr, params) in zip(layers, lrs, strict=False):
        assert params == {id(p) for p in layer.parameters.values()}
        assert lr == pytest.approx(0.01 * 0.1 * 0.5 ** (2 - layer.index))
    assert set().union(*(p for _, p in lrs[:3])) == {id(p) for p in model.shared_parameters()}
    assert lrs[3][0] == pytest.approx(0.01)
    assert result.predictor.lineage is not None
    assert result.predictor.lineage["learning_rates"]["layer_lr_decay"] == 0.5


def test_continued_task_keeps_the_base_fit(base: Path, tmp_path: Path) -> None:
    shifted = toy_table(400, seed=5)
    shifted["c"] = shifted["c"] * 3 + 10  # new data, other scale: the head's scale stays
    tasks = [{"name": "c", "kind": "regression", "target": "c"}]
    result = finetune(base, config_from_dict(ft_raw(tasks)), frame=shifted, quiet=True)
    old = {t.name: t for t in polytask.load(base).tasks}["c"]
    new = {t.name: t for t in result.predictor.tasks}["c"]
    assert (new.target_mean, new.target_std) == (old.target_mean, old.target_std)
    assert result.predictor.lineage["tasks"]["continued"] == ["c"]
    assert result.predictor.lineage["tasks"]["kept_frozen"] == ["a"]
    assert set(result.baseline_metrics) == {"c"}  # the base model scored on the same rows
    assert result.comparison.rows[0].single_task == result.baseline_metrics["c"]["mae"]


def test_dropped_tasks_leave_the_model(base: Path, table: pd.DataFrame) -> None:
    raw = ft_raw(finetune={"keep_tasks": False})
    result = finetune(base, config_from_dict(raw), frame=table, quiet=True)
    assert result.predictor.task_names == ["b"]
    assert result.predictor.lineage["tasks"]["dropped"] == ["a", "c"]


def test_a_model_section_unlike_the_base_fails_naming_the_key(
    base: Path, table: pd.DataFrame, tmp_path: Path
) -> None:
    raw = ft_raw(model={"encoder": {"name": "mlp", "widths": [8]}})
    with pytest.raises(ConfigError) as info:
        finetune(base, config_from_dict(raw), frame=table, out=tmp_path / "run", quiet=True)
    assert str(info.value) == (
        "config error: model.encoder.widths: [8] differs from the base model's [16, 16, 8] "
        "(finetune keeps the base's architecture; remove [model] or match it)"
    )
    assert not (tmp_path / "run").exists()
    # The base's own architecture, written out with defaults, is accepted.
    same = ft_raw(model={"encoder": {"name": "mlp", "widths": WIDTHS, "dropout": 0.1}})
    finetune(base, config_from_dict(same), frame=table, quiet=True)


def test_a_base_task_redefined_fails_naming_the_task(base: Path, table: pd.DataFrame) -> None:
    raw = ft_raw([{"name": "a", "kind": "regression", "target": "a"}])
    with pytest.raises(ConfigError, match=r"task 'a': kind 'regression' differs .* \('binary'\)"):
        finetune(base, config_from_dict(raw), frame=table, quiet=True)
    raw = ft_raw([{"name": "a", "kind": "binary", "target": "b"}])
    with pytest.raises(ConfigError, match=r"task 'a': target 'b' differs"):
        finetune(base, config_from_dict(raw), frame=table, quiet=True)


def test_bad_data_fails_before_training(base: Path, table: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="x4"):
        finetune(base, config_from_dict(ft_raw()), frame=table.drop(columns=["x4"]), quiet=True)
    raw = ft_raw([{"name": "leak", "kind": "regression", "target": "x1"}])
    with pytest.raises(ConfigError, match="target column 'x1' is an input of the base model"):
        finetune(base, config_from_dict(raw), frame=table, quiet=True)


@pytest.mark.parametrize(
    ("balancer", "message"),
    [
        ("gradnorm", "balancer 'gradnorm' weighs the tasks by their gradients on the last shared "
         "layer, which is frozen"),
        ("upgrad", "'upgrad' balances the tasks' gradients of the shared parameters"),
    ],
)  # fmt: skip
def test_gradient_balancers_on_a_frozen_encoder_fail_before_writing(
    base: Path, table: pd.DataFrame, tmp_path: Path, balancer: str, message: str
) -> None:
    raw = ft_raw(balancer={"name": balancer})
    with pytest.raises(ConfigError, match=re.escape(message)):
        finetune(base, config_from_dict(raw), frame=table, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_cross_stitch_cannot_take_a_new_task(tmp_path: Path, table: pd.DataFrame) -> None:
    raw = base_raw(architecture={"name": "cross_stitch"})
    raw["model"]["encoder"]["widths"] = [8]
    raw["train"]["epochs"] = 1
    run(config_from_dict(raw), frame=table.drop(columns=["b"]), out=tmp_path / "cs", quiet=True)
    with pytest.raises(ConfigError) as info:
        finetune(tmp_path / "cs", config_from_dict(ft_raw()), frame=table, quiet=True)
    assert str(info.value) == (
        f"base model '{(tmp_path / 'cs' / 'model').resolve()}': architecture 'cross_stitch' "
        "cannot take new tasks: parameter architecture.stitches.0.alpha has shape [2, 2] in the "
        "base, [3, 3] with the new tasks"
    )


def test_a_training_run_applies_its_finetune_section(table: pd.DataFrame, tmp_path: Path) -> None:
    # What polytask train does for a pretrained encoder, shown on an MLP: its first layer
    # stays at its initial weights.
    raw = base_raw()
    raw["train"]["epochs"] = 2
    raw["finetune"] = {"freeze": "layers", "layers": 1, "shared_lr_scale": 0.5}
    result = run(config_from_dict(raw), frame=table, quiet=True)
    init = build_model(
        result.predictor.tasks, result.predictor.input_spec, result.predictor.model_config, 0
    ).state_dict()
    trained = result.predictor.model.state_dict()
    first, second = layer_groups(result.predictor.model)[:2]
    assert all(torch.equal(init[n], trained[n]) for n in [*first.parameters, *first.buffers])
    assert not torch.equal(
        init[next(iter(second.parameters))], trained[next(iter(second.parameters))]
    )

    raw["finetune"] = {"freeze": "layers", "layers": 9}
    with pytest.raises(ConfigError, match=r"finetune\.layers"):
        run(config_from_dict(raw), frame=table, out=tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()


def test_cli_train_finetune_predict(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    toy_table(400).to_csv(data, index=False)
    base_cfg = base_raw()
    base_cfg["data"]["path"] = "data.csv"
    (tmp_path / "base.toml").write_text(toml_text(base_cfg))
    trained = run_cli("train", tmp_path / "base.toml", "--out", tmp_path / "base", "-q")
    assert trained.code == 0, trained.err
    ft_cfg = ft_raw()
    ft_cfg["data"]["path"] = "data.csv"
    (tmp_path / "ft.toml").write_text(toml_text(ft_cfg))
    tuned = run_cli(
        "finetune",
        tmp_path / "base",
        tmp_path / "ft.toml",
        "--out",
        tmp_path / "ft",
        "-q",
        "--set",
        "train.epochs=2",
    )
    assert tuned.code == 0, tuned.err
    assert "old task 'a': outputs unchanged (bit-identical on 120 val+test rows)" in tuned.out
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["multi_task"]["b"]
    predicted = run_cli("predict", tmp_path / "ft", data, "-o", tmp_path / "pred.csv")
    assert predicted.code == 0, predicted.err
    columns = pd.read_csv(tmp_path / "pred.csv").columns
    assert {"a", "a_proba", "c", "b", "b_proba"} <= set(columns)

    bad = run_cli("finetune", tmp_path / "nowhere", tmp_path / "ft.toml", "--out", tmp_path / "x")
    assert bad.code == 2
    assert bad.err.strip().count("\n") == 0
    assert "model directory" in bad.err and "not found" in bad.err
    assert not (tmp_path / "x").exists()


class _Stop(Exception):
    pass


def _stop_after_epoch_2(trainer: Trainer, record: EpochRecord) -> None:
    if record.epoch == 2:
        raise _Stop


def test_resumed_gradual_unfreezing_matches_the_uninterrupted_run(
    base: Path, table: pd.DataFrame, tmp_path: Path
) -> None:
    raw = ft_raw(finetune={"unfreeze": "gradual"})
    raw["train"].update(patience=None, epochs=4)
    full = finetune(base, config_from_dict(raw), frame=table, out=tmp_path / "full", quiet=True)
    with pytest.raises(_Stop):
        finetune(
            base,
            config_from_dict(raw),
            frame=table,
            out=tmp_path / "cut",
            quiet=True,
            callbacks=[_stop_after_epoch_2],
        )
    resumed = finetune(
        base, config_from_dict(raw), frame=table, out=tmp_path / "cut", resume=True, quiet=True
    )
    a, b = full.predictor.model.state_dict(), resumed.predictor.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    released = full.predictor.lineage["freeze"]["released"]
    assert [r["after_epoch"] for r in released] == [1, 2, 3]
    assert resumed.predictor.lineage["freeze"]["released"] == released
