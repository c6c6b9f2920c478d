"""The shared property suite of the task kinds: every kind registered in ``KINDS`` is checked
here without being listed, from the small synthetic declaration and table it provides
(:meth:`polytask.tasks.Kind.example`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic_core import PydanticUndefined
from torch import Tensor

from polytask.data.spec import InputSpec
from polytask.data.targets import encode_targets, fit_task
from polytask.errors import ConfigError
from polytask.evaluate.metrics import compute_metrics, higher_is_better
from polytask.losses import TaskLoss, unit_losses
from polytask.models.config import ModelConfig
from polytask.models.model import build_model
from polytask.tasks import DENSE_KINDS, KINDS, LOSSES, METRICS, TASK_KINDS, Task
from polytask.tasks.config import TaskConfig
from polytask.tasks.task import FITTED_FIELDS

N = 12
SOURCE = "synthetic"


def _declared(kind: str) -> tuple[Task, pd.DataFrame]:
    declaration, table = KINDS.get(kind).example(np.random.default_rng(7), N)
    return Task("t", kind, **declaration), table


def _fitted(kind: str) -> tuple[Task, pd.DataFrame, Tensor, Tensor]:
    task, table = _declared(kind)
    task = fit_task(task, table, np.arange(len(table)), SOURCE)
    y, m = encode_targets(task, table, SOURCE)
    return task, table, y, m


def _output_mask(mask: Tensor, output: Tensor) -> Tensor:
    """The label mask broadcast over the output (row masks over logits, pixel masks over
    class channels)."""
    if mask.shape == output.shape:
        return mask
    for d in range(output.dim()):
        if output.shape[:d] + output.shape[d + 1 :] == mask.shape:
            return mask.unsqueeze(d).expand_as(output)
    if mask.dim() == 2 and mask.shape[0] == output.shape[0] and output.dim() == 4:
        # Units that do not lie on the output (detection's box slots vs its heat-map): a row
        # with no valid unit (an unlabelled image) is masked over all its outputs.
        rows = mask.any(dim=1).reshape(-1, 1, 1, 1)
        return rows.expand_as(output)
    raise AssertionError(f"mask {tuple(mask.shape)} does not fit output {tuple(output.shape)}")


kinds = pytest.mark.parametrize("kind", KINDS.names())


def test_registry_lists_every_kind_once_and_derives_the_tables() -> None:
    names = KINDS.names()
    assert len(set(names)) == len(names) == len(KINDS) == len(list(KINDS))
    # The tables hold the built-in kinds (registered first); plug-in kinds follow in KINDS.
    assert tuple(names[: len(TASK_KINDS)]) == TASK_KINDS
    assert set(LOSSES) == set(METRICS) == set(TASK_KINDS)
    assert set(DENSE_KINDS) == {k.name for k in KINDS if k.dense and k.name in TASK_KINDS}
    for name in TASK_KINDS:
        assert name in KINDS
        assert LOSSES[name] == KINDS.get(name).losses
        assert METRICS[name] == KINDS.get(name).metrics


def test_unknown_kind_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="valid choices: " + ", ".join(KINDS.names())):
        KINDS.get("ranking")
    with pytest.raises(ConfigError, match="unknown kind 'ranking'; valid choices: binary"):
        Task("t", "ranking", "y")
    with pytest.raises(ValueError, match="registered twice"):
        KINDS.register(KINDS.get(TASK_KINDS[0]))


@kinds
def test_defaults_are_among_the_choices(kind: str) -> None:
    spec = KINDS.get(kind)
    assert spec.name == kind
    assert spec.losses and spec.metrics
    task, _ = _declared(kind)
    assert task.spec is spec
    assert task.loss_name == spec.losses[0]
    assert task.primary == spec.metrics[0]
    assert task.metric_names == list(spec.metrics)
    for loss in spec.losses:
        Task("t", kind, task.target, loss=loss)
    with pytest.raises(ConfigError, match="does not fit kind"):
        Task("t", kind, task.target, loss="no_such_loss")


@kinds
def test_declaration_round_trips_through_json_and_config(kind: str) -> None:
    task, table = _declared(kind)
    fitted = fit_task(task, table, np.arange(len(table)), SOURCE)
    assert Task.from_dict(fitted.to_dict()) == fitted
    config = TaskConfig(
        name="t",
        kind=kind,
        **{
            k: v
            for k, v in task.to_dict().items()
            if k in TaskConfig.model_fields and k not in ("name", "kind")
        },
    )
    assert config.to_task() == task


@kinds
def test_every_metric_has_a_direction_before_fitting(kind: str) -> None:
    task, _ = _declared(kind)
    for name in KINDS.get(kind).metrics:
        assert isinstance(higher_is_better(task, name), bool)


def _same(decoded: object, original: object) -> bool:
    """Labels equal as text, numbers (and arrays of them) equal to 1e-2."""
    try:
        got = np.asarray(decoded, dtype=np.float64)
        want = np.asarray(original, dtype=np.float64)
    except (TypeError, ValueError):
        return str(decoded) == str(original)
    return bool(np.allclose(got, want, rtol=1e-4, atol=1e-2))


@kinds
def test_encode_decode_round_trips(kind: str) -> None:
    """Decoding the outputs of a perfect model gives back the table's labels and values."""
    task, table, y, m = _fitted(kind)
    spec = task.spec
    assert y.shape == m.shape and m.dtype == torch.bool
    assert bool(m.any()) and not bool(m.all())
    columns = spec.decode(task, spec.perfect_output(task, y))
    assert all(len(c) == len(table) for c in columns.values())
    for j, col in enumerate(task.targets):
        label = f"{task.name}.{col}"
        decoded = columns[label if label in columns else task.name]
        original = table[col].to_numpy()
        for i in range(len(table)):
            if spec.dense:
                pixels = m[i].numpy()
                if pixels.any():
                    assert _same(np.asarray(decoded[i])[pixels], np.asarray(original[i])[pixels])
            elif bool(m[i] if m.dim() == 1 else m[i, j]):
                assert _same(decoded[i], original[i]), (col, i, decoded[i], original[i])


@kinds
def test_perfect_predictions_cost_least(kind: str) -> None:
    """A perfect prediction's loss is finite, below a constant prediction's and not lowered
    by small perturbations (zero for the built-in kinds)."""
    task, _, y, m = _fitted(kind)
    perfect = task.spec.perfect_output(task, y)
    loss_fn = TaskLoss(task)
    best = loss_fn(perfect, y, m)
    constant = loss_fn(torch.zeros_like(perfect), y, m)
    assert best is not None and constant is not None
    assert math.isfinite(float(best)) and float(best) < float(constant)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        nudged = loss_fn(perfect + 0.1 * torch.randn(perfect.shape, generator=g), y, m)
        assert nudged is not None and float(best) <= float(nudged) + 1e-7
    builtin = ("binary", "multiclass", "multilabel", "regression", "segmentation")
    if kind in (*builtin, "dense_regression"):  # the built-in kinds' losses reach zero
        assert float(best) < 1e-6


@kinds
def test_masked_entries_contribute_nothing(kind: str) -> None:
    task, _, y, m = _fitted(kind)
    g = torch.Generator().manual_seed(1)
    out = torch.randn(task.spec.perfect_output(task, y).shape, generator=g).requires_grad_(True)
    noisy = y.clone()
    if noisy.is_floating_point():
        noisy[~m] = float("nan")
    else:
        noisy[~m] = 99  # an out-of-range class index
    loss_fn = TaskLoss(task)
    clean, dirty = loss_fn(out, y, m), loss_fn(out, noisy, m)
    assert clean is not None and dirty is not None
    assert float(dirty.detach()) == float(clean.detach())
    dirty.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    assert (out.grad[~_output_mask(m, out)] == 0).all()
    assert loss_fn(out, y, torch.zeros_like(m)) is None


@kinds
def test_unit_losses_average_to_the_loss(kind: str) -> None:
    task, _, y, m = _fitted(kind)
    out = torch.randn(
        task.spec.perfect_output(task, y).shape, generator=torch.Generator().manual_seed(2)
    )
    loss_fn = TaskLoss(task)
    units = unit_losses(loss_fn, out, y)
    assert units.shape == m.shape
    assert torch.isfinite(units).all()
    loss = loss_fn(out, y, m)
    assert loss is not None
    assert float(units[m].mean()) == pytest.approx(float(loss), rel=1e-5)


@kinds
def test_metrics_are_finite_on_a_tiny_batch(kind: str) -> None:
    task, _, y, m = _fitted(kind)
    out = task.spec.perfect_output(task, y)
    noisy = out + torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    for output in (out, noisy):
        values = compute_metrics(task, output, y, m)
        assert set(values) == set(task.metric_names)
        assert all(math.isfinite(v) for v in values.values()), values
    empty = compute_metrics(task, out, y, torch.zeros_like(m))
    assert all(math.isnan(v) for v in empty.values())


@kinds
def test_teacher_of_the_same_task_teaches_with_zero_divergence(kind: str) -> None:
    task, _, y, _ = _fitted(kind)
    spec = task.spec
    if not spec.distillable:  # it refuses every teacher, in one line saying why
        refusal = spec.teacher_mismatch(task, task)
        assert refusal is not None and "\n" not in refusal
        return
    out = spec.perfect_output(task, y) * 0.1
    assert spec.teacher_mismatch(task, task) is None
    moved = spec.to_student_units(task, task, out)
    torch.testing.assert_close(moved, out)
    d = spec.teacher_units(out, out, 2.0)
    assert torch.isfinite(d).all()
    assert float(d.abs().max()) < 1e-5


@kinds
def test_n_outputs_matches_the_built_head(kind: str) -> None:
    task, _, y, _ = _fitted(kind)
    n = y.shape[0]
    if task.spec.token_level:
        # Token-level kinds read a sequence encoder's word vectors: n sentences of T words.
        t = y.shape[1]
        spec = InputSpec(kind="tokens", shape=[3], vocab_size=5, char_vocab_size=4)
        encoder = {"name": "tokens", "word_dim": 4, "char_dim": 2, "char_filters": 2}
        cfg = ModelConfig.model_validate(
            {"encoder": {**encoder, "width": 4, "layers": 1}, "head": {"widths": [4]}}
        )
        inputs = {
            "words": torch.full((n, t), 2),
            "chars": torch.full((n, t, 3), 2, dtype=torch.int16),
            "lengths": torch.full((n,), t),
        }
    else:
        shape = list(y.shape[1:]) if task.dense else [4, 5]
        spec = InputSpec(kind="image", shape=[1, *shape[-2:]])
        cfg = ModelConfig.model_validate(
            {
                "encoder": {"name": "cnn", "widths": [4], "blocks": 1},
                "head": {"widths": [4], "decoder_channels": [4]},
            }
        )
        inputs = {"image": torch.randn(n, *spec.shape)}
    model = build_model([task], spec, cfg, seed=0)
    with torch.no_grad():
        output = model(inputs)[task.name]
    assert output.shape == task.spec.perfect_output(task, y).shape
    if task.spec.token_level:  # [B, T', ...]: the kind's own layout after the words
        assert tuple(output.shape[:2]) == (n, y.shape[1])
        return
    assert task.n_outputs in (1, *output.shape[1:2])
    if task.n_outputs > 1:
        assert output.shape[1] == task.n_outputs


def test_the_config_entry_declares_exactly_the_tasks_declared_fields() -> None:
    # TaskConfig restates Task's declared fields for pydantic's bounds and messages; this keeps
    # the two from drifting apart (names, order and defaults).
    declared = [f for f in dataclasses.fields(Task) if f.name not in FITTED_FIELDS]
    assert list(TaskConfig.model_fields) == [f.name for f in declared]
    for f in declared:
        default = None if f.default is dataclasses.MISSING else f.default
        assert TaskConfig.model_fields[f.name].default in (default, PydanticUndefined), f.name
