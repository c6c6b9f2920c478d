"""Output a person (and a program) can read (issue 21, "Output you can read"): what a run read,
early stopping announced, no hard wrapping when redirected, ``--json``, compact tables for many
tasks, honest signs and intervals, baselines as model directories, no markup swallowing
brackets, and a quiet Ctrl-C."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from conftest import clinical_config, clinical_frame, run_cli, toml_text
from polytask.console import REDIRECTED_WIDTH, make_console
from polytask.data.summary import describe_data
from polytask.data.tensors import TensorData
from polytask.evaluate.reference import against_reference
from polytask.evaluate.statistics import mean_ci, paired_verdict
from polytask.report.html import Section, Table, render_page
from polytask.studies.compare.render import markdown, tables
from polytask.tasks import Task
from polytask.train.callbacks.early_stopping import EarlyStopping
from polytask.train.config import TrainConfig

SRC = Path(__file__).resolve().parent.parent / "src" / "polytask"


# -- consoles ----------------------------------------------------------------------------------


def test_every_console_is_made_by_make_console() -> None:
    """No ``Console(...)`` call outside polytask/console.py: each would bring back markup and
    80-column wrapping of redirected output."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "console.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name == "Console":
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


def test_redirected_console_does_not_wrap_or_read_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    console = make_console(file=out)
    assert not console.is_terminal and console.width == REDIRECTED_WIDTH
    long = "model saved to " + "/very/long/path" * 12 + " [finetune] polytask[text]"
    console.print(long)
    assert out.getvalue() == long + "\n"
    # Table cells are plain text too, and a wide table is not squeezed.
    from rich.table import Table as RichTable

    table = RichTable(title="tasks[1]")
    for i in range(12):
        table.add_column(f"task_{i:02d} (auroc ↑)")
    table.add_row(*[f"0.{i:04d} ± 0.0123 [x]" for i in range(12)])
    out.truncate(0)
    out.seek(0)
    console.print(table)
    text = out.getvalue()
    assert "tasks[1]" in text and "0.0011 ± 0.0123 [x]" in text and "…" not in text


def test_help_keeps_bracketed_text() -> None:
    from polytask.cli import app

    result = CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "([finetune] section)" in result.output


# -- the comparison of one run -------------------------------------------------------------------


def _tasks() -> list[Task]:
    return [
        Task("risk", "binary", target="r"),
        Task("stay", "regression", target="s"),
    ]


def test_run_table_shows_raw_change_and_the_word() -> None:
    multi = {"risk": {"auroc": 0.80}, "stay": {"mae": 0.90}}
    single = {"risk": {"auroc": 0.825}, "stay": {"mae": 1.00}}
    comparison = against_reference(_tasks(), multi, single, "test")
    rows = {r.task: r for r in comparison.rows}
    # AUROC fell 3%: the Δm-signed relative change is +3.03 (worse), shown as a fall and "worse".
    assert rows["risk"].relative_change_pct == pytest.approx(100 * 0.025 / 0.825)
    assert rows["risk"].outcome == "worse" and rows["stay"].outcome == "better"
    out = io.StringIO()
    Console(file=out, width=80, markup=False).print(comparison.table())
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    risk = next(line for line in text.splitlines() if "risk" in line)
    assert re.search(r"0\.8250 │\s+-0\.0250 │\s+worse", risk)
    stay = next(line for line in text.splitlines() if line.startswith("│ stay"))
    assert re.search(r"1\.0000 │\s+-0\.1000 │\s+better", stay)
    assert "no uncertainty" in " ".join(text.split())
    document = comparison.to_dict()
    assert document["tasks"][0]["outcome"] == "worse"
    assert document["tasks"][0]["change"] == pytest.approx(-0.025)
    assert "no uncertainty" in document["uncertainty"]


# -- statistics ----------------------------------------------------------------------------------


def test_intervals_are_clipped_to_the_metric_range() -> None:
    wide = mean_ci([0.99, 0.95])
    assert wide.high > 1.0  # the t interval of 2 seeds reaches past 1 ...
    clipped = mean_ci([0.99, 0.95], bounds=(0.0, 1.0))
    assert clipped.high == 1.0 and clipped.low == pytest.approx(wide.low)  # ... clipped here
    assert clipped.mean == pytest.approx(0.97)


def test_verdicts_from_few_seeds_say_so() -> None:
    few = paired_verdict([0.9, 0.91], [0.8, 0.81], True)
    assert few.n_pairs == 2 and few.evidence is not None and "2 seeds" in few.evidence
    assert few.to_dict()["evidence"] == few.evidence and few.to_dict()["n_pairs"] == 2
    enough = paired_verdict([0.9, 0.91, 0.92, 0.9, 0.93], [0.8, 0.81, 0.8, 0.82, 0.8], True)
    assert enough.evidence is None


# -- compare with many tasks -----------------------------------------------------------------------


def compare_document(n_tasks: int = 12, n_seeds: int = 2) -> dict[str, Any]:
    names = [f"task_{i:02d}" for i in range(n_tasks)]

    def stat(m: float) -> dict[str, Any]:
        return mean_ci([m - 0.01, m + 0.01][:n_seeds], bounds=(0.0, 1.0)).to_dict()

    def verdict(i: int) -> dict[str, Any]:
        hurts = i == 3
        v = paired_verdict(
            [0.94, 0.95] if hurts else [0.975, 0.976],
            [0.97, 0.98],
            True,
        )
        return v.to_dict()

    base = {
        "fraction": 1.0,
        "configuration": "single-task",
        "n_seeds": n_seeds,
        "per_task": {t: stat(0.97) for t in names},
    }
    multi = {
        "fraction": 1.0,
        "configuration": "shared-bottom",
        "n_seeds": n_seeds,
        "per_task": {t: stat(0.94 if i == 3 else 0.975) for i, t in enumerate(names)},
        "delta_m": mean_ci([-0.1, -0.3]).to_dict(),
        "delta_m_all_metrics": mean_ci([-0.1, -0.3]).to_dict(),
        "worst_task": {"task": "task_03", "change_pct": 3.1},
        "verdicts": {t: verdict(i) for i, t in enumerate(names)},
    }
    return {
        "kind": "polytask-compare",
        "seeds": list(range(n_seeds)),
        "fractions": [1.0],
        "tasks": {t: {"metric": "auroc", "higher_is_better": True} for t in names},
        "delta_m_definition": "Δm",
        "test": "paired t-test",
        "configurations": {"single-task": {"overrides": []}, "shared-bottom": {"overrides": []}},
        "grid": {},
        "results": [base, multi],
    }


def _render(table: Any, width: int = 80) -> str:
    out = io.StringIO()
    Console(file=out, width=width, markup=False).print(table)
    return out.getvalue()


def test_twelve_task_compare_fits_80_columns() -> None:
    doc = compare_document()
    summary, per_task = tables(doc, per_task=True)
    text = _render(summary)
    assert "…" not in text and max(map(len, text.splitlines())) <= 80
    row = next(line for line in text.splitlines() if line.startswith("shared-bottom"))
    assert "-0.20% [" in row and "0 / 11 / 1" in row and "task_03" in row
    assert "2 seeds" in " ".join(text.split())  # the verdicts say how little they rest on
    detail = _render(per_task)
    assert "…" not in detail and max(map(len, detail.splitlines())) <= 80
    assert all(f"task_{i:02d}" in detail for i in range(12))
    assert "worse" in detail and "HURTS" in detail
    # Only the summary unless asked.
    assert len(tables(doc)) == 1
    assert "only 2 seeds" in markdown(doc)


# -- the report ------------------------------------------------------------------------------------


def test_report_tables_scroll_inside_the_page() -> None:
    header = ["configuration", *[f"task_{i:02d} (auroc ↑)" for i in range(12)]]
    table = Table("wide", header, [["x", *["0.9700 [0.9200, 1.0000]"] * 12]])
    page = render_page("t", [], [Section("s", [table])])
    assert page.count('<div class="table-wrap"><table>') == 1
    assert re.search(r"\.table-wrap \{[^}]*overflow-x: auto", page)


# -- what a run read, early stopping ---------------------------------------------------------------


def test_describe_data_counts_rows_features_and_labels() -> None:
    task = Task("risk", "binary", target="r", classes=["no", "yes"])
    train = TensorData(
        {"x": torch.zeros(4, 2)},
        {"risk": torch.tensor([0.0, 1.0, 1.0, 0.0])},
        {"risk": torch.tensor([True, True, True, False])},
    )
    val = TensorData({"x": torch.zeros(2, 2)}, {"risk": torch.zeros(2)}, {"risk": torch.ones(2)})
    processor = SimpleNamespace(name="text", columns=["review"])
    summary = describe_data(
        [task], processor, {"train": train, "val": val, "test": None}, source="t.csv"
    )
    lines = summary.lines()
    assert lines[0] == "data: t.csv: train 4, val 2 rows"
    assert "  text input features (1): review" in lines
    assert lines[-1] == (
        "  risk (binary): 3 / 2 labelled (train/val), 25.0% of training rows missing; "
        "classes yes: 2, no: 1"
    )
    assert summary.to_dict()["tasks"][0]["class_counts"] == {"no": 1, "yes": 2}


def test_early_stopping_is_announced() -> None:
    out = io.StringIO()
    config = TrainConfig(epochs=10, patience=2)
    stopping = EarlyStopping(2, 0.0)
    model = torch.nn.Linear(1, 1)
    view = SimpleNamespace(
        model=model, config=config, console=make_console(file=out), quiet=False, label="x[1]"
    )
    for epoch, criterion in enumerate([0.5, 0.4, 0.45, 0.41], start=1):
        stopping.on_epoch_end(view, SimpleNamespace(epoch=epoch, criterion=criterion, best=False))  # type: ignore[arg-type]
    view.epoch = 4
    stopping.on_fit_end(view)
    assert out.getvalue() == (
        "[x[1]] early stopping after epoch 4 of 10: the validation criterion (mean_relative) "
        "did not improve for 2 epochs (train.patience = 2); keeping the weights of epoch 2 "
        "(criterion +0.4000)\n"
    )
    view.quiet, view.epoch = True, 4
    out.truncate(0)
    stopping.on_fit_end(view)
    assert out.getvalue() == ""


# -- a whole run: summary, --json, --quiet, baselines as model directories -----------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    root = tmp_path_factory.mktemp("readable")
    clinical_frame(300).to_csv(root / "train.csv", index=False)
    cfg = clinical_config(baselines=True)
    cfg["tasks"][0]["name"] = "risk[30d]"
    (root / "run.toml").write_text(toml_text(cfg))
    # The summary is part of the progress display (train.progress), which the config turns off.
    loud = run_cli(
        "train", root / "run.toml", "--out", root / "run", "--json", "--set", "train.progress=true"
    )
    quiet = run_cli("train", root / "run.toml", "--out", root / "q", "--quiet", "--baselines")
    return root, loud, quiet


def test_train_prints_what_it_read_and_json(trained: tuple[Path, Any, Any]) -> None:
    root, loud, quiet = trained
    assert loud.code == 0, loud.err
    document = json.loads(loud.out)  # stdout is one JSON document, nothing else
    results = json.loads((root / "run" / "results.json").read_text())
    assert document["comparison"] == results["comparison"]
    assert document["multi_task"] == results["multi_task"]
    assert document["model"] == str(root / "run" / "model")
    assert "data: data file" in loud.err and "tasks (2):" in loud.err
    assert re.search(r"risk\[30d\] \(binary\): \d+ / \d+ / \d+ labelled", loud.err)
    assert "% of training rows missing" in loud.err
    assert quiet.code == 0 and "data:" not in quiet.err and "tasks (" not in quiet.err
    assert "risk[30d]" in quiet.out  # brackets in a task name survive the table


def test_baselines_are_model_directories(trained: tuple[Path, Any, Any]) -> None:
    import polytask

    root = trained[0]
    frame = clinical_frame(40, seed=3)
    for task in ("risk[30d]", "stay"):
        baseline = root / "run" / "baselines" / task
        predictor = polytask.load(baseline)
        assert [t.name for t in predictor.tasks] == [task]
        assert len(predictor.predict(frame)) == 40
        assert json.loads((baseline / "results.json").read_text())["baseline_of"] == task
    frame.to_csv(root / "new.csv", index=False)
    result = run_cli(
        "predict",
        root / "run" / "baselines" / "stay",
        root / "new.csv",
        "-o",
        root / "p.csv",
        "--json",
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)["rows"] == 40
    assert len(pd.read_csv(root / "p.csv")) == 40


# -- Ctrl-C ----------------------------------------------------------------------------------------


#: ``polytask train --help`` sending itself Ctrl-C at a chosen point of start-up: when the
#: module MODULE is looked up (argv[1]), or when a function named FUNCTION (argv[2]) starts
#: once ``polytask.cli.main`` runs. Issue 18's bug, deterministically: Ctrl-C in
#: ``typer.main.get_command`` (a traceback: it ran outside ``main``'s ``try``) and in the
#: import machinery's weak-reference callback ``cb`` (Python prints "Exception ignored",
#: drops the ``KeyboardInterrupt`` and the command carried on; a swallowed one is also what
#: left numpy half-imported for the ``RecursionError`` seen ~0.6 s into ``polytask list``).
INTERRUPT_AT = """
import os, runpy, signal, sys

MODULE, FUNCTION = sys.argv[1:3]


def interrupt():
    sys.setprofile(None)
    os.kill(os.getpid(), signal.SIGINT)


class Importing:
    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            interrupt()
        return None


armed = False


def calling(frame, event, arg):
    global armed
    if event != "call":
        return
    if frame.f_code.co_name == "main" and frame.f_code.co_filename.endswith("cli.py"):
        armed = True
    elif armed and frame.f_code.co_name == FUNCTION:
        interrupt()


sys.meta_path.insert(0, Importing())
if FUNCTION:
    sys.setprofile(calling)
sys.argv = ["polytask", "train", "--help"]
runpy.run_module("polytask", run_name="__main__", alter_sys=True)
"""


def _ctrl_c_as_a_terminal_gives_it() -> None:
    """In the child, before Python starts: Ctrl-C handled as a terminal's user has it. A test
    run started in the background by a shell without job control inherits SIGINT ignored,
    which the command line rightly keeps ignored (a background job); these tests are about
    the foreground case."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("module", "function"),
    [("typer", ""), ("numpy", ""), ("", "get_command"), ("", "cb")],
    ids=["importing typer", "importing numpy", "in get_command", "in an import callback"],
)
def test_ctrl_c_while_starting_is_one_line(module: str, function: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT, module, function],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=_ctrl_c_as_a_terminal_gives_it,
    )
    assert (done.returncode, done.stderr, done.stdout) == (130, "error: interrupted\n", "")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: (arguments after the interpreter, CPU seconds of the child at which Ctrl-C comes). CPU
#: seconds, not wall time, so that each lands at the same point of start-up however loaded the
#: machine is: ``train --help`` builds the command line in its first ~0.5 s, then imports
#: torch, numpy, scipy and the studies (~3 s of CPU on the CI machine); ``list`` through the
#: console script reads the catalogue (or, with the example plug-in installed, imports torch).
#: All start after ``import polytask`` (~0.15 s), before which Python's own handler answers.
CTRL_C_POINTS = [
    (["-m", "polytask", "train", "--help"], 0.3),
    (["-m", "polytask", "train", "--help"], 0.7),
    (["-m", "polytask", "train", "--help"], 1.2),
    (["-m", "polytask", "list"], 0.25),
    (["<script>", "list"], 0.5),
]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_ctrl_c_at_any_point_of_start_up_is_one_line() -> None:
    script = Path(sys.executable).with_name("polytask")  # the console script
    processes = [
        subprocess.Popen(
            [str(script), *args[1:]] if args[0] == "<script>" else [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_ctrl_c_as_a_terminal_gives_it,
        )
        for args, _ in CTRL_C_POINTS
    ]
    sent = [False] * len(processes)
    deadline = time.monotonic() + 120
    # All at once (a few seconds on two cores): each gets Ctrl-C when its CPU time says so.
    while time.monotonic() < deadline and not all(
        s or p.poll() is not None for s, p in zip(sent, processes, strict=True)
    ):
        for i, (process, (_, at)) in enumerate(zip(processes, CTRL_C_POINTS, strict=True)):
            if sent[i] or process.poll() is not None:
                continue
            try:
                if _cpu_seconds(process.pid) >= at:
                    process.send_signal(signal.SIGINT)
                    sent[i] = True
            except (FileNotFoundError, ProcessLookupError):  # pragma: no cover - just ended
                pass
        time.sleep(0.005)
    outcomes = [(p.communicate(timeout=60)[1], p.returncode) for p in processes]
    for (args, at), was_sent, (err, code) in zip(CTRL_C_POINTS, sent, outcomes, strict=True):
        if not was_sent:  # finished first (``list`` from the catalogue takes ~0.3 s of CPU)
            assert code == 0, (args, err)
            continue
        # A shell reports 130 for both: the exit status 130, or death by SIGINT itself.
        # Either way exactly one line, no traceback.
        assert code in (130, -signal.SIGINT), (args, at, code, err)
        assert err == "error: interrupted\n", (args, at, err)
    # ``train --help`` imports torch and the studies first: every one of its points is reached.
    assert all(s for s, (args, _) in zip(sent, CTRL_C_POINTS, strict=True) if "train" in args)


def test_console_script_enters_through_the_quiet_import() -> None:
    text = (SRC.parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert 'polytask = "polytask.__main__:main"' in text
