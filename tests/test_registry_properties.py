"""Properties every registered component must have, checked over the registries themselves.

Parametrised over ``BALANCERS.names()`` and ``ENCODERS.names()`` (plug-ins' included), so a new
component is checked without editing a list. Only properties every method claims are asserted:

* balancers: a step with every task present gives finite weights for exactly those tasks and
  finite gradients; a task absent from the losses gets no gradient on its head; losses scaled by
  1e-6 or 1e6 still give finite weights and gradients; a method that draws no random numbers
  gives each task the same weight whatever the order of the tasks.
* encoders: built for a small input of the kind they read, a batch gives ``[B, out_dim]`` (or
  ``[B, out_dim, h, w]`` feature maps for spatial encoders), finite.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from polytask.balance import BALANCERS, Balancer, build_balancer
from polytask.data.molgraph import featurise_graphs
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.models.config import ModelConfig
from polytask.models.encoders import ENCODERS
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # 2 shared cores: threads only wait

TASKS = [
    Task("a", "regression", target="ya"),
    Task("b", "binary", target="yb"),
    Task("c", "regression", target="yc"),
]
NAMES = [t.name for t in TASKS]

#: EPO's preference ray, given per task (the parameter lists it in task order).
PREFERENCE = {"a": 1.0, "b": 2.0, "c": 3.0}


def _required_params(name: str, tasks: list[Task]) -> dict[str, Any]:
    """Parameters a balancer cannot be built without (everything else uses its defaults)."""
    if name == "graddrop":  # drops signs of the representation's gradients
        return {"mode": "representation"}
    if name == "epo":
        return {"preference": [PREFERENCE[t.name] for t in tasks]}
    return {}


#: Model settings a balancer needs (COSMOS trains a preference-conditioned model).
REQUIRED_MODEL: dict[str, dict[str, Any]] = {"cosmos": {"preference_conditioning": "film"}}


def _model(name: str, tasks: list[Task] = TASKS) -> MultiTaskModel:
    cfg = ModelConfig.model_validate(
        {
            "encoder": {"name": "mlp", "widths": [8, 6], "dropout": 0.0},
            "head": {"widths": [4]},
            **REQUIRED_MODEL.get(name, {}),
        }
    )
    return build_model(tasks, InputSpec(n_numeric=5), cfg, seed=0)


def _balancer(name: str, tasks: list[Task] = TASKS) -> Balancer:
    try:
        return build_balancer(name, _required_params(name, tasks), tasks)
    except ConfigError as exc:
        pytest.fail(f"balancer {name!r} needs settings: add them to _required_params ({exc})")


def _batch(n: int = 16) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(0)
    inputs = {"numeric": torch.randn(n, 5, generator=g)}
    targets = {
        "a": torch.randn(n, generator=g),
        "b": (torch.rand(n, generator=g) > 0.5).float(),
        "c": 3 * torch.randn(n, generator=g) + 1,
    }
    return inputs, targets


def _weights_of(result: Any) -> dict[str, float]:
    """The per-task weights of ``Balancer.backward``'s result (a result object or a dict)."""
    weights = getattr(result, "weights", result)
    assert isinstance(weights, dict)
    return {k: float(v) for k, v in weights.items()}


def _step(
    bal: Balancer,
    model: MultiTaskModel,
    present: list[str],
    *,
    scale: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """One training step's backward on a fixed batch: the weights the balancer applied."""
    bal.check_model(model)
    model.train()
    model.zero_grad(set_to_none=True)
    inputs, targets = _batch()
    torch.manual_seed(seed)
    outputs = bal.forward(model, inputs)
    losses = {
        n: scale
        * (
            F.binary_cross_entropy_with_logits(outputs[n], targets[n])
            if n == "b"
            else F.mse_loss(outputs[n], targets[n])
        )
        for n in present
    }
    return _weights_of(bal.backward(losses, model))


def _assert_finite_grads(model: MultiTaskModel, name: str) -> None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, f"{name}: the step gave no gradient"
    assert all(bool(torch.isfinite(g).all()) for g in grads), f"{name}: non-finite gradient"
    shared = [p.grad for p in model.shared_parameters() if p.grad is not None]
    assert shared and any(bool(g.abs().sum() > 0) for g in shared), f"{name}: no shared update"


@pytest.mark.parametrize("name", BALANCERS.names())
def test_balancer_step_with_every_task_and_with_one_absent(name: str) -> None:
    model = _model(name)
    weights = _step(_balancer(name), model, NAMES)
    assert set(weights) == set(NAMES), (name, weights)
    assert all(torch.isfinite(torch.tensor(w)) for w in weights.values()), (name, weights)
    _assert_finite_grads(model, name)

    model = _model(name)
    weights = _step(_balancer(name), model, ["a", "c"])  # task b has no label in this batch
    assert set(weights) == {"a", "c"}, (name, weights)
    assert all(torch.isfinite(torch.tensor(w)) for w in weights.values()), (name, weights)
    _assert_finite_grads(model, name)
    assert all(p.grad is None or not p.grad.any() for p in model.task_parameters("b")), name


@pytest.mark.parametrize("scale", [1e-6, 1e6], ids=["tiny", "huge"])
@pytest.mark.parametrize("name", BALANCERS.names())
def test_balancer_handles_losses_on_any_scale(name: str, scale: float) -> None:
    model = _model(name)
    weights = _step(_balancer(name), model, NAMES, scale=scale)
    assert set(weights) == set(NAMES)
    assert all(torch.isfinite(torch.tensor(w)) for w in weights.values()), (name, scale, weights)
    _assert_finite_grads(model, name)


def _draws_random_numbers(name: str) -> bool:
    """Whether seeds change the weights or the update of the same first step (several seeds: a
    random order of 2 other tasks is the same for two seeds half the time)."""
    runs = []
    for seed in range(6):
        model = _model(name)
        weights = _step(_balancer(name), model, NAMES, seed=seed)
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        runs.append((weights, grads))
    w0, g0 = runs[0]
    return any(w != w0 or not torch.equal(g, g0) for w, g in runs[1:])


@pytest.mark.parametrize("name", BALANCERS.names())
def test_balancer_weights_follow_the_tasks_not_their_order(name: str) -> None:
    if _draws_random_numbers(name):
        pytest.skip(f"{name} draws random numbers: its weights depend on the draw, not the order")
    model = _model(name)
    forward = _step(_balancer(name), model, NAMES)
    order = [TASKS[2], TASKS[0], TASKS[1]]  # c, a, b: the same tasks, heads and batch
    reordered = _step(_balancer(name, order), _model(name), [t.name for t in order])
    assert list(reordered) == [t.name for t in order]
    for task in NAMES:
        assert reordered[task] == pytest.approx(forward[task], rel=1e-3, abs=1e-5), (name, task)


# -- encoders -----------------------------------------------------------------------------------

BATCH = 4
#: Encoders that cannot be built offline from a tiny spec.
SKIP_ENCODERS = {
    "minilm": "needs the pretrained all-MiniLM-L6-v2 weights (the text extra)",
    "hf": "needs a saved Hugging Face model directory (tests/test_backbones.py builds one)",
    "hf_words": "needs a saved Hugging Face model directory (tests/test_hf_words.py builds one)",
    "timm": "needs timm and a model name (tests/test_backbones.py uses a stand-in)",
}


def _inputs(kind: str) -> tuple[InputSpec, dict[str, Tensor]]:
    """A cheap input spec of ``kind`` and a batch of it."""
    g = torch.Generator().manual_seed(0)
    if kind == "table":
        spec = InputSpec(n_numeric=5, cardinalities=[4, 3])
        cats = torch.stack([torch.randint(0, c, (BATCH,), generator=g) for c in (4, 3)], dim=1)
        return spec, {"numeric": torch.randn(BATCH, 5, generator=g), "categorical": cats}
    if kind == "image":
        spec = InputSpec(kind="image", shape=[3, 16, 16])
        return spec, {"image": torch.randn(BATCH, 3, 16, 16, generator=g)}
    if kind == "audio":
        spec = InputSpec(kind="audio", shape=[4000], sample_rate=8000)
        return spec, {"audio": torch.randn(BATCH, 4000, generator=g)}
    if kind == "multi":  # an image and table columns per example (the fusion encoder)
        (table, columns), (image, pixels) = _inputs("table"), _inputs("image")
        keyed = {f"patient.{k}": v for k, v in columns.items()}
        keyed.update({f"scan.{k}": v for k, v in pixels.items()})
        return InputSpec(kind="multi", parts={"patient": table, "scan": image}), keyed
    if kind == "graph":  # molecular graphs of the smiles input (the dmpnn and gin encoders)
        padded = featurise_graphs(["CCO", "c1ccccc1", "[NH4+]", "CC(=O)[O-]"]).padded()
        return InputSpec(kind="graph"), {k: torch.from_numpy(v) for k, v in padded.items()}
    if kind == "tokens":  # sentences as word and character ids (the tokens encoder)
        spec = InputSpec(kind="tokens", shape=[6], vocab_size=30, char_vocab_size=20)
        lengths = torch.tensor([5, 1, 3, 0])
        real = torch.arange(5) < lengths.unsqueeze(1)
        words = torch.randint(1, 30, (BATCH, 5), generator=g) * real
        chars = torch.randint(1, 20, (BATCH, 5, 6), generator=g) * real.unsqueeze(-1)
        return spec, {"words": words, "chars": chars.to(torch.int16), "lengths": lengths}
    spec = InputSpec(kind="text", shape=[12], vocab_size=50)
    return spec, {"tokens": torch.randint(1, 50, (BATCH, 12), generator=g)}


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_builds_for_its_input_kind_and_encodes_a_batch(name: str) -> None:
    if name in SKIP_ENCODERS:
        pytest.skip(f"{name}: {SKIP_ENCODERS[name]}")
    entry = ENCODERS.get(name)
    params = ENCODERS.validate_params(name, {}, "model.encoder")
    refused = []
    for kind in ("table", "image", "audio", "text", "multi", "graph", "tokens"):
        spec, inputs = _inputs(kind)
        try:
            encoder = entry.factory(spec, params)
        except ConfigError as exc:  # reads another kind of input (InputSpec.require)
            refused.append(str(exc))
            continue
        encoder.eval()
        with torch.no_grad():
            out = encoder(inputs)
        assert isinstance(encoder.out_dim, int) and encoder.out_dim > 0
        if encoder.spatial:
            assert out.dim() == 4 and out.shape[:2] == (BATCH, encoder.out_dim), (name, kind)
        elif encoder.sequence:  # a vector per word, trimmed to the batch's longest sentence
            assert out.shape == (BATCH, int(inputs["lengths"].max()), encoder.out_dim), name
        else:
            assert out.shape == (BATCH, encoder.out_dim), (name, kind, out.shape)
        assert bool(torch.isfinite(out).all()), (name, kind)
        assert encoder.last_layer_parameters()
        return
    pytest.fail(f"encoder {name!r} reads none of the test inputs: {refused}")
