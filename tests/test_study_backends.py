"""Study backends (:mod:`polytask.studies.backends`): a compare study on a Ray cluster started here
on loopback (a head and one worker node) gives the compare.json of the local backend and stays
resumable there; the one-line errors of a missing Ray, a bad address and misplaced options.

Ray is an optional extra: without it the cluster tests skip, except under ``CI=true``, where
they fail (CI installs the dev extra, which includes it)."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import run_cli, synthetic_raw, toml_text
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.errors import ConfigError, PolytaskError
from polytask.studies.backends import LocalBackend, RayBackend, check_address

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        message = "ray is not installed (pip install 'polytask[ray]'); Ray backend tests need it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _closed_port() -> int:
    """A loopback port nothing listens on (bound and released: refused on connect)."""
    return _free_port()


# -- a compare config ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small comparison: one seed, two baselines and one multi-task run of one epoch."""
    root = tmp_path_factory.mktemp("backends")
    make_mmoe_synthetic(240, 0.9, n_features=6, seed=0).to_csv(root / "data.csv", index=False)
    raw = synthetic_raw(widths=(8,), head=(8,), epochs=1, batch_size=64)
    raw["data"]["path"] = "data.csv"
    raw["compare"] = {"seeds": 1}
    (root / "run.toml").write_text(toml_text(raw), encoding="utf-8")
    return {"root": root, "config": root / "run.toml"}


# -- a Ray cluster on loopback ---------------------------------------------------------------


def _ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if found is None:
        pytest.fail("ray is importable but its `ray` command is not on PATH")
    return found


def _processes_of(*markers: str) -> set[int]:
    """Processes whose command line holds one of ``markers`` (the cluster's own temp dir, its
    client server's port), and their descendants (Ray's workers name only their task)."""
    parents: dict[int, int] = {}
    named: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            if any(marker in cmdline for marker in markers):
                named.add(int(entry.name))
    found, frontier = set(named), set(named)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    found.discard(os.getpid())
    return found


def _stop(pids: set[int]) -> None:
    """SIGTERM to exactly these processes, then SIGKILL to those still alive after 2 s."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 0.0)):
        alive = set()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                alive.add(pid)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = {p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)}
        pids = alive


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """``HOST:PORT`` of a cluster on 127.0.0.1: a head and one worker node of one CPU each, in a
    short temporary directory of its own; every process it started is stopped afterwards."""
    _require_ray()
    ray = _ray_cli()
    temp = tempfile.mkdtemp(prefix="pt-ray-", dir="/tmp")  # Unix socket paths must stay short
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    common += ["--temp-dir", temp]
    client_port = _free_port()  # the client server's command line names no temp dir
    head = ["--head", "--port", str(port), "--include-dashboard", "false"]
    head += ["--ray-client-server-port", str(client_port)]
    commands = [  # each node's agent on a port of its own: both nodes share this machine
        [ray, "start", *head, "--dashboard-agent-listen-port", str(_free_port()), *common],
        [
            ray,
            "start",
            "--address",
            address,
            "--dashboard-agent-listen-port",
            str(_free_port()),
            *common,
        ],
    ]
    try:
        for command in commands:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                pytest.fail(f"`{' '.join(command)}` failed:\n{done.stdout}\n{done.stderr}")
        yield address
    finally:
        _stop(_processes_of(temp, f"--port={client_port} "))
        shutil.rmtree(temp, ignore_errors=True)


# -- the cluster against the local backend ---------------------------------------------------


def _numbers(path: Path) -> Any:
    """compare.json (it holds no timings or paths: compared whole)."""
    return json.loads(path.read_text(encoding="utf-8"))


def test_compare_on_ray_equals_local_and_resumes(
    study: dict[str, Path], ray_cluster: str, tmp_path: Path
) -> None:
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    first = run_cli("compare", study["config"], "--out", local, "-q")
    assert first.code == 0, first.err
    runs = sorted(p.parent.relative_to(local) for p in local.glob("runs/**/results.json"))
    assert len(runs) == 3
    # One run finished already (by an earlier invocation): read back, not submitted.
    finished = Path("runs/fraction-1/single-task/label/seed0")
    shutil.copytree(local / finished, on_ray / finished)
    started = time.perf_counter()
    res = run_cli(
        "compare", study["config"], "--out", on_ray, "--backend", "ray", "--address", ray_cluster
    )
    seconds = time.perf_counter() - started
    assert res.code == 0, res.err
    assert "(2 runs trained, 1 already finished)" in res.out
    print(f"compare on the Ray cluster: {seconds:.1f} s")  # shown with -s
    assert _numbers(on_ray / "compare.json") == _numbers(local / "compare.json")
    # Each run is an ordinary run directory with the same test metrics.
    assert sorted(p.parent.relative_to(on_ray) for p in on_ray.glob("runs/**/results.json")) == runs
    for rel in runs:
        a, b = _numbers(local / rel / "results.json"), _numbers(on_ray / rel / "results.json")
        assert a["multi_task"] == b["multi_task"] and a["best_epoch"] == b["best_epoch"]
        assert (on_ray / rel / "model" / "model.safetensors").is_file()
    # Resumable: once finished, nothing is submitted again.
    again = run_cli(
        "compare", study["config"], "--out", on_ray, "--backend", "ray", "--address", ray_cluster,
        "--cpus-per-run", "1",
    )  # fmt: skip
    assert "(0 runs trained, 3 already finished)" in again.out, again.err
    assert _numbers(on_ray / "compare.json") == _numbers(local / "compare.json")


def test_a_user_error_in_a_ray_task_is_the_same_one_line(ray_cluster: str) -> None:
    def _raises_config_error(item: int) -> int:
        # Defined here, so Ray ships it by value (its workers cannot import this test module).
        if item == 1:
            raise ConfigError("config error: train.epochs: made up for the test")
        return item

    backend = RayBackend(ray_cluster)
    try:
        assert backend.describe().startswith(f"on Ray at {ray_cluster}")
        with pytest.raises(
            ConfigError, match=r"^config error: train.epochs: made up for the test$"
        ):
            dict(backend.map(_raises_config_error, [0, 1, 2]))
        assert sorted(backend.map(_raises_config_error, [0, 2, 3])) == [(0, 0), (1, 2), (2, 3)]
        # A request no node can grant fails at once instead of waiting for ever.
        with pytest.raises(PolytaskError, match="no node of the cluster has 4 CPUs"):
            RayBackend(ray_cluster, cpus_per_run=4)
    finally:
        backend.close()


#: The keys of pareto.json that hold wall-clock timings (training cost), which no two runs share.
_TIMINGS = {"seconds", "training_seconds", "cost_ratio"}


def _without_timings(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _without_timings(v) for k, v in doc.items() if k not in _TIMINGS}
    if isinstance(doc, list):
        return [_without_timings(v) for v in doc]
    return doc


def test_pareto_and_pair_search_on_ray_equal_local(
    study: dict[str, Path], ray_cluster: str, tmp_path: Path
) -> None:
    """The two other studies through the same backend (the Python API, one connection, so the
    cluster's workers import torch once): a sweep with a preference-conditioned run (its
    evaluation at the preferences is cached in its run directory and read back) and the pair
    search, against ``polytask pareto`` and ``polytask affinity --pair-search`` run locally."""
    from polytask.state_io import to_json
    from polytask.studies.affinity.study import pair_search
    from polytask.studies.pareto import sweep

    raw = synthetic_raw(widths=(8,), head=(8,), epochs=1, batch_size=64, balancer="cosmos")
    raw["data"]["path"] = str(study["root"] / "data.csv")
    raw["model"]["preference_conditioning"] = "film"
    raw["pareto"] = {"n_points": 2}
    config = tmp_path / "pareto.toml"
    config.write_text(toml_text(raw), encoding="utf-8")
    res = run_cli("pareto", config, "--out", tmp_path / "front-local", "-q")
    assert res.code == 0 and "(3 runs trained, 0 already finished)" in res.out, res.err
    res = run_cli(
        "affinity", study["config"], "--out", tmp_path / "aff", "--probe", "--pair-search"
    )
    assert res.code == 0 and "pair search (3 trainings) groups:" in res.out, res.err
    backend = RayBackend(ray_cluster)
    try:
        front = sweep(config, out=tmp_path / "front-ray", quiet=True, backend=backend)
        pairs = pair_search(study["config"], backend=backend)
    finally:
        backend.close()
    assert len(front.trained) == 3
    local = _numbers(tmp_path / "front-local" / "pareto.json")
    assert _without_timings(front.summary) == _without_timings(local)
    assert json.loads(to_json(pairs.to_dict())) == _numbers(tmp_path / "aff" / "pair_search.json")


# -- one-line errors -------------------------------------------------------------------------


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_ray_names_the_extra(
    study: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    res = run_cli(
        "compare", study["config"], "--out", tmp_path / "cmp", "--backend", "ray",
        "--address", "127.0.0.1:6379",
    )  # fmt: skip
    assert res.code == 2
    line = _one_line(res.err)
    assert line == (
        "error: the ray backend needs Ray, which is not installed: pip install 'polytask[ray]'"
    )
    assert not (tmp_path / "cmp").exists()


def test_bad_addresses_are_one_line_errors(study: dict[str, Path], tmp_path: Path) -> None:
    _require_ray()
    port = _closed_port()
    res = run_cli(
        "compare", study["config"], "--out", tmp_path / "cmp", "--backend", "ray",
        "--address", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert res.code == 2
    assert _one_line(res.err).startswith(
        f"error: ray backend: no Ray cluster answers at 127.0.0.1:{port}"
    )
    assert "ray start --head" in res.err
    for bad in ("nonsense", "127.0.0.1:99999", "http://head:6379"):
        res = run_cli(
            "pareto", study["config"], "--out", tmp_path / "p", "--backend", "ray",
            "--address", bad,
        )  # fmt: skip
        assert res.code == 2
        assert "--address must be HOST:PORT" in _one_line(res.err) and repr(bad) in res.err
    with pytest.raises(PolytaskError, match="no Ray cluster answers"):
        check_address("localhost.invalid:6379")


def test_misplaced_backend_options_are_one_line_errors(
    study: dict[str, Path], tmp_path: Path
) -> None:
    cases = [
        (["compare", "--address", "127.0.0.1:6379"], "--address applies to --backend ray"),
        (["compare", "--cpus-per-run", "2"], "--cpus-per-run applies to --backend ray"),
        (["compare", "--backend", "slurm"], "unknown backend 'slurm'; valid choices: local, ray"),
        (["compare", "--backend", "ray"], "--backend ray needs --address"),
        (["pareto", "--backend", "ray", "--workers", "2"], "--workers applies to the local"),
        (["affinity", "--backend", "ray"], "applies to the trainings of --pair-search"),
    ]
    for args, expected in cases:
        command, *options = args
        res = run_cli(command, study["config"], "--out", tmp_path / "x", *options)
        assert res.code == 2, (args, res.err)
        assert expected in _one_line(res.err), (args, res.err)


def _square(x: int) -> int:
    return x * x


def test_local_backend_in_process() -> None:
    # (Its worker processes are pareto's `workers`; spawning them costs ~25 s on 2 busy cores.)
    assert list(LocalBackend().map(_square, [1, 2, 3])) == [(0, 1), (1, 4), (2, 9)]
    with pytest.raises(PolytaskError, match="workers must be at least 1"):
        LocalBackend(0)


def test_pair_search_through_a_backend_equals_in_process() -> None:
    """The pair search's trainings as pickled calls (what a Ray task receives) give the numbers
    of the in-process search: each training seeds itself and prepares the same data."""
    from polytask import config_from_dict
    from polytask.studies.affinity.study import pair_search

    class Pickled(LocalBackend):
        def map(self, fn: Any, items: Any) -> Iterator[tuple[int, Any]]:
            import pickle

            copy = pickle.loads(pickle.dumps(fn))
            for i, item in reversed(list(enumerate(items))):  # another order, too
                yield i, copy(pickle.loads(pickle.dumps(item)))

    frame: pd.DataFrame = make_mmoe_synthetic(200, 0.9, n_features=6, seed=1)
    cfg = config_from_dict(synthetic_raw(widths=(8,), head=(8,), epochs=1, batch_size=64))
    here = pair_search(cfg, frame=frame)
    there = pair_search(cfg, frame=frame, backend=Pickled())
    assert there.to_dict() == here.to_dict()
