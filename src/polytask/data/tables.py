"""Reading tables (CSV, Parquet, Excel ``.xlsx``, CoNLL-U treebanks) and checking that
declared columns exist.

:func:`read_table` gives the pandas frame of a file. :func:`read_arrow` gives some of its
columns as that frame and others as Arrow columns holding the same values, for
``prepare_data`` to encode without a frame of the whole table; both read CSV with pyarrow
where pyarrow reads it as pandas does, and leave every other file to pandas."""

from __future__ import annotations

import difflib
import functools
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
import pyarrow.parquet as pq

from polytask.data.conllu import is_conllu, read_conllu
from polytask.errors import DataError

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_EXCEL_SUFFIXES = (".xlsx", ".xlsm")


def table_format(path: Path, declared: str = "auto") -> str:
    """``csv``, ``parquet``, ``excel`` or ``conllu``, from ``declared`` or the file name."""
    if declared != "auto":
        return declared
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_EXCEL_SUFFIXES):
        return "excel"
    if is_conllu(path):
        return "conllu"
    raise DataError(
        f"data file '{path}': cannot tell the format from its name; "
        "use .csv, .parquet, .xlsx or .conllu, or set data.format"
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
    ``na_values`` are missing. A CoNLL-U file gives one row per sentence
    (:func:`polytask.data.conllu.read_conllu`; its fields are kept verbatim, so ``na_values``
    does not apply)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file '{p}' not found")
    kind = table_format(p, fmt)
    if kind == "conllu":
        return read_conllu(p)
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
    anything for which the two might differ (see :func:`_arrow_csv`), so that pandas reads it
    as before. The frame's columns then have pandas' types and values, bit for bit."""
    table = _arrow_csv(path, sep)
    if table is None:
        return None
    frame: pd.DataFrame = table.to_pandas(split_blocks=True, self_destruct=True)
    return frame


def _csv_options(sep: str) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    # One thread: see read_table's Parquet branch.
    return (
        pacsv.ReadOptions(use_threads=False),
        pacsv.ParseOptions(delimiter=sep),
        pacsv.ConvertOptions(
            null_values=list(PANDAS_NA_VALUES),
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def _csv_names(path: Path, sep: str) -> list[str] | None:
    """The header of a plain CSV file as pyarrow reads it, or None when it is one pandas
    would read otherwise: an empty, blank-led or repeated name (pandas renames a repeated
    ``a`` to ``a.1``), or a file pyarrow cannot open."""
    if not path.name.lower().endswith((".csv", ".tsv", ".txt")):
        return None
    stat = path.stat()
    return _csv_header(str(path), sep, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _csv_header(path: str, sep: str, mtime_ns: int, size: int) -> list[str] | None:
    """:func:`_csv_names`, once per version of a file (``table_names`` and ``read_arrow``
    both ask). pyarrow parses the first block to give the names: a 64 KiB block first (a
    1 MiB one took 0.3 s on a loaded machine), the default size when the header is longer."""
    _, parse, na = _csv_options(sep)
    names = None
    for block in (1 << 16, 1 << 20):
        read = pacsv.ReadOptions(use_threads=False, block_size=block)
        try:
            reader = pacsv.open_csv(
                path, read_options=read, parse_options=parse, convert_options=na
            )
        except pa.ArrowInvalid:
            continue  # a header or first row longer than the block
        except (pa.ArrowException, OSError, ValueError):
            return None
        names = list(reader.schema.names)
        break
    if names is None or len(set(names)) != len(names):
        return None
    if any(not n or n[0].isspace() for n in names):
        return None
    return names


def _arrow_csv(path: Path, sep: str, columns: Sequence[str] | None = None) -> pa.Table | None:
    """The CSV file's columns (all of them, or ``columns`` only) parsed by pyarrow as
    ``pd.read_csv(path, sep=sep, skipinitialspace=True)`` reads them, or None when the file
    holds anything for which the two might differ: compressed files, a header with an empty,
    blank-led or repeated name, rows of uneven length, any cell pyarrow cannot parse, columns
    typed other than int64, float64 or text (booleans, dates), hexadecimal integers,
    infinities, numbers beyond the int64 range, integers beyond 2**53 beside a missing cell,
    whole-number float columns without a missing cell (pandas may type them int64), and text
    cells starting with a blank or like a number. An all-missing column comes as float64, as
    pandas types it.

    The file is parsed by pyarrow's streaming reader, batch by batch: ``pacsv.read_csv``
    keeps every parsed block until the end (to convert them again should a later block
    widen a column's type) and peaked at 4x the table. The streaming reader takes each
    column's type from the first block and fails on a later cell of another type; such files
    are read again by ``pacsv.read_csv``, which gives the types pandas would."""
    names = _csv_names(path, sep)
    if names is None:
        return None
    read, parse, na = _csv_options(sep)
    if columns is not None:
        na.include_columns = list(columns)
    try:
        try:
            reader = pacsv.open_csv(
                path, read_options=read, parse_options=parse, convert_options=na
            )
            table = pa.Table.from_batches(list(reader), schema=reader.schema)
            del reader
        except pa.ArrowInvalid:  # a later block does not fit the first block's types
            table = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=na)
    except (pa.ArrowException, OSError, ValueError):
        return None
    if table.num_rows == 0:
        return None
    checked = []
    integers = []
    for name, column in zip(table.column_names, table.columns, strict=True):
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
        checked.append(column)
    out = pa.table(checked, names=table.column_names)
    del table, checked
    if integers and _hexadecimal(path, parse, na, integers):
        return None
    return out


def _parquet_names(path: Path) -> list[str] | None:
    """The columns of a Parquet file as ``pd.read_parquet`` names them, or None when its
    frame would not be those columns over a plain row range: a stored index (pandas makes it
    the frame's index), repeated names, or a file pyarrow cannot open."""
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError):
        return None
    names = list(schema.names)
    meta = schema.pandas_metadata or {}
    index = meta.get("index_columns", [])
    if any(not isinstance(i, dict) or i.get("kind") != "range" for i in index):
        return None
    if len(set(names)) != len(names):
        return None
    return names


def table_names(path: Path, fmt: str = "auto") -> list[str] | None:
    """Every column name of a CSV or Parquet table, when :func:`read_arrow` may read it
    (plain CSV as pyarrow reads it, or Parquet without a stored index); None for other files,
    which :func:`read_table` reads through pandas."""
    if not path.is_file():
        return None
    try:
        kind = table_format(path, fmt)
    except DataError:
        return None
    if kind == "parquet":
        return _parquet_names(path)
    if kind == "csv":
        return _csv_names(path, "\t" if path.name.lower().endswith(".tsv") else ",")
    return None


def arrow_numeric(kind: pa.DataType) -> bool:
    """Whether an Arrow column of type ``kind`` is read by pandas as int64 or float64 numbers."""
    return bool(pa.types.is_int64(kind) or pa.types.is_float64(kind))


def arrow_text(kind: pa.DataType) -> bool:
    """Whether an Arrow column of type ``kind`` holds text."""
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def read_arrow(
    path: Path, fmt: str, frame_columns: Sequence[str], arrow_columns: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, pa.ChunkedArray]] | None:
    """A CSV or Parquet table read without a pandas frame of all of it: ``frame_columns`` as
    the frame :func:`read_table` would give (same types and values), ``arrow_columns`` as
    Arrow columns holding what those pandas columns would hold (int64, float64 or text; an
    all-missing CSV column as float64). None when the file is one :func:`read_table` must
    read (see :func:`_arrow_csv`; Parquet columns of other types; no rows), so that its
    errors and semantics stay pandas'. Only the named columns are converted.

    Both read with one thread, like :func:`read_table`; Parquet batch by batch, so that the
    peak stays near the columns' own size."""
    kind = table_format(path, fmt)
    wanted = list(dict.fromkeys([*frame_columns, *arrow_columns]))
    if kind == "csv":
        sep = "\t" if path.name.lower().endswith(".tsv") else ","
        table = _arrow_csv(path, sep, wanted)
        if table is None:
            return None
        arrow = {name: table.column(name) for name in arrow_columns}
        small = table.select(list(frame_columns))
        del table
        frame: pd.DataFrame = small.to_pandas(split_blocks=True, self_destruct=True)
    elif kind == "parquet":
        try:
            file = pq.ParquetFile(path)
            schema = file.schema_arrow
            if file.metadata.num_rows == 0 or not all(
                arrow_numeric(schema.field(c).type) or arrow_text(schema.field(c).type)
                for c in arrow_columns
            ):
                return None
            arrow = {}
            pool = pa.default_memory_pool()
            for name in arrow_columns:
                # One column at a time, its decoding buffers handed back before the next:
                # reading them together (read_table, iter_batches) peaked at 3.5x the columns.
                column = file.read(columns=[name], use_threads=False).column(0)
                arrow[name] = _rechunk(column) if arrow_numeric(column.type) else column
                del column
                pool.release_unused()
            frame = pd.read_parquet(path, columns=list(frame_columns), use_threads=False)
        except (pa.ArrowException, OSError, ValueError):
            return None
    else:
        return None
    frame.columns = [str(c) for c in frame.columns]
    return frame, arrow


#: Rows per chunk of a numeric column read from Parquet (see :func:`_rechunk`).
_CHUNK_ROWS = 1 << 16


def _rechunk(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` copied into chunks of :data:`_CHUNK_ROWS` rows, each with buffers of its
    own: a Parquet row group (up to a million rows) comes as one chunk, which could only be
    freed whole once every row is encoded; these are freed as the encoding passes them. (A
    CSV file comes in chunks already, one per 1 MiB block; copying those into bigger chunks
    cost more, 0.4 s at 200k rows, than encoding across them.)"""
    pieces = [
        pa.concat_arrays(column.slice(start, _CHUNK_ROWS).chunks)
        for start in range(0, len(column), _CHUNK_ROWS)
    ]
    return pa.chunked_array(pieces, type=column.type)


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
