"""Shared test helpers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pytest
import torch

from polytask import config_from_dict, run
from polytask.data.datasets import DATASETS, data_available, resolve_data_root
from polytask.errors import DataError
from polytask.run.pipeline import RunResult

# What polytask caches between runs (the plug-in listing of ``polytask list``) goes to a
# folder of this test session, not to the user's ~/.cache; child processes inherit it.
os.environ.setdefault("POLYTASK_CACHE_DIR", tempfile.mkdtemp(prefix="polytask-cache-"))


def _absent(message: str) -> NoReturn:
    # Locally a missing dataset is a reason to skip; in CI the data is provisioned, so a skip
    # would silently hide that the real-data tests never ran.
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_data(name: str) -> Path:
    """Return the data root holding ``name``, or skip (fail under ``CI=true``) if it is absent.

    ``name`` is a key of ``DATASETS`` or a path relative to the data root.
    """
    try:
        root = resolve_data_root()
    except DataError as exc:
        _absent(f"data for {name!r} not found: {exc}")
    if not data_available(name, root):
        info = DATASETS.get(name)
        relpaths = [f.relpath for f in info.files] if info is not None else [name]
        missing = next((root / rel for rel in relpaths if not (root / rel).exists()), root / name)
        _absent(f"data for {name!r} not found at {missing}; set POLYTASK_DATA")
    return root


@pytest.fixture(name="require_data", scope="session")
def require_data_fixture() -> Callable[[str], Path]:
    """The :func:`require_data` helper as a fixture, usable from fixtures of any scope."""
    return require_data


# -- CLI helpers: in-process runs of ``polytask`` and a small clinical table -------------------
# (used by test_cli.py and test_bad_input.py)


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class CliResult:
    """Exit code and captured output of one in-process ``polytask`` command."""

    code: int
    out: str
    err: str


def run_cli(*args: str | Path) -> CliResult:
    """Run ``polytask ARGS`` through :func:`polytask.cli.main` in this process.

    The CLI's consoles are swapped for plain 80-column ones, so rich wrapping (if a message were
    printed without ``soft_wrap``) shows up the same way on every machine.
    """
    from rich.console import Console

    from polytask import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["polytask", *map(str, args)])
        mp.setattr(cli, "out_console", Console(file=out, width=80, color_system=None))
        mp.setattr(cli, "err_console", Console(file=err, width=80, color_system=None))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return CliResult(code, _ANSI.sub("", out.getvalue()), _ANSI.sub("", err.getvalue()))


def clinical_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Patients with repeated stays: numeric and categorical features with gaps, a binary target
    ``readmitted`` (0/1, some blank), a regression target ``days`` and a ``patient`` id."""
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n).round(1)
    ward = rng.choice(["icu", "surgery", "medicine"], n)
    logit = 0.08 * (age - 60) + 1.5 * (ward == "icu") - 0.5
    readmitted = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int), dtype="Int64")
    days = 3 + 0.1 * (age - 60) + 2.0 * (ward == "icu") + rng.normal(0, 1, n)
    frame = pd.DataFrame(
        {
            "patient": [f"p{i:03d}" for i in rng.integers(0, n // 4, n)],
            "age": pd.Series(age).mask(rng.random(n) < 0.05),
            "bmi": rng.normal(27, 4, n).round(1),
            "ward": ward,
            "sex": pd.Series(rng.choice(["F", "M"], n)).mask(rng.random(n) < 0.05),
            "readmitted": readmitted.mask(rng.random(n) < 0.1),
            "days": days.round(2),
        }
    )
    return frame


def clinical_config(data: str = "train.csv", **top: Any) -> dict[str, Any]:
    """A raw run config (as read from TOML) for :func:`clinical_frame`: grouped by patient."""
    cfg: dict[str, Any] = {
        "seed": 0,
        "baselines": False,
        "data": {
            "path": data,
            "group": "patient",
            "id": "patient",
            "split": {"method": "group", "val": 0.2, "test": 0.2},
        },
        "tasks": [
            {"name": "risk", "kind": "binary", "target": "readmitted"},
            {"name": "stay", "kind": "regression", "target": "days"},
        ],
        "model": {"encoder": {"name": "mlp", "widths": [16]}},
        "train": {"epochs": 2, "batch_size": 64, "progress": False},
    }
    cfg.update(top)
    return cfg


def toml_text(table: dict[str, Any], prefix: str = "") -> str:
    """A TOML document for ``table`` (scalars, lists, sub-tables and arrays of tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [
        f"{k} = {value(v)}" for k, v in table.items() if not (isinstance(v, dict) or is_tables(v))
    ]
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            lines += ["", f"[{name}]", toml_text(v, f"{name}.")]
        elif is_tables(v):
            for item in v:
                lines += ["", f"[[{name}]]", toml_text(item, f"{name}.")]
    return "\n".join(lines).strip() + "\n"


@pytest.fixture(scope="module")
def torch_single_thread() -> Iterator[None]:
    """Run a module's tiny models on one thread: on 2 shared cores, intra-op threads of a
    16-unit MLP spend far longer waiting for each other than computing."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_raw(
    names: tuple[str, str] = ("value", "label"),
    *,
    balancer: str | None = None,
    widths: tuple[int, ...] = (64, 32),
    dropout: float = 0.0,
    head: tuple[int, ...] | None = None,
    seed: int = 0,
    **train: Any,
) -> dict[str, Any]:
    """Raw config of the two-task MMoE synthetic set (one regression, one binary task)."""
    model: dict[str, Any] = {"encoder": {"widths": list(widths), "dropout": dropout}}
    if head is not None:
        model["head"] = {"widths": list(head)}
    raw: dict[str, Any] = {
        "seed": seed,
        "baselines": False,
        "data": {"ignore": ["y2_raw"], "split": {"method": "random", "val": 0.15, "test": 0.15}},
        "tasks": [
            {"name": names[0], "kind": "regression", "target": "y_regression"},
            {"name": names[1], "kind": "binary", "target": "y_binary"},
        ],
        "model": model,
        "train": {"progress": False, **train},
    }
    if balancer is not None:
        raw["balancer"] = {"name": balancer}
    return raw


class _Interrupted(Exception):
    pass


def _stop_after_epoch_2(trainer: object, record: object) -> None:
    if getattr(record, "epoch", 0) == 2:
        raise _Interrupted


def run_interrupted_and_resumed(
    raw: dict[str, Any], frame: pd.DataFrame, tmp_path: Path
) -> tuple[RunResult, RunResult]:
    """Run ``raw`` straight through, and again interrupted after epoch 2 then resumed; assert
    the two final models are bit-identical and return both results."""
    full = run(config_from_dict(raw), frame=frame, out=tmp_path / "full", quiet=True)
    with pytest.raises(_Interrupted):
        run(
            config_from_dict(raw),
            frame=frame,
            out=tmp_path / "cut",
            quiet=True,
            callbacks=[_stop_after_epoch_2],
        )
    resumed = run(config_from_dict(raw), frame=frame, out=tmp_path / "cut", resume=True, quiet=True)
    a, b = full.predictor.model.state_dict(), resumed.predictor.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    return full, resumed


# -- the fuzz campaign's count (tests/fuzz_support.py) ------------------------------------------
FUZZ_FLOOR = 300  # generated cases issue 17 asks of every CI run


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Print the fuzz campaign's outcomes; in CI, fail a full run that generated too few."""
    from fuzz_support import TALLY

    if not TALLY:
        return
    total = sum(TALLY.values())
    parts = ", ".join(f"{key} {count}" for key, count in sorted(TALLY.items()))
    terminalreporter.write_line(f"fuzz campaign: {total} generated cases ({parts})")
    report = os.environ.get("POLYTASK_FUZZ_REPORT")
    if report:
        Path(report).write_text(json.dumps(dict(TALLY), indent=2) + "\n", encoding="utf-8")
    complete = not config.option.keyword and not config.option.markexpr and not config.args[1:]
    if os.environ.get("CI") == "true" and complete and total < FUZZ_FLOOR:
        terminalreporter.write_line(f"error: fewer than {FUZZ_FLOOR} fuzz cases ran in CI")
        terminalreporter._session.exitstatus = 1


def save_tiny_bert(directory: Path, words: list[str], layers: int, max_positions: int) -> None:
    """A 32-wide BERT with ``layers`` layers, random weights (seed 0) and a WordPiece
    tokenizer over ``words``, saved with ``save_pretrained`` into ``directory`` (made here):
    the files any downloaded Hugging Face encoder has, at test size (skips without the text
    extra)."""
    transformers = pytest.importorskip("transformers")
    import torch

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    directory.mkdir(parents=True, exist_ok=True)
    transformers.BertTokenizer(vocab=vocab).save_pretrained(str(directory))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(directory))
