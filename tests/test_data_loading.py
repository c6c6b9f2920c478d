"""Feeding the trainer: file-backed inputs decoded in DataLoader workers (deterministic for any
number of workers, augmentation in the workers) and the table reader's fast path (the same
tensors as fitting and transforming the table the plain way)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import Tensor

from polytask import config_from_dict, run
from polytask.data.config import DataJob
from polytask.data.inputs.image import ImageInput
from polytask.data.prepare import PreparedData, _load_and_split, _options, prepare_data
from polytask.data.preprocess import TablePreprocessor, infer_types
from polytask.data.sampling import SamplingConfig
from polytask.data.tensors import Batch
from polytask.errors import ConfigError

SIZE = 12


def _png_folder(root: Path, n: int = 48, seed: int = 0) -> Path:
    """Grey PNGs in class subfolders: a bright square (left half or right half) over noise."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        side = ("left", "right")[i % 2]
        image = rng.integers(0, 40, (SIZE, SIZE))
        c0 = int(rng.integers(0, 3)) + (0 if side == "left" else SIZE // 2)
        r0 = int(rng.integers(0, SIZE - 4))
        image[r0 : r0 + 4, c0 : c0 + 3] = int(rng.integers(120, 256))
        path = root / side / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(path)
    return root


def _raw(root: Path, workers: int, **image: Any) -> dict[str, Any]:
    return {
        "seed": 3,
        "baselines": False,
        "data": {
            "path": str(root),
            "format": "folder",
            "pattern": "*/*.png",
            "regex": r"(?P<label>[^/]+)/img\d+\.png",
            "input": {"name": "image", "column": "path", **image},
            "workers": workers,
            "split": {"val": 0.25, "test": 0.0},
        },
        "tasks": [{"name": "side", "kind": "binary", "target": "label", "positive": "right"}],
        "model": {"encoder": {"name": "cnn", "widths": [4, 8]}},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "lr": 1e-2,
            "patience": None,
            "progress": False,
            "threads": 1,
        },
    }


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _png_folder(tmp_path_factory.mktemp("pngs"))


def _epochs(data: PreparedData, epochs: int = 2) -> list[Batch]:
    train = data.training_sources(SamplingConfig())
    generator = torch.Generator().manual_seed(0)
    return [
        drawn.batch
        for epoch in range(epochs)
        for drawn in train.epoch_batches(8, epoch, epochs, generator, None)
    ]


def _same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.inputs["image"], y.inputs["image"])
        and torch.equal(x.targets["side"], y.targets["side"])
        for x, y in zip(a, b, strict=True)
    )


def test_workers_give_the_same_batches_and_weights_as_decoding_in_process(pngs: Path) -> None:
    augment = {"flip": True, "crop_padding": 2}
    batches = {w: _epochs(prepare_data(config_from_dict(_raw(pngs, w, **augment)))) for w in (0, 2)}
    assert _same(batches[0], batches[2])
    # Another epoch draws other flips and crops: the stream moves with the batch's place.
    assert not torch.equal(batches[0][0].inputs["image"], batches[0][5].inputs["image"])
    weights = {}
    for w in (0, 2):
        result = run(config_from_dict(_raw(pngs, w, **augment)), quiet=True)
        weights[w] = result.predictor.model.state_dict()
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    # Without augmentation, decoding in workers trains exactly what decoding every image
    # up front (data.workers = 0, the default) trains.
    plain = {w: run(config_from_dict(_raw(pngs, w)), quiet=True) for w in (0, 2)}
    a, b = (plain[w].predictor.model.state_dict() for w in (0, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain[0].metrics == plain[2].metrics


def test_augmentation_runs_in_the_workers_and_flips_whole_images(
    pngs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _epochs(prepare_data(config_from_dict(_raw(pngs, 0))), epochs=1)

    augment = ImageInput.augment

    def tagged(self: ImageInput, inputs: dict[str, Tensor], g: torch.Generator) -> Any:
        # The process that augmented rides back with the batch (workers are forked, so they
        # run this patched method).
        out = augment(self, inputs, g)
        return {**out, "pid": torch.full((len(out["image"]),), os.getpid())}

    monkeypatch.setattr(ImageInput, "augment", tagged)
    flipped = _epochs(prepare_data(config_from_dict(_raw(pngs, 2, flip=True))), epochs=1)
    pids = {int(p) for b in flipped for p in b.inputs["pid"]}
    assert pids and os.getpid() not in pids
    same = mirrored = 0
    for before, after in zip(plain, flipped, strict=True):
        for x, y in zip(before.inputs["image"], after.inputs["image"], strict=True):
            same += bool(torch.equal(x, y))
            mirrored += bool(torch.equal(x.flip(2), y)) and not torch.equal(x, y)
    n = sum(len(b) for b in plain)
    assert same + mirrored == n
    assert 0.25 * n < mirrored < 0.75 * n


def test_workers_without_file_inputs_is_a_one_line_config_error(tmp_path: Path) -> None:
    raw = {
        "data": {"path": "t.csv", "workers": 2},
        "tasks": [{"name": "y", "kind": "regression", "target": "y"}],
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, base_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and message.startswith("config error: data.workers:")
    assert "image" in message
    raw["data"]["workers"] = -1  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, base_dir=tmp_path)
    assert "\n" not in str(info.value) and "data.workers" in str(info.value)


def _mixed_table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Numbers with gaps and infinities, text categories with blanks, padding and rare or
    unseen values, integer codes read as floats (3.0 is category "3"), two targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    x[5] = np.inf
    count = rng.integers(0, 4, n).astype(np.float64)
    count[rng.random(n) < 0.05] = np.nan
    colour = rng.choice(np.array(["red", " blue", "green ", "", None], dtype=object), n)
    city = np.array([f"c{v}" for v in rng.zipf(1.6, n) % 40], dtype=object)
    city[-5:] = "only_in_the_last_rows"
    code = rng.integers(0, 3, n).astype(np.float64)
    code[rng.random(n) < 0.1] = np.nan
    y = x * 2 + rng.normal(size=n)
    label = np.where(rng.random(n) < 0.5, "yes", "no").astype(object)
    label[rng.random(n) < 0.1] = None
    frame: pd.DataFrame = pd.DataFrame(
        {
            "x": x,
            "count": count,
            "colour": colour,
            "city": city,
            "code": code,
            "y": y,
            "label": label,
        }
    )
    return frame


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_fast_reader_gives_the_tensors_of_fit_then_transform(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"t.{fmt}"
    frame = _mixed_table()
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    raw = {
        "seed": 1,
        "data": {
            "path": path.name,
            "categorical": ["code"],
            "max_categories": 12,
            "min_frequency": 2,
        },
        "tasks": [
            {"name": "y", "kind": "regression", "target": "y"},
            {"name": "label", "kind": "binary", "target": "label", "positive": "yes"},
        ],
    }
    cfg = config_from_dict(raw, base_dir=tmp_path)
    data = prepare_data(cfg)
    assert isinstance(data.preprocessor, TablePreprocessor)
    # The plain way, column by column as TablePreprocessor.fit and transform do it.
    df = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    numeric, categorical = infer_types(df, ["x", "count", "colour", "city", "code"], [], ["code"])
    assert (numeric, categorical) == (["x", "count"], ["colour", "city", "code"])
    n_train, n_val = len(data.train), len(data.val)
    assert data.test is not None
    # The run's split, read the plain way.
    job = DataJob.of(cfg)
    train_idx, val_idx, test_idx = _load_and_split(job, None).splits
    assert (len(train_idx), len(val_idx)) == (n_train, n_val)
    slow = TablePreprocessor.fit(df.iloc[train_idx], numeric, categorical, _options(job), "t")
    assert slow.to_dict() == data.preprocessor.to_dict()
    whole = slow.transform(df, "t")
    assert whole["numeric"].shape[1] == data.preprocessor.numeric_width
    for split, rows in ((data.train, train_idx), (data.val, val_idx), (data.test, test_idx)):
        index = torch.from_numpy(rows.astype(np.int64))
        for key in ("numeric", "categorical"):
            assert torch.equal(split.inputs[key], whole[key].index_select(0, index)), key
    # The rare and unseen values reach the unknown slot; blanks and None are one category.
    colour = next(c for c in data.preprocessor.categorical if c.name == "colour")
    assert colour.categories == ["__missing__", "blue", "green", "red"]
    code = next(c for c in data.preprocessor.categorical if c.name == "code")
    assert code.categories == ["0", "1", "2", "__missing__"]


def test_arrow_csv_markers_are_pandas_defaults() -> None:
    from pandas._libs.parsers import STR_NA_VALUES

    from polytask.data.tables import PANDAS_NA_VALUES

    assert set(PANDAS_NA_VALUES) == set(STR_NA_VALUES)


@pytest.mark.parametrize(
    ("text", "fast"),
    [
        ("a,b,c\n1.5,x,3\n,y,\nNA,None,4\n2.25,z,5\n", True),
        ("a,b\n1,2\n3,\n", True),
        ("a,b\n0x10,1\n2,3\n", False),  # pyarrow reads 16, pandas text
        ("a,b\n+3,1\n4,2\n", False),  # pyarrow float64, pandas int64
        ("a,b\n1, x\n2, y\n", False),  # skipinitialspace
        ("a,b\n1,3\n2,x\n", False),  # a number among text
        ("a,b\nTrue,1\nfalse,2\n", False),  # booleans
        ("a,a\n1,2\n", False),  # pandas renames the second 'a'
        ("a,b\n123456789012345678901,1\n", False),  # beyond int64: pandas text
    ],
)
def test_csv_read_by_arrow_as_pandas_reads_it(tmp_path: Path, text: str, fast: bool) -> None:
    """The pyarrow reader gives pandas' frame bit for bit, or hands the file to pandas."""
    from polytask.data.tables import _read_csv_arrow, read_table

    path = tmp_path / "t.csv"
    path.write_text(text)
    got = _read_csv_arrow(path, ",")
    assert (got is not None) == fast
    expected = pd.read_csv(path, skipinitialspace=True)
    expected.columns = [str(c) for c in expected.columns]
    pd.testing.assert_frame_equal(read_table(path), expected, check_exact=True)
