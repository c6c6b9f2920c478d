"""Tables built from files rather than read from one: a folder of files, or a text file with
one example per line.

* **Folder** (``data.format = "folder"``): every file under the folder matching ``pattern``
  becomes a row; its path (relative to the folder) goes in ``path_column``, and the named
  groups of ``regex``, matched against that relative path, become columns. So
  ``(?P<digit>\\d)_(?P<speaker>[a-z]+)_(?P<take>\\d+)\\.wav`` reads labels from file names,
  and ``(?P<label>[^/]+)/.+`` reads a class-per-subfolder layout.
* **Lines** (``data.format = "lines"``): each non-empty line is split on ``separator`` into
  ``columns`` (the last column takes the rest of the line, so texts may hold the separator).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from polytask.errors import DataError


def scan_folder(
    folder: Path, pattern: str = "**/*", regex: str | None = None, path_column: str = "path"
) -> pd.DataFrame:
    """One row per matching file, sorted by path, with the regex's named groups as columns."""
    if not folder.is_dir():
        raise DataError(f"data folder '{folder}' not found")
    compiled = _compile(regex) if regex is not None else None
    rows: list[dict[str, str]] = []
    for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        row = {path_column: rel}
        if compiled is not None:
            match = compiled.fullmatch(rel)
            if match is None:
                raise DataError(
                    f"data folder '{folder}': file '{rel}' does not match data.regex "
                    f"{regex!r}; narrow data.pattern or widen the regex"
                )
            row.update({k: v for k, v in match.groupdict().items() if v is not None})
        rows.append(row)
    if not rows:
        raise DataError(f"data folder '{folder}': no file matches data.pattern {pattern!r}")
    frame: pd.DataFrame = pd.DataFrame(rows)
    return frame


def _compile(regex: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise DataError(f"data.regex {regex!r} is not a valid regular expression: {exc}") from None
    if not compiled.groupindex:
        raise DataError(f"data.regex {regex!r} has no named group (?P<name>...) to read")
    return compiled


def read_lines(
    path: Path, columns: list[str], separator: str = "\t", encoding: str = "utf-8"
) -> pd.DataFrame:
    """One row per non-empty line, split on ``separator`` into ``columns``."""
    if not path.is_file():
        raise DataError(f"data file '{path}' not found")
    if not columns:
        raise DataError(f"data file '{path}': data.columns must name the fields of a line")
    try:
        text = path.read_bytes().decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise DataError(f"data file '{path}': cannot decode it as {encoding}: {exc}") from None
    rows: list[list[str]] = []
    # Split on "\n" only: str.splitlines would also break on characters such as NEL (U+0085)
    # that real text files carry inside a line.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split(separator, len(columns) - 1)
        if len(fields) != len(columns):
            raise DataError(
                f"data file '{path}', line {number}: {len(fields)} field(s), expected "
                f"{len(columns)} ({', '.join(columns)}) separated by {separator!r}"
            )
        rows.append(fields)
    if not rows:
        raise DataError(f"data file '{path}': no non-empty line")
    frame: pd.DataFrame = pd.DataFrame(rows, columns=columns)
    return frame
