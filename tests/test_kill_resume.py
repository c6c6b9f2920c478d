"""kill -9 at every save site, then ``--resume`` until done: the result is byte-identical to an
uninterrupted run, and no kill ever leaves the run without a loadable checkpoint or leaves a
staging folder behind once the run has finished.

The kills come from the test hook ``POLYTASK_FAULT="<site>:<n>"`` (``polytask.state_io.
fault_point``): the process SIGKILLs itself the n-th time it passes the site. Importing polytask
takes several seconds of CPU, far more than the tiny training, so the runs are forked from one
worker process that imported it once (this file run as a script, see the bottom): each ``polytask
train`` is a fresh child that dies by a real SIGKILL. The worker starts with ``POLYTASK_FAULT``
in its environment, so its first job also proves the variable is read at import; later jobs set
the parsed plan in the child before running the command line.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from conftest import clinical_config, clinical_frame, toml_text

FIRST_FAULT = "checkpoint.last:3"  # the environment of the worker: its first job dies here
ROWS = 240  # 141 training rows: 8 steps of 16 an epoch, a checkpoint every 3 steps and at the end


def _config() -> dict[str, Any]:
    return clinical_config(
        train={
            "epochs": 4,
            "batch_size": 16,
            "progress": False,
            "threads": 1,
            "checkpoint_every": 3,
        }
    )


@dataclass
class Worker:
    """The forking worker: one JSON line in (argv, fault, log), one line out (the status)."""

    process: subprocess.Popen[str]

    def run(self, *args: str | Path, fault: str | None = None, log: Path) -> int:
        """Exit status of ``polytask ARGS`` in a fresh child (-9: it was killed)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        job = {"argv": [str(a) for a in args], "fault": fault, "log": str(log)}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the worker died"
        status = int(json.loads(line)["status"])
        return status


@pytest.fixture(scope="module")
def worker() -> Any:
    env = {**os.environ, "POLYTASK_FAULT": FIRST_FAULT, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    yield Worker(process)
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=60)


def _hidden(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


def _records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    # Wall-clock seconds are the one field a resumed run cannot reproduce.
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _assert_checkpoint_loadable(run: Path) -> None:
    from polytask.state_io import load_state

    last = run / "checkpoints" / "last"
    assert (last / "state.json").is_file(), f"no checkpoint after a kill: {_hidden(run)}"
    state = load_state(last)
    # One unit: best/ holds the weights of the last epoch that last/'s history calls best.
    history = state["trainer"]["history"]
    best_epochs = [r["epoch"] for r in history if r["best"]]
    best = run / "checkpoints" / "best"
    if best_epochs:
        assert load_state(best)["epoch"] == best_epochs[-1]
    else:
        assert not best.exists()


def test_kill_at_every_save_site_then_resume_is_byte_identical(
    worker: Worker, tmp_path: Path
) -> None:
    clinical_frame(ROWS).to_csv(tmp_path / "train.csv", index=False)
    config = tmp_path / "run.toml"
    config.write_text(toml_text(_config()), encoding="utf-8")
    logs = tmp_path / "logs"
    logs.mkdir()
    counter = iter(range(1000))

    def polytask(*args: str | Path, fault: str | None = None) -> int:
        log = logs / f"{next(counter):02d}.log"
        status = worker.run(*args, fault=fault, log=log)
        if status not in (0, -9):
            pytest.fail(f"polytask {args} exited {status}: {log.read_text()}")
        return status

    # The first job gets the fault from the worker's environment: killed inside its third
    # checkpoint (the end of epoch 1, a best epoch), between writing last/ and best/.
    cut = tmp_path / "runs" / "cut"
    assert polytask("train", config, "--out", cut, "-q") == -9
    _assert_checkpoint_loadable(cut)

    full = tmp_path / "runs" / "full"
    assert polytask("train", config, "--out", full, "-q") == 0

    rng = random.Random(17)
    # Each resume runs until its fault: inside the checkpoint (n drawn at random; a process
    # passes 3 saves an epoch, 12 in all), the metrics log, the final model and the results.
    faults = [
        f"checkpoints.exchanged:{rng.randint(1, 2)}",
        f"checkpoints.staged:{rng.randint(1, 3)}",
        "metrics.jsonl.staged:1",
        f"checkpoint.last:{rng.randint(1, 2)}",
        "model.staged:1",
        "model.exchanged:1",
        "results.json.staged:1",
        "results.json.replaced:1",
    ]
    for fault in faults:
        assert polytask("train", config, "--out", cut, "--resume", "-q", fault=fault) == -9, fault
        _assert_checkpoint_loadable(cut)
        assert not (cut / "checkpoints" / "last").is_symlink()
    assert polytask("train", config, "--out", cut, "--resume", "-q") == 0

    model = "model/model.safetensors"
    assert (cut / model).read_bytes() == (full / model).read_bytes()
    for name in ("results.json", "model/metrics.json", "checkpoints/best/state.safetensors"):
        assert (cut / name).read_bytes() == (full / name).read_bytes(), name
    assert _records(cut) == _records(full)
    assert _hidden(tmp_path / "runs") == []  # no staging leftover, no lock file

    # --overwrite (another seed, so old and new differ): killed before the exchange, the old
    # run is untouched; killed after it, the new run is in place; either leftover sibling goes
    # on the next start.
    weights = (cut / model).read_bytes()
    seed = ("--set", "seed=1")
    runs = tmp_path / "runs"
    overwrite = ("train", config, "--out", cut, "--overwrite", "-q", *seed)
    assert polytask(*overwrite, fault="run.staged:1") == -9
    assert (cut / model).read_bytes() == weights
    assert json.loads((cut / "config.json").read_text())["seed"] == 0
    assert [p.name.startswith(".cut.polytask-new-") for p in runs.glob(".*")] == [True]

    assert polytask(*overwrite, fault="run.exchanged:1") == -9
    assert json.loads((cut / "config.json").read_text())["seed"] == 1
    assert (cut / model).read_bytes() != weights
    # Only the sibling of this attempt (holding the old run): the previous one was removed.
    assert [p.name.startswith(".cut.polytask-new-") for p in runs.glob(".*")] == [True]

    assert polytask("train", config, "--out", cut, "--resume", "-q", *seed) == 0
    assert _hidden(runs) == []


# -- the worker ------------------------------------------------------------------------------
def _child(job: dict[str, Any]) -> int:
    """Run one command line in this (forked) process; return its exit status."""
    from polytask import cli, state_io

    if job["fault"] is not None:
        state_io._FAULT = state_io._fault_plan(job["fault"])
        state_io._fault_passes = 0
    sys.argv = ["polytask", *job["argv"]]
    try:
        cli.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


def _serve(jobs: IO[str], answers: IO[str]) -> None:
    import torch

    import polytask.cli  # noqa: F401  (imported once, here: every child starts with it loaded)
    from polytask import state_io

    torch.set_num_threads(1)
    first = True
    for line in jobs:
        job = json.loads(line)
        if not first and job["fault"] is None:
            state_io._FAULT = None  # only the first job runs under the environment's fault
        first = False
        pid = os.fork()
        if pid == 0:  # the child: its output goes to the job's log, never to the protocol
            code = 1
            try:
                fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = _child(job)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        answers.write(json.dumps({"status": code}) + "\n")
        answers.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _serve(sys.stdin, sys.stdout)
