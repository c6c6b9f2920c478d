"""Vision: the CNN encoder with pooled and dense heads for every task kind, MTAN (parameter
partition, attention semantics, learning), image inputs end to end (arrays, PNG folders, PNG
masks), saving and loading, bad inputs, and the MultiMNIST loader."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

import polytask
from polytask import ConfigError, DataError, Task, config_from_dict, fit, run
from polytask.balance.gradient_engine import EngineParams, GradientBalancer, GramianWeighting
from polytask.config import load_config
from polytask.data.datasets import DATASETS, load_dataset
from polytask.data.datasets import multimnist as mm
from polytask.data.spec import InputSpec
from polytask.models.cnn import CNNEncoder, CNNParams
from polytask.models.config import ModelConfig
from polytask.models.heads import DenseDecoder, PooledTower
from polytask.models.model import MultiTaskModel, build_model
from polytask.models.mtan import MTAN, AttentionModule
from polytask.run.pipeline import RunResult

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # 2 shared cores: threads only wait

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: One task of every kind an image model serves (classes as fitting would set them).
KIND_TASKS = [
    Task("bin", "binary", "b", classes=["0", "1"]),
    Task("cls", "multiclass", "c", classes=["a", "b", "c"]),
    Task("reg", "regression", "r"),
    Task("seg", "segmentation", "m", classes=["0", "1", "2"]),
    Task("depth", "dense_regression", "d"),
]
#: Height != width, so a swapped axis shows up in the shapes.
SPEC = InputSpec(kind="image", shape=[2, 12, 10])
WANT = {"bin": (5,), "cls": (5, 3), "reg": (5,), "seg": (5, 3, 12, 10), "depth": (5, 12, 10)}


def _model(
    arch: str = "hard",
    tasks: list[Task] = KIND_TASKS,
    widths: tuple[int, ...] = (4, 8, 8),
    blocks: int = 1,
    **params: Any,
) -> MultiTaskModel:
    cfg = ModelConfig.model_validate(
        {
            "encoder": {"name": "cnn", "widths": list(widths), "blocks": blocks},
            "architecture": {"name": arch, **params},
            "head": {"widths": [6], "decoder_channels": [4]},
        }
    )
    return build_model(tasks, SPEC, cfg, seed=0)


def _images(n: int = 5, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, *SPEC.shape, generator=g)}


def _ids(params: list[nn.Parameter]) -> list[int]:
    return [id(p) for p in params]


# -- encoder and heads -------------------------------------------------------------------------


def test_cnn_encoder_halves_the_resolution_after_each_stage() -> None:
    encoder = CNNEncoder(SPEC, CNNParams(widths=[4, 8, 16]))
    z = encoder(_images())
    # 12 x 10 -> 12 x 10 -> 6 x 5 -> 3 x 3 (stride-2 convolutions round up).
    assert tuple(z.shape) == (5, 16, 3, 3)
    assert encoder.spatial and encoder.out_dim == 16


@pytest.mark.parametrize("arch", ["hard", "mtan"])
def test_every_task_kind_gets_its_head_and_output_shape(arch: str) -> None:
    model = _model(arch)
    out = model(_images())
    assert {k: tuple(v.shape) for k, v in out.items()} == WANT
    heads = model.architecture.heads
    assert isinstance(heads, nn.ModuleDict)
    kinds = {name: type(head) for name, head in heads.items()}
    assert kinds == {
        "bin": PooledTower,
        "cls": PooledTower,
        "reg": PooledTower,
        "seg": DenseDecoder,
        "depth": DenseDecoder,
    }
    # One task (the single-task baselines build the same architecture) works too.
    single = _model(arch, KIND_TASKS[3:4])
    assert tuple(single(_images())["seg"].shape) == WANT["seg"]


def test_a_dense_task_with_the_mlp_encoder_is_a_one_line_config_error() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=40),
            "mask": [rng.integers(0, 2, (4, 4)) for _ in range(40)],
        }
    )
    with pytest.raises(ConfigError) as info:
        fit(
            frame,
            [Task("seg", "segmentation", "mask")],
            model={"encoder": {"name": "mlp", "widths": [4]}},
            train={"epochs": 1, "progress": False},
            baselines=False,
            quiet=True,
        )
    message = str(info.value)
    assert "\n" not in message
    assert "'seg'" in message and "dense" in message and "'cnn'" in message


# -- MTAN --------------------------------------------------------------------------------------

MTAN_CASES = [
    {"widths": (4, 8, 8)},
    {"widths": (4, 8), "blocks": 2, "reduction": 1},
    {"widths": (6,)},  # one stage: no shared conv block between stages
]
MTAN_IDS = ["3-stages", "2-blocks", "1-stage"]


@pytest.mark.parametrize("case", MTAN_CASES, ids=MTAN_IDS)
def test_mtan_partition_is_disjoint_complete_and_follows_the_gradient(
    case: dict[str, Any],
) -> None:
    model = _model("mtan", **case)
    assert not model.single_representation
    everything = _ids(list(model.parameters()))
    shared = _ids(model.shared_parameters())
    owned = {t.name: _ids(model.task_parameters(t.name)) for t in KIND_TASKS}
    flat = [i for g in [shared, *owned.values()] for i in g]
    assert len(flat) == len(set(flat)), "a parameter is declared twice"
    assert set(flat) == set(everything)
    # Each task owns its attention modules (one per stage) and its head.
    arch = model.architecture
    assert isinstance(arch, MTAN)
    n_stages = len(case["widths"])
    for t in KIND_TASKS:
        attention = arch.attention[t.name]
        assert isinstance(attention, nn.ModuleList) and len(attention) == n_stages
        assert set(_ids(list(attention.parameters()))) <= set(owned[t.name])
    modules = model.shared_modules()
    assert set(_ids([p for m in modules for p in m.parameters()])) == set(shared)
    for a, b in itertools.permutations(modules, 2):
        assert all(m is not b for m in a.modules())
    assert set(_ids(model.last_shared_parameters())) <= set(shared)

    # A leaky slope keeps every connection visible in the gradient (no dead ReLU units).
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, nn.LeakyReLU(0.1))
    outputs = model(_images(8))
    reached: dict[int, set[str]] = {}
    for t in KIND_TASKS:
        grads = torch.autograd.grad(
            outputs[t.name].pow(2).mean(),
            list(model.parameters()),
            retain_graph=True,
            allow_unused=True,
        )
        for p, g in zip(model.parameters(), grads, strict=True):
            if g is not None and bool(g.abs().sum() > 0):
                reached.setdefault(id(p), set()).add(t.name)
    for t in KIND_TASKS:
        assert all(reached.get(i) == {t.name} for i in owned[t.name]), t.name
    assert all(len(reached.get(i, set())) >= 2 for i in shared)


def _set_masks(arch: MTAN, value: float) -> None:
    """Saturate every attention mask at sigmoid(value) (its last batch norm's output)."""
    for module in arch.modules():
        if isinstance(module, AttentionModule):
            last = module.net[-1]
            assert isinstance(last, nn.BatchNorm2d)
            nn.init.zeros_(last.weight)
            nn.init.constant_(last.bias, value)


def test_mtan_masks_weight_the_shared_features() -> None:
    """Masks of one let every head read the backbone's output unchanged (hard sharing); masks
    of zero leave each head a constant input, so one output for every image."""
    model = _model("mtan").eval()
    arch = model.architecture
    assert isinstance(arch, MTAN)
    x = _images(4)
    with torch.no_grad():
        _set_masks(arch, 50.0)  # sigmoid(50) is 1 in float32
        out = arch(x)
        z = arch.encoder(x)
        for t in KIND_TASKS:
            assert torch.equal(out[t.name], arch.heads[t.name](z)), t.name
        _set_masks(arch, -200.0)  # sigmoid(-200) is 0
        out = arch(x)
        for t in KIND_TASKS:
            assert torch.equal(out[t.name], out[t.name][:1].expand_as(out[t.name])), t.name


class _Recorded(GramianWeighting):
    """Keeps the Gramian it is given; weights 1, 2, 3, ..."""

    def __init__(self) -> None:
        super().__init__()
        self.gramian = torch.zeros(0)

    def forward(self, gramian: Tensor, losses: Tensor, tasks: list[int]) -> Tensor:
        self.gramian = gramian.detach().clone()
        return torch.arange(1, len(tasks) + 1, dtype=gramian.dtype)


def test_mtan_exact_gramian_pools_the_shared_blocks_calls_of_every_task() -> None:
    """The gradient engine's Gramian over shared_modules() (whose inter-stage conv blocks run
    once per task) and its update equal those of the materialised per-task gradients."""
    tasks = KIND_TASKS[:3]
    model, x = _model("mtan", tasks), _images(8)
    g = torch.Generator().manual_seed(1)
    targets = {t.name: torch.randn(model(x)[t.name].shape, generator=g) for t in tasks}

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
    balancer = GradientBalancer(tasks, method, EngineParams(mode="exact"), "recorded")
    outputs = balancer.forward(model, x)
    balancer.backward(dict(zip([t.name for t in tasks], losses(outputs), strict=True)), model)
    want = jac @ jac.T
    scale = float(want.abs().max())
    torch.testing.assert_close(method.gramian.double(), want, rtol=0, atol=2e-5 * scale)
    update = torch.cat([p.grad.reshape(-1) for p in shared]).double()  # type: ignore[union-attr]
    expected = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) @ jac
    scale = float(expected.abs().max())
    torch.testing.assert_close(update, expected, rtol=0, atol=2e-5 * scale)


def test_mtan_needs_the_cnn_encoder() -> None:
    cfg = ModelConfig.model_validate(
        {"encoder": {"name": "mlp", "widths": [4]}, "architecture": {"name": "mtan"}}
    )
    with pytest.raises(ConfigError) as info:
        build_model(KIND_TASKS[:3], InputSpec(n_numeric=3), cfg, seed=0)
    message = str(info.value)
    assert "'mtan'" in message and "'cnn'" in message and "\n" not in message


def test_mtan_rejects_unknown_parameters() -> None:
    raw = _image_raw()
    raw["model"]["architecture"] = {"name": "mtan", "hidden": 3}
    with pytest.raises(ConfigError, match="hidden"):
        config_from_dict(raw)


# -- generated images through the pipeline ------------------------------------------------------

SIZE = 12
SHAPES = ("square", "hbar", "vbar")


def _shapes_frame(n: int, seed: int) -> pd.DataFrame:
    """Grey 12 x 12 images holding one shape (a 4 x 4 square, a 2 x 6 or a 6 x 2 bar) of a
    random brightness at a random place, over faint noise.

    Targets: ``shape`` (multiclass), ``bright`` (binary: brightness > 170), ``level``
    (regression: the brightness / 255), ``mask`` (segmentation: 1 on the shape) and ``depth``
    (dense regression: 1 on the shape, 3 elsewhere, the top-left pixel missing).
    """
    rng = np.random.default_rng(seed)
    extents = {"square": (4, 4), "hbar": (2, 6), "vbar": (6, 2)}
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        shape = SHAPES[int(rng.integers(3))]
        h, w = extents[shape]
        r0, c0 = int(rng.integers(0, SIZE - h + 1)), int(rng.integers(0, SIZE - w + 1))
        level = int(rng.integers(90, 256))
        mask = np.zeros((SIZE, SIZE), dtype=np.int64)
        mask[r0 : r0 + h, c0 : c0 + w] = 1
        noise = rng.integers(0, 40, (SIZE, SIZE))
        image = np.where(mask == 1, level, noise).astype(np.uint8)
        depth = np.where(mask == 1, 1.0, 3.0).astype(np.float32)
        depth[0, 0] = np.nan
        rows.append(
            {
                "image": image,
                "shape": shape,
                "bright": int(level > 170),
                "level": level / 255.0,
                "mask": mask,
                "depth": depth,
            }
        )
    return pd.DataFrame(rows)


ALL_KINDS = [
    Task("shape", "multiclass", "shape"),
    Task("bright", "binary", "bright"),
    Task("level", "regression", "level"),
    Task("mask", "segmentation", "mask"),
    Task("depth", "dense_regression", "depth"),
]
TRAIN = {"epochs": 8, "batch_size": 32, "lr": 1e-2, "patience": None, "progress": False}


def _image_raw() -> dict[str, Any]:
    return {
        "seed": 0,
        "baselines": False,
        "data": {"input": {"name": "image"}},
        "tasks": [{"name": "shape", "kind": "multiclass", "target": "shape"}],
        "model": {"encoder": {"name": "cnn", "widths": [8, 16]}},
        "train": dict(TRAIN),
    }


@pytest.fixture(scope="module")
def shapes() -> pd.DataFrame:
    return _shapes_frame(240, seed=0)


@pytest.fixture(scope="module")
def every_kind(shapes: pd.DataFrame) -> RunResult:
    """Hard sharing on the CNN, every image-model task kind at once, through polytask.fit."""
    return fit(
        shapes,
        ALL_KINDS,
        data_options={"input": {"name": "image"}, "split": {"val": 0.2, "test": 0.2}},
        model={"encoder": {"name": "cnn", "widths": [8, 16]}, "head": {"decoder_channels": [8]}},
        train=TRAIN,
        baselines=False,
        quiet=True,
    )


def test_every_kind_learns_from_generated_images(every_kind: RunResult) -> None:
    m = every_kind.metrics
    # Floors well above what a constant prediction scores (3 balanced shapes: accuracy 1/3;
    # an all-background mask: mIoU ~0.45; the mean depth: RMSE ~0.65), below this seed's
    # results (shape accuracy ~0.73, mask mIoU ~0.77, depth RMSE ~0.37).
    assert m["shape"]["accuracy"] > 0.6 and m["shape"]["auroc"] > 0.85, m
    assert m["bright"]["auroc"] > 0.95, m
    assert m["level"]["r2"] > 0.8, m
    assert m["mask"]["miou"] > 0.65, m
    assert m["depth"]["rmse"] < 0.5, m


def test_save_and_load_give_identical_predictions(
    every_kind: RunResult, shapes: pd.DataFrame, tmp_path: Path
) -> None:
    frame = shapes.head(20)
    before = every_kind.predictor.predict(frame)
    every_kind.predictor.save(tmp_path / "model")
    after = polytask.load(tmp_path / "model").predict(frame)
    assert list(after.columns) == list(before.columns)
    assert "shape_proba_square" in after.columns and "level" in after.columns
    for column in before.columns:
        a, b = before[column].to_numpy(), after[column].to_numpy()
        if column in ("mask", "depth"):
            assert a[0].shape == (SIZE, SIZE)
            assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), column
        else:
            assert np.array_equal(a, b), column


def test_mtan_learns_generated_shapes(shapes: pd.DataFrame) -> None:
    result = fit(
        shapes,
        [Task("shape", "multiclass", "shape"), Task("mask", "segmentation", "mask")],
        data_options={"input": {"name": "image"}, "split": {"val": 0.2, "test": 0.2}},
        model={
            "encoder": {"name": "cnn", "widths": [8, 16]},
            "architecture": {"name": "mtan", "reduction": 2},
            "head": {"decoder_channels": [8]},
        },
        train=TRAIN,
        baselines=False,
        quiet=True,
    )
    assert result.metrics["shape"]["accuracy"] > 0.9, result.metrics
    assert result.metrics["mask"]["miou"] > 0.65, result.metrics


def test_an_image_of_another_shape_names_the_column_and_row(shapes: pd.DataFrame) -> None:
    frame = shapes.head(60).copy()
    frame.at[37, "image"] = np.zeros((SIZE + 2, SIZE), dtype=np.uint8)
    with pytest.raises(DataError) as info:
        fit(
            frame,
            [Task("shape", "multiclass", "shape")],
            data_options={"input": {"name": "image"}},
            model={"encoder": {"name": "cnn", "widths": [4]}},
            train={"epochs": 1, "progress": False},
            baselines=False,
            quiet=True,
        )
    message = str(info.value)
    assert "column 'image'" in message and "row 37" in message and "shape (14, 12" in message
    assert "\n" not in message


# -- image files -------------------------------------------------------------------------------


def _png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path.name


def test_a_folder_of_pngs_in_class_subfolders_trains(tmp_path: Path) -> None:
    frame = _shapes_frame(180, seed=1)
    root = tmp_path / "pngs"
    for i, row in frame.iterrows():
        _png(root / str(row["shape"]) / f"img{i:03d}.png", row["image"])
    raw: dict[str, Any] = {
        "seed": 0,
        "baselines": False,
        "data": {
            "path": str(root),
            "format": "folder",
            "pattern": "*/*.png",
            "regex": r"(?P<label>[^/]+)/img\d+\.png",
            "input": {"name": "image", "column": "path"},
            "split": {"val": 0.2, "test": 0.2},
        },
        "tasks": [{"name": "shape", "kind": "multiclass", "target": "label"}],
        "model": {"encoder": {"name": "cnn", "widths": [8, 16]}},
        "train": dict(TRAIN),
    }
    result = run(config_from_dict(raw), quiet=True)
    assert result.predictor.tasks[0].classes == sorted(SHAPES)
    assert result.metrics["shape"]["accuracy"] > 0.8, result.metrics


def test_segmentation_masks_as_png_paths(tmp_path: Path) -> None:
    frame = _shapes_frame(200, seed=2)
    table = pd.DataFrame(
        {
            "image": [_png(tmp_path / "img" / f"{i}.png", a) for i, a in enumerate(frame.image)],
            "mask": [_png(tmp_path / "seg" / f"{i}.png", m) for i, m in enumerate(frame["mask"])],
        }
    )
    table["image"] = "img/" + table["image"]
    table["mask"] = "seg/" + table["mask"]
    table.to_csv(tmp_path / "table.csv", index=False)
    raw: dict[str, Any] = {
        "seed": 0,
        "baselines": False,
        "data": {"path": "table.csv", "input": {"name": "image"}, "split": {"test": 0.2}},
        "tasks": [{"name": "seg", "kind": "segmentation", "target": "mask"}],
        "model": {"encoder": {"name": "cnn", "widths": [8, 16]}, "head": {"decoder_channels": [8]}},
        "train": dict(TRAIN),
    }
    result = run(config_from_dict(raw, base_dir=tmp_path), quiet=True)
    assert result.predictor.tasks[0].classes == ["0", "1"]  # the pixel values of the PNGs
    assert result.metrics["seg"]["miou"] > 0.65, result.metrics
    # The saved model reads the same relative paths at prediction time.
    pred = result.predictor.predict(table.head(3), base_dir=tmp_path)
    assert pred["seg"].iloc[0].shape == (SIZE, SIZE)


# -- MultiMNIST --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_root(require_data: Callable[[str], Path]) -> Path:
    return require_data("multimnist")


@pytest.fixture(scope="module")
def multimnist(mnist_root: Path) -> pd.DataFrame:
    return load_dataset("multimnist", mnist_root)


def test_multimnist_is_registered_with_its_files_and_example() -> None:
    info = DATASETS["multimnist"]
    assert info.targets == {"left": "multiclass", "right": "multiclass", "mask": "segmentation"}
    assert [f.relpath for f in info.files] == [mm.IMAGES_RELPATH, mm.LABELS_RELPATH]
    assert all(len(f.sha256) == 64 and f.url.startswith("https://") for f in info.files)
    cfg = load_config(EXAMPLES / "multimnist.toml")
    assert cfg.data.dataset == "multimnist" and cfg.data.split.method == "column"
    assert {t.target: t.kind for t in cfg.tasks} == info.targets
    assert cfg.model.encoder.name == "cnn" and cfg.model.architecture.name == "mtan"


def test_multimnist_sizes_disjoint_sources_and_masks(multimnist: pd.DataFrame) -> None:
    frame = multimnist
    assert len(frame) == 10_000
    assert frame["split"].value_counts().to_dict() == {"train": 7000, "test": 2000, "val": 1000}
    sources: dict[str, set[int]] = {}
    for split, part in frame.groupby("split"):
        left, right = set(part["left_source"]), set(part["right_source"])
        # Every source digit of the pool is the left digit once and the right digit once.
        assert left == right and len(left) == len(part)
        assert not (part["left_source"] == part["right_source"]).any()
        sources[str(split)] = left
    for a, b in itertools.combinations(sources.values(), 2):
        assert not a & b, "a source digit is shared by two splits"
    assert set().union(*sources.values()) == set(range(10_000))

    images = np.stack(frame["image"].to_numpy())
    masks = np.stack(frame["mask"].to_numpy())
    assert images.shape == masks.shape == (10_000, 36, 36)
    assert images.dtype == masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 1, 2}
    # Labelled exactly where a digit inks the composite; each digit's pixels in its own box.
    assert np.array_equal(masks > 0, images >= mm.INK)
    assert not (masks == 1)[:, 28:, :].any() and not (masks == 1)[:, :, 28:].any()
    assert not (masks == 2)[:, :6, :].any() and not (masks == 2)[:, :, :6].any()
    assert not (masks[:, 34:, :]).any() and not (masks[:, :, 34:]).any()
    for column in ("left", "right"):
        assert sorted(frame[column].unique()) == list(range(10))


def test_multimnist_rows_are_their_source_digits_composed(
    multimnist: pd.DataFrame, mnist_root: Path
) -> None:
    digits, labels = mm.read_mnist_test(mnist_root)
    rows = multimnist.iloc[[0, 6999, 7000, 9999]]
    for _, row in rows.iterrows():
        left, right = digits[row["left_source"]], digits[row["right_source"]]
        assert row["left"] == labels[row["left_source"]]
        assert row["right"] == labels[row["right_source"]]
        want = np.zeros((36, 36), dtype=np.uint8)
        want[:28, :28] = left
        want[6:34, 6:34] = np.maximum(want[6:34, 6:34], right)
        assert np.array_equal(row["image"], want)
        # Where both digits ink a pixel the brighter owns it (ties to the right digit).
        lcan, rcan = np.zeros_like(want), np.zeros_like(want)
        lcan[:28, :28], rcan[6:34, 6:34] = left, right
        both = (lcan >= mm.INK) & (rcan >= mm.INK)
        assert np.array_equal(row["mask"][both] == 1, lcan[both] > rcan[both])
