"""What the CLI's entry point does with failures that are not polytask's own errors: an
interrupt during start-up, the end of a truncated input, and a path the machine refuses each
give one line on stderr and a non-zero exit code, never a traceback or a blank line."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import clinical_config, clinical_frame, run_cli, toml_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _one_line(err: str) -> str:
    line = err.rstrip("\n")
    assert line.startswith("error: "), err
    assert "\n" not in line and "Traceback" not in line, err
    return line


def _config(tmp_path: Path, **top: object) -> Path:
    clinical_frame(120).to_csv(tmp_path / "train.csv", index=False)
    cfg = clinical_config(**top)
    cfg["train"] = {"epochs": 1, "batch_size": 32, "progress": False}
    cfg["baselines"] = False
    path = tmp_path / "run.toml"
    path.write_text(toml_text(cfg), encoding="utf-8")
    return path


def test_interrupt_during_start_up_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polytask.config

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(polytask.config, "load_config", interrupted)
    res = run_cli("train", _config(tmp_path), "--out", tmp_path / "run")
    assert res.code == 130
    assert _one_line(res.err) == "error: interrupted"
    assert not (tmp_path / "run").exists()


def test_end_of_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What a truncated gzip raises deep inside a reader (click would turn it into a blank line
    # and exit 130, as if the user had pressed Ctrl-C).
    import polytask.config

    def truncated(*args: object, **kwargs: object) -> None:
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(polytask.config, "load_config", truncated)
    res = run_cli("train", _config(tmp_path), "--out", tmp_path / "run")
    assert res.code == 2
    assert "end-of-stream" in _one_line(res.err)


def test_output_under_a_file_is_one_line_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n", encoding="utf-8")
    res = run_cli("train", _config(tmp_path), "--out", blocker / "run")
    assert res.code == 2
    assert str(blocker) in _one_line(res.err)
    assert blocker.read_text(encoding="utf-8") == "not a directory\n"


@contextlib.contextmanager
def _tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` (root only): a read-only or a full file system."""
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        _unavailable("mounting a tmpfs needs root and mount(8)")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _unavailable(reason: str) -> None:
    # CI runs as root on a machine that can mount: there a skip would hide an untested promise.
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def test_read_only_output_is_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        res = run_cli("train", config, "--out", ro / "run")
    assert res.code == 2
    assert str(ro / "run") in _one_line(res.err)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with _tmpfs(tmp_path / "full", "size=48k") as full:
        res = run_cli("train", config, "--out", full / "run")
        line = _one_line(res.err)
        left = sorted(p.name for p in full.rglob("*") if p.name.startswith("."))
    assert res.code == 2
    assert str(full) in line and "space" in line.lower(), line
    assert left == [], left


def test_output_in_proc_is_one_line(tmp_path: Path) -> None:
    res = run_cli("train", _config(tmp_path), "--out", "/proc/polytask-run")
    assert res.code == 2
    assert "/proc/polytask-run" in _one_line(res.err)
