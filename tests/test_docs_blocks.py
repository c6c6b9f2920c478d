"""Every fenced code block of the documentation pages (docs/*.md) runs, on small data (docs as
tests; issue 21).

The machinery is tests/doc_blocks.py, shared with tests/test_readme.py: each block is one test,
its id the page and line of its opening fence (``docs/deploy.md:10:bash``). The pages start
where the README leaves the reader (``runs/patients``, the README's first training run, and
its ``patients.toml``), so the README's configs are in the workspace too. docs/config.md is
generated from the schemas and checked by tests/test_config_reference.py, not here.

This file holds the pages' own tables: commands run as something cheaper or not run (with the
reason), blocks that cannot run here (a cluster's job script), and configs loaded but not
trained.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from doc_blocks import (
    BASES,
    ROOT,
    Block,
    Prerequisites,
    Servers,
    Suite,
    check_block,
    check_copy,
    check_source,
    commands,
    parse_only,
    prerequisites,
    read_blocks,
    servers,
    shown_outputs,
    template,
    texts_table,
    workspace,
)
from polytask.data.synthetic import make_mmoe_synthetic
from test_fusion import write_lesions

__all__ = [
    "prerequisites",
    "servers",
    "template",
    "workspace",
]  # the fixtures, read by pytest from here

pytestmark = pytest.mark.usefixtures("torch_single_thread")

DOCS = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "config.md")

_ONE_PROCESS = (
    "one process instead of torchrun's 4: a run over W processes computes what one process "
    "computes (docs/distributed.md, the rule; tests/test_distributed.py checks it on 2)"
)

#: Commands run instead of a page's command, and why.
SUBSTITUTES: dict[str, tuple[str, str]] = {
    "torchrun --nproc-per-node 4 -m polytask train run.toml -o runs/dp": (
        "polytask train run.toml -o runs/dp",
        _ONE_PROCESS,
    ),
    "torchrun --nproc-per-node 4 -m polytask finetune BASE run.toml -o runs/ft": (
        "polytask finetune runs/patients run.toml -o runs/ft",
        _ONE_PROCESS + "; BASE is the README's runs/patients",
    ),
    "torchrun --nproc-per-node 4 -m polytask distill run.toml -o runs/student": (
        "polytask distill run.toml -o runs/student --teacher runs/patients",
        _ONE_PROCESS + "; the teacher (a [distill] section in the page's run.toml) is the "
        "README's runs/patients",
    ),
    ".venv/bin/polytask list": (
        "polytask list",
        "the venv's polytask is the one this test runs in",
    ),
}

#: What a command prints, as the page says (checked on the substitute's output).
SHOWS: dict[str, tuple[str, ...]] = {
    ".venv/bin/polytask list": ("inverse_loss", "residual_mlp", "poisson", "polytask-example"),
}

_RAY = (
    "needs a running Ray cluster at that address; tests/test_study_backends.py runs the Ray "
    "backend on a two-node cluster on loopback"
)

#: Commands not run here, and why (a polytask command is still parsed: its options exist).
_DETECTION = (
    "minutes on the mnist_detection canvases; tests/test_export_detection.py and "
    "tests/test_detection.py export and distil a small detection model"
)
NOT_RUN: dict[str, str] = {
    "pip install 'polytask[serve]'": "the serve extra is installed in the venv this test runs in",
    ".venv/bin/pip install -e tests/plugins/polytask_example_plugin": (
        "`make install` installs it; tests/test_plugins.py fails under CI when it is missing"
    ),
    "polytask compare run.toml --out cmp --backend ray --address HEAD_IP:6379 --cpus-per-run 4 "
    "--gpus-per-run 1": _RAY,
    "polytask pareto run.toml --out front --backend ray --address auto": _RAY,
    "polytask affinity run.toml --out aff --pair-search --backend ray --address HEAD_IP:6379": (
        _RAY
    ),
    # docs/detection.md: the 4,500 canvases of mnist_detection take minutes to train, export
    # and distil on 2 cores (11 minutes when this test ran them); the toml block above them
    # trains the config, and the same steps run on small images in tests/test_detection.py.
    "polytask train digits.toml -o runs/digits": _DETECTION,
    "polytask export runs/digits -o digits.onnx": _DETECTION,
    "polytask distill digits.toml --teacher runs/digits -o runs/student "
    "--set 'model.encoder.widths=[4,8,16]'": _DETECTION,
}

#: Blocks not run here, by (page, one of the block's lines), and why.
SKIPPED: dict[tuple[str, str], str] = {
    ("docs/distributed.md", "# machine 0 (10.0.0.1)                         # machine 1"): (
        "two machines, side by side; tests/test_distributed_netns.py runs --nnodes 2 across "
        "two network namespaces"
    ),
    ("docs/distributed.md", "#!/bin/bash"): (
        "a Slurm batch script (sbatch, srun, 2 nodes of 8 GPUs); the torchrun it launches is "
        "the two-machine command above"
    ),
    ("docs/distributed.md", "apiVersion: kubeflow.org/v1"): (
        "a Kubeflow PyTorchJob manifest for a Kubernetes cluster; its pods run the "
        "two-machine torchrun command above"
    ),
    (
        "docs/distributed.md",
        "ray status --address HEAD_IP:6379                           # "
        "the nodes and their resources",
    ): (
        "starts a Ray cluster's head and worker nodes; tests/test_study_backends.py starts a "
        "two-node cluster on loopback"
    ),
}

#: TOML blocks loaded (strictly) but not trained here, and why.
LOAD_ONLY: dict[tuple[str, str], str] = {
    ("docs/backbones.md", 'name = "timm"'): (
        "timm needs torchvision built for this torch, which cannot be installed beside the "
        "CPU-only torch here, and resnet18's weights are a download; tests/test_backbones.py "
        "tests the adapter against a stand-in timm, and with the real one where it imports"
    ),
}

_TEXTS_BASE = """
seed = 0
baselines = false

[data]
path = "texts.csv"

[data.split]
method = "random"
val = 0.2
test = 0.2

[[tasks]]
name = "positive"
kind = "binary"
target = "positive"

[[tasks]]
name = "long"
kind = "binary"
target = "long"

[train]
epochs = 1
batch_size = 16
progress = false
"""

#: The configs the pages name without showing: run.toml (docs/distributed.md) is the README's
#: patients.toml; texts.toml and images.toml are what docs/backbones.md's fragments go into.
DOC_BASES: dict[str, str] = {
    **BASES,
    "run.toml": "@patients.toml",
    "texts.toml": _TEXTS_BASE,
    "images.toml": _TEXTS_BASE.replace("texts.csv", "images.csv"),
}


def _write_doc_tables(ws: Path) -> None:
    """docs/extending.md's data.csv beside the plug-in's configs (the MMoE synthetic tasks, as
    tests/test_plugins.py writes it), and docs/backbones.md's short texts."""
    configs = ws / "tests" / "plugins" / "configs"
    configs.mkdir(parents=True)
    make_mmoe_synthetic(300, 0.9, n_features=16, seed=0).to_csv(configs / "data.csv", index=False)
    texts_table(120, 1).to_csv(ws / "texts.csv", index=False)
    write_lesions(ws)  # docs/fusion.md's scans and patient table


BLOCKS = [b for doc in DOCS for b in read_blocks(doc)]
README_BLOCKS = read_blocks()

SUITE = Suite(
    BLOCKS,
    not_run=NOT_RUN,
    substitutes=SUBSTITUTES,
    skipped=SKIPPED,
    load_only=LOAD_ONLY,
    shows=SHOWS,
    context=README_BLOCKS,
    bases=DOC_BASES,
    extra_files=_write_doc_tables,
)


@pytest.mark.parametrize("block", SUITE.params())
def test_docs_block(
    block: Block,
    workspace: Path,
    prerequisites: Prerequisites,
    servers: Servers,
    capsys: pytest.CaptureFixture[str],
) -> None:
    check_block(block, SUITE, workspace, prerequisites, servers, capsys)


def test_tables_name_only_what_the_pages_have() -> None:
    """A stale entry would silently stop guarding a command or block a page no longer shows."""
    assert SUITE.stale() == []
    assert {b.name for b in BLOCKS} == {
        "docs/architecture.md",
        "docs/backbones.md",
        "docs/deploy.md",
        "docs/detection.md",
        "docs/distributed.md",
        "docs/extending.md",
        "docs/fusion.md",
        "docs/language.md",
        "docs/molecules.md",
        "docs/parsing.md",
        "docs/tables.md",
    }
    assert len(BLOCKS) >= 26


def test_every_plugin_file_is_quoted_by_extending_md() -> None:
    """docs/extending.md walks through the whole example plug-in: each of its files and
    configs is one ``copy=`` block (which the block's test compares, verbatim)."""
    plugin = ROOT / "tests" / "plugins"
    files = [
        plugin / "polytask_example_plugin" / "pyproject.toml",
        *(plugin / "polytask_example_plugin" / "polytask_example_plugin").glob("*.py"),
        *(plugin / "configs").glob("*.toml"),
    ]
    quoted = [b.marker["copy"] for b in BLOCKS if "copy" in b.marker]
    assert sorted(quoted) == sorted(p.relative_to(ROOT).as_posix() for p in files)


def test_a_drifted_copy_and_a_missing_module_fail_naming_the_line(tmp_path: Path) -> None:
    """The two checks that compare a page with the repository can fail, and say where."""
    copied = ROOT / "tests" / "plugins" / "configs" / "poisson.toml"
    text = copied.read_text(encoding="utf-8").replace("epochs = 6", "epochs = 7")
    page = tmp_path / "page.md"
    page.write_text(
        f"<!-- doctest: copy={copied.relative_to(ROOT)} -->\n```toml\n{text}```\n\n"
        "<!-- doctest: source -->\n```\nrun/       build.py pipeline.py gone.py\n```\n",
        encoding="utf-8",
    )
    copy_block, source_block = read_blocks(page)
    line = 2 + text.splitlines().index("epochs = 7") + 1
    with pytest.raises(AssertionError, match=rf"page.md:{line}: .*'epochs = 7'.*'epochs = 6'"):
        check_copy(copy_block)
    with pytest.raises(AssertionError, match=r"names 'gone.py'.*looked in \., run"):
        check_source(source_block)


def test_a_command_not_run_is_still_parsed() -> None:
    """A Ray command is not run here, but an option it shows must exist."""
    parse_only(shlex.split("compare run.toml --out cmp --backend ray --cpus-per-run 4"), "here")
    with pytest.raises(AssertionError, match=r"here: .*No such option: --cpus-per-rnu"):
        parse_only(shlex.split("compare run.toml --backend ray --cpus-per-rnu 4"), "here")
    with pytest.raises(AssertionError, match="here: `polytask comprae`: no such command"):
        parse_only(["comprae", "run.toml"], "here")


def test_curl_lines_and_their_shown_output_are_read() -> None:
    """The deploy page's curl example: a JSON body over four lines is one command, and the
    comment after it is the output it shows."""
    (block,) = [b for b in BLOCKS if "server" in b.marker]
    (first, body), (second, _) = commands(block)
    assert body.startswith("curl -s localhost:8000/predict") and '"tasks": ["readmitted"]' in body
    assert second == first + 5
    assert shown_outputs(block) == {
        first: '{"predictions": [{"readmitted": "<30", "readmitted_proba": 0.62}]}'
    }
