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

from polytask.report import sections
from polytask.report.figures import require_matplotlib
from polytask.report.html import render_page
from polytask.report.loading import detect, load_affinity, load_compare, load_pareto, load_run
from polytask.state_io import atomic_directory, atomic_write_text

__all__ = ["report"]

INDEX = "index.html"


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
    with atomic_directory(target) as staging:
        for section in parts:
            for figure in section.figures:
                (staging / f"{figure.name}.png").write_bytes(figure.png)
        atomic_write_text(staging / INDEX, page)
    return target / INDEX
