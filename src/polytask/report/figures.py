"""Plotting primitives for the report (matplotlib, Agg renderer, PNG bytes out).

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure registry, no GUI backend selection, nothing left open between reports, and a
report can be made from a thread or a server process. The data-to-plot decisions (which series,
what is missing) live in :mod:`polytask.report.sections`; this module only draws.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from polytask.errors import PolytaskError
from polytask.report.html import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure as MplFigure

DPI = 100
WIDTH = 9.0  # inches: 900 px wide at DPI, about the width of the page's column


# matplotlib is the optional ``report`` extra: it is imported when a report is drawn, inside
# the functions below, so that importing polytask never needs it.
def require_matplotlib() -> None:
    """A one-line error naming the extra when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (optional extra, see above)
    except ModuleNotFoundError as exc:
        raise PolytaskError(
            "report: matplotlib is not installed; install it with pip install 'polytask[report]'"
        ) from exc


def _colormap(name: str) -> Colormap:
    import matplotlib  # optional extra, see require_matplotlib

    cmap: Colormap = matplotlib.colormaps[name]
    return cmap


@functools.cache
def _palette() -> list[str]:
    """tab10, then tab20's lighter shades: 20 distinct colours before any repeats."""
    from matplotlib.colors import to_hex  # optional extra, see require_matplotlib

    tab10, tab20 = _colormap("tab10").colors, _colormap("tab20").colors  # type: ignore[attr-defined]
    return [to_hex(c) for c in [*tab10, *tab20[1::2]]]


def _figure(width: float, height: float) -> MplFigure:
    """A figure with the Agg canvas (never pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional extra
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def colors(names: Sequence[str]) -> dict[str, str]:
    """One colour per name, stable across the figures of a report."""
    palette = _palette()
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


@dataclass
class Series:
    """A line; with ``low``/``high`` it is drawn with a shaded band (a CI, a min–max range)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str | None = None
    style: str = "-"
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    width: float = 1.6


@dataclass
class Panel:
    title: str
    series: list[Series]
    ylabel: str = ""
    xlabel: str = "epoch"
    #: x positions of vertical markers (e.g. the best epoch), with their legend label.
    vlines: list[tuple[float, str]] = field(default_factory=list)
    hline: float | None = None
    logy: bool = False
    logx: bool = False
    ylim: tuple[float, float] | None = None
    #: Integer ticks on x (epochs), or the exact x values (training fractions).
    xticks: Sequence[float] | None = None


@dataclass
class Points:
    """Categorical estimates with error bars: one point per category (configuration)."""

    title: str
    categories: list[str]
    mean: list[float]
    low: list[float]
    high: list[float]
    colors: list[str]
    ylabel: str = ""
    hline: float | None = None


def _grid(n: int, ncols: int, row_height: float) -> tuple[MplFigure, list[Axes]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = _figure(WIDTH, row_height * nrows + 0.6)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _png(fig: MplFigure) -> bytes:
    buf = io.BytesIO()
    # No "Software" text chunk: the same data gives the same bytes across matplotlib patches.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _finite(values: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray([math.nan if v is None else v for v in values], dtype=np.float64)


def _draw_panel(ax: Axes, panel: Panel, legend: bool) -> None:
    for s in panel.series:
        x, y = _finite(s.x), _finite(s.y)
        # Markers keep a one- or two-epoch curve visible (a line needs two finite points).
        marker = "o" if len(x) <= 25 else None
        ax.plot(
            x,
            y,
            s.style,
            color=s.color,
            label=s.label,
            marker=marker,
            markersize=3.5,
            linewidth=s.width,
        )
        if s.low is not None and s.high is not None:
            ax.fill_between(x, _finite(s.low), _finite(s.high), color=s.color, alpha=0.18, lw=0)
    for x_pos, label in panel.vlines:
        ax.axvline(x_pos, color="#57606a", linestyle=":", linewidth=1.2, label=label)
    if panel.hline is not None:
        ax.axhline(panel.hline, color="#57606a", linewidth=0.9)
    if panel.logy:
        ax.set_yscale("log")
    if panel.logx:
        ax.set_xscale("log")
    if panel.xticks is not None:
        ax.set_xticks(list(panel.xticks), [f"{t:g}" for t in panel.xticks])
        ax.minorticks_off()
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel, fontsize=9)
    ax.set_ylabel(panel.ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=7.5, loc="best", framealpha=0.85)


def line_panels(
    name: str,
    title: str,
    caption: str,
    panels: list[Panel],
    *,
    ncols: int = 3,
    row_height: float = 2.7,
    shared_legend: bool = False,
) -> Figure:
    """A grid of line plots. With ``shared_legend`` only the first panel carries a legend
    (the series are the same in every panel)."""
    fig, axes = _grid(len(panels), ncols, row_height if len(panels) > 1 else 4.2)
    for i, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        _draw_panel(ax, panel, legend=not shared_legend or i == 0)
    return Figure(name, title, caption, _png(fig))


def point_panels(
    name: str, title: str, caption: str, panels: list[Points], *, ncols: int = 3
) -> Figure:
    """Per-panel point estimates with asymmetric error bars, one point per category."""
    longest = max((len(c) for p in panels for c in p.categories), default=0)
    fig, axes = _grid(len(panels), ncols, 2.6 + 0.055 * longest)
    for ax, panel in zip(axes, panels, strict=True):
        x = np.arange(len(panel.categories))
        mean = _finite(panel.mean)
        # No CI (one seed) draws the point alone: a zero-length bar would claim certainty.
        low = np.nan_to_num(mean - _finite(panel.low), nan=0.0)
        high = np.nan_to_num(_finite(panel.high) - mean, nan=0.0)
        for i in range(len(x)):
            ax.errorbar(
                x[i],
                mean[i],
                yerr=[[low[i]], [high[i]]],
                fmt="o",
                color=panel.colors[i],
                capsize=4,
                markersize=6,
                elinewidth=1.6,
            )
        if panel.hline is not None:
            ax.axhline(panel.hline, color="#57606a", linewidth=0.9)
        ax.set_xticks(x, panel.categories, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(x) - 0.4)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    return Figure(name, title, caption, _png(fig))


def heatmap(
    name: str,
    title: str,
    caption: str,
    matrix: Sequence[Sequence[float | None]],
    labels: list[str],
    *,
    row_label: str = "task",
    col_label: str = "task",
    scale: float | None = None,
) -> Figure:
    """A task×task heat map on a diverging scale centred at 0 (red: negative, blue: positive),
    values printed in the cells while they stay legible.

    The colour range is ``±scale``; by default it is set by the off-diagonal entries, which are
    what a reader compares: a self-affinity on the diagonal (often 10-100× larger) would wash
    them all out to white. Cells beyond the range are drawn at the end colour.
    """
    k = len(labels)
    values = np.array([[math.nan if v is None else v for v in row] for row in matrix], float)
    if scale is None:
        off = values[~np.eye(k, dtype=bool) & np.isfinite(values)]
        pool = off if off.size else values[np.isfinite(values)]
        scale = float(np.abs(pool).max()) if pool.size else 1.0
    scale = scale if scale > 0 else 1.0
    side = min(max(3.6, 0.5 * k + 1.8), 8.0)
    fig = _figure(side + 1.0, side + 0.2)
    ax = fig.subplots()
    cmap = _colormap("RdBu")
    image = ax.imshow(values, cmap=cmap, vmin=-scale, vmax=scale)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_ylabel(row_label, fontsize=9)
    ax.set_xlabel(col_label, fontsize=9)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                text = "–" if not math.isfinite(v) else f"{v:.2g}"
                dark = math.isfinite(v) and abs(v) > 0.6 * scale
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7 if k > 6 else 8.5,
                    color="white" if dark else "#1d2329",
                )
    return Figure(name, title, caption, _png(fig))


def stacked_shares(
    name: str,
    title: str,
    caption: str,
    x: Sequence[float],
    shares: dict[str, Sequence[float]],
    palette: dict[str, str],
    ylabel: str,
) -> Figure:
    """Shares that sum to 1 per x (e.g. each task's part of the update), stacked."""
    fig = _figure(WIDTH, 3.8)
    ax = fig.subplots()
    names = list(shares)
    # An epoch without a measurement shows as a gap (0), not as a made-up share.
    ys = [np.nan_to_num(_finite(shares[n]), nan=0.0) for n in names]
    xs = _finite(x)
    if len(xs) == 1:
        # stackplot needs two x values to draw an area: show one epoch as a stacked bar.
        bottom = 0.0
        for n, y in zip(names, ys, strict=True):
            ax.bar(xs, y, bottom=bottom, color=palette[n], label=n, width=0.6)
            bottom += float(y[0])
    else:
        ax.stackplot(xs, *ys, labels=names, colors=[palette[n] for n in names], alpha=0.85)
        ax.set_xlim(float(xs[0]), float(xs[-1]))
    ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(True, alpha=0.3)
    return Figure(name, title, caption, _png(fig))


@dataclass
class PointSet:
    """Points in objective space: the non-dominated ones (``front``) in colour, joined in x
    order when ``line``; the dominated ones grey, so a reader sees at once which trade-offs
    another point beats."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    front: Sequence[bool]
    color: str
    line: bool = True
    marker: str = "o"


@dataclass
class ScatterPanel:
    title: str
    xlabel: str
    ylabel: str
    sets: list[PointSet]


_DOMINATED = "#b1b7bf"


def scatter_panels(
    name: str, title: str, caption: str, panels: list[ScatterPanel], *, ncols: int = 2
) -> Figure:
    """Point sets per panel (fronts in objective space, or their pairwise projections)."""
    fig, axes = _grid(len(panels), ncols, 4.2 if len(panels) > 1 else 5.2)
    for ax, panel in zip(axes, panels, strict=True):
        for s in panel.sets:
            x, y = _finite(s.x), _finite(s.y)
            front = np.asarray(s.front, dtype=bool)
            ax.scatter(x[~front], y[~front], color=_DOMINATED, marker=s.marker, s=26, zorder=2)
            if s.line and front.sum() > 1:
                order = np.argsort(x[front])
                ax.plot(x[front][order], y[front][order], "-", color=s.color, lw=1.4, zorder=3)
            ax.scatter(
                x[front], y[front], color=s.color, marker=s.marker, s=40, label=s.label, zorder=4
            )
        if any(not all(s.front) for s in panel.sets):
            ax.scatter([], [], color=_DOMINATED, s=26, label="dominated")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel, fontsize=9)
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7.5, loc="best", framealpha=0.85)
    return Figure(name, title, caption, _png(fig))
