"""``polytask report DIR``: one self-contained HTML page (and its PNG figures) for a directory.

DIR is a run directory (``metrics.jsonl``: learning curves, task weights, gradient norms,
gradient conflict, dominance), a compare directory (``compare.json``: per-task metrics and Δm
with 95% confidence intervals, data-efficiency curves, verdicts), an affinity directory
(``affinity.json``: affinity and gradient-cosine heat maps, suggested grouping) or a Pareto
directory (``pareto.json``: the front with dominated points greyed, the trade-off against the
preference, hypervolume and training cost per method). The page goes
to ``DIR/report/index.html`` next to the PNGs; both are written atomically, replacing an earlier
report as a whole.

Needs matplotlib (``pip install 'polytask[report]'``); nothing imports it until a report is
made, so ``import polytask`` stays light.
"""

from __future__ import annotations

from pathlib import Path

from polytask.errors import PolytaskError
from polytask.report import sections
from polytask.report.figures import require_matplotlib
from polytask.report.html import render_page
from polytask.report.loading import detect, load_affinity, load_compare, load_pareto, load_run
from polytask.state_io import atomic_directory, atomic_write_text

__all__ = ["check_report_folder", "report"]

INDEX = "index.html"
# What render_page writes into every page's head: how an earlier report is recognised.
_GENERATOR = b'<meta name="generator" content="polytask '


def check_report_folder(target: Path) -> None:
    """Refuse (one line) to replace ``target`` unless it is absent, empty, or an earlier
    report: nothing but polytask's ``index.html`` and PNG figures. A report replaces its
    folder as a whole, so ``--out .`` or a folder of the user's files would be deleted."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise PolytaskError(f"report folder '{target}' exists and is not a directory")
    entries = sorted(target.iterdir())
    if not entries:
        return
    foreign = [p.name for p in entries if not _written_by_report(p)]
    if foreign:
        raise PolytaskError(
            f"report folder '{target}' holds files polytask did not write (e.g. '{foreign[0]}'); "
            "give --out an empty or new folder, or a folder holding an earlier report"
        )


def _written_by_report(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix == ".png":
        return True
    if path.name != INDEX:
        return False
    with path.open("rb") as handle:
        return _GENERATOR in handle.read(4096)


def report(path: str | Path, *, out: str | Path | None = None) -> Path:
    """Write the report of run, compare, affinity or Pareto directory ``path``; return the
    page's path.

    ``out`` is the folder that receives ``index.html`` and the PNG files (default
    ``path/report``); it is replaced as a whole, so no figure of an earlier report lingers.
    """
    directory = Path(path)
    kind = detect(directory)
    require_matplotlib()
    if kind == "run":
        parts = sections.run_sections(load_run(directory))
        title = "Training run"
    elif kind == "compare":
        parts = sections.compare_sections(directory, load_compare(directory))
        title = "Multi-task vs single-task comparison"
    elif kind == "pareto":
        parts = sections.pareto_sections(directory, load_pareto(directory))
        title = "Pareto front of the task trade-off"
    else:
        parts = sections.affinity_sections(directory, load_affinity(directory))
        title = "Task affinity"
    name = directory.resolve().name
    page = render_page(
        f"polytask report: {title.lower()} — {name}",
        [f"{title} in {directory.resolve()}"],
        parts,
    )
    target = Path(out) if out is not None else directory / "report"
    check_report_folder(target)
    with atomic_directory(target) as staging:
        for section in parts:
            for figure in section.figures:
                (staging / f"{figure.name}.png").write_bytes(figure.png)
        atomic_write_text(staging / INDEX, page)
    return target / INDEX
