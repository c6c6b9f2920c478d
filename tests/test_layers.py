"""The import rules of the layers (docs/architecture.md), on the installed source tree, and the
checker itself on small fabricated packages, so a broken rule cannot go unnoticed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import check_layers


def test_polytask_keeps_its_layers() -> None:
    problems = check_layers.violations(check_layers.build_graph())
    assert problems == []


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "polytask"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_an_upward_import_a_lazy_import_and_a_cycle_are_reported(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "data/__init__.py": "",
            "data/a.py": "from polytask.data import b\nfrom polytask.run import pipeline\n",
            "data/b.py": "import polytask.data.a\n\ndef f():\n    from polytask import errors\n",
            "run/__init__.py": "",
            "run/pipeline.py": "from polytask.data.a import x\n",
        },
    )
    problems = check_layers.violations(check_layers.build_graph(package))
    assert any("polytask.data.a:2: imports polytask.run.pipeline (run)" in p for p in problems)
    assert any(
        "polytask.data.b:4: imports polytask.errors inside a function" in p for p in problems
    )
    assert any("cycle between files: polytask.data.a -> polytask.data.b" in p for p in problems)
    assert len(problems) == 3
