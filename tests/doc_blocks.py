"""Docs as tests (issue 21): every fenced code block of a document runs, on small data.

Shared by tests/test_readme.py (README.md) and tests/test_docs_blocks.py (docs/*.md). Each block
is one test, its id the document and line of its opening fence (``README.md:63:bash``,
``docs/deploy.md:10:bash``), and each block runs for real in a fresh workspace (a temporary
directory holding the small files it names). A test file describes what it runs in a
:class:`Suite` named ``SUITE`` (its documents' blocks and its skip tables); the fixtures below
read it from there.

``toml``
    Loaded with :func:`polytask.load_config` (strict: every key must exist, every value fit).
    A complete config (its first line a comment naming the file, ``# patients.toml``, or a
    ``file=`` marker) is written to the workspace under that name, where the other blocks'
    commands find it. A fragment (``fragment of=FILE``) is appended to FILE, and the result is
    loaded. Either is then trained for one epoch: here, unless a command of the suite runs FILE
    (then that command's test trains it, with every fragment of FILE in place).
``bash``
    Each command line (``\\``-continued lines, and lines inside an open quote, joined;
    comments dropped) runs. ``polytask ...`` runs in this process through
    :func:`conftest.run_cli` with the small-budget options of ``OVERRIDES`` appended
    (``--set train.epochs=1``, fewer seeds and points for the studies) and must exit 0 and
    leave behind what its ``--out`` / ``-o`` / ``--output`` names. ``polytask serve`` runs as a
    real server on a free port (``LONG_RUNNING``) until it has answered one prediction.
    ``curl`` runs for real against the server of the block's ``server=`` marker, and what it
    prints must have the shape of the output the block shows (a ``# {...}`` comment line after
    the command). Any other command must be listed in the suite's ``substitutes`` (run as an
    equivalent cheap command) or ``not_run`` (with the reason it is not run here; a ``polytask``
    command there, or one that ``torchrun -m polytask`` launches, is still parsed by the
    command line, so an option that does not exist fails): a new command in neither fails its
    block's test.
``python``
    Executed with the workspace as working directory; the names a block uses without defining
    them (``patients_df``, ``X`` ...) are small tables from ``NAMESPACE``.
no language
    A listing shown to the reader; it needs a marker (``tree``, ``source``), else the test
    fails.

A block no test here can run (a Slurm script, a Kubernetes manifest, a two-machine command) is
listed in the suite's ``skipped`` table, keyed by its document and one of its lines, with the
reason, and a TOML block that can be loaded but not trained here (a backbone that is not
installed) in ``load_only``; a block neither runnable nor listed fails, and so does an entry
that names no block or several.

Markers: an HTML comment on the line before the fence (invisible on the rendered page), with
space-separated words::

    <!-- doctest: fragment of=census.toml -->   TOML fragment, appended to that workspace file
    <!-- doctest: file=school.toml -->          complete TOML config, written under that name
    <!-- doctest: needs=runs/risk,runs/stay --> paths earlier steps would have made: built
                                                once (PREREQUISITES), copied into the block's
                                                workspace
    <!-- doctest: tree -->                      a run-directory listing: every directory and
                                                file it names must exist in a trained run
    <!-- doctest: source -->                    a listing of polytask's modules: every
                                                ``name.py`` and ``name/`` it names exists in
                                                src/polytask
    <!-- doctest: data=census -->               the block reads a dataset of ../shared/data
                                                (a key of polytask's DATASETS): skipped when it
                                                is absent, failed under CI=true
                                                (conftest.require_data)
    <!-- doctest: copy=PATH -->                 the block is the file PATH of this repository,
                                                verbatim (not run: the file's own tests run it)
    <!-- doctest: server=runs/patients -->      the block's ``curl`` commands talk to
                                                ``polytask serve runs/patients``, started here

Workspace files that no block creates (small generated tables, and configs the documents
mention without showing: the census table of the Pareto section, the teachers of the
distillation section) come from ``_write_tables`` and the suite's ``bases``; their sizes (a
few hundred rows) keep each test file to a few minutes on 2 cores.
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
import typer

import polytask
from conftest import require_data, run_cli, save_tiny_bert

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SOURCE = ROOT / "src" / "polytask"

# -- what runs, and how small ------------------------------------------------------------------

#: Options appended to each ``polytask`` subcommand (later options win over the document's
#: own): one epoch, and the studies cut to the fewest runs that still exercise them.
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

MARKER = re.compile(r"^\s*<!--\s*doctest:(?P<words>.*?)-->\s*$")
#: (word, takes a value)
MARKER_WORDS = {
    ("fragment", False),
    ("tree", False),
    ("source", False),
    ("of", True),
    ("file", True),
    ("needs", True),
    ("data", True),
    ("copy", True),
    ("server", True),
}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\S*)\s*$")
FILE_COMMENT = re.compile(r"^#\s*(?P<name>[\w.-]+\.toml)\s*$")
OUTPUT_OPTIONS = ("--out", "-o", "--output")


# -- a document's blocks -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block: its document, the line of its opening fence, language, text, marker."""

    doc: Path
    line: int
    lang: str
    text: str
    marker: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The document, relative to the repository (``README.md``, ``docs/deploy.md``)."""
        inside = self.doc.is_relative_to(ROOT)
        return self.doc.relative_to(ROOT).as_posix() if inside else self.doc.name

    @property
    def where(self) -> str:
        return f"{self.name}:{self.line}"

    def at(self, line: int) -> str:
        """A line of the document, for messages."""
        return f"{self.name}:{line}"

    def named_by(self, key: tuple[str, str]) -> bool:
        """Whether a table's key, (document, one of the block's lines), names this block: a
        name that holds whatever line numbers the document's edits shift."""
        return key[0] == self.name and key[1] in self.text.splitlines()

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
                f"{where}: unknown doctest marker word {word!r}; known: fragment, tree, source, "
                "of=FILE, file=FILE, needs=PATH[,PATH], data=NAME[,NAME], copy=PATH, "
                "server=MODEL"
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
        blocks.append(Block(path, i + 1, opening["lang"] or "text", body + "\n", marker))
        i = end + 1
    return blocks


def commands(block: Block) -> list[tuple[int, str]]:
    """A bash block's command lines as (document line, command): continuations (a trailing
    ``\\``, or a quote still open at the end of a line) joined and comments dropped."""
    found: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        if not pending:
            start = block.line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        try:
            words = shlex.split(pending + raw, comments=True)
        except ValueError:  # "No closing quotation": a quoted argument spans lines (curl -d)
            pending += raw + "\n"
            continue
        text = shlex.join(words)
        pending = ""
        if text:
            found.append((start, text))
    if pending:
        raise ValueError(f"{block.where}: a command never ends (open quote or trailing \\)")
    return found


def shown_outputs(block: Block) -> dict[int, str]:
    """The output a bash block shows after a command (a ``# {...}`` comment line right after
    it), by the command's line."""
    shown: dict[int, str] = {}
    starts = {line for line, _ in commands(block)}
    last = 0
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        line = block.line + offset
        if line in starts:
            last = line
        elif raw.strip().startswith("# {") and last:
            shown[last] = raw.strip()[2:]
            last = 0
    return shown


@dataclass
class Suite:
    """What one test file runs: its documents' blocks and the tables of what is not run as
    written. ``context``: other blocks whose configs the workspace also holds (the README's
    ``patients.toml`` for the documentation pages)."""

    blocks: list[Block]
    #: command -> why it is not run here
    not_run: dict[str, str]
    #: command -> (the command run instead, why)
    substitutes: dict[str, tuple[str, str]]
    #: (document, a line of a block) -> why the block is not run here
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (document, a line of a TOML block) -> why the config is loaded but not trained here
    load_only: dict[tuple[str, str], str] = field(default_factory=dict)
    #: command -> words its output must contain (what the document says it prints)
    shows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    context: list[Block] = field(default_factory=list)
    #: configs the blocks name but do not show in full (see ``BASES``)
    bases: dict[str, str] = field(default_factory=lambda: dict(BASES))
    #: workspace files beyond ``_write_tables`` (the suite's own small tables)
    extra_files: Callable[[Path], None] | None = None

    def listed(self, block: Block, table: dict[tuple[str, str], str]) -> str | None:
        """The reason ``table`` gives for ``block``, if it names it."""
        return next((why for key, why in table.items() if block.named_by(key)), None)

    def run_blocks(self) -> list[Block]:
        return [b for b in self.blocks if self.listed(b, self.skipped) is None]

    def params(self) -> list[Any]:
        return [pytest.param(b, id=f"{b.where}:{b.lang}") for b in self.blocks]

    def shown_commands(self) -> set[str]:
        return {text for b in self.run_blocks() if b.lang == "bash" for _, text in commands(b)}

    def stale(self) -> list[str]:
        """Table entries that name nothing the documents show: they would silently stop
        guarding a command or block."""
        shown = self.shown_commands()

        def names_one(key: tuple[str, str]) -> bool:
            return sum(b.named_by(key) for b in self.blocks) == 1

        return sorted(
            [f"not_run: {c}" for c in self.not_run if c not in shown]
            + [f"substitutes: {c}" for c in self.substitutes if c not in shown]
            + [f"shows: {c}" for c in self.shows if c not in shown]
            + [
                f"skipped: {k} (names no block, or several)"
                for k in self.skipped
                if not names_one(k)
            ]
            + [
                f"load_only: {k} (names no block, or several)"
                for k in self.load_only
                if not names_one(k)
            ]
        )


# -- the workspace: small tables and the configs the documents mention -------------------------


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
#: block is appended to, or the input of a command. ``@NAME`` copies the documents' own NAME.
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


def _write_configs(ws: Path, suite: Suite) -> None:
    """The documents' complete configs, the suite's ``bases``, then each fragment appended to
    its file in document order (TOML allows ``[model]`` after ``[model.encoder]``); and the
    repository files that ``copy=`` TOML blocks quote, at their own relative paths."""
    blocks = [*suite.context, *suite.blocks]
    tomls = [b for b in blocks if b.lang == "toml" and "copy" not in b.marker]
    texts = {b.file: b.text for b in tomls if b.file and "of" not in b.marker}
    for name, base in suite.bases.items():
        texts[name] = texts[base[1:]] if base.startswith("@") else base.lstrip()
    for b in tomls:
        if "of" in b.marker:
            texts[b.marker["of"]] += "\n" + b.text
    for name, text in texts.items():
        assert name is not None
        (ws / name).write_text(text, encoding="utf-8")
    for b in suite.blocks:
        if b.lang == "toml" and "copy" in b.marker:
            (ws / b.marker["copy"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / b.marker["copy"], ws / b.marker["copy"])


def _features(frame: pd.DataFrame) -> pd.DataFrame:
    """A patients table as a model sees it at prediction time: no target columns."""
    return frame.drop(columns=["readmitted", "time_in_hospital"])


# Python blocks' free names: the documents' data frames, as a user would have read them.
NAMESPACE: dict[str, Callable[[Path], Any]] = {
    "patients_df": lambda ws: pd.read_csv(ws / "patients.csv", na_values=["?"]),
    "new_patients_df": lambda ws: pd.read_csv(ws / "new_patients.csv", na_values=["?"]),
    "labelled_df": lambda ws: pd.read_csv(ws / "new_patients.csv", na_values=["?"]),
    "my_dataframe": lambda ws: pd.read_csv(ws / "patients.csv", na_values=["?"]),
    # docs/deploy.md: rows to predict, and the scikit-learn section's features and targets.
    "df": lambda ws: pd.read_csv(ws / "new_patients.csv"),
    "frame": lambda ws: _features(pd.read_csv(ws / "new_patients.csv")),
    "X": lambda ws: _features(pd.read_csv(ws / "patients.csv", na_values=["?"])).drop(
        columns=["encounter_id", "patient_id"]
    ),
    "Y": lambda ws: (
        pd.read_csv(ws / "patients.csv", na_values=["?"])
        .assign(readmitted=lambda f: (f["readmitted"] == "<30").astype(int))
        .rename(columns={"time_in_hospital": "days"})[["readmitted", "days"]]
    ),
}


def _tiny_bert(home: Path, name: str) -> None:
    """A 4-layer, 32-wide BERT with random weights and a WordPiece tokenizer, saved with
    ``save_pretrained`` where a downloaded model would be (docs/backbones.md's
    ``models/bert-base-uncased``): the files the document's config reads, at test size."""
    words = sorted({w for text in texts_table(60, 0)["text"] for w in text.split()})
    save_tiny_bert(home / name, words, layers=4, max_positions=160)


def texts_table(n: int, seed: int) -> pd.DataFrame:
    """Short reviews: ``positive`` has a positive word, ``long`` more than 4 words."""
    rng = np.random.default_rng(seed)
    good, bad, plain = ["great", "good", "fine"], ["bad", "awful", "poor"], ["the", "food", "was"]
    rows = []
    for _ in range(n):
        length = int(rng.integers(2, 8))
        positive = bool(rng.integers(0, 2))
        words = list(rng.choice(plain, size=length - 1))
        words.insert(int(rng.integers(0, length)), str(rng.choice(good if positive else bad)))
        rows.append({"text": " ".join(words), "positive": int(positive), "long": int(length > 4)})
    return pd.DataFrame(rows)


#: What a marker ``needs=PATH`` provides: PATH is made once (per test file) in a workspace
#: like the blocks', by this command (with ``OVERRIDES``) or function; then copied into each
#: workspace that needs it.
PREREQUISITES: dict[str, str | Callable[[Path, str], None]] = {
    # The README's own first step (asserted to be in it, so the two cannot drift apart).
    "runs/patients": "polytask train patients.toml --out runs/patients",
    "runs/front": "polytask pareto census.toml --out runs/front",
    # The distillation section's teachers: one single-task model per task.
    "runs/risk": "polytask train risk.toml --out runs/risk",
    "runs/stay": "polytask train stay.toml --out runs/stay",
    # docs/backbones.md's Hugging Face model directory.
    "models/bert-base-uncased": _tiny_bert,
}


class Prerequisites:
    """Paths a block starts from (``needs=``), each built once in its own copy of the template
    by the recipe of ``PREREQUISITES``."""

    def __init__(self, template: Path, root: Path) -> None:
        self.template, self.root = template, root
        self.built: dict[str, Path] = {}

    def provide(self, name: str, ws: Path) -> None:
        if name not in PREREQUISITES:
            raise AssertionError(f"marker needs={name}: no recipe in PREREQUISITES")
        if name not in self.built:
            home = self.root / name.replace("/", "_")
            shutil.copytree(self.template, home)
            recipe = PREREQUISITES[name]
            if isinstance(recipe, str):
                with pytest.MonkeyPatch.context() as mp:
                    mp.chdir(home)
                    _run_polytask(shlex.split(recipe), f"prerequisite {name!r} (`{recipe}`)")
            else:
                recipe(home, name)
            self.built[name] = home / name
        # A copy, so a block may write into it (resume, fine-tune lineage) without changing
        # what the next block starts from.
        shutil.copytree(self.built[name], ws / name)


# -- fixtures (a test file imports them, with its SUITE) ---------------------------------------


@pytest.fixture(scope="module")
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every workspace file, written once; each test copies it."""
    suite: Suite = request.module.SUITE
    root = tmp_path_factory.mktemp("doc-template")
    _write_tables(root)
    if suite.extra_files is not None:
        suite.extra_files(root)
    _write_configs(root, suite)
    return root


@pytest.fixture()
def workspace(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    ws = tmp_path / "ws"
    shutil.copytree(template, ws)
    monkeypatch.chdir(ws)
    yield ws


@pytest.fixture(scope="module")
def prerequisites(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Prerequisites:
    return Prerequisites(template, tmp_path_factory.mktemp("doc-prerequisites"))


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """The ``LONG_RUNNING`` servers of a test file, stopped (SIGTERM) when its tests end."""
    pool = Servers()
    yield pool
    pool.stop()


# -- running a command -------------------------------------------------------------------------


def _outputs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in OUTPUT_OPTIONS]


def _run_polytask(argv: list[str], where: str) -> str:
    """Run ``polytask ...`` in this process with ``OVERRIDES``; its standard output."""
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
    return result.out


def polytask_arguments(argv: list[str]) -> list[str] | None:
    """The arguments of the polytask command a line runs (``polytask ARGS`` or a launcher's
    ``-m polytask ARGS``); None when it runs none."""
    if argv and argv[0] == "polytask":
        return argv[1:]
    for i, word in enumerate(argv[:-1]):
        if word == "-m" and argv[i + 1] == "polytask":
            return argv[i + 2 :]
    return None


#: A command line's usage error (an unknown option, a bad value). typer vendors its own click,
#: whose ``UsageError`` it does not export: it is the base of ``typer.BadParameter``.
USAGE_ERROR: type[Exception] = typer.BadParameter.__bases__[0]


def parse_only(args: list[str], where: str) -> None:
    """Parse ``polytask ARGS`` as the command line would, without running it: a command that
    is not run here still cannot show an option or a command that does not exist."""
    from polytask import cli

    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    command = group.get_command(typer.Context(group, info_name="polytask"), args[0])
    assert command is not None, f"{where}: `polytask {args[0]}`: no such command"
    try:
        with typer.Context(group, info_name="polytask") as parent:
            command.make_context(args[0], list(args[1:]), parent=parent).close()
    except USAGE_ERROR as exc:
        message = f"{where}: `polytask {shlex.join(args)}`: {exc}"
        raise AssertionError(message) from None


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
        self.port = _free_port()
        if "--port" in args:
            args[args.index("--port") + 1] = str(self.port)
        else:
            args += ["--port", str(self.port)]
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).parent / "polytask"
        self.proc = subprocess.Popen(
            [str(exe), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ws,
            # One process among the test's own on few cores: intra-op threads only wait.
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )

    def wait_ready(self) -> None:
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
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{self.where}: `{command}` not ready in 120 s"
            time.sleep(0.2)

    def check(self) -> None:
        self.wait_ready()
        row = pd.read_csv(self.ws / "new_patients.csv").iloc[:1]
        records = json.loads(_features(row).to_json(orient="records"))
        answer = httpx.post(self.url + "/predict", json={"records": records}, timeout=30)
        assert answer.status_code == 200, f"{self.where}: POST /predict -> {answer.text}"
        (prediction,) = answer.json()["predictions"]
        assert prediction["readmitted"] in ("<30", "not <30"), prediction
        assert 0.0 <= prediction["readmitted_proba"] <= 1.0, prediction

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=30)


class Servers:
    """The servers a test file started, by command (its ``--port`` left out). A block's
    ``server=`` marker reuses the server an earlier block started for the same model: a start
    is ~10 s of imports, and a minute on loaded cores. All stop when the file's tests end."""

    def __init__(self) -> None:
        self.running: dict[tuple[str, ...], Server] = {}

    def start(self, argv: list[str], where: str, ws: Path) -> Server:
        at = argv.index("--port") if "--port" in argv else len(argv)
        key = (*argv[:at], *argv[at + 2 :])
        if key not in self.running or self.running[key].proc.poll() is not None:
            self.running[key] = Server(argv, where, ws)
        return self.running[key]

    def stop(self) -> None:
        for server in self.running.values():
            server.stop()


def _shape(value: Any) -> Any:
    """A JSON value's structure: keys and types, not values (a number is a number)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return (
        "number"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else (type(value).__name__)
    )


def _run_curl(argv: list[str], where: str, ws: Path, server: Server, shown: str | None) -> None:
    """Run a ``curl`` line against the block's server (its ``localhost:8000`` rewritten to the
    server's port); it must succeed, and print what the document shows, up to the values."""
    args = [a.replace("localhost:8000", f"127.0.0.1:{server.port}") for a in argv[1:]]
    done = subprocess.run(
        ["curl", "--fail-with-body", "--max-time", "60", *args],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, f"{where}: `{shlex.join(argv)}` -> {done.stdout}{done.stderr}"
    answer = json.loads(done.stdout)
    assert answer["predictions"], f"{where}: no predictions: {done.stdout}"
    if shown is not None:
        assert _shape(answer) == _shape(json.loads(shown)), (
            f"{where}: the document shows {shown}, the server answered {done.stdout}"
        )


def run_command(
    text: str, where: str, ws: Path, servers: list[Server], suite: Suite, pool: Servers
) -> str | None:
    """Run one command of a document (a server: start it from ``pool``, into ``servers``);
    the reason when it is not run here."""
    if text in suite.not_run:
        args = polytask_arguments(shlex.split(text))
        if args is not None:
            parse_only(args, where)
        return suite.not_run[text]
    shows = suite.shows.get(text, ())
    if text in suite.substitutes:
        text, _ = suite.substitutes[text]
    argv = shlex.split(text)
    if argv[0] != "polytask":
        raise AssertionError(
            f"{where}: `{text}` is not a polytask command; run it in the suite's substitutes "
            "or say why not (not_run)"
        )
    if argv[1] in LONG_RUNNING:
        servers.append(pool.start(argv, where, ws))
        return None
    out = _run_polytask(argv, where)
    for word in shows:
        assert word in out, f"{where}: `{text}` did not print {word!r}"
    return None


# -- the checks, by kind of block --------------------------------------------------------------


def _used_by_commands(name: str, suite: Suite) -> bool:
    ran = [
        suite.substitutes[text][0] if text in suite.substitutes else text
        for text in suite.shown_commands()
        if text not in suite.not_run
    ]
    return any(name in shlex.split(text) for text in ran)


def check_copy(block: Block) -> None:
    """A block that quotes a file of the repository is that file, verbatim."""
    path = ROOT / block.marker["copy"]
    assert path.is_file(), f"{block.where}: copy={block.marker['copy']} is not a file"
    want = path.read_text(encoding="utf-8")
    if block.text != want:
        shown, real = block.text.splitlines(), want.splitlines()
        i = next((i for i, (a, b) in enumerate(zip(shown, real, strict=False)) if a != b), None)
        i = min(len(shown), len(real)) if i is None else i
        raise AssertionError(
            f"{block.at(block.line + 1 + i)}: the block differs from {block.marker['copy']} "
            f"line {i + 1}: shows {shown[i] if i < len(shown) else '<end>'!r}, the file has "
            f"{real[i] if i < len(real) else '<end>'!r}"
        )
    if block.lang == "toml" and path.name != "pyproject.toml":
        polytask.load_config(path)  # strict; tests/test_plugins.py trains it


def _check_toml(block: Block, suite: Suite, ws: Path) -> None:
    name = block.marker.get("of") or block.file
    if name is None:
        raise AssertionError(
            f"{block.where}: a TOML block needs a first-line comment naming its file "
            "(# name.toml) or a marker: <!-- doctest: fragment of=FILE --> or file=FILE"
        )
    if "of" in block.marker:
        assert "fragment" in block.marker, f"{block.where}: of= goes with the word fragment"
        files = {b.file for b in [*suite.context, *suite.blocks] if "of" not in b.marker}
        assert name in suite.bases or name in files, (
            f"{block.where}: fragment of unknown file {name!r} (add it to the suite's bases)"
        )
    path = ws / name
    polytask.load_config(path)  # strict: an unknown key or a bad value raises, naming it
    if _used_by_commands(name, suite):
        return  # trained, with this block in it, by the test of the command that runs it
    reason = suite.listed(block, suite.load_only)
    if reason is not None:
        pytest.skip(f"{block.where}: the config loads; not trained here: {reason}")
    result = polytask.run(
        polytask.load_config(path, ["train.epochs=1"]), out=ws / "runs" / "check", quiet=True
    )
    assert len(result.fit.history) == 1
    for task, metrics in result.metrics.items():
        assert metrics, f"{block.where}: no test metrics for task {task!r}"


def _check_bash(block: Block, suite: Suite, ws: Path, pool: Servers) -> None:
    lines = commands(block)
    shown = shown_outputs(block)
    not_run: list[tuple[int, str]] = []
    servers: list[Server] = []
    server = None
    if "server" in block.marker:
        server = pool.start(["polytask", "serve", block.marker["server"]], block.where, ws)
        servers.append(server)
        server.wait_ready()
    for line, text in lines:
        argv = shlex.split(text)
        if argv[0] == "curl" and text not in suite.not_run:
            assert server is not None, f"{block.at(line)}: curl needs a server= marker"
            _run_curl(argv, block.at(line), ws, server, shown.get(line))
            continue
        reason = run_command(text, block.at(line), ws, servers, suite, pool)
        if reason is not None:
            not_run.append((line, reason))
    for each in servers:
        each.check()
    if not_run and len(not_run) == len(lines):
        reasons = dict.fromkeys(reason for _, reason in not_run)
        pytest.skip(
            "; ".join(
                f"{block.name}:{', '.join(str(n) for n, r in not_run if r == reason)}: {reason}"
                for reason in reasons
            )
        )


def _check_python(block: Block, ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"__name__": "__doc_block__"}
    namespace.update({name: make(ws) for name, make in NAMESPACE.items()})
    # Padded so that a traceback names the document's own line numbers.
    code = compile("\n" * block.line + block.text, str(block.doc), "exec")
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


#: A module or folder named in a source listing: ``name.py``, ``dir/``, ``dir/name.py``.
SOURCE_NAME = re.compile(r"(?<![\w./-])((?:[a-z_]+/)*(?:[a-z_]+\.py|[a-z_]+/))(?![\w/])")


def check_source(block: Block, source: Path = SOURCE) -> int:
    """A listing of polytask's modules (docs/architecture.md): a row is a line and the lines
    indented under it; each ``name.py`` or ``name/`` it names exists in the package, at its top
    or in a folder named earlier on the same row. The number of names checked."""
    rows: list[list[str]] = []
    indent = -1
    for line in block.text.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if not rows or depth <= indent:
            rows.append([])
            indent = depth
        rows[-1].append(line)
    checked = 0
    for row in rows:
        folders = [source]
        for name in SOURCE_NAME.findall(" ".join(row)):
            found = next((f / name for f in folders if (f / name).exists()), None)
            assert found is not None, (
                f"{block.where}: the listing names {name!r}, which is not in src/polytask "
                f"(looked in {', '.join(str(f.relative_to(source)) or '.' for f in folders)})"
            )
            folder = found if found.is_dir() else found.parent
            if folder not in folders:
                folders.append(folder)
            checked += 1
    return checked


def check_block(
    block: Block,
    suite: Suite,
    workspace: Path,
    prerequisites: Prerequisites,
    servers: Servers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The test of one block (see the module's docstring)."""
    reason = suite.listed(block, suite.skipped)
    if reason is not None:
        pytest.skip(f"{block.where}: {reason}")
    if "copy" in block.marker:
        check_copy(block)
        return
    for name in filter(None, block.marker.get("data", "").split(",")):
        require_data(name)
    for name in filter(None, block.marker.get("needs", "").split(",")):
        prerequisites.provide(name, workspace)
    if block.lang == "toml":
        _check_toml(block, suite, workspace)
    elif block.lang == "bash":
        _check_bash(block, suite, workspace, servers)
    elif block.lang == "python":
        _check_python(block, workspace, capsys)
    elif "tree" in block.marker:
        _check_tree(block, workspace)
    elif "source" in block.marker:
        assert check_source(block) >= 10, f"{block.where}: fewer than 10 modules named"
    else:
        raise AssertionError(
            f"{block.where}: a ```{block.lang} block: give it a language this test runs "
            "(toml, bash, python), a marker (<!-- doctest: tree -->, source, copy=PATH) or "
            "list it in the suite's skipped table with the reason"
        )
