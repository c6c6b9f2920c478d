"""The report page: sections of figures, tables and notes rendered as one self-contained HTML file.

Figures are embedded as base64 ``data:`` URIs and the style sheet is inline, so the page shows
everything when opened on its own (mailed, attached to an issue, copied off a server) and loads
nothing from anywhere: no scripts, fonts or remote files.
"""

from __future__ import annotations

import base64
import html
import struct
from dataclasses import dataclass, field

from polytask._version import __version__


@dataclass
class Figure:
    """A rendered figure: ``name`` is its file stem (unique within the report)."""

    name: str
    title: str
    caption: str
    png: bytes

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, read from the PNG header (IHDR chunk)."""
        width, height = struct.unpack(">II", self.png[16:24])
        return int(width), int(height)


#: A table cell: plain text, or (text, CSS class) to colour it (e.g. a verdict).
Cell = str | tuple[str, str]


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[Cell]]


@dataclass
class Note:
    """A sentence of explanation (or why a figure is absent) shown in the flow of a section."""

    text: str
    missing: bool = False


@dataclass
class Section:
    title: str
    items: list[Figure | Table | Note] = field(default_factory=list)

    @property
    def figures(self) -> list[Figure]:
        return [item for item in self.items if isinstance(item, Figure)]


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; color: #1d2329; background: #fafbfc; line-height: 1.45; }
main { max-width: 1000px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de;
     padding-bottom: 0.25rem; }
.meta { color: #57606a; font-size: 0.9rem; margin: 0.15rem 0; }
figure { margin: 1.2rem 0; background: #fff; border: 1px solid #d0d7de; border-radius: 6px;
         padding: 0.75rem; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 0.9rem; color: #3d444d; margin-top: 0.5rem; }
.table-wrap { max-width: 100%; overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; margin: 0; font-size: 0.88rem; background: #fff; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.35rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.55rem; text-align: right; }
th { background: #f0f3f6; }
td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; }
.helps { background: #dafbe1; }
.hurts { background: #ffebe9; }
.neutral { background: #f6f8fa; }
.note { font-size: 0.92rem; }
.note.missing { color: #7d4e00; background: #fff8c5; border: 1px solid #eed888;
                padding: 0.4rem 0.6rem; border-radius: 4px; }
""".strip()


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _figure_html(fig: Figure, number: int) -> str:
    width, height = fig.size
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure id="fig-{_esc(fig.name)}">'
        f'<img src="data:image/png;base64,{data}" alt="{_esc(fig.title)}" '
        f'width="{width}" height="{height}" data-file="{_esc(fig.name)}.png">'
        f"<figcaption><strong>Figure {number}. {_esc(fig.title)}.</strong> "
        f"{_esc(fig.caption)}</figcaption></figure>"
    )


def _cell_html(cell: Cell, tag: str) -> str:
    text, css = cell if isinstance(cell, tuple) else (cell, "")
    attr = f' class="{_esc(css)}"' if css else ""
    return f"<{tag}{attr}>{_esc(text)}</{tag}>"


def _table_html(table: Table) -> str:
    head = "".join(_cell_html(h, "th") for h in table.header)
    body = "".join(
        "<tr>" + "".join(_cell_html(c, "td") for c in row) + "</tr>" for row in table.rows
    )
    # Many tasks make wide tables: the wrapper scrolls sideways inside the page's column
    # instead of pushing the table (and the page) past the window.
    return (
        f'<div class="table-wrap"><table><caption>{_esc(table.caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def render_page(title: str, meta: list[str], sections: list[Section]) -> str:
    """The whole page; figures are numbered in order of appearance."""
    n_figures = sum(len(s.figures) for s in sections)
    parts: list[str] = []
    number = 0
    for section in sections:
        parts.append(f"<section><h2>{_esc(section.title)}</h2>")
        for item in section.items:
            if isinstance(item, Figure):
                number += 1
                parts.append(_figure_html(item, number))
            elif isinstance(item, Table):
                parts.append(_table_html(item))
            else:
                css = "note missing" if item.missing else "note"
                parts.append(f'<p class="{css}">{_esc(item.text)}</p>')
        parts.append("</section>")
    meta_html = "".join(f'<p class="meta">{_esc(line)}</p>' for line in meta)
    count = f"{n_figures} figure{'s' if n_figures != 1 else ''}"
    # The empty data: icon keeps the browser from asking for /favicon.ico (a failed request).
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="polytask {_esc(__version__)}">'
        '<link rel="icon" href="data:,">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
        f'<body><main data-figures="{n_figures}"><h1>{_esc(title)}</h1>{meta_html}'
        f'<p class="meta" id="figure-count">{count}</p>'
        + "".join(parts)
        + "</main></body></html>\n"
    )
