"""Reading tables (CSV, Parquet, Excel ``.xlsx``) and checking that declared columns exist."""

from __future__ import annotations

import difflib
import gzip
import importlib.util
import lzma
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from polytask.errors import DataError

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_EXCEL_SUFFIXES = (".xlsx", ".xlsm")


def table_format(path: Path, declared: str = "auto") -> str:
    """``csv``, ``parquet`` or ``excel``, from ``declared`` or the file name."""
    if declared != "auto":
        return declared
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_EXCEL_SUFFIXES):
        return "excel"
    raise DataError(
        f"data file '{path}': cannot tell the format from its name; "
        "use .csv, .parquet or .xlsx, or set data.format"
    )


def read_excel(path: Path, na_values: Sequence[str] = ()) -> pd.DataFrame:
    """The first sheet of an ``.xlsx`` workbook through pandas and openpyxl (the ``excel``
    extra); a one-line :class:`DataError` naming the extra when openpyxl is not installed.
    Blank cells and ``na_values`` are missing, as in a CSV file."""
    if importlib.util.find_spec("openpyxl") is None:  # pandas' engine for .xlsx
        raise DataError(
            f"data file '{path}': reading .xlsx tables needs openpyxl, which is not installed; "
            "run: pip install 'polytask[excel]'"
        )
    try:
        frame: pd.DataFrame = pd.read_excel(
            path, sheet_name=0, engine="openpyxl", na_values=list(na_values)
        )
    except (zipfile.BadZipFile, KeyError, EOFError) as exc:
        # An .xlsx file is a zip archive of XML parts: a cut-off or renamed file fails here.
        raise DataError(
            f"data file '{path}': not a valid .xlsx workbook ({type(exc).__name__})"
        ) from None
    return frame


def _compression(path: Path) -> str:
    """The compression a table's name announces, as users call it."""
    names = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zip": "zip"}
    return names.get(path.suffix.lower(), "compressed data")


def read_table(
    path: str | Path, *, fmt: str = "auto", na_values: Sequence[str] = ()
) -> pd.DataFrame:
    """Read a CSV, Parquet or ``.xlsx`` file into a DataFrame; empty strings and
    ``na_values`` are missing."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file '{p}' not found")
    kind = table_format(p, fmt)
    try:
        if kind == "parquet":
            # One thread: on a small shared machine pyarrow's thread pool made reading 1M rows
            # 25x slower (benchmarks/results/prepare.md); a single thread is never far behind.
            df = pd.read_parquet(p, use_threads=False)
            if na_values:
                df = df.replace(list(na_values), pd.NA)
        elif kind == "excel":
            df = read_excel(p, na_values)
        else:
            sep = "\t" if p.name.lower().endswith(".tsv") else ","
            fast = None if na_values else _read_csv_arrow(p, sep)
            df = (
                fast
                if fast is not None
                else pd.read_csv(p, sep=sep, na_values=list(na_values), skipinitialspace=True)
            )
    except pd.errors.EmptyDataError:
        raise DataError(f"data file '{p}': the table is empty") from None
    except (EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, gzip.BadGzipFile):
        # A cut-off download: the decompressor runs out of input (EOFError, which is not an
        # OSError and would escape as a bare interrupt) or finds garbage.
        raise DataError(f"file '{p}' is truncated or not valid {_compression(p)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"data file '{p}': cannot read it as {kind}: {first}") from None
    if len(df) == 0:
        raise DataError(f"data file '{p}': the table has no rows")
    df.columns = [str(c) for c in df.columns]
    return df


#: pandas' default missing-value markers (``read_csv``'s ``keep_default_na``), pinned here for
#: pyarrow; ``tests/test_data_loading.py`` checks them against pandas' own list.
PANDAS_NA_VALUES = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)

#: A text cell pandas could read otherwise than pyarrow: one starting with a blank (which
#: ``skipinitialspace`` removes) or like a number (a column of numbers and text may come out
#: of pandas' chunked parser with some cells as floats).
_NOT_PLAIN_TEXT = r"(?i)^(\s|[-+]?(\d|\.\d|inf|nan))"
#: Integers beyond this are rounded when pandas reads them as floats (beside a missing cell).
_EXACT_INT = 2**53


def _read_csv_arrow(path: Path, sep: str) -> pd.DataFrame | None:
    """The CSV file as ``pd.read_csv(path, sep=sep, skipinitialspace=True)`` reads it, parsed
    by pyarrow (faster, and without pandas' parser buffers), or None when the file holds
    anything for which the two might differ, so that pandas reads it as before: compressed
    files, a header with an empty, blank-led or repeated name, rows of uneven length, any
    cell pyarrow cannot parse, columns typed other than int64, float64 or text (booleans,
    dates), hexadecimal integers, infinities, numbers beyond the int64 range, integers beyond
    2**53 beside a missing cell, whole-number float columns without a missing cell (pandas
    may type them int64), and text cells starting with a blank or like a number. The frame's
    columns then have pandas' types and values, bit for bit."""
    if not path.name.lower().endswith((".csv", ".tsv", ".txt")):
        return None
    parse = pacsv.ParseOptions(delimiter=sep)
    threads = pacsv.ReadOptions(use_threads=False)  # see read_table's Parquet branch
    na = pacsv.ConvertOptions(
        null_values=list(PANDAS_NA_VALUES),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    try:
        table = pacsv.read_csv(path, read_options=threads, parse_options=parse, convert_options=na)
    except (pa.ArrowException, OSError, ValueError):
        return None
    names = table.column_names
    if (
        table.num_rows == 0
        or len(set(names)) != len(names)
        or any(not n or n[0].isspace() for n in names)
    ):
        return None
    columns = []
    integers = []
    for name, column in zip(names, table.columns, strict=True):
        kind = column.type
        if pa.types.is_null(kind):
            column = column.cast(pa.float64())  # pandas: an all-missing column of floats
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            if pc.any(pc.match_substring_regex(pc.unique(column), _NOT_PLAIN_TEXT)).as_py():
                return None
        elif pa.types.is_int64(kind):
            integers.append(name)
            if column.null_count and _largest(column) > _EXACT_INT:
                return None
        elif pa.types.is_float64(kind):
            if _largest(column) >= 2.0**63 or (column.null_count == 0 and _whole(column)):
                return None
        else:
            return None
        columns.append(column)
    del table
    if integers and _hexadecimal(path, parse, na, integers):
        return None
    frame: pd.DataFrame = pa.table(columns, names=names).to_pandas(
        split_blocks=True, self_destruct=True
    )
    return frame


def _largest(column: pa.ChunkedArray) -> float:
    """The largest magnitude in a numeric column (inf for an infinity, 0 when empty)."""
    bounds = pc.min_max(column).as_py()
    return float(max(abs(bounds["min"] or 0), abs(bounds["max"] or 0)))


def _whole(column: pa.ChunkedArray) -> bool:
    values = column.to_numpy()
    return bool(np.all(values == np.trunc(values)))


def _hexadecimal(
    path: Path, parse: pacsv.ParseOptions, na: pacsv.ConvertOptions, names: list[str]
) -> bool:
    """Whether an integer column holds a hexadecimal cell (``0x10``: pyarrow reads it as 16,
    pandas as text): those columns read again as text."""
    text = pacsv.ConvertOptions(
        null_values=na.null_values,
        strings_can_be_null=True,
        include_columns=names,
        column_types=dict.fromkeys(names, pa.string()),
    )
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=parse,
        convert_options=text,
    )
    return any(
        pc.any(pc.match_substring(pc.unique(c), "x", ignore_case=True)).as_py()
        for c in table.columns
    )


def require_columns(df: pd.DataFrame, columns: Iterable[str], source: str, role: str) -> None:
    """Fail with the closest existing column name when a declared column is absent."""
    present = set(df.columns)
    for col in columns:
        if col not in present:
            close = difflib.get_close_matches(col, list(df.columns), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{source}: {role} column '{col}' not found{hint}")
