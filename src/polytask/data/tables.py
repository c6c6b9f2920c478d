"""Reading tables (CSV, Parquet) and checking that declared columns exist."""

from __future__ import annotations

import difflib
import gzip
import lzma
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from polytask.errors import DataError

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def table_format(path: Path, declared: str = "auto") -> str:
    """``csv`` or ``parquet``, from ``declared`` or the file name."""
    if declared != "auto":
        return declared
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    raise DataError(
        f"data file '{path}': cannot tell the format from its name; "
        "use .csv or .parquet, or set data.format"
    )


def _compression(path: Path) -> str:
    """The compression a table's name announces, as users call it."""
    names = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zip": "zip"}
    return names.get(path.suffix.lower(), "compressed data")


def read_table(
    path: str | Path, *, fmt: str = "auto", na_values: Sequence[str] = ()
) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame; empty strings and ``na_values`` are missing."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file '{p}' not found")
    kind = table_format(p, fmt)
    try:
        if kind == "parquet":
            df = pd.read_parquet(p)
            if na_values:
                df = df.replace(list(na_values), pd.NA)
        else:
            sep = "\t" if p.name.lower().endswith(".tsv") else ","
            df = pd.read_csv(p, sep=sep, na_values=list(na_values), skipinitialspace=True)
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


def require_columns(df: pd.DataFrame, columns: Iterable[str], source: str, role: str) -> None:
    """Fail with the closest existing column name when a declared column is absent."""
    present = set(df.columns)
    for col in columns:
        if col not in present:
            close = difflib.get_close_matches(col, list(df.columns), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{source}: {role} column '{col}' not found{hint}")
