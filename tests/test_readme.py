"""Every fenced code block of README.md runs, on small data (docs as tests; issue 21).

A README example once failed for the first newcomer who typed it in. Each block is one test,
its id the README line of its opening fence (``README.md:63:bash``); what each kind of block
runs, the markers and the workspace are described in tests/doc_blocks.py, shared with
tests/test_docs_blocks.py (the pages under docs/). This file holds the README's own tables: the
commands run as something cheaper (``SUBSTITUTES``) and those not run, with the reason
(``NOT_RUN``). No README block reads ``../shared/data`` today (tests/test_examples.py trains the
examples/ configs on it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from doc_blocks import (
    PREREQUISITES,
    Block,
    Prerequisites,
    Servers,
    Suite,
    check_block,
    commands,
    prerequisites,
    read_blocks,
    servers,
    template,
    workspace,
)

__all__ = [
    "prerequisites",
    "servers",
    "template",
    "workspace",
]  # the fixtures, read by pytest from here

pytestmark = pytest.mark.usefixtures("torch_single_thread")

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

BLOCKS = read_blocks()

SUITE = Suite(BLOCKS, not_run=NOT_RUN, substitutes=SUBSTITUTES)


@pytest.mark.parametrize("block", SUITE.params())
def test_readme_block(
    block: Block,
    workspace: Path,
    prerequisites: Prerequisites,
    servers: Servers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    check_block(block, SUITE, workspace, prerequisites, servers, capsys)


def test_tables_name_only_what_the_readme_has() -> None:
    """A stale entry would silently stop guarding a command the README no longer shows."""
    assert SUITE.stale() == []
    shown = SUITE.shown_commands()
    # The prerequisites are the README's own commands.
    assert PREREQUISITES["runs/patients"] in shown
    assert PREREQUISITES["runs/front"] in shown
    assert len(BLOCKS) >= 20  # the parser found the README's blocks, indented ones included


def test_block_parser_reads_markers_and_continuations(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n\n<!-- doctest: fragment of=a.toml data=census -->\n```toml\n[x]\n```\n\n"
        "- item\n\n  ```bash\n  polytask train a.toml \\\n      --out r   # note\n  # only\n"
        '  polytask list\n  curl -d \'{\n    "a": 1\n  }\'\n  # {"b": 2}\n  ```\n',
        encoding="utf-8",
    )
    toml_block, bash_block = read_blocks(doc)
    assert (toml_block.line, toml_block.lang, toml_block.text) == (4, "toml", "[x]\n")
    assert toml_block.marker == {"fragment": "", "of": "a.toml", "data": "census"}
    assert bash_block.line == 10
    assert commands(bash_block) == [
        (11, "polytask train a.toml --out r"),
        (14, "polytask list"),
        (15, "curl -d '{\n  \"a\": 1\n}'"),
    ]
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- doctest: fragmnet -->\n```toml\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown doctest marker word 'fragmnet'"):
        read_blocks(bad)
