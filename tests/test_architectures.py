"""Sharing architectures: parameter partitions, output shapes, soft sharing's penalty, MMoE's
gates, training the synthetic benchmark through the pipeline and exact resume."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from conftest import run_interrupted_and_resumed, synthetic_raw
from polytask import config_from_dict, run
from polytask.balance import build_balancer
from polytask.balance.gradient_engine import EngineParams, GradientBalancer, GramianWeighting
from polytask.data.spec import InputSpec
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.data.tensors import TensorData
from polytask.errors import ConfigError, PolytaskError
from polytask.models.architectures import (
    ARCHITECTURES,
    MMoE,
    MMoEParams,
    SoftSharing,
)
from polytask.models.config import ModelConfig
from polytask.models.encoders import Encoder
from polytask.models.heads import HeadFactory, HeadParams, HeadSpec
from polytask.models.model import MultiTaskModel, build_model
from polytask.tasks import Task
from polytask.train.config import TrainConfig
from polytask.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # 2 shared cores: threads only wait

TASKS = [
    Task("reg", "regression", target="y0"),
    Task("bin", "binary", target="y1"),
    Task("cls", "multiclass", target="y2", classes=["a", "b", "c", "d"]),
    Task("tags", "multilabel", target=["t0", "t1", "t2"]),
]
SPEC = InputSpec(n_numeric=5, cardinalities=[4, 7])
#: Every registered architecture, with settings that exercise its structure (PLE with three
#: levels has gates and task experts in every ownership class).
CASES: list[tuple[str, dict[str, Any]]] = [
    ("hard", {}),
    ("soft", {}),
    ("cross_stitch", {}),
    ("mmoe", {"n_experts": 3}),
    ("ple", {}),
    ("ple", {"levels": 3, "shared_experts": 2, "task_experts": 2, "upper_widths": [5]}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(CASES)]


def _model(name: str, params: dict[str, Any], tasks: list[Task] = TASKS) -> MultiTaskModel:
    cfg = ModelConfig.model_validate(
        {
            "encoder": {"name": "mlp", "widths": [8, 6], "dropout": 0.0},
            "architecture": {"name": name, **params},
            "head": {"widths": [4]},
        }
    )
    return build_model(tasks, SPEC, cfg, seed=0)


def _inputs(n: int = 16, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    cats = [torch.randint(0, c, (n, 1), generator=g) for c in SPEC.cardinalities]
    return {
        "numeric": torch.randn(n, SPEC.n_numeric, generator=g),
        "categorical": torch.cat(cats, 1),
    }


def _ids(params: list[nn.Parameter]) -> list[int]:
    return [id(p) for p in params]


#: Architectures that need an image encoder; tests/test_vision.py covers them.
IMAGE_ONLY = {"mtan"}


def test_cases_cover_every_registered_architecture() -> None:
    assert {n for n, _ in CASES} | IMAGE_ONLY == set(ARCHITECTURES.names())
    assert {"hard", "soft", "cross_stitch", "mmoe", "ple"} <= set(ARCHITECTURES.names())


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_partition_is_disjoint_and_complete(name: str, params: dict[str, Any]) -> None:
    model = _model(name, params)
    everything = _ids(list(model.parameters()))
    shared = _ids(model.shared_parameters())
    owned = {t.name: _ids(model.task_parameters(t.name)) for t in TASKS}
    groups = [shared, *owned.values()]
    flat = [i for g in groups for i in g]
    assert len(flat) == len(set(flat)), "a parameter is declared twice"
    assert set(flat) == set(everything)
    assert all(owned.values()), "every task owns at least its tower"
    # shared_modules() holds exactly the shared parameters, no module inside another.
    modules = model.shared_modules()
    assert set(_ids([p for m in modules for p in m.parameters()])) == set(shared)
    for a, b in itertools.permutations(modules, 2):
        assert all(m is not b for m in a.modules()), (type(a).__name__, type(b).__name__)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_ownership_follows_the_gradient(name: str, params: dict[str, Any]) -> None:
    """A task's parameters are reached by its loss only; a shared one by two tasks or more."""
    model = _model(name, params)
    # A ReLU unit dead on the whole batch passes exact zeros (a narrow expert can be all dead):
    # a leaky slope keeps every connection visible in the gradient.
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, nn.LeakyReLU(0.1))
    outputs = model(_inputs())
    reached: dict[int, set[str]] = {}
    for t in TASKS:
        loss = outputs[t.name].float().pow(2).mean()
        grads = torch.autograd.grad(
            loss, list(model.parameters()), retain_graph=True, allow_unused=True
        )
        for p, g in zip(model.parameters(), grads, strict=True):
            if g is not None and bool(g.abs().sum() > 0):
                reached.setdefault(id(p), set()).add(t.name)
    for t in TASKS:
        assert all(reached.get(i) == {t.name} for i in _ids(model.task_parameters(t.name))), t.name
    assert all(len(reached.get(i, set())) >= 2 for i in _ids(model.shared_parameters()))


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_outputs_keyed_by_task_with_the_kind_shapes(name: str, params: dict[str, Any]) -> None:
    model = _model(name, params)
    out = model(_inputs(n=5))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {"reg": (5,), "bin": (5,), "cls": (5, 4), "tags": (5, 3)}
    assert not model.single_representation or name == "hard"
    last = model.last_shared_parameters() if name != "soft" else []
    assert set(_ids(last)) <= set(_ids(model.shared_parameters()))
    # One task (the single-task baselines build the same architecture) works too.
    single = _model(name, params, TASKS[1:2])
    assert tuple(single(_inputs(n=5))["bin"].shape) == (5,)


# -- soft sharing ------------------------------------------------------------------------------


def _soft(weight: float, tasks: list[Task] = TASKS[:3]) -> SoftSharing:
    arch = _model("soft", {"penalty_weight": weight}, tasks).architecture
    assert isinstance(arch, SoftSharing)
    return arch


def _encoder_vectors(arch: SoftSharing) -> list[Tensor]:
    return [nn.utils.parameters_to_vector(e.parameters()).detach() for e in arch.encoders.values()]


def test_soft_penalty_is_zero_for_identical_encoders_and_grows_with_distance() -> None:
    arch = _soft(0.01)
    names = list(arch.encoders)
    first = _encoder_vectors(arch)[0]
    for n in names[1:]:
        nn.utils.vector_to_parameters(first.clone(), arch.encoders[n].parameters())
    zero = arch.regularizer()
    assert zero is not None and float(zero.detach()) == 0.0
    g = torch.Generator().manual_seed(3)
    d1, d2 = torch.randn(first.numel(), generator=g), torch.randn(first.numel(), generator=g)
    values = []
    for s in [0.01, 0.1, 1.0]:
        nn.utils.vector_to_parameters(first + s * d1, arch.encoders[names[1]].parameters())
        nn.utils.vector_to_parameters(first + s * d2, arch.encoders[names[2]].parameters())
        got = arch.regularizer()
        assert got is not None
        got = got.detach()
        # λ Σ_pairs ‖θ_i − θ_j‖², pair by pair in float64.
        pairs = [s * d1, s * d2, s * (d1 - d2)]
        expected = 0.01 * sum(float(p.double().pow(2).sum()) for p in pairs)
        assert float(got) == pytest.approx(expected, rel=1e-4)
        values.append(float(got))
    assert values[0] < values[1] < values[2]
    assert _soft(0.0).regularizer() is None  # λ = 0: nothing to add


def _soft_data(n: int = 32) -> TensorData:
    x = _inputs(n, seed=5)
    y = x["numeric"][:, 0] - x["numeric"][:, 1]
    # "bin" has no label at all: only the coupling moves its encoder.
    return TensorData(
        x,
        {"reg": y, "bin": torch.zeros(n)},
        {"reg": torch.ones(n, dtype=torch.bool), "bin": torch.zeros(n, dtype=torch.bool)},
    )


def _one_step(weight: float) -> tuple[SoftSharing, list[Tensor], dict[str, list[Tensor]]]:
    """One trainer step (whole batch, no clipping); returns the architecture, the encoders'
    parameters before the step and the gradients the step used."""
    tasks = TASKS[:2]
    model = _model("soft", {"penalty_weight": weight}, tasks)
    arch = model.architecture
    assert isinstance(arch, SoftSharing)
    before = _encoder_vectors(arch)
    cfg = TrainConfig(epochs=1, batch_size=32, grad_clip=None, progress=False, patience=None)
    bal = build_balancer("static", {}, tasks)
    Trainer(model, tasks, bal, cfg, quiet=True).fit(_soft_data(), _soft_data())
    grads = {
        n: [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in e.parameters()]
        for n, e in arch.encoders.items()
    }
    return arch, before, grads


def test_soft_penalty_gradient_reaches_every_encoder_in_a_trainer_step() -> None:
    weight = 0.05
    arch, before, grads = _one_step(weight)
    _, _, plain = _one_step(0.0)
    mean = torch.stack(before).mean(0)
    k = len(before)
    for i, name in enumerate(arch.encoders):
        # ∂/∂θ_i of λ K Σ_j ‖θ_j − θ̄‖² = 2 λ K (θ_i − θ̄).
        expected = 2 * weight * k * (before[i] - mean)
        extra = nn.utils.parameters_to_vector(grads[name]) - nn.utils.parameters_to_vector(
            plain[name]
        )
        torch.testing.assert_close(extra, expected, rtol=1e-4, atol=1e-6, msg=name)
    # The unlabelled task's encoder is moved by the coupling alone.
    assert float(nn.utils.parameters_to_vector(grads["bin"]).abs().sum()) > 0
    assert all(float(g.abs().sum()) == 0 for g in plain["bin"])


def test_soft_has_no_last_shared_layer() -> None:
    with pytest.raises(PolytaskError, match="'soft' shares no parameters"):
        _model("soft", {}).last_shared_parameters()


@pytest.mark.parametrize("balancer", ["mgda", "gradnorm"])
def test_methods_needing_shared_parameters_reject_soft_sharing_at_build(balancer: str) -> None:
    model = _model("soft", {})
    with pytest.raises(ConfigError, match=f"balancer '{balancer}'"):
        Trainer(model, TASKS, build_balancer(balancer, {}, TASKS), TrainConfig(), quiet=True)


# -- cross-stitch --------------------------------------------------------------------------------


def test_cross_stitch_units_start_at_alpha_and_mix_columns() -> None:
    model = _model("cross_stitch", {}, TASKS[:3])
    arch: Any = model.architecture
    stitches = list(arch.stitches.parameters())
    assert len(stitches) == 2  # one unit per encoder layer
    expected = torch.full((3, 3), 0.05) + torch.eye(3) * 0.85
    assert all(torch.allclose(a, expected) for a in stitches)
    single: Any = _model("cross_stitch", {"alpha_same": 0.5}, TASKS[:1]).architecture
    assert [float(a.detach()) for a in single.stitches.parameters()] == [
        1.0,
        1.0,
    ]  # one column: the identity
    # Identity stitches: every task's output is its own column's alone.
    with torch.no_grad():
        for a in stitches:
            a.copy_(torch.eye(3))
    x = _inputs()
    out = model(x)
    for t in ["reg", "bin"]:
        h = arch.stems[t](x)
        for block in arch.columns[t]:
            h = block(h)
        torch.testing.assert_close(out[t], arch.heads[t](h).squeeze(-1))


class _Linear(Encoder):
    """An encoder without an MLP input layer (the generic path)."""

    def __init__(self) -> None:
        super().__init__()
        self.out_dim = 3
        self.linear = nn.Linear(SPEC.n_numeric, 3)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        out: Tensor = self.linear(inputs["numeric"])
        return out


def test_cross_stitch_needs_the_mlp_encoder() -> None:
    with pytest.raises(ConfigError, match=r"'cross_stitch'.*'mlp' encoder"):
        ARCHITECTURES.get("cross_stitch").factory(
            _Linear,
            HeadFactory({"a": HeadSpec(1)}, HeadParams()),
            ARCHITECTURES.get("cross_stitch").params(),
        )


# -- MMoE ----------------------------------------------------------------------------------------


def test_mmoe_gates_sum_to_one_and_mix_the_experts() -> None:
    model = _model("mmoe", {"n_experts": 3}, TASKS[:3])
    arch = model.architecture
    assert isinstance(arch, MMoE)
    x = _inputs()
    gates = arch.gate_weights(x)
    assert set(gates) == {"reg", "bin", "cls"}
    for w in gates.values():
        assert w.shape == (16, 3) and bool((w > 0).all())
        torch.testing.assert_close(w.sum(1), torch.ones(16))
    # Reference: softmax(W_t x) over the experts, mixed, through the task's tower.
    experts = torch.stack([e(x) for e in arch.experts], 1)  # [B, E, D]
    features = arch.gate_input(x)
    out = model(x)
    for t in ["reg", "cls"]:
        linear = arch.gates[t].linear  # type: ignore[union-attr]
        w = torch.softmax(features @ linear.weight.T + linear.bias, 1)
        mixed = (w[:, :, None] * experts).sum(1)
        torch.testing.assert_close(
            out[t], arch.heads[t](mixed).squeeze(-1) if t == "reg" else arch.heads[t](mixed)
        )


def test_mmoe_gates_on_a_whole_encoder_when_there_is_no_input_layer() -> None:
    heads = HeadFactory({"a": HeadSpec(1), "b": HeadSpec(2)}, HeadParams(widths=[]))
    arch = MMoE(_Linear, heads, MMoEParams(n_experts=2))
    assert isinstance(arch.gate_input, _Linear)
    out = arch(_inputs(n=4))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"a": (4, 1), "b": (4, 2)}


def test_representation_mode_is_rejected_for_mmoe(tmp_path: Path) -> None:
    model = _model("mmoe", {}, TASKS[:2])
    bal = build_balancer("mgda", {"mode": "representation"}, TASKS[:2])
    with pytest.raises(ConfigError, match=r"MMoE.*'exact'"):
        Trainer(model, TASKS[:2], bal, TrainConfig(), quiet=True)
    raw = synthetic_raw(balancer="mgda", widths=(8,), epochs=1)
    raw["balancer"]["mode"] = "representation"
    raw["model"]["architecture"] = {"name": "mmoe"}
    frame = make_mmoe_synthetic(200, 0.9, n_features=4, seed=0)
    with pytest.raises(ConfigError, match=r"balancer\.mode 'representation'.*'exact'"):
        run(config_from_dict(raw), frame=frame, out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


class _Recorded(GramianWeighting):
    """Keeps the Gramian it is given; weights 1, 2, 3, ..."""

    def __init__(self) -> None:
        super().__init__()
        self.gramian = torch.zeros(0)

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        self.gramian = gramian.detach().clone()
        return torch.arange(1, len(tasks) + 1, dtype=gramian.dtype)


@pytest.mark.parametrize("name,params", CASES[2:], ids=IDS[2:])
def test_exact_engine_gramian_over_the_shared_modules(name: str, params: dict[str, Any]) -> None:
    """The exact engine's Gramian, recorded on shared_modules() only, and its update equal
    those of the materialised per-task gradients of shared_parameters()."""
    tasks = TASKS[:3]
    model, x = _model(name, params, tasks), _inputs()
    g = torch.Generator().manual_seed(1)
    targets = {t.name: torch.randn(16, *model(x)[t.name].shape[1:], generator=g) for t in tasks}

    def losses(outputs: dict[str, Tensor]) -> list[Tensor]:
        return [(outputs[t.name] - targets[t.name]).pow(2).mean() for t in tasks]

    shared = model.shared_parameters()
    rows = []
    for loss in losses(model(x)):
        grads = torch.autograd.grad(
            loss, shared, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        rows.append(torch.cat([gr.reshape(-1) for gr in grads]).double())
    jac = torch.stack(rows)
    method = _Recorded()
    bal = GradientBalancer(tasks, method, EngineParams(mode="exact"), "recorded")
    outputs = bal.forward(model, x)
    bal.backward(dict(zip([t.name for t in tasks], losses(outputs), strict=True)), model)
    want = jac @ jac.T
    torch.testing.assert_close(method.gramian.double(), want, rtol=0, atol=2e-5 * float(want.max()))
    update = torch.cat([p.grad.reshape(-1) for p in shared]).double()  # type: ignore[union-attr]
    expected = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) @ jac
    torch.testing.assert_close(update, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))


# -- training through the pipeline ----------------------------------------------------------------

TRAINED: list[tuple[str, dict[str, Any], str | None]] = [
    ("hard", {}, None),
    ("soft", {}, None),
    ("cross_stitch", {}, None),
    ("mmoe", {}, None),
    ("ple", {"levels": 2}, None),
    ("mmoe", {}, "mgda"),  # the gradient engine's exact mode, general path
]


@pytest.mark.parametrize(
    "name,params,balancer", TRAINED, ids=[f"{n}-{b or 'static'}" for n, _, b in TRAINED]
)
def test_each_architecture_trains_the_synthetic_benchmark(
    name: str, params: dict[str, Any], balancer: str | None
) -> None:
    frame = make_mmoe_synthetic(2000, 0.9, n_features=16, seed=0)
    raw = synthetic_raw(balancer=balancer, epochs=6, batch_size=64, lr=3e-3)
    raw["model"]["architecture"] = {"name": name, **params}
    result = run(config_from_dict(raw), frame=frame, quiet=True)
    assert result.metrics["value"]["r2"] > 0.6, result.metrics
    assert result.metrics["label"]["auroc"] > 0.85, result.metrics
    logged = result.fit.history[-1].weights
    assert set(logged) == {"value", "label"} and all(math.isfinite(w) for w in logged.values())


def test_soft_sharing_resumes_exactly(tmp_path: Path) -> None:
    frame = make_mmoe_synthetic(600, 0.5, n_features=8, seed=4)
    raw = synthetic_raw(widths=(16,), dropout=0.2, epochs=4, batch_size=32, patience=None)
    raw["model"]["architecture"] = {"name": "soft", "penalty_weight": 0.01}
    full, resumed = run_interrupted_and_resumed(raw, frame, tmp_path)
    assert [r.train_loss for r in full.fit.history] == [r.train_loss for r in resumed.fit.history]


# -- soft sharing, trace-norm penalty (Yang & Hospedales 2017, last-axis flattening) -----------


def _soft_trace(weight: float, tasks: list[Task] = TASKS[:3]) -> SoftSharing:
    params = {"penalty": "trace_norm", "penalty_weight": weight}
    arch = _model("soft", params, tasks).architecture
    assert isinstance(arch, SoftSharing)
    return arch


def _groups(arch: SoftSharing) -> list[tuple[nn.Parameter, ...]]:
    """Corresponding parameters, one copy per task."""
    return list(zip(*[list(e.parameters()) for e in arch.encoders.values()], strict=True))


def _stacked(group: tuple[Tensor, ...]) -> np.ndarray:
    return np.stack([p.detach().double().numpy().ravel() for p in group])


def test_trace_norm_penalty_is_the_summed_nuclear_norm_of_the_stacked_copies() -> None:
    weight = 0.01
    arch = _soft_trace(weight)  # independent initialisations: full-rank groups
    got = arch.regularizer()
    assert got is not None
    expected = weight * sum(float(np.linalg.norm(_stacked(g), "nuc")) for g in _groups(arch))
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)
    assert _soft_trace(0.0).regularizer() is None


def test_trace_norm_of_identical_encoders_is_rank_one_with_finite_equal_gradients() -> None:
    weight = 0.01
    arch = _soft_trace(weight)
    k = len(arch.encoders)
    first = _encoder_vectors(arch)[0]
    for e in list(arch.encoders.values())[1:]:
        nn.utils.vector_to_parameters(first.clone(), e.parameters())
    groups = _groups(arch)
    # K identical rows θ: W = 1 θᵀ has one singular value, ‖1‖ ‖θ‖ = √K ‖θ‖.
    norms = [float(torch.linalg.vector_norm(g[0].detach().double())) for g in groups]
    for g, n in zip(groups, norms, strict=True):
        assert float(np.linalg.norm(_stacked(g), "nuc")) == pytest.approx(math.sqrt(k) * n)
    penalty = arch.regularizer()
    assert penalty is not None
    assert float(penalty.detach()) == pytest.approx(weight * math.sqrt(k) * sum(norms), rel=1e-5)
    penalty.backward()
    assert 0.0 in norms  # BatchNorm shifts start at zero in every copy: the 0-matrix case
    for g, n in zip(groups, norms, strict=True):
        for p in g:
            assert p.grad is not None and bool(torch.isfinite(p.grad).all())
            # Minimum-norm subgradient u vᵀ = 1/√K · θ/‖θ‖ in every row (0 for θ = 0): the
            # copies move together and stay identical, none is pushed off the shared line.
            expected = weight * g[0].detach() / (math.sqrt(k) * n) if n > 0 else 0 * p
            torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-7)


def test_trace_norm_gradient_in_a_trainer_step_is_the_reference_subgradient() -> None:
    weight = 0.05
    tasks = TASKS[:2]

    def step(w: float) -> tuple[list[np.ndarray], list[list[Tensor]]]:
        model = _model("soft", {"penalty": "trace_norm", "penalty_weight": w}, tasks)
        arch = model.architecture
        assert isinstance(arch, SoftSharing)
        before = [_stacked(g) for g in _groups(arch)]
        cfg = TrainConfig(epochs=1, batch_size=32, grad_clip=None, progress=False, patience=None)
        bal = build_balancer("static", {}, tasks)
        Trainer(model, tasks, bal, cfg, quiet=True).fit(_soft_data(), _soft_data())
        grads = [
            [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in g]
            for g in _groups(arch)
        ]
        return before, grads

    before, grads = step(weight)
    _, plain = step(0.0)
    for w_before, g, g0 in zip(before, grads, plain, strict=True):
        # ∂‖W‖_* = U_r V_rᵀ over the nonzero singular values (float64 numpy SVD).
        u, s, vt = np.linalg.svd(w_before, full_matrices=False)
        keep = s > s.max() * max(w_before.shape) * np.finfo(np.float32).eps
        ref = weight * (u[:, keep] @ vt[keep])
        extra = torch.stack([(a - b).reshape(-1) for a, b in zip(g, g0, strict=True)])
        torch.testing.assert_close(extra.double(), torch.from_numpy(ref), rtol=1e-4, atol=1e-6)
    # "bin" has no label: its encoder moves by the coupling alone.
    assert any(float(g[1].abs().sum()) > 0 for g in grads)


def test_soft_trace_norm_trains_the_synthetic_benchmark_and_lowers_the_nuclear_norm() -> None:
    frame = make_mmoe_synthetic(2000, 0.9, n_features=16, seed=0)
    nuclear = {}
    for weight in [0.0, 0.01]:
        raw = synthetic_raw(epochs=6, batch_size=64, lr=3e-3)
        raw["model"]["architecture"] = {
            "name": "soft",
            "penalty": "trace_norm",
            "penalty_weight": weight,
        }
        result = run(config_from_dict(raw), frame=frame, quiet=True)
        assert result.metrics["value"]["r2"] > 0.6, result.metrics
        assert result.metrics["label"]["auroc"] > 0.85, result.metrics
        arch = result.predictor.model.architecture
        assert isinstance(arch, SoftSharing)
        nuclear[weight] = sum(float(np.linalg.norm(_stacked(g), "nuc")) for g in _groups(arch))
    # Measured 41.1 (λ = 0) vs 34.8 (λ = 0.01) over seeds 0-2: the penalty is active.
    assert nuclear[0.01] < 0.9 * nuclear[0.0], nuclear
