"""File-based sources (folders, text lines, split by column), array cells, and the per-pixel
task kinds: target encoding, losses against float64 references, heads and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polytask.config import config_from_dict
from polytask.data.arrays import stack_column
from polytask.data.files import read_lines, scan_folder
from polytask.data.prepare import prepare_data
from polytask.data.preprocess import TablePreprocessor
from polytask.data.spec import InputSpec
from polytask.data.split import column_split
from polytask.data.targets import encode_targets, fit_task
from polytask.errors import ConfigError, DataError
from polytask.losses import TaskLoss
from polytask.models.config import ModelConfig
from polytask.models.model import build_model
from polytask.run.pipeline import run
from polytask.tasks import Task

# -- sources -------------------------------------------------------------------------------------


def _touch(root: Path, rel: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_folder_scan_reads_labels_from_relative_paths(tmp_path: Path) -> None:
    for rel in ("cat/b.png", "cat/a.png", "dog/c.png", "dog/notes.txt"):
        _touch(tmp_path, rel)
    df = scan_folder(tmp_path, "**/*.png", r"(?P<label>[^/]+)/(?P<name>\w+)\.png", "file")
    assert df.to_dict("list") == {
        "file": ["cat/a.png", "cat/b.png", "dog/c.png"],
        "label": ["cat", "cat", "dog"],
        "name": ["a", "b", "c"],
    }


def test_folder_scan_errors_name_the_file_or_pattern(tmp_path: Path) -> None:
    _touch(tmp_path, "x/1_a.wav")
    _touch(tmp_path, "x/odd.wav")
    with pytest.raises(DataError, match=r"file 'x/odd\.wav' does not match data\.regex"):
        scan_folder(tmp_path, "**/*.wav", r"x/(?P<digit>\d)_(?P<who>\w)\.wav")
    with pytest.raises(DataError, match=r"no file matches data\.pattern '\*\.png'"):
        scan_folder(tmp_path, "*.png")
    with pytest.raises(DataError, match="no named group"):
        scan_folder(tmp_path, "**/*.wav", r"x/.*")
    with pytest.raises(DataError, match="not found"):
        scan_folder(tmp_path / "missing")


def test_lines_split_on_newline_only_and_keep_the_separator_in_the_last_field(
    tmp_path: Path,
) -> None:
    path = tmp_path / "d.txt"
    # NEL (U+0085) inside a line must not split it, as str.splitlines would.
    path.write_bytes("1\tgood\tfun\n\n0\tbad \u0085 film\r\n".encode())
    df = read_lines(path, ["label", "text"])
    assert df.to_dict("list") == {"label": ["1", "0"], "text": ["good\tfun", "bad \u0085 film"]}
    with pytest.raises(DataError, match=r"line 1: 1 field\(s\), expected 3"):
        read_lines(path, ["a", "b", "c"], separator="|")
    with pytest.raises(DataError, match="cannot decode it as ascii"):
        read_lines(path, ["label", "text"], encoding="ascii")


def test_column_split_and_its_error() -> None:
    train, val, test = column_split(pd.Series(["train", "TEST", "val", "train "], name="s"))
    assert (train.tolist(), val.tolist(), test.tolist()) == ([0, 3], [2], [1])
    with pytest.raises(DataError, match=r"split column 's', row 1: 'dev' is not one of"):
        column_split(pd.Series(["train", "dev"], name="s"))


def test_lines_source_with_split_column_trains_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(200):
        y = int(rng.integers(0, 2))
        x = rng.normal(2.0 * y - 1.0, 0.7)
        split = ("train", "train", "train", "val", "test")[i % 5]
        lines.append(f"{y}|{x:.4f}|{split}")
    (tmp_path / "d.txt").write_text("\n".join(lines))
    raw = {
        "data": {
            "path": "d.txt",
            "format": "lines",
            "columns": ["y", "x", "part"],
            "separator": "|",
            "numeric": ["x"],
            "split": {"method": "column", "column": "part"},
        },
        "tasks": [{"name": "y", "kind": "binary", "target": "y"}],
    }
    cfg = config_from_dict(raw, base_dir=tmp_path)
    data = prepare_data(cfg)
    assert (len(data.train), len(data.val), len(data.test or [])) == (120, 40, 40)
    # The split column is a role, not a feature.
    assert isinstance(data.preprocessor, TablePreprocessor)
    assert data.preprocessor.columns == ["x"]
    cfg.train.epochs, cfg.train.progress, cfg.baselines = 15, False, False
    result = run(cfg, quiet=True)
    assert result.metrics["y"]["auroc"] > 0.85


def test_split_column_is_required_by_the_method() -> None:
    raw = {
        "data": {"path": "x.csv", "split": {"method": "column"}},
        "tasks": [{"name": "y", "kind": "binary", "target": "y"}],
    }
    with pytest.raises(ConfigError, match=r"data\.split\.column: split method 'column' needs it"):
        config_from_dict(raw)


# -- array cells ---------------------------------------------------------------------------------


def test_stack_column_reads_arrays_and_npy_files_and_names_bad_rows(tmp_path: Path) -> None:
    np.save(tmp_path / "b.npy", np.full((2, 3), 7, dtype=np.int64))
    series = pd.Series([np.ones((2, 3), dtype=np.int64), "b.npy", None], name="m")
    stacked, present = stack_column(series, "t", tmp_path, allow_missing=True)
    assert stacked.shape == (3, 2, 3) and present.tolist() == [True, True, False]
    assert stacked[1].tolist() == [[7, 7, 7], [7, 7, 7]] and stacked[2].sum() == 0
    with pytest.raises(DataError, match=r"column 'm', row 2: empty cell"):
        stack_column(series, "t", tmp_path)
    bad = pd.Series([np.zeros((2, 3)), np.zeros((3, 2))], name="m")
    with pytest.raises(DataError, match=r"row 1: shape \(3, 2\) differs from \(2, 3\) \(row 0\)"):
        stack_column(bad, "t", None)
    with pytest.raises(DataError, match=r"row 0: file '.*nope\.npy' not found"):
        stack_column(pd.Series(["nope.npy"], name="m"), "t", tmp_path)


# -- dense targets -------------------------------------------------------------------------------


def _masks_frame() -> pd.DataFrame:
    m0 = np.array([[0, 1], [2, 255]])
    m1 = np.array([[1, 1], [0, 0]])
    d0 = np.array([[1.0, 2.0], [np.nan, 4.0]])
    d1 = np.array([[3.0, 3.0], [3.0, 3.0]])
    return pd.DataFrame({"seg": [m0, m1, None], "depth": [d0, d1, d1]})


def test_segmentation_targets_classes_and_ignore_index() -> None:
    df = _masks_frame()
    task = fit_task(Task("s", "segmentation", "seg", ignore_index=255), df, np.array([0, 1]), "t")
    assert task.classes == ["0", "1", "2"] and task.n_outputs == 3
    target, mask = encode_targets(task, df, "t")
    assert target.shape == (3, 2, 2) and target.dtype == torch.int64
    assert mask.tolist() == [
        [[True, True], [True, False]],  # 255 is unlabelled
        [[True, True], [True, True]],
        [[False, False], [False, False]],  # no mask for this row
    ]
    assert target[0].tolist() == [[0, 1], [2, 0]]


def test_segmentation_values_outside_declared_classes_are_an_error() -> None:
    task = Task("s", "segmentation", "seg", classes=["0", "1"], ignore_index=255)
    with pytest.raises(DataError, match=r"pixel value 2 outside the classes 0\.\.1"):
        encode_targets(task, _masks_frame(), "t")
    with pytest.raises(DataError, match="negative pixel value -1; use ignore_index"):
        fit_task(
            Task("s", "segmentation", "seg"),
            pd.DataFrame({"seg": [np.array([[0, -1]])]}),
            np.array([0]),
            "t",
        )


def test_dense_regression_targets_are_standardised_on_valid_training_pixels() -> None:
    df = _masks_frame()
    task = fit_task(Task("d", "dense_regression", "depth"), df, np.array([0, 1]), "t")
    valid = np.array([1.0, 2.0, 4.0, 3.0, 3.0, 3.0, 3.0])
    assert task.target_mean == pytest.approx(valid.mean())
    assert task.target_std == pytest.approx(valid.std())
    target, mask = encode_targets(task, df, "t")
    assert mask[0].tolist() == [[True, True], [False, True]] and bool(mask[2].all())
    assert float(target[0, 0, 1]) == pytest.approx((2.0 - valid.mean()) / valid.std())


# -- dense losses --------------------------------------------------------------------------------


def test_segmentation_loss_is_the_mean_cross_entropy_over_labelled_pixels() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, (2, 3, 4, 5))
    target = rng.integers(0, 3, (2, 4, 5))
    mask = rng.random((2, 4, 5)) < 0.6
    loss = TaskLoss(Task("s", "segmentation", "m", classes=["0", "1", "2"]))(
        torch.from_numpy(logits).float(), torch.from_numpy(target), torch.from_numpy(mask)
    )
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = np.take_along_axis(logp, target[:, None], axis=1)[:, 0]
    assert loss is not None
    assert float(loss) == pytest.approx(-picked[mask].mean(), rel=1e-5)


def test_dense_regression_l1_loss_over_valid_pixels() -> None:
    rng = np.random.default_rng(4)
    out, tgt = rng.normal(0, 1, (2, 3, 3)), rng.normal(0, 1, (2, 3, 3))
    mask = rng.random((2, 3, 3)) < 0.5
    loss = TaskLoss(Task("d", "dense_regression", "x"))(
        torch.from_numpy(out).float(), torch.from_numpy(tgt).float(), torch.from_numpy(mask)
    )
    assert loss is not None
    assert float(loss) == pytest.approx(np.abs(out - tgt)[mask].mean(), rel=1e-5)


# -- heads ---------------------------------------------------------------------------------------


def test_dense_task_on_a_vector_encoder_is_a_config_error() -> None:
    tasks = [Task("s", "segmentation", "m", classes=["0", "1"])]
    with pytest.raises(ConfigError, match=r"task 's' is dense .* model\.encoder\.name = 'cnn'"):
        build_model(tasks, InputSpec(n_numeric=4), ModelConfig(), seed=0)


def test_image_encoder_on_a_table_is_a_config_error() -> None:
    cfg = ModelConfig.model_validate({"encoder": {"name": "cnn"}})
    with pytest.raises(ConfigError, match=r"encoder 'cnn' reads image inputs, but the data gives"):
        build_model([Task("y", "binary", "y")], InputSpec(n_numeric=4), cfg, seed=0)


def test_output_shapes_of_every_kind_on_feature_maps() -> None:
    tasks = [
        Task("b", "binary", "b"),
        Task("c", "multiclass", "c", classes=["x", "y", "z"]),
        Task("r", "regression", "r"),
        Task("s", "segmentation", "s", classes=["0", "1", "2", "3"]),
        Task("d", "dense_regression", "d"),
    ]
    cfg = ModelConfig.model_validate({"encoder": {"name": "cnn", "widths": [4, 8]}})
    model = build_model(tasks, InputSpec(kind="image", shape=[2, 12, 10]), cfg, seed=0)
    out = model({"image": torch.randn(5, 2, 12, 10)})
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "b": (5,),
        "c": (5, 3),
        "r": (5,),
        "s": (5, 4, 12, 10),
        "d": (5, 12, 10),
    }
