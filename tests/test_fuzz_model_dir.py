"""Fuzz campaign, saved artifacts (issue 17): random corruptions of a saved model directory
(truncation, flipped bytes, garbage, deleted files, edited JSON values of any type and size,
symlinks to devices, FIFOs, directories in place of files) and of a checkpoint. Loading either
works and predicts finite, label-consistent outputs, or is refused with one line naming the
file; nothing hangs and nothing is written outside the model's folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import clinical_config, clinical_frame, run_cli, toml_text
from fuzz_support import (
    FUZZ,
    TALLY,
    assert_finite_tensors,
    assert_no_label_without_probability,
    examples,
    one_line,
    refused,
    time_limit,
)
from polytask import config_from_dict, load, run

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# A JSON value of any type and size an editor (or an attacker) could put in place of another.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 10**12, 2**31, 1e308, -1e308])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """One small trained run (binary + regression on the clinical table), with checkpoints."""
    root = tmp_path_factory.mktemp("fuzz-model")
    frame = clinical_frame(160)
    frame.to_csv(root / "rows.csv", index=False)
    raw = clinical_config(str(root / "rows.csv"))
    raw["train"] = {"epochs": 2, "batch_size": 32, "progress": False}
    raw["data"]["na_values"] = ["?"]
    run(config_from_dict(raw), out=root / "run", quiet=True)
    return root / "run", frame


def _json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _json_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths += _json_paths(item, (*prefix, i))
    return paths


def _replace(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = document
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return document


@st.composite
def corruptions(draw: st.DrawFn, files: list[str]) -> tuple[str, str, Any]:
    """(file, operation, argument) for one corruption of a saved directory."""
    name = draw(st.sampled_from(files))
    ops = ["truncate", "flip", "garbage", "delete", "symlink", "fifo", "directory"]
    if name.endswith(".json"):
        ops += ["edit", "edit", "edit"]
    op = draw(st.sampled_from(ops))
    if op == "truncate":
        return name, op, draw(st.floats(0.0, 0.999))
    if op == "flip":
        return name, op, draw(st.lists(st.integers(0, 2**31), min_size=1, max_size=8))
    if op == "garbage":
        return name, op, draw(st.binary(max_size=64))
    if op == "symlink":
        return name, op, draw(st.sampled_from(["/dev/zero", "/dev/urandom", "/dev/null"]))
    if op == "edit":
        return name, op, (draw(st.integers(0, 10**6)), draw(JSON_VALUES))
    return name, op, None


def _corrupt(directory: Path, name: str, op: str, arg: Any) -> None:
    path = directory / name
    if op == "truncate":
        blob = path.read_bytes()
        path.write_bytes(blob[: int(len(blob) * arg)])
    elif op == "flip":
        blob = bytearray(path.read_bytes())
        for position in arg:
            if blob:
                blob[position % len(blob)] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif op == "garbage":
        path.write_bytes(arg)
    elif op == "delete":
        path.unlink()
    elif op == "symlink":
        path.unlink()
        path.symlink_to(arg)
    elif op == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif op == "directory":
        path.unlink()
        path.mkdir()
    elif op == "edit":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:  # an earlier corruption of this case already broke it
            return
        paths = _json_paths(document)
        where, value = arg
        path.write_text(json.dumps(_replace(document, paths[where % len(paths)], value)))


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def _snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@settings(FUZZ, max_examples=examples(80))
@given(data=st.data())
def test_corrupted_model_dir_loads_or_refuses_in_one_line(
    trained: tuple[Path, pd.DataFrame], data: st.DataObject
) -> None:
    run_dir, frame = trained
    files = _files(run_dir / "model")
    cuts = data.draw(st.lists(corruptions(files), min_size=1, max_size=2))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(run_dir / "model", model)
        for name, op, arg in cuts:
            if (model / name).is_file() and not (model / name).is_symlink():
                _corrupt(model, name, op, arg)
        before = _snapshot(Path(tmp))
        # Loading writes nothing: not into the model's folder, not into the working directory
        # (here the case's own folder, so that a write anywhere near is seen).
        cwd = Path.cwd()
        os.chdir(tmp)
        try:
            with time_limit(60, f"loading a model dir after {cuts}"):
                try:
                    predictor = load(model)
                    predictions = predictor.predict(frame)
                except Exception as exc:
                    message = refused(exc)
                    assert str(model) in message or "model" in message, message
                    TALLY["model-dir:refused"] += 1
                else:
                    assert len(predictions) == len(frame)
                    assert_no_label_without_probability(predictions)
                    TALLY["model-dir:ok"] += 1
        finally:
            os.chdir(cwd)
        assert _snapshot(Path(tmp)) == before


@settings(FUZZ, max_examples=examples(20))
@given(data=st.data())
def test_corrupted_model_dir_through_the_cli(
    trained: tuple[Path, pd.DataFrame], data: st.DataObject
) -> None:
    run_dir, _ = trained
    files = _files(run_dir / "model")
    name, op, arg = data.draw(corruptions(files))
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(run_dir / "model", model)
        _corrupt(model, name, op, arg)
        with time_limit(60, f"polytask predict after {(name, op, arg)}"):
            res = run_cli("predict", model, run_dir.parent / "rows.csv", "-o", Path(tmp) / "p.csv")
        if res.code == 0:
            TALLY["model-dir-cli:ok"] += 1
            assert_no_label_without_probability(pd.read_csv(Path(tmp) / "p.csv"))
            return
        assert res.code == 2, res.err[-2000:]
        one_line(res.err)
        assert not (Path(tmp) / "p.csv").exists()
        TALLY["model-dir-cli:refused"] += 1


@settings(FUZZ, max_examples=examples(30))
@given(data=st.data())
def test_corrupted_checkpoint_resumes_or_refuses_in_one_line(
    trained: tuple[Path, pd.DataFrame], data: st.DataObject
) -> None:
    run_dir, _ = trained
    last = run_dir / "checkpoints" / "last"
    files = _files(last)
    cuts = data.draw(st.lists(corruptions(files), min_size=1, max_size=2))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy, symlinks=True)
        shutil.rmtree(copy / "model")
        (copy / "results.json").unlink()
        for name, op, arg in cuts:
            target = copy / "checkpoints" / "last" / name
            if target.is_file() and not target.is_symlink():
                _corrupt(target.parent, name, op, arg)
        raw = clinical_config(str(run_dir.parent / "rows.csv"))
        raw["train"] = {"epochs": 3, "batch_size": 32, "progress": False}
        raw["data"]["na_values"] = ["?"]
        config = Path(tmp) / "run.toml"
        config.write_text(toml_text(raw), encoding="utf-8")
        with time_limit(120, f"resuming after {cuts}"):
            res = run_cli("train", config, "--out", copy, "--resume", "--quiet")
        if res.code == 0:
            assert_finite_tensors(copy / "model" / "model.safetensors")
            TALLY["checkpoint:ok"] += 1
            return
        assert res.code == 2, res.err[-2000:]
        message = res.err.rstrip("\n")
        one_line(message)
        assert "checkpoint" in message, message
        assert not (copy / "model").exists()
        TALLY["checkpoint:refused"] += 1
