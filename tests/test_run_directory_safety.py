"""Never lose data: ``--overwrite`` replaces only polytask runs and only once the new run has
finished; one process at a time writes a run directory; directory swaps never leave a moment
without a target; leftovers of killed saves are cleaned up (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import clinical_config, clinical_frame, run_cli, toml_text
from polytask import state_io
from polytask.config import config_from_dict
from polytask.errors import PolytaskError
from polytask.run.directory import (
    MARKER,
    check_out_dir,
    create_out_dir,
    is_run_dir,
    protected_paths,
    remove_run_dir,
)
from polytask.run.lock import LOCK_NAME, RunLock
from polytask.run.pipeline import run
from polytask.state_io import atomic_directory, exchange, put_in_place, recover

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ARGS = ("-q", "--set", "train.epochs=1")


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what "untouched" means)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _one_line_error(res: Any, *needles: str) -> str:
    assert res.code == 2, (res.code, res.err)
    assert res.err.count("\n") == 1, res.err
    for needle in needles:
        assert needle in res.err, (needle, res.err)
    return str(res.err)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, torch_single_thread: None) -> SimpleNamespace:
    """A config and its data in one folder, and one finished run (outside that folder)."""
    root = tmp_path_factory.mktemp("safety")
    folder = root / "project"
    folder.mkdir()
    clinical_frame(300).to_csv(folder / "train.csv", index=False)
    config = folder / "run.toml"
    config.write_text(toml_text(clinical_config()), encoding="utf-8")
    runs = root / "runs"
    res = run_cli("train", config, "--out", runs / "done", *ARGS)
    assert res.code == 0, res.err
    return SimpleNamespace(folder=folder, config=config, run=runs / "done")


def _copy_run(project: SimpleNamespace, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name, data in _files(project.run).items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    return dest


# -- what --overwrite may replace ------------------------------------------------------------
def test_a_finished_run_is_marked_and_holds_no_lock(project: SimpleNamespace) -> None:
    assert (project.run / MARKER).is_file()
    assert is_run_dir(project.run)
    assert not (project.run / LOCK_NAME).exists()
    assert sorted(p.name for p in project.run.glob(".*")) == []


def test_overwrite_refuses_the_working_directory(
    project: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _files(project.folder)
    monkeypatch.chdir(project.folder)
    res = run_cli("train", "run.toml", "--out", ".", "--overwrite", *ARGS)
    _one_line_error(res, "cannot overwrite '.'", "choose another --out")
    assert _files(project.folder) == before


def test_overwrite_refuses_a_folder_of_user_files(project: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "notes"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work", encoding="utf-8")
    (out / "sub" / "config.json").write_text('{"data": 1, "tasks": 2}', encoding="utf-8")
    before = _files(out)
    res = run_cli("train", project.config, "--out", out, "--overwrite", *ARGS)
    _one_line_error(res, f"cannot overwrite '{out}'", "not a polytask run directory", MARKER)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # no sibling, no lock
    # The writer refuses too, for a caller that skipped the checks.
    cfg = config_from_dict(clinical_config())
    with (
        pytest.raises(PolytaskError, match="not a polytask run directory"),
        create_out_dir(out, cfg, resume=False, overwrite=True),
    ):
        pass
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_finetune_overwrite_refuses_the_run_holding_its_base(
    project: SimpleNamespace, tmp_path: Path
) -> None:
    run_dir = _copy_run(project, tmp_path / "run")
    before = _files(run_dir)
    res = run_cli("finetune", run_dir, project.config, "--out", run_dir, "--overwrite", *ARGS)
    _one_line_error(res, f"cannot overwrite '{run_dir}'", f"the base model '{run_dir}'")
    assert _files(run_dir) == before


def test_overwrite_refuses_the_folder_holding_the_config(project: SimpleNamespace) -> None:
    parent = project.folder.parent
    before = _files(parent)
    res = run_cli("train", project.config, "--out", parent, "--overwrite", *ARGS)
    _one_line_error(res, f"cannot overwrite '{parent}'", "the configuration's folder")
    assert _files(parent) == before


def test_overwrite_refuses_a_run_holding_the_data(project: SimpleNamespace, tmp_path: Path) -> None:
    # Even a real run is kept when the data (or the config) live inside it.
    run_dir = _copy_run(project, tmp_path / "run")
    raw = clinical_config(data=str(run_dir / "inputs" / "train.csv"))
    cfg = config_from_dict(raw, base_dir=tmp_path / "elsewhere")
    with pytest.raises(PolytaskError, match=r"cannot overwrite .* it holds data\.path '"):
        check_out_dir(run_dir, False, True, protected_paths(cfg))
    sources = {
        "sources": [
            {"name": "a", "tasks": ["risk"], "path": "ok.csv"},
            {"name": "b", "tasks": ["stay"], "path": str(run_dir / "b.csv")},
        ],
        "group": "patient",
    }
    cfg = config_from_dict({**raw, "data": sources}, base_dir=tmp_path / "elsewhere")
    with pytest.raises(PolytaskError, match=r"it holds data\.sources\.1\.path"):
        check_out_dir(run_dir, False, True, protected_paths(cfg))
    cfg = config_from_dict(clinical_config(), base_dir=run_dir / "configs")
    with pytest.raises(PolytaskError, match="it holds the configuration's folder"):
        check_out_dir(run_dir, False, True, protected_paths(cfg))
    check_out_dir(run_dir, False, True, [])  # nothing of the user's inside: allowed


@pytest.mark.parametrize("where", ["root", "home"])
def test_overwrite_refuses_root_and_home(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside home: the home rule alone must refuse it
    out = Path("/") if where == "root" else home
    with pytest.raises(PolytaskError, match="cannot overwrite"):
        check_out_dir(out, False, True, [])


def test_overwrite_refuses_a_symlink_to_a_run(project: SimpleNamespace, tmp_path: Path) -> None:
    run_dir = _copy_run(project, tmp_path / "run")
    link = tmp_path / "link"
    link.symlink_to(run_dir)
    with pytest.raises(PolytaskError, match="symbolic link"):
        check_out_dir(link, False, True, [])


def test_runs_of_earlier_versions_count_as_runs(tmp_path: Path) -> None:
    # Before the marker: polytask's config.json next to model/ or checkpoints/.
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.json").write_text('{"data": {}, "tasks": []}', encoding="utf-8")
    assert is_run_dir(old)
    (old / "config.json").write_text('{"name": "my app"}', encoding="utf-8")
    assert not is_run_dir(old)
    (old / "config.json").write_text("not json", encoding="utf-8")
    assert not is_run_dir(old)


# -- overwrite replaces only once the new run finished --------------------------------------
class _Boom(Exception):
    pass


def _fail_in_epoch_1(trainer: object, record: object) -> None:
    raise _Boom


def test_failed_overwrite_keeps_the_old_run_and_a_finished_one_replaces_it(
    project: SimpleNamespace, tmp_path: Path
) -> None:
    run_dir = _copy_run(project, tmp_path / "run")
    (run_dir / "stale.txt").write_text("from the old run", encoding="utf-8")
    before = _files(run_dir)
    raw = clinical_config(data=str(project.folder / "train.csv"), train={"epochs": 1})
    with pytest.raises(_Boom):
        run(
            config_from_dict(raw),
            out=run_dir,
            overwrite=True,
            quiet=True,
            callbacks=[_fail_in_epoch_1],
        )
    assert _files(run_dir) == before  # not one byte of the old run changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the new run's sibling went

    raw["seed"] = 5
    result = run(config_from_dict(raw), out=run_dir, overwrite=True, quiet=True)
    assert result.out_dir == run_dir
    assert not (run_dir / "stale.txt").exists()
    assert (run_dir / "results.json").is_file() and (run_dir / MARKER).is_file()
    stored = (run_dir / "model" / "model.safetensors").read_bytes()
    assert stored != before["model/model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert list(run_dir.rglob(".*")) == []  # no lock file, no staging folder


def test_overwrite_of_an_empty_folder_trains_in_place(
    project: SimpleNamespace, tmp_path: Path
) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    raw = clinical_config(data=str(project.folder / "train.csv"), train={"epochs": 1})
    run(config_from_dict(raw), out=out, overwrite=True, quiet=True)
    assert (out / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# -- one process at a time ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["train", "resume", "overwrite"])
def test_a_held_run_directory_is_refused_at_once(
    mode: str, project: SimpleNamespace, tmp_path: Path
) -> None:
    if mode == "train":  # a fresh run into an (empty) folder another run has just locked
        run_dir = tmp_path / "run"
        run_dir.mkdir()
    else:
        run_dir = _copy_run(project, tmp_path / "run")
    flags = {"train": (), "resume": ("--resume",), "overwrite": ("--overwrite",)}[mode]
    # Another process holds the lock: a child that locks and waits for its stdin to close.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(run_dir / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _files(run_dir)
        res = run_cli("train", project.config, "--out", run_dir, *flags, *ARGS)
        _one_line_error(
            res,
            f"run directory '{run_dir}' is in use by another polytask process (pid {holder.pid})",
        )
        assert _files(run_dir) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_lock_is_taken_when_the_directory_is_created(tmp_path: Path) -> None:
    # Two runs into a fresh directory both pass the checks; the second to open it fails.
    out = tmp_path / "run"
    cfg = config_from_dict(clinical_config())
    with create_out_dir(out, cfg, resume=False, overwrite=False) as work:
        assert work == out
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
        busy = pytest.raises(PolytaskError, match=r"in use by another polytask process \(pid \d+\)")
        with busy, create_out_dir(out, cfg, resume=False, overwrite=False):
            pass
        with pytest.raises(PolytaskError, match="in use"):
            remove_run_dir(out)
    assert not (out / LOCK_NAME).exists()  # released and removed when the run ends
    RunLock.acquire(out).release()  # and free again


def test_lock_released_when_the_run_fails(project: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "run"
    raw = clinical_config(data=str(project.folder / "train.csv"), train={"epochs": 1})
    with pytest.raises(_Boom):
        run(config_from_dict(raw), out=out, quiet=True, callbacks=[_fail_in_epoch_1])
    assert (out / "config.json").is_file()  # kept: the run can be resumed or overwritten
    assert list(out.rglob(".*")) == []  # but no lock file and no staging folder


def test_a_stale_lock_file_of_a_killed_run_is_no_obstacle(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("999999\n")  # a dead process's file: no flock on it
    check_out_dir(out, False, False)  # the lone lock file does not make the folder "not empty"
    lock = RunLock.acquire(out)
    assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()
    assert list(out.iterdir()) == []


def test_remove_run_dir_refuses_user_files(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "data.csv").write_text("a\n1\n")
    with pytest.raises(PolytaskError, match="not a polytask run directory"):
        remove_run_dir(out)
    assert (out / "data.csv").is_file()


# -- directory swaps and leftovers ----------------------------------------------------------
def test_exchange_swaps_two_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from_a").touch()
    (b / "from_b").touch()
    if not exchange(a, b):
        pytest.skip("no atomic exchange on this system")
    assert [p.name for p in a.iterdir()] == ["from_b"]
    assert [p.name for p in b.iterdir()] == ["from_a"]


def test_swap_without_exchange_moves_aside_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_io, "exchange", lambda a, b: False)
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    # A process killed between the two renames: target missing, the old copy moved aside.
    aside = tmp_path / ".model.polytask-old-abcd1234"
    target.rename(aside)
    half = tmp_path / ".model.polytask-tmp-efgh5678"
    half.mkdir()
    recover(target)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_put_in_place_never_leaves_the_target_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "checkpoints"
    target.mkdir()
    (target / "v1").touch()
    staging = tmp_path / ".checkpoints.polytask-tmp-x"
    staging.mkdir()
    (staging / "v2").touch()
    seen: list[bool] = []
    # Every fault site is a moment a kill could hit: the target must exist at each.
    monkeypatch.setattr(state_io, "fault_point", lambda site: seen.append(target.is_dir()))
    put_in_place(staging, target, "checkpoints")
    assert seen == [True, True]
    assert [p.name for p in target.iterdir()] == ["v2"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoints"]


def test_resume_cleans_leftovers_of_killed_saves_and_nothing_else(
    project: SimpleNamespace, tmp_path: Path
) -> None:
    run_dir = _copy_run(project, tmp_path / "run")
    leftovers = [
        run_dir / ".model.polytask-tmp-abcd1234",
        run_dir / ".checkpoints.polytask-tmp-abcd1234",
        run_dir / ".results.json.polytask-tmp-abcd1234",
        run_dir / ".model.k3j2h1g0",  # earlier versions' names
        run_dir / "checkpoints" / ".last.old.k3j2h1g0",
        tmp_path / ".run.polytask-new-abcd1234",  # a killed --overwrite's new run
    ]
    for path in leftovers:
        if "results" in path.name:
            path.write_text("{")
        else:
            (path / "sub").mkdir(parents=True)
    kept = [run_dir / ".my_notes", tmp_path / ".other.polytask-new-abcd1234", tmp_path / ".run"]
    for path in kept:
        path.write_text("mine")
    busy = tmp_path / ".run.polytask-new-live0000"  # held by a live process: kept
    busy.mkdir()
    held = RunLock.acquire(busy)
    try:
        res = run_cli("train", project.config, "--out", run_dir, "--resume", *ARGS)
        assert res.code == 0, res.err
    finally:
        held.release()
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert busy.is_dir()


def test_checkpoint_is_one_unit_with_best_linked(
    project: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mid-epoch save (not best) carries the previous best along, as the same files.
    saved: list[tuple[int, int]] = []
    original = state_io.put_in_place

    def spy(staging: Path, target: Path, site: str) -> None:
        if site == "checkpoints" and (target / "best").is_dir() and (staging / "best").is_dir():
            old, new = target / "best" / "state.safetensors", staging / "best" / "state.safetensors"
            saved.append((old.stat().st_ino, new.stat().st_ino))
        original(staging, target, site)

    monkeypatch.setattr(state_io, "put_in_place", spy)
    raw = clinical_config(
        data=str(project.folder / "train.csv"),
        train={"epochs": 2, "batch_size": 32, "checkpoint_every": 2, "progress": False},
    )
    run(config_from_dict(raw), out=tmp_path / "run", quiet=True)
    assert saved and any(old == new for old, new in saved)  # hard links, not copies
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "best",
        "last",
    ]


def test_fault_hook_is_off_unless_set() -> None:
    assert state_io._fault_plan(None) is None and state_io._fault_plan("") is None
    assert state_io._fault_plan("model.staged:3") == ("model.staged", 3)
    for bad in ("model.staged", "model.staged:0", ":2", "x:y"):
        with pytest.raises(ValueError, match="POLYTASK_FAULT"):
            state_io._fault_plan(bad)
