"""Pickle-free state files: exact round trips and atomic directories."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from polytask.state_io import (
    atomic_directory,
    atomic_write_text,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)


def _assert_same(a: Any, b: Any, path: str = "") -> None:
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k!r}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def _sample_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(42)
    return {
        "model": {
            "w": torch.randn(3, 4, generator=g),
            "half": torch.randn(5, generator=g).to(torch.float16),
            "bf": torch.randn(2, 2, generator=g).to(torch.bfloat16),
            "f64": torch.tensor([1e-300, -0.0, math.pi], dtype=torch.float64),
            "count": torch.tensor(7, dtype=torch.int64),
            "flags": torch.tensor([True, False, True]),
            "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
            "strided": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous
        },
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}, 1: {"x": 1}},
            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "fused": None}],
        },
        "rng": rng_state(g),
        "trainer": {
            "epoch": 3,
            "best": math.inf,
            "nan": math.nan,
            "big": 2**62,
            "neg": -0.5,
            "name": "épochs ✓",
            "empty": {},
            "nested": [(1, "a", None), [True, False], {"k": ()}],
            "reference": {"risk": {"auroc": 0.75}},
        },
    }


def test_round_trip_is_exact(tmp_path: Path) -> None:
    state = _sample_state()
    save_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    loaded = load_state(tmp_path)
    _assert_same(state, loaded)
    assert loaded["rng"]["torch"].dtype == torch.uint8
    assert loaded["rng"]["shuffle"].dtype == torch.uint8
    assert list(loaded["optimizer"]["state"]) == [0, 1]  # int keys stay ints
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)


def test_colliding_paths_keep_their_own_tensors(tmp_path: Path) -> None:
    state = {
        "mixed": {1: torch.zeros(2), "1": torch.ones(2)},
        "a/b": torch.full((1,), 3.0),
        "a": {"b": torch.full((1,), 4.0)},
    }
    save_state(tmp_path, state)
    _assert_same(state, load_state(tmp_path))


def test_named_state_files(tmp_path: Path) -> None:
    save_state(tmp_path, {"a": torch.ones(1)}, name="extra")
    assert (tmp_path / "extra.json").is_file() and (tmp_path / "extra.safetensors").is_file()
    assert torch.equal(load_state(tmp_path, name="extra")["a"], torch.ones(1))


def test_json_skeleton_has_no_pickle(tmp_path: Path) -> None:
    save_state(tmp_path, _sample_state())
    skeleton = json.loads((tmp_path / "state.json").read_text())
    assert skeleton["model"]["w"] == {"__tensor__": "/model/w"}
    with pytest.raises(TypeError, match=r"cannot store set at '/x' without pickle"):
        save_state(tmp_path, {"x": {1, 2}})


def test_restored_rng_replays_the_same_draws(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(9)
    torch.randn(5, generator=g)
    save_state(tmp_path, {"rng": rng_state(g)})
    first = (torch.rand(4), torch.randperm(10, generator=g))
    g2 = torch.Generator().manual_seed(0)
    set_rng_state(load_state(tmp_path)["rng"], g2)
    second = (torch.rand(4), torch.randperm(10, generator=g2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_atomic_directory_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as staging:
        assert staging != target and staging.parent == tmp_path
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").is_file()  # the old directory is intact until the end
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or old copy left


@pytest.mark.parametrize("existing", [False, True])
def test_atomic_directory_leaves_nothing_when_body_raises(tmp_path: Path, existing: bool) -> None:
    target = tmp_path / "model"
    if existing:
        target.mkdir()
        (target / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="boom"), atomic_directory(target) as staging:
        (staging / "half.safetensors").write_bytes(b"partial")
        raise RuntimeError("boom")
    if existing:
        assert [p.name for p in tmp_path.iterdir()] == ["model"]
        assert [p.name for p in target.iterdir()] == ["keep.txt"]
    else:
        assert list(tmp_path.iterdir()) == []


def test_atomic_write_text(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "log.jsonl"
    atomic_write_text(path, "a\n")
    atomic_write_text(path, "b\n")
    assert path.read_text() == "b\n"
    assert [p.name for p in path.parent.iterdir()] == ["log.jsonl"]
