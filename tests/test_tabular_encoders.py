"""Numerical feature embeddings (piecewise-linear, periodic) and the TabM encoder
(``polytask.models.tabular``): bins fitted on the training rows, the encoding against a
hand-computed case, shapes, learning a generated task, an exact save/load round trip and
torch-versus-onnxruntime equality of the exported graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import polytask
from polytask.data.preprocess import PreprocessOptions, TablePreprocessor
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError, PolytaskError
from polytask.models.encoders import ENCODERS, Encoder
from polytask.models.tabular import NumericBlock, NumericEmbeddingParams
from polytask.tasks import Task

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TASKS = [Task("b", "binary", target="b"), Task("r", "regression", target="r")]


def _frame(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """Numbers whose effect is far from linear (a step and a bump in ``x0``, a square in
    ``x2``), a column with gaps, a 0/1 flag and a categorical column."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    gaps = np.where(rng.random(n) < 0.1, np.nan, rng.exponential(size=n))
    flag = rng.integers(0, 2, n)
    colour = rng.choice(["red", "green", "blue"], n)
    logit = 3.0 * np.sin(3.0 * x[:, 0]) + 2.0 * flag - 1.0 + (colour == "red")
    return pd.DataFrame(
        {
            "x0": x[:, 0],
            "x1": x[:, 1],
            "x2": x[:, 2],
            "gaps": gaps,
            "flag": flag,
            "colour": colour,
            "b": (logit + rng.logistic(size=n) * 0.3 > 0).astype(int),
            "r": np.abs(x[:, 0]) + x[:, 2] ** 2 + rng.normal(0, 0.1, n),
        }
    )


def _encoder(name: str, spec: InputSpec, **params: object) -> Encoder:
    built = ENCODERS.validate_params(name, dict(params), "model.encoder")
    return ENCODERS.get(name).factory(spec, built)


# -- bins: fitted on the training rows, saved with the preprocessing ----------------------
def test_bins_are_the_training_rows_quantiles_and_round_trip() -> None:
    frame = _frame(400)
    train = frame.iloc[:300]
    options = PreprocessOptions(numeric_bins=4, categorical_encoding="embedding")
    pre = TablePreprocessor.fit(train, ["x0", "gaps", "flag"], ["colour"], options, "t")
    x0 = pre.numeric[0]
    expected = np.quantile(train["x0"], [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(x0.bins, expected, rtol=0, atol=0)
    # Missing cells are not counted; a 0/1 flag has the one bin [0, 1].
    np.testing.assert_allclose(
        pre.numeric[1].bins, np.quantile(train["gaps"].dropna(), np.linspace(0, 1, 5))
    )
    assert pre.numeric[2].bins == [0.0, 1.0]
    spec = pre.input_spec
    # x0 at 0, gaps at 1 (its missing indicator at 2), flag at 3.
    assert spec.numeric_at == [0, 1, 3] and spec.n_numeric == 4
    np.testing.assert_allclose(spec.numeric_bins[0], (expected - x0.mean) / x0.std, atol=1e-12)
    again = TablePreprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again.input_spec == spec
    # Without numeric_bins, preprocessing.json is as it always was: no bins key, no option.
    plain = TablePreprocessor.fit(train, ["x0"], [], PreprocessOptions(), "t").to_dict()
    assert "bins" not in plain["numeric"][0] and "numeric_bins" not in plain["options"]
    assert TablePreprocessor.from_dict(plain).input_spec == InputSpec(1, [])


# -- the encoding against a hand-computed case --------------------------------------------
def test_piecewise_linear_encoding_by_hand() -> None:
    """Bins [0, 1) and [1, 3]: x = 2 is [1, 0.5]; x = 0.25 is [0.25, 0]; outside the range
    the first and last components extrapolate linearly (x = -1: [-1, 0]; x = 5: [1, 2])."""
    spec = InputSpec(n_numeric=2, numeric_at=[1], numeric_bins=[[0.0, 1.0, 3.0]])
    params = NumericEmbeddingParams(numeric_embedding="piecewise_linear", numeric_embedding_dim=3)
    block = NumericBlock(spec, params)
    assert block.embedding is not None
    x = torch.tensor([2.0, 0.25, -1.0, 5.0])
    encoded = block.embedding.impl(x[:, None])[:, 0, :]
    expected = torch.tensor([[1.0, 0.5], [0.25, 0.0], [-1.0, 0.0], [1.0, 2.0]])
    torch.testing.assert_close(encoded, expected, rtol=0, atol=1e-7)
    # The dense column 0 is not a number (an indicator): it follows the embedding unchanged.
    dense = torch.stack([torch.tensor([7.0, 8.0, 9.0, 10.0]), x], dim=1)
    out = block(dense)
    assert out.shape == (4, 3 + 1) and block.out_dim == 4
    torch.testing.assert_close(out[:, 3], dense[:, 0])


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("none", {}), ("piecewise_linear", {}), ("periodic", {"periodic_frequencies": 5})],
)
def test_embedding_shapes(kind: str, extra: dict[str, int]) -> None:
    frame = _frame(200)
    options = PreprocessOptions(numeric_bins=8, categorical_encoding="embedding")
    pre = TablePreprocessor.fit(frame, ["x0", "x1", "gaps", "flag"], ["colour"], options, "t")
    spec = pre.input_spec  # 4 numbers + 1 indicator, 1 embedded column
    inputs = pre.transform(frame, "t")
    block = NumericBlock(
        spec, NumericEmbeddingParams(numeric_embedding=kind, numeric_embedding_dim=6, **extra)
    )
    width = 5 if kind == "none" else 4 * 6 + 1
    assert block(inputs["numeric"]).shape == (200, width) == (200, block.out_dim)
    mlp = _encoder("mlp", spec, numeric_embedding=kind, widths=[16])
    assert mlp(inputs).shape == (200, 16)
    tabm = _encoder("tabm", spec, numeric_embedding=kind, k=3, n_blocks=2, d_block=8)
    assert tabm(inputs).shape == (200, 8)
    # Built on the meta device (how a model directory is checked): the same tensors.
    with torch.device("meta"):
        meta = _encoder("tabm", spec, numeric_embedding=kind, k=3, n_blocks=2, d_block=8)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in tabm.state_dict().items()
    }


def test_embeddings_without_fitted_columns_name_the_setting() -> None:
    spec = InputSpec(n_numeric=3)
    for kind in ("piecewise_linear", "periodic"):
        with pytest.raises(ConfigError, match=r"data\.numeric_bins") as exc:
            _encoder("mlp", spec, numeric_embedding=kind)
        assert "\n" not in str(exc.value)
    streamed = InputSpec(n_numeric=3, numeric_at=[0, 2])  # columns, no bins
    with pytest.raises(ConfigError, match="needs quantile bins"):
        _encoder("tabm", streamed, numeric_embedding="piecewise_linear")
    assert _encoder("mlp", streamed, numeric_embedding="periodic", widths=[4]).out_dim == 4


def test_the_mean_over_members_is_the_representation() -> None:
    """TabM's k members see the same row; the heads read the mean of their outputs."""
    spec = InputSpec(n_numeric=3)
    encoder = _encoder("tabm", spec, k=4, n_blocks=1, d_block=5, dropout=0.0).eval()
    x = {"numeric": torch.randn(6, 3), "categorical": torch.zeros(6, 0, dtype=torch.long)}
    ensemble = encoder.ensemble
    members = ensemble.backbone(ensemble.view(x["numeric"]))
    assert members.shape == (6, 4, 5)
    # The members differ (their own scalings), and the output is their mean.
    assert not torch.allclose(members[:, 0], members[:, 1])
    torch.testing.assert_close(encoder(x), members.mean(dim=1))


# -- training, save/load, export ----------------------------------------------------------
MODELS = {
    "mlp-ple": {
        "encoder": {"name": "mlp", "widths": [64, 64], "numeric_embedding": "piecewise_linear"},
        "architecture": {"name": "hard"},
    },
    "tabm-periodic-mmoe": {
        "encoder": {
            "name": "tabm",
            "k": 4,
            "n_blocks": 2,
            "d_block": 32,
            "numeric_embedding": "periodic",
            "periodic_scale": 0.3,
        },
        "architecture": {"name": "mmoe", "n_experts": 2},
    },
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, polytask.RunResult]:
    root = tmp_path_factory.mktemp("tabular")
    runs = {}
    for name, model in MODELS.items():
        runs[name] = polytask.fit(
            _frame(),
            TASKS,
            out=root / name,
            baselines=False,
            data_options={
                "numeric_bins": 16,
                "categorical_encoding": "embedding",
                "split": {"val": 0.2, "test": 0.2},
            },
            model={**model, "head": {"widths": [16]}},
            train={"epochs": 12, "batch_size": 64, "lr": 3e-3, "patience": None},
            quiet=True,
        )
    return runs


@pytest.mark.parametrize("name", list(MODELS))
def test_encoders_learn_a_nonlinear_task(trained: dict[str, polytask.RunResult], name: str) -> None:
    """``b`` turns on a sine of ``x0``, ``r`` on ``|x0| + x2²``: a linear model scores about
    0.7 AUROC and R² 0.0; the embedded encoders must get well past that."""
    metrics = trained[name].metrics
    assert metrics["b"]["auroc"] > 0.9, metrics
    assert metrics["r"]["r2"] > 0.7, metrics


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_round_trip_is_exact(trained: dict[str, polytask.RunResult], name: str) -> None:
    result = trained[name]
    assert result.out_dir is not None
    loaded = polytask.load(result.out_dir / "model")
    rows = _frame(100, seed=3)
    before = result.predictor.predict(rows)
    after = loaded.predict(rows)
    pd.testing.assert_frame_equal(before, after, check_exact=True)
    spec = json.loads((result.out_dir / "model" / "model.json").read_text())["input_spec"]
    assert len(spec["numeric_bins"]) == len(spec["numeric_at"]) == 5


@pytest.mark.parametrize("name", list(MODELS))
def test_export_equals_torch(
    trained: dict[str, polytask.RunResult], name: str, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from polytask.export import OnnxPredictor, export_onnx
    from polytask.export.verify import compare_predictions

    result = trained[name]
    assert result.out_dir is not None
    model_dir = result.out_dir / "model"
    export_onnx(model_dir, tmp_path / "m.onnx")
    rows = _frame(100, seed=4)
    rows.loc[0, "x0"] = 40.0  # far outside the bins: the linear extrapolation, in both
    rows.loc[1, "gaps"] = np.nan
    diffs = compare_predictions(
        polytask.load(model_dir).predict(rows), OnnxPredictor(tmp_path / "m.onnx").predict(rows)
    )
    bad = [d for d in diffs if not d.within(1e-5, 1e-5)]
    assert not bad and {d.column for d in diffs} >= {"b", "b_proba", "r"}, bad


def test_tampered_bins_are_refused(trained: dict[str, polytask.RunResult], tmp_path: Path) -> None:
    result = trained["mlp-ple"]
    assert result.out_dir is not None
    copy = tmp_path / "model"
    shutil.copytree(result.out_dir / "model", copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["input_spec"]["numeric_bins"][0] = [1.0, 0.0]
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PolytaskError, match=r"numeric_bins\.0: bin edges must increase"):
        polytask.load(copy)
