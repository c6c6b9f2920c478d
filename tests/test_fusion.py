"""Several inputs per example (issue 22): the multi-input processor (data/inputs/multi.py,
data/inputs/table.py) and the fusion encoder (models/fusion.py).

The synthetic task needs both inputs: a bit readable only from a small image (a bright left or
right half) and a bit only in a table column; the label is their XOR, so each input alone is at
chance (shown by single-input runs) and only a model that reads both learns it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

import polytask
from polytask import ConfigError, DataError, Task, config_from_dict
from polytask.balance import BALANCERS, build_balancer
from polytask.data.inputs import input_from_dict
from polytask.data.inputs.base import build_input
from polytask.data.inputs.multi import MultiInput
from polytask.data.spec import InputSpec
from polytask.errors import PolytaskError
from polytask.export import OnnxPredictor, export_onnx
from polytask.export.verify import compare_predictions
from polytask.models.architectures import ARCHITECTURES
from polytask.models.config import ModelConfig
from polytask.models.encoders import MLPEncoder
from polytask.models.fusion import FusionEncoder, FusionParams
from polytask.models.model import MultiTaskModel, build_model
from polytask.run.pipeline import RunResult
from polytask.serve.schema import input_columns
from test_registry_properties import REQUIRED_MODEL, _required_params

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # 2 shared cores: threads only wait

SIDE = 6
TRAIN = {"epochs": 10, "batch_size": 32, "lr": 1e-2, "patience": None, "progress": False}
SPLIT = {"val": 0.2, "test": 0.2}
INPUTS = {
    "scan": {"name": "image", "column": "scan"},
    "patient": {"name": "table", "columns": ["b", "age"]},
}
ENCODERS = {"scan": {"name": "cnn", "widths": [4]}, "patient": {"name": "mlp", "widths": [8]}}
MODES = ["concat", "gated", "attention"]


def _xor_frame(n: int, seed: int) -> pd.DataFrame:
    """``y = a XOR b``: ``a`` is which half of the image is bright, ``b`` a noisy table column
    (``t``: ``b`` itself, a task the table alone answers); ``age`` is noise."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    images = []
    for bit in a:
        image = rng.normal(0.0, 0.3, (SIDE, SIDE)).astype(np.float32)
        half = slice(0, SIDE // 2) if bit else slice(SIDE // 2, SIDE)
        image[:, half] += 1.0
        images.append(image)
    return pd.DataFrame(
        {
            "scan": images,
            "b": b + rng.normal(0.0, 0.1, n),
            "age": rng.normal(50.0, 10.0, n),
            "y": a ^ b,
            "t": b,
        }
    )


@pytest.fixture(scope="module")
def xor() -> pd.DataFrame:
    return _xor_frame(600, seed=0)


def _fit(frame: pd.DataFrame, tasks: list[Task], **options: Any) -> RunResult:
    return polytask.fit(
        frame,
        tasks,
        data_options={"split": SPLIT, **options.pop("data", {})},
        model={"head": {"widths": [16]}, **options.pop("model")},
        train=TRAIN,
        baselines=False,
        quiet=True,
        seed=0,
        **options,
    )


def _fused(mode: str, **extra: Any) -> dict[str, Any]:
    return {"encoder": {"name": "fusion", "fusion": mode, "inputs": ENCODERS, **extra}}


def write_lesions(folder: Path, n: int = 120, seed: int = 0) -> None:
    """docs/fusion.md's ``lesions.csv`` and its scans (``scans/<i>.png``, 40 x 40 grey; one
    patient in ten has none): a bright blob where there is a lesion (larger if malignant), and
    patient columns that shift with the disease."""
    rng = np.random.default_rng(seed)
    (folder / "scans").mkdir(parents=True, exist_ok=True)
    disease = rng.choice(["healthy", "benign", "malignant"], n)
    rows = []
    for i, label in enumerate(disease):
        scan = ""
        if rng.random() >= 0.1:
            pixels = rng.normal(60.0, 15.0, (40, 40))
            if label != "healthy":
                r, c = rng.integers(8, 32, 2)
                radius = 7 if label == "malignant" else 4
                yy, xx = np.ogrid[:40, :40]
                pixels[(yy - r) ** 2 + (xx - c) ** 2 <= radius**2] += 120.0
            scan = f"scans/{i}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / scan)
        rows.append(
            {
                "scan": scan,
                "age": round(float(rng.normal(65 if label == "malignant" else 55, 10))),
                "sex": rng.choice(["F", "M"]),
                "smoker": int(rng.random() < (0.5 if label == "malignant" else 0.2)),
                "bp": round(float(rng.normal(130, 15)), 1) if rng.random() > 0.05 else None,
                "disease": label,
                "lesion": int(label != "healthy"),
            }
        )
    pd.DataFrame(rows).to_csv(folder / "lesions.csv", index=False)


# -- learning ------------------------------------------------------------------------------


def test_each_input_alone_is_at_chance(xor: pd.DataFrame) -> None:
    """The premise of the fusion tests: neither input alone predicts the XOR label."""
    task = [Task("y", "binary", "y")]
    image = _fit(
        xor[["scan", "y"]],
        task,
        data={"input": {"name": "image", "column": "scan"}},
        model={"encoder": ENCODERS["scan"]},
    )
    table = _fit(xor[["b", "age", "y"]], task, model={"encoder": ENCODERS["patient"]})
    # 120 test rows: a chance AUROC has a standard deviation of about 0.05.
    assert image.metrics["y"]["auroc"] < 0.7, image.metrics
    assert table.metrics["y"]["auroc"] < 0.7, table.metrics


@pytest.mark.parametrize("mode", MODES)
def test_fusion_learns_a_task_that_needs_both_inputs(xor: pd.DataFrame, mode: str) -> None:
    result = _fit(xor, [Task("y", "binary", "y")], data={"inputs": INPUTS}, model=_fused(mode))
    # Chance is 0.5 (previous test); this seed's runs reach AUROC 0.99-1.0.
    assert result.metrics["y"]["auroc"] > 0.95, (mode, result.metrics)


# -- missing inputs ------------------------------------------------------------------------


def _multi_spec() -> InputSpec:
    return InputSpec(
        kind="multi",
        parts={
            "scan": InputSpec(kind="image", shape=[1, SIDE, SIDE]),
            "patient": InputSpec(n_numeric=2),
        },
    )


def _multi_batch(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "scan.image": torch.randn(n, 1, SIDE, SIDE, generator=g),
        "scan.present": torch.tensor([True, False] * (n // 2)),
        "patient.numeric": torch.randn(n, 2, generator=g),
        "patient.categorical": torch.zeros(n, 0, dtype=torch.int64),
        "patient.present": torch.ones(n, dtype=torch.bool),
    }


@pytest.mark.parametrize("mode", MODES)
def test_an_absent_input_does_not_reach_the_representation(mode: str) -> None:
    params = FusionParams.model_validate({"fusion": mode, "inputs": ENCODERS}, strict=True)
    torch.manual_seed(0)
    encoder = FusionEncoder(_multi_spec(), params).eval()
    batch = _multi_batch(8, seed=0)
    changed = {**batch, "scan.image": batch["scan.image"] + 5.0 * torch.randn(8, 1, SIDE, SIDE)}
    with torch.no_grad():
        before, after = encoder(batch), encoder(changed)
    absent = ~batch["scan.present"]
    assert before.shape == (8, encoder.out_dim)
    # Rows without the image: the same output whatever their image tensor holds ...
    assert torch.equal(before[absent], after[absent])
    # ... while rows with it do read it (so the check above can fail).
    assert (before[~absent] - after[~absent]).abs().max() > 1e-3
    if mode == "attention":
        # Only the table is attended to where the image is missing; no input at all: zeros.
        none = {**batch, "patient.present": torch.zeros(8, dtype=torch.bool)}
        with torch.no_grad():
            out = encoder(none)
        assert torch.equal(out[absent], torch.zeros_like(out[absent]))


def test_concat_puts_the_learnt_missing_embedding_in_place_of_an_absent_input() -> None:
    params = FusionParams.model_validate({"fusion": "concat", "inputs": ENCODERS}, strict=True)
    encoder = FusionEncoder(_multi_spec(), params).eval()
    slot = encoder.slots["scan"]
    with torch.no_grad():
        slot.missing.copy_(torch.arange(slot.missing.numel(), dtype=torch.float32))
        out = encoder(_multi_batch(4, seed=1))
    width = slot.encoder.out_dim  # the image's block comes first (declaration order)
    assert torch.equal(out[1, :width], slot.missing) and torch.equal(out[3, :width], slot.missing)
    assert not torch.equal(out[0, :width], slot.missing)


@pytest.fixture(scope="module")
def partly_missing(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    """Concatenation fusion trained on rows of which a third have no image, with a second task the
    table alone answers; saved to a model directory."""
    frame = _xor_frame(600, seed=1)
    frame.loc[frame.index[::3], "scan"] = None
    out = tmp_path_factory.mktemp("fusion") / "run"
    result = _fit(
        frame,
        [Task("y", "binary", "y"), Task("t", "binary", "t")],
        data={"inputs": INPUTS},
        model=_fused("concat"),
        out=out,
    )
    return result, out / "model"


def test_an_example_without_an_image_still_predicts_from_its_table(
    partly_missing: tuple[RunResult, Path],
) -> None:
    result, _ = partly_missing
    rows = _xor_frame(80, seed=7)
    rows["scan"] = None  # no image at all: the XOR is unknowable, the table's bit is not
    predicted = result.predictor.predict(rows)
    # Predicted labels are the classes as text ("0", "1").
    accuracy = float((predicted["t"].astype(int) == rows["t"]).mean())
    assert accuracy > 0.95, accuracy
    # With their images the same rows answer the XOR task too (chance without them).
    with_images = result.predictor.predict(_xor_frame(80, seed=7))
    assert float((with_images["y"].astype(int) == rows["y"]).mean()) > 0.85


# -- the processor -------------------------------------------------------------------------


def test_presence_masks_and_the_json_round_trip() -> None:
    frame = _xor_frame(40, seed=2)
    processor = build_input("multi", {"inputs": INPUTS}, "data.inputs")
    assert isinstance(processor, MultiInput) and processor.columns == ["scan", "b", "age"]
    processor.fit(frame, "frame", None)
    rows = _xor_frame(4, seed=3)
    rows.loc[1, "scan"] = "  "  # a blank path: no image
    rows.loc[2, ["b", "age"]] = np.nan  # every patient column empty: no patient data
    rows.loc[3, "age"] = np.nan  # one column empty: the patient is there (age imputed)
    encoded = processor.transform(rows, "rows")
    assert sorted(encoded) == [
        "patient.categorical",
        "patient.numeric",
        "patient.present",
        "scan.image",
        "scan.present",
    ]
    assert encoded["scan.present"].tolist() == [True, False, True, True]
    assert encoded["patient.present"].tolist() == [True, True, False, True]
    assert encoded["scan.image"].shape == (4, 1, SIDE, SIDE)
    assert torch.equal(encoded["scan.image"][1], torch.zeros(1, SIDE, SIDE))
    assert torch.equal(
        encoded["patient.numeric"][2], torch.zeros_like(encoded["patient.numeric"][2])
    )
    spec = processor.input_spec
    assert spec.kind == "multi" and list(spec.parts) == ["scan", "patient"]
    assert spec.parts["scan"].shape == [1, SIDE, SIDE] and spec.parts["patient"].n_numeric == 2

    stored = json.loads(json.dumps(processor.to_dict()))
    loaded = input_from_dict(stored)
    again = loaded.transform(rows, "rows")
    assert all(torch.equal(encoded[k], again[k]) for k in encoded)
    # No row with the input in a batch: zeros of the fitted layout.
    empty = loaded.transform(rows.assign(scan=None), "rows")
    assert empty["scan.image"].shape == (4, 1, SIDE, SIDE) and not empty["scan.present"].any()


def test_a_tampered_state_is_one_line_naming_the_field() -> None:
    processor = build_input("multi", {"inputs": INPUTS}, "data.inputs")
    processor.fit(_xor_frame(20, seed=4), "frame", None)
    stored = processor.to_dict()
    del stored["state"]["layout"]["scan"]
    with pytest.raises(
        DataError, match=r"^preprocessing: state.layout: holds inputs \['patient'\]"
    ):
        input_from_dict(stored)
    stored = processor.to_dict()
    stored["state"]["inputs"]["patient"]["numeric"][0]["std"] = 0.0
    with pytest.raises(DataError, match=r"numeric.0.std: must be > 0"):
        input_from_dict(stored)


def test_an_input_no_training_row_has_is_a_data_error() -> None:
    frame = _xor_frame(30, seed=5).assign(scan=None)
    processor = build_input("multi", {"inputs": INPUTS}, "data.inputs")
    with pytest.raises(
        DataError, match=r"^frame: data.inputs.scan: no training row has this input"
    ):
        processor.fit(frame, "frame", None)


# -- every architecture and balancer on the fused representation --------------------------

TASKS = [Task("a", "binary", "ya"), Task("b", "regression", "yb")]
#: Architectures that need per-layer access to one particular encoder, not a representation.
NEEDS_ITS_OWN_ENCODER = {"cross_stitch": "mlp", "mtan": "cnn"}


def _model(architecture: str, **model: Any) -> MultiTaskModel:
    cfg = ModelConfig.model_validate(
        {
            "encoder": {"name": "fusion", "fusion": "gated", "inputs": ENCODERS, "dim": 8},
            "architecture": {"name": architecture},
            "head": {"widths": [4]},
            **model,
        }
    )
    return build_model(TASKS, _multi_spec(), cfg, seed=0)


def _losses(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    targets = (torch.rand(8, generator=g) > 0.5).float(), torch.randn(8, generator=g)
    return {
        "a": F.binary_cross_entropy_with_logits(outputs["a"], targets[0]),
        "b": F.mse_loss(outputs["b"], targets[1]),
    }


@pytest.mark.parametrize("architecture", ARCHITECTURES.names())
def test_every_architecture_trains_a_step_on_the_fused_representation(architecture: str) -> None:
    try:
        model = _model(architecture)
    except ConfigError as exc:
        # Not a reader of one representation: it refuses the fusion encoder in one line.
        assert architecture in NEEDS_ITS_OWN_ENCODER, (architecture, exc)
        assert NEEDS_ITS_OWN_ENCODER[architecture] in str(exc) and "\n" not in str(exc)
        return
    balancer = build_balancer("static", {}, TASKS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    outputs = balancer.forward(model, _multi_batch(8, seed=0))
    assert outputs["a"].shape == (8,) and outputs["b"].shape == (8,)
    balancer.backward(_losses(outputs), model)
    optimizer.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)]
    assert sum(moved) > len(moved) // 2, (architecture, sum(moved), len(moved))


@pytest.mark.parametrize("name", BALANCERS.names())
def test_every_balancer_steps_on_the_fused_representation(name: str) -> None:
    model = _model("hard", **REQUIRED_MODEL.get(name, {}))
    balancer = build_balancer(name, _required_params(name, TASKS), TASKS)
    balancer.check_model(model)
    model.train()
    outputs = balancer.forward(model, _multi_batch(8, seed=0))
    balancer.backward(_losses(outputs), model)
    grads = [p.grad for p in model.shared_parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads), name
    assert any(bool(g.abs().sum() > 0) for g in grads), name


# -- a model directory: load, predict, export ----------------------------------------------


def test_a_saved_fused_model_loads_and_predicts_the_same(
    partly_missing: tuple[RunResult, Path],
) -> None:
    result, directory = partly_missing
    meta = json.loads((directory / "model.json").read_text())
    assert meta["input_spec"]["kind"] == "multi"
    assert set(meta["input_spec"]["parts"]) == {"scan", "patient"}
    rows = _xor_frame(30, seed=8)
    rows.loc[rows.index[:10], "scan"] = None
    loaded = polytask.load(directory)
    expected, got = result.predictor.predict(rows), loaded.predict(rows)
    pd.testing.assert_frame_equal(expected, got)


def test_export_gives_the_torch_model_outputs(
    partly_missing: tuple[RunResult, Path], tmp_path: Path
) -> None:
    _, directory = partly_missing
    path = tmp_path / "fused.onnx"
    export_onnx(directory, path)
    rows = _xor_frame(30, seed=9)
    rows.loc[rows.index[:10], "scan"] = None
    diffs = compare_predictions(
        polytask.load(directory).predict(rows), OnnxPredictor(path).predict(rows)
    )
    bad = [d for d in diffs if not d.within(1e-5, 1e-5)]
    assert diffs and not bad, bad


# -- configuration -------------------------------------------------------------------------


def _raw(**model: Any) -> dict[str, Any]:
    return {
        "data": {"path": "x.csv", "inputs": INPUTS},
        "tasks": [{"name": "y", "kind": "binary", "target": "y"}],
        "model": {"encoder": {"name": "fusion", **model}},
    }


def test_an_encoder_for_an_undeclared_input_is_one_line() -> None:
    raw = _raw(inputs={"xray": {"name": "cnn"}})
    with pytest.raises(
        ConfigError,
        match=r"^config error: model.encoder.inputs.xray: no input 'xray' in data.inputs "
        r"\(declared: scan, patient\)$",
    ):
        config_from_dict(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {**_raw(), "model": {}},
            r"^config error: model.encoder.name: data.inputs declares inputs \(scan, patient\), "
            r"which the 'fusion' encoder reads; got 'mlp'$",
        ),
        (
            {**_raw(), "data": {"path": "x.csv"}},
            r"^config error: model.encoder: 'fusion' fuses the inputs declared in",
        ),
        (
            {**_raw(), "data": {"path": "x.csv", "inputs": {"a.b": {"name": "image"}}}},
            r"^config error: data.inputs.a.b: an input's name has letters, digits and '_' only",
        ),
        (
            {**_raw(), "data": {"path": "x.csv", "inputs": INPUTS, "input": {"name": "image"}}},
            r"^config error: data.inputs: declares several inputs, data.input one",
        ),
        (
            {**_raw(), "data": {"path": "x.csv", "inputs": {"scan": {"name": "imgae"}}}},
            r"^config error: data.inputs.scan.name: unknown input 'imgae'; valid choices",
        ),
        (
            _raw(inputs={"scan": {"name": "cnn", "widht": 3}}),
            r"^config error: model.encoder.inputs.scan.widht",
        ),
        (
            {**_raw(), "data": {"path": "x.csv", "inputs": INPUTS, "workers": 2}},
            r"^config error: data.workers: not supported with data.inputs yet",
        ),
        (
            _raw(inputs={"scan": {"name": "fusion"}}),
            r"^config error: model.encoder.inputs.scan.name: an input's encoder cannot be fusion",
        ),
    ],
    ids=[
        "no-fusion",
        "no-inputs",
        "dotted-name",
        "input-and-inputs",
        "bad-processor",
        "bad-encoder-key",
        "workers",
        "nested-fusion",
    ],
)
def test_bad_fusion_configs_are_one_line(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_an_input_without_an_encoder_gets_its_modality_default() -> None:
    params = FusionParams.model_validate({"inputs": {"scan": ENCODERS["scan"]}}, strict=True)
    encoder = FusionEncoder(_multi_spec(), params)
    assert isinstance(encoder.slots["patient"].encoder, MLPEncoder)
    # An encoder that cannot read its input is named with the input.
    wrong = FusionParams.model_validate({"inputs": {"patient": {"name": "cnn"}}}, strict=True)
    with pytest.raises(
        ConfigError, match=r"^config error: model.encoder.inputs.patient: encoder 'cnn' reads image"
    ):
        FusionEncoder(_multi_spec(), wrong)


def test_serving_a_fused_model_over_http_is_refused(
    partly_missing: tuple[RunResult, Path],
) -> None:
    """An input may read files (the scan's path): a server must never open a path a request
    names, so the model is refused in one line (the network can be exported instead)."""
    with pytest.raises(PolytaskError, match=r"^cannot serve this model over HTTP: its input"):
        input_columns(polytask.load(partly_missing[1]))


def test_a_model_file_with_parts_on_a_table_spec_is_refused(
    partly_missing: tuple[RunResult, Path], tmp_path: Path
) -> None:
    _, directory = partly_missing
    meta = json.loads((directory / "model.json").read_text())
    meta["input_spec"]["kind"] = "table"
    copy = tmp_path / "model"
    copy.mkdir()
    for f in directory.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PolytaskError, match=r"model.json'.*parts: a multi input has parts"):
        polytask.load(copy)
