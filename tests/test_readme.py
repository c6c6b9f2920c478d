"""Every fenced code block of README.md runs, on small data (docs as tests; issue 21).

A README example once failed for the first newcomer who typed it in. Here each block is one
test, its id the README line of its opening fence (``README.md:63:bash``), and each block runs
for real in a fresh workspace (a temporary directory holding the small files it names):

``toml``
    Loaded with :func:`polytask.load_config` (strict: every key must exist, every value fit).
    A complete config (its first line a comment naming the file, ``# patients.toml``, or a
    ``file=`` marker) is written to the workspace under that name, where the other blocks'
    commands find it. A fragment (``fragment of=FILE``) is appended to FILE, and the result is
    loaded. Either is then trained for one epoch: here, unless a README command runs FILE
    (then that command's test trains it, with every fragment of FILE in place).
``bash``
    Each command line (``\\``-continued lines joined, comments dropped) runs. ``polytask ...``
    runs in this process through :func:`conftest.run_cli` with the small-budget options of
    ``OVERRIDES`` appended (``--set train.epochs=1``, fewer seeds and points for the studies)
    and must exit 0 and leave behind what its ``--out`` / ``-o`` / ``--output`` names.
    ``polytask serve`` runs as a real server on a free port (``LONG_RUNNING``) until it has
    answered one prediction. Any other command must be listed in ``SUBSTITUTES`` (run as an
    equivalent cheap command) or in ``NOT_RUN`` (with the reason it is not run here): a new
    command in neither fails its block's test.
``python``
    Executed with the workspace as working directory; the names a block uses without defining
    them (``patients_df`` ...) are small tables from ``NAMESPACE``.
no language
    A listing shown to the reader; it needs a marker (``tree``), else the test fails.

Markers: an HTML comment on the line before the fence (invisible on the rendered page), with
space-separated words::

    <!-- doctest: fragment of=census.toml -->   TOML fragment, appended to that workspace file
    <!-- doctest: file=school.toml -->          complete TOML config, written under that name
    <!-- doctest: needs=runs/risk,runs/stay --> paths earlier README steps would have made:
                                                built once (PREREQUISITES), copied
                                                into the block's workspace
    <!-- doctest: tree -->                      a run-directory listing: every directory and
                                                file it names must exist in a trained run
    <!-- doctest: data=census -->               the block reads a dataset of ../shared/data
                                                (a key of polytask's DATASETS): skipped when it
                                                is absent, failed under CI=true
                                                (conftest.require_data)

Workspace files that no README block creates (small generated tables, and configs the README
mentions without showing: the census table of the Pareto section, the teachers of the
distillation section) come from ``_write_tables`` and ``BASES``; their sizes (a few hundred
rows) keep the whole file to a few minutes on 2 cores. No README block reads
``../shared/data`` today (tests/test_examples.py trains the examples/ configs on it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

import polytask
from conftest import require_data, run_cli

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# -- what runs, and how small ------------------------------------------------------------------

#: Options appended to each ``polytask`` subcommand (later options win over the README's own):
#: one epoch, and the studies cut to the fewest runs that still exercise them.
OVERRIDES: dict[str, list[str]] = {
    "train": ["--set", "train.epochs=1"],
    "distill": ["--set", "train.epochs=1"],
    "finetune": ["--set", "train.epochs=1"],
    "affinity": ["--set", "train.epochs=1"],
    # Two seeds (a verdict needs two), one fraction, no grid: 2 x (2 baselines + 2 set-ups).
    "compare": shlex.split(
        "--set train.epochs=1 --seeds 2 --set compare.fractions=[1.0] --set compare.grid={}"
    ),
    # Three preferences, one balancer, one seed, in this process (workers spawn interpreters).
    "pareto": shlex.split(
        "--set train.epochs=1 --set pareto.n_points=3 --set 'pareto.balancers=[\"equal\"]' "
        "--seeds 1 --workers 1"
    ),
}

#: ``polytask`` subcommands that run until stopped: started as a server, asked once, stopped.
LONG_RUNNING = {"serve"}

#: Commands run instead of a README command, and why.
SUBSTITUTES: dict[str, tuple[str, str]] = {
    "make demo": (
        "polytask demo --samples 400 --epochs 1 --out runs/demo",
        "`make demo` is the venv install (done: this test runs in it) then `polytask demo`, "
        "here on 400 rows for one epoch",
    ),
}

#: Commands not run here, and why. A README command neither run nor listed fails its test.
NOT_RUN: dict[str, str] = {
    "make test": "`make test` runs ruff, mypy and the whole suite, this file among them",
    "torchrun --nproc-per-node 4 -m polytask train run.toml -o runs/dp": (
        "4 processes; tests/test_distributed.py runs torchrun-style 2-process training"
    ),
    "torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --master-addr 10.0.0.1 -m polytask "
    "train run.toml -o runs/big": (
        "two machines; tests/test_distributed_netns.py runs --nnodes 2 across network namespaces"
    ),
    "polytask compare run.toml --out cmp --backend ray --address HEAD:6379": (
        "needs a running Ray cluster at HEAD:6379; tests/test_study_backends.py covers the backend"
    ),
}

#: What a marker ``needs=PATH`` provides: PATH is made once (per run of this file) by this
#: command, with ``OVERRIDES``, in a workspace like the blocks'; then copied into each workspace.
PREREQUISITES: dict[str, str] = {
    # The README's own first step (asserted to be in it, so the two cannot drift apart).
    "runs/patients": "polytask train patients.toml --out runs/patients",
    "runs/front": "polytask pareto census.toml --out runs/front",
    # The distillation section's teachers: one single-task model per task.
    "runs/risk": "polytask train risk.toml --out runs/risk",
    "runs/stay": "polytask train stay.toml --out runs/stay",
}

MARKER = re.compile(r"^\s*<!--\s*doctest:(?P<words>.*?)-->\s*$")
#: (word, takes a value)
MARKER_WORDS = {
    ("fragment", False),
    ("tree", False),
    ("of", True),
    ("file", True),
    ("needs", True),
    ("data", True),
}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\S*)\s*$")
FILE_COMMENT = re.compile(r"^#\s*(?P<name>[\w.-]+\.toml)\s*$")
OUTPUT_OPTIONS = ("--out", "-o", "--output")


# -- the README's blocks -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block: the README line of its opening fence, language, text and marker."""

    line: int
    lang: str
    text: str
    marker: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"

    @property
    def file(self) -> str | None:
        """The workspace file a complete TOML block is written to, if it names one."""
        if "file" in self.marker:
            return self.marker["file"]
        first = self.text.splitlines()[0] if self.text else ""
        found = FILE_COMMENT.match(first)
        return found["name"] if found else None


def _parse_marker(text: str, where: str) -> dict[str, str]:
    words: dict[str, str] = {}
    for word in text.split():
        key, eq, value = word.partition("=")
        if (key, bool(eq)) not in MARKER_WORDS or (eq and not value):
            raise ValueError(
                f"{where}: unknown doctest marker word {word!r}; known: fragment, tree, "
                "of=FILE, file=FILE, needs=PATH[,PATH], data=NAME[,NAME]"
            )
        words[key] = value
    return words


def read_blocks(path: Path = README) -> list[Block]:
    """Every fenced block of ``path`` (also those indented in a list), in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent = len(opening["indent"])
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: fence never closed")
        body = "\n".join(line[indent:] for line in lines[i + 1 : end])
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        found = MARKER.match(before)
        marker = _parse_marker(found["words"], f"{path.name}:{i + 1}") if found else {}
        blocks.append(Block(i + 1, opening["lang"] or "text", body + "\n", marker))
        i = end + 1
    return blocks


BLOCKS = read_blocks()


def commands(block: Block) -> list[tuple[int, str]]:
    """A bash block's command lines as (README line, command), continuations joined and
    comments dropped."""
    found: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        if not pending:
            start = block.line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        text = shlex.join(shlex.split(pending + raw, comments=True))
        pending = ""
        if text:
            found.append((start, text))
    return found


# -- the workspace: small tables and the configs the README mentions ---------------------------


def _patients(n: int, seed: int) -> pd.DataFrame:
    """A small stand-in for the Diabetes 130 encounters: the README's column names, a
    three-valued ``readmitted`` (``?`` = unknown), length of stay in days, repeat patients."""
    rng = np.random.default_rng(seed)
    age = rng.integers(20, 90, n)
    meds = rng.poisson(12, n)
    risk = 1 / (1 + np.exp(-(0.03 * (age - 55) + 0.05 * (meds - 12) - 1.0)))
    u = rng.random(n)
    readmitted = np.where(u < 0.6 * risk, "<30", np.where(u < risk, ">30", "NO")).astype(object)
    readmitted[rng.random(n) < 0.03] = "?"
    stay = np.clip(np.round(2 + 0.04 * (age - 55) + 0.2 * meds + rng.normal(0, 1.5, n)), 1, 14)
    return pd.DataFrame(
        {
            "encounter_id": np.arange(seed * 10_000, seed * 10_000 + n),
            "patient_id": rng.integers(0, n // 3, n) + seed * 10_000,
            "age": age,
            "num_medications": meds,
            "race": rng.choice(["Caucasian", "AfricanAmerican", "Hispanic", "?"], n),
            "readmitted": readmitted,
            "time_in_hospital": stay.astype(int),
        }
    )


def _census(n: int, seed: int) -> pd.DataFrame:
    """Census-Income's two targets in its own spellings, with two features behind them."""
    rng = np.random.default_rng(seed)
    age = rng.integers(17, 80, n)
    hours = rng.integers(0, 60, n)
    rich = rng.random(n) < 1 / (1 + np.exp(-(0.05 * (age - 45) + 0.05 * (hours - 40))))
    single = rng.random(n) < 1 / (1 + np.exp(0.15 * (age - 30)))
    return pd.DataFrame(
        {
            "age": age,
            "hours_per_week": hours,
            "education": rng.choice(["Bachelors", "High school", "Masters"], n),
            "income": np.where(rich, "50000+.", "- 50000."),
            "marital": np.where(single, "Never married", "Married-civilian spouse present"),
        }
    )


def _tickets(n: int, seed: int, tasks: dict[str, Callable[[Any], Any]]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"length": rng.gamma(2.0, 50.0, n).round(), "channel": rng.choice(["mail", "web"], n)}
    )
    for name, make in tasks.items():
        frame[name] = make(rng)
    return frame


def _school(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    school = rng.integers(1, 5, n)
    vr = rng.integers(1, 4, n)
    return pd.DataFrame(
        {
            "school": school,
            "gender": rng.choice(["F", "M"], n),
            "vr_band": vr,
            "exam_score": (10 * vr + 3 * school + rng.normal(0, 5, n)).round(1),
        }
    )


def _write_recordings(folder: Path) -> None:
    """30 quarter-second 8 kHz wav files named as FSDD's: ``{digit}_{speaker}_{take}.wav``,
    a tone whose pitch follows the digit and loudness the speaker."""
    folder.mkdir()
    t = np.arange(2000) / 8000
    for digit in range(5):
        for s, speaker in enumerate(("jackson", "nicolas", "theo")):
            for take in range(2):
                tone = (0.2 + 0.2 * s) * np.sin(2 * np.pi * (300 + 100 * digit) * t)
                pcm = (np.clip(tone, -1, 1) * 32767).astype("<i2")
                with wave.open(str(folder / f"{digit}_{speaker}_{take}.wav"), "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(8000)
                    w.writeframes(pcm.tobytes())


_SMALL_TRAIN = """
[train]
epochs = 1
batch_size = 32
progress = false
"""

#: Configs the README's blocks name but do not show in full: the base each ``fragment of=``
#: block is appended to, or the input of a command. ``@NAME`` copies the README's own NAME.
BASES: dict[str, str] = {
    "student.toml": "@patients.toml",
    "census.toml": """
seed = 0
baselines = false

[data]
path = "census.csv"
[data.split]
method = "random"
val = 0.2
test = 0.2

[[tasks]]
name = "income"
kind = "binary"
target = "income"
positive = "50000+."

[[tasks]]
name = "never_married"
kind = "binary"
target = "marital"
positive = "Never married"

[model.encoder]
widths = [16]
"""
    + _SMALL_TRAIN,
    "recordings.toml": """
seed = 0
baselines = false

[data.split]
method = "random"
val = 0.2
test = 0.2

[[tasks]]
name = "digit"
kind = "multiclass"
target = "digit"

[[tasks]]
name = "speaker"
kind = "multiclass"
target = "speaker"
"""
    + _SMALL_TRAIN,
    "sources.toml": """
seed = 0
baselines = false

[data.split]
method = "random"
val = 0.2
test = 0.2

[[tasks]]
name = "sentiment"
kind = "binary"
target = "positive"

[[tasks]]
name = "urgency"
kind = "binary"
target = "urgent"

[[tasks]]
name = "product"
kind = "multiclass"
target = "product"

[model.encoder]
widths = [16]
"""
    + _SMALL_TRAIN,
    "new_hospital.toml": """
seed = 0

[data]
path = "new_hospital.csv"
group = "patient_id"
id = "encounter_id"
na_values = ["?"]
[data.split]
method = "group"
val = 0.2
test = 0.2

[[tasks]]
name = "stay"                  # one of the base's tasks: continued on the new hospital's rows
kind = "regression"
target = "time_in_hospital"

[[tasks]]
name = "home"                  # a new task: a new head
kind = "binary"
target = "discharged_home"
"""
    + _SMALL_TRAIN,
    # The teachers of the distillation section, one per task of the student (patients.toml).
    "risk.toml": """
seed = 0
baselines = false
[data]
path = "patients.csv"
na_values = ["?"]
[[tasks]]
name = "readmitted"
kind = "binary"
target = "readmitted"
positive = "<30"
"""
    + _SMALL_TRAIN,
    "stay.toml": """
seed = 0
baselines = false
[data]
path = "patients.csv"
[[tasks]]
name = "stay"
kind = "regression"
target = "time_in_hospital"
"""
    + _SMALL_TRAIN,
}


def _write_tables(ws: Path) -> None:
    _patients(300, 0).to_csv(ws / "patients.csv", index=False)
    _patients(120, 1).to_csv(ws / "new_patients.csv", index=False)
    _patients(100, 2).to_csv(ws / "old_tasks_test.csv", index=False)
    _patients(400, 3).to_parquet(ws / "big.parquet", index=False)
    hospital = _patients(200, 4)
    hospital["discharged_home"] = (hospital["time_in_hospital"] < 5).astype(int)
    hospital.to_csv(ws / "new_hospital.csv", index=False)
    _census(300, 0).to_csv(ws / "census.csv", index=False)
    _census(60, 1).drop(columns=["income", "marital"]).to_csv(ws / "rows.csv", index=False)
    _census(80, 2).to_csv(ws / "test.csv", index=False)
    _school(240).to_csv(ws / "school.csv", index=False)
    _tickets(160, 5, {"positive": lambda r: r.integers(0, 2, 160)}).to_csv(
        ws / "reviews.csv", index=False
    )
    _tickets(
        120,
        6,
        {
            "urgent": lambda r: r.integers(0, 2, 120),
            "product": lambda r: r.choice(["app", "card", "loan"], 120),
        },
    ).to_csv(ws / "tickets.csv", index=False)
    _write_recordings(ws / "recordings")


def _write_configs(ws: Path, blocks: list[Block]) -> None:
    """The README's complete configs, the test's ``BASES``, then each fragment appended to
    its file in README order (TOML allows ``[model]`` after ``[model.encoder]``)."""
    texts = {b.file: b.text for b in blocks if b.lang == "toml" and b.file and "of" not in b.marker}
    for name, base in BASES.items():
        texts[name] = texts[base[1:]] if base.startswith("@") else base.lstrip()
    for b in blocks:
        if b.lang == "toml" and "of" in b.marker:
            texts[b.marker["of"]] += "\n" + b.text
    for name, text in texts.items():
        assert name is not None
        (ws / name).write_text(text, encoding="utf-8")


# Python blocks' free names: the README's data frames, as a user would have read them.
NAMESPACE: dict[str, Callable[[Path], Any]] = {
    "patients_df": lambda ws: pd.read_csv(ws / "patients.csv", na_values=["?"]),
    "new_patients_df": lambda ws: pd.read_csv(ws / "new_patients.csv", na_values=["?"]),
    "labelled_df": lambda ws: pd.read_csv(ws / "new_patients.csv", na_values=["?"]),
    "my_dataframe": lambda ws: pd.read_csv(ws / "patients.csv", na_values=["?"]),
}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every workspace file, written once; each test copies it."""
    root = tmp_path_factory.mktemp("readme-template")
    _write_tables(root)
    _write_configs(root, BLOCKS)
    return root


@pytest.fixture()
def workspace(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    monkeypatch.chdir(ws)
    yield ws


class Prerequisites:
    """Paths a block starts from (``needs=``), each built once in its own copy of the template
    by the command of ``PREREQUISITES``."""

    def __init__(self, template: Path, root: Path) -> None:
        self.template, self.root = template, root
        self.built: dict[str, Path] = {}

    def provide(self, name: str, ws: Path) -> None:
        if name not in PREREQUISITES:
            raise AssertionError(f"marker needs={name}: no recipe in PREREQUISITES")
        if name not in self.built:
            home = self.root / name.replace("/", "_")
            shutil.copytree(self.template, home)
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(home)
                line = PREREQUISITES[name]
                _run_polytask(shlex.split(line), f"prerequisite {name!r} (`{line}`)")
            self.built[name] = home / name
        # A copy, so a block may write into it (resume, fine-tune lineage) without changing
        # what the next block starts from.
        shutil.copytree(self.built[name], ws / name)


@pytest.fixture(scope="module")
def prerequisites(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Prerequisites:
    return Prerequisites(template, tmp_path_factory.mktemp("readme-prerequisites"))


# -- running a command -------------------------------------------------------------------------


def _outputs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_OPTIONS]


def _run_polytask(argv: list[str], where: str) -> None:
    sub = argv[1]
    args = [*argv[1:], *OVERRIDES.get(sub, [])]
    result = run_cli(*args)
    tail = "\n".join((result.err or result.out).strip().splitlines()[-8:])
    assert result.code == 0, f"{where}: `polytask {' '.join(args)}` exited {result.code}:\n{tail}"
    for out in _outputs(argv):
        assert Path(out).exists(), f"{where}: `{' '.join(argv)}` did not write {out}"
        # The small budget must hold: `pareto --seeds` was once dropped silently, and this
        # file then trained 3 seeds in 2 spawned processes (a minute instead of seconds).
        extra = sorted(Path(out).glob("runs/*/seed[1-9]*"))
        assert sub != "pareto" or not extra, f"{where}: --seeds 1 ignored: {extra}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """A ``LONG_RUNNING`` command, started in the background as a reader would start it in a
    second terminal (on a free port instead of its ``--port``); once its block's other commands
    have run, :meth:`check` waits until it is ready and predicts one row over HTTP."""

    def __init__(self, argv: list[str], where: str, ws: Path) -> None:
        self.argv, self.where, self.ws = argv, where, ws
        args = list(argv[1:])
        port = _free_port()
        if "--port" in args:
            args[args.index("--port") + 1] = str(port)
        else:
            args += ["--port", str(port)]
        self.url = f"http://127.0.0.1:{port}"
        exe = Path(sys.executable).parent / "polytask"
        self.proc = subprocess.Popen(
            [str(exe), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ws,
            # One process among the test's own on few cores: intra-op threads only wait.
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def check(self) -> None:
        command = " ".join(self.argv)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(
                    f"{self.where}: `{command}` exited {self.proc.returncode}: {err}"
                )
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{self.where}: `{command}` not ready in 120 s"
            time.sleep(0.2)
        row = pd.read_csv(self.ws / "new_patients.csv").iloc[:1]
        features = row.drop(columns=["readmitted", "time_in_hospital"])
        records = json.loads(features.to_json(orient="records"))
        answer = httpx.post(self.url + "/predict", json={"records": records}, timeout=30)
        assert answer.status_code == 200, f"{self.where}: POST /predict -> {answer.text}"
        (prediction,) = answer.json()["predictions"]
        assert prediction["readmitted"] in ("<30", "not <30"), prediction
        assert 0.0 <= prediction["readmitted_proba"] <= 1.0, prediction

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=30)


def run_command(text: str, where: str, ws: Path, servers: list[Server]) -> str | None:
    """Run one README command (a server: start it, into ``servers``); the reason when it is
    not run here."""
    if text in NOT_RUN:
        return NOT_RUN[text]
    if text in SUBSTITUTES:
        text, _ = SUBSTITUTES[text]
    argv = shlex.split(text)
    if argv[0] != "polytask":
        raise AssertionError(
            f"{where}: `{text}` is not a polytask command; run it in test_readme.py "
            "(SUBSTITUTES) or say why not (NOT_RUN)"
        )
    if argv[1] in LONG_RUNNING:
        servers.append(Server(argv, where, ws))
    else:
        _run_polytask(argv, where)
    return None


# -- the tests ---------------------------------------------------------------------------------


def _used_by_commands(name: str) -> bool:
    return any(
        name in shlex.split(text)
        for b in BLOCKS
        if b.lang == "bash"
        for _, text in commands(b)
        if text not in NOT_RUN
    )


def _check_toml(block: Block, ws: Path) -> None:
    name = block.marker.get("of") or block.file
    if name is None:
        raise AssertionError(
            f"{block.where}: a TOML block needs a first-line comment naming its file "
            "(# name.toml) or a marker: <!-- doctest: fragment of=FILE --> or file=FILE"
        )
    if "of" in block.marker:
        assert "fragment" in block.marker, f"{block.where}: of= goes with the word fragment"
        assert name in BASES or name in {b.file for b in BLOCKS if "of" not in b.marker}, (
            f"{block.where}: fragment of unknown file {name!r} (add it to BASES)"
        )
    path = ws / name
    polytask.load_config(path)  # strict: an unknown key or a bad value raises, naming it
    if _used_by_commands(name):
        return  # trained, with this block in it, by the test of the README command that runs it
    result = polytask.run(
        polytask.load_config(path, ["train.epochs=1"]), out=ws / "runs" / "check", quiet=True
    )
    assert len(result.fit.history) == 1
    for task, metrics in result.metrics.items():
        assert metrics, f"{block.where}: no test metrics for task {task!r}"


def _check_bash(block: Block, ws: Path) -> None:
    not_run: list[str] = []
    servers: list[Server] = []
    try:
        for line, text in commands(block):
            reason = run_command(text, f"README.md:{line}", ws, servers)
            if reason is not None:
                not_run.append(f"README.md:{line}: {reason}")
        for server in servers:
            server.check()
    finally:
        for server in servers:
            server.stop()
    if not_run and len(not_run) == len(commands(block)):
        pytest.skip("; ".join(not_run))


def _check_python(block: Block, ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    namespace.update({name: make(ws) for name, make in NAMESPACE.items()})
    # Padded so that a traceback names the README's own line numbers.
    code = compile("\n" * block.line + block.text, str(README), "exec")
    exec(code, namespace)
    # The README's blocks print Δm: a NaN there would mean a broken comparison.
    for word in capsys.readouterr().out.split():
        number = _number(word)
        assert number is None or np.isfinite(number), f"{block.where}: printed {word!r}"


def _number(word: str) -> float | None:
    try:
        return float(word)
    except ValueError:
        return None


def _check_tree(block: Block, ws: Path) -> None:
    """A run-directory listing: its first line is the run, each further line an entry (its
    description may name files and sub-directories in it); ``<task>`` stands for each task."""
    lines = [line for line in block.text.splitlines() if line.strip()]
    root = ws / lines[0].strip()
    assert root.is_dir(), f"{block.where}: {root} is not a run directory"
    tasks = json.loads((root / "model" / "tasks.json").read_text(encoding="utf-8"))
    names = [t["name"] for t in tasks] if isinstance(tasks, list) else list(tasks)
    checked = 0
    for line in lines[1:]:
        entry, _, description = line.strip().partition(" ")
        named = re.findall(r"(?<![\w-])([\w-]+(?:\.[a-z]+|/))(?=[,;)\s]|$)", description)
        for task in names if "<task>" in entry else [None]:
            here = root / entry.replace("<task>", task or "")
            assert here.exists(), f"{block.where}: the listing shows {entry} but {here} is missing"
            for name in named if entry.endswith("/") else []:
                assert (here / name).exists(), f"{block.where}: {entry}{name} missing in the run"
                checked += 1
    assert checked >= 8, f"{block.where}: only {checked} files named inside the listing"


@pytest.mark.parametrize("block", [pytest.param(b, id=f"{b.where}:{b.lang}") for b in BLOCKS])
def test_readme_block(
    block: Block,
    workspace: Path,
    prerequisites: Prerequisites,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in filter(None, block.marker.get("data", "").split(",")):
        require_data(name)
    for name in filter(None, block.marker.get("needs", "").split(",")):
        prerequisites.provide(name, workspace)
    if block.lang == "toml":
        _check_toml(block, workspace)
    elif block.lang == "bash":
        _check_bash(block, workspace)
    elif block.lang == "python":
        _check_python(block, workspace, capsys)
    elif "tree" in block.marker:
        _check_tree(block, workspace)
    else:
        raise AssertionError(
            f"{block.where}: a ```{block.lang} block: give it a language this test runs "
            "(toml, bash, python) or a marker (<!-- doctest: tree -->)"
        )


def test_tables_name_only_what_the_readme_has() -> None:
    """A stale entry would silently stop guarding a command the README no longer shows."""
    shown = {text for b in BLOCKS if b.lang == "bash" for _, text in commands(b)}
    assert set(NOT_RUN) <= shown, set(NOT_RUN) - shown
    assert set(SUBSTITUTES) <= shown, set(SUBSTITUTES) - shown
    # The runs/patients prerequisite is the README's own first training command.
    assert PREREQUISITES["runs/patients"] in shown
    assert PREREQUISITES["runs/front"] in shown
    assert len(BLOCKS) >= 20  # the parser found the README's blocks, indented ones included


def test_block_parser_reads_markers_and_continuations(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n\n<!-- doctest: fragment of=a.toml data=census -->\n```toml\n[x]\n```\n\n"
        "- item\n\n  ```bash\n  polytask train a.toml \\\n      --out r   # note\n  # only\n"
        "  polytask list\n  ```\n",
        encoding="utf-8",
    )
    toml_block, bash_block = read_blocks(doc)
    assert (toml_block.line, toml_block.lang, toml_block.text) == (4, "toml", "[x]\n")
    assert toml_block.marker == {"fragment": "", "of": "a.toml", "data": "census"}
    assert bash_block.line == 10
    assert commands(bash_block) == [(11, "polytask train a.toml --out r"), (14, "polytask list")]
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- doctest: fragmnet -->\n```toml\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown doctest marker word 'fragmnet'"):
        read_blocks(bad)
