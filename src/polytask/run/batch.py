"""Batch prediction of a table file in bounded memory: read in chunks, predict, write as it goes.

``polytask predict`` runs :func:`predict_file`. A CSV is read ``chunk_rows`` rows at a time
(pandas' chunked reader), a Parquet file one record batch at a time (pyarrow), so memory holds
one chunk and its predictions, whatever the table's length. The output (CSV or Parquet) is
written to a temporary sibling and renamed over the output only when every chunk has been
predicted: a failure part-way leaves no output file, not a partial one.

Each chunk goes through :meth:`Predictor.predict`, which encodes a table model's frame with
:meth:`FastTable.prepare <polytask.run.fast.FastTable.prepare>` (each category's text written
once per distinct value) and one forward batch at a time (:meth:`FastTable.encode
<polytask.run.fast.FastTable.encode>`): a chunk holds its frame, its converted columns (8 bytes a
number and 4 a category, per row) and its predictions, never its whole float32 input matrix.

A chunk's predictions equal those of the whole table read at once, with one caveat for CSV:
pandas infers each chunk's column types on its own, so a categorical column written as numbers
in some rows and as text in others may be typed differently in a chunk that holds only numbers
(``02`` is then read as 2). Parquet columns have one type for the whole file.
"""

from __future__ import annotations

import gzip
import lzma
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from polytask.data.tables import read_table, table_format
from polytask.errors import DataError, PolytaskError
from polytask.run.predictor import Predictor

__all__ = ["DEFAULT_CHUNK_ROWS", "iter_table", "predict_file", "table_rows"]

#: Rows per chunk: large enough that pandas' per-column overhead is amortised, small enough
#: that one chunk of a wide table stays within tens of MiB.
DEFAULT_CHUNK_ROWS = 100_000


def table_rows(path: Path) -> int | None:
    """The row count of a Parquet file from its footer (for a progress bar); None for CSV,
    whose rows are only known once it is read."""
    if table_format(path) != "parquet":
        return None
    try:
        rows: int = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None
    return rows


def iter_table(
    path: Path, chunk_rows: int, na_values: Sequence[str] = ()
) -> Iterator[pd.DataFrame]:
    """The rows of a CSV or Parquet file, ``chunk_rows`` at a time, read as
    :func:`polytask.data.tables.read_table` reads the whole file (same missing-value markers,
    column names as text) and indexed by their row number in the file."""
    if not path.is_file():
        raise DataError(f"data file '{path}' not found")
    kind = table_format(path)
    start = 0
    try:
        for chunk in _chunks(path, kind, chunk_rows, na_values):
            if len(chunk) == 0:  # a header without rows: reported below, once
                continue
            chunk.columns = [str(c) for c in chunk.columns]
            # Row numbers in messages ("row 123456 has 'abc'") count from the file's start.
            chunk.index = pd.RangeIndex(start, start + len(chunk))
            start += len(chunk)
            yield chunk
    except pd.errors.EmptyDataError:
        raise DataError(f"data file '{path}': the table is empty") from None
    except (EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, gzip.BadGzipFile):
        raise DataError(f"file '{path}' is truncated or not valid compressed data") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError, pa.ArrowException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"data file '{path}': cannot read it as {kind}: {first}") from None
    if start == 0:
        raise DataError(f"data file '{path}': the table has no rows")


def _chunks(
    path: Path, kind: str, chunk_rows: int, na_values: Sequence[str]
) -> Iterator[pd.DataFrame]:
    if kind in ("excel", "conllu"):
        # A workbook is read whole (openpyxl has no row-group reader worth the name); so is a
        # CoNLL-U file (one row per sentence: small, and parsed in one pass).
        frame = read_table(path, fmt=kind, na_values=na_values)
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start : start + chunk_rows].reset_index(drop=True)
        return
    if kind == "parquet":
        # One thread, as read_table reads Parquet: pyarrow's pool spins on a shared machine.
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, use_threads=False):
            frame = batch.to_pandas()
            yield frame.replace(list(na_values), pd.NA) if na_values else frame
        return
    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    with pd.read_csv(
        path,
        sep=sep,
        na_values=list(na_values),
        skipinitialspace=True,
        chunksize=chunk_rows,
    ) as reader:
        yield from reader


class _Writer:
    """Appends prediction chunks to a CSV or Parquet file."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.csv: Any = None
        self.parquet: pq.ParquetWriter | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "csv":
            first = self.csv is None
            if first:
                self.csv = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
            frame.to_csv(self.csv, index=False, header=first)
            return
        if self.parquet is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            # A label column with no label in the first chunk (every output NaN) has no type
            # yet; labels are text.
            schema = pa.schema(
                [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema],
                metadata=table.schema.metadata,
            )
            self.parquet = pq.ParquetWriter(self.path, schema)
            table = table.cast(schema)
        else:
            table = pa.Table.from_pandas(frame, schema=self.parquet.schema, preserve_index=False)
        self.parquet.write_table(table)

    def close(self) -> None:
        if self.csv is not None:
            self.csv.close()
        if self.parquet is not None:
            self.parquet.close()


def predict_file(
    predictor: Predictor,
    data: Path,
    output: Path,
    *,
    tasks: list[str] | None = None,
    preference: str | Sequence[float] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    on_chunk: Callable[[int], None] | None = None,
    per_task: bool = False,
) -> int:
    """Predict every row of the table ``data`` into ``output`` (CSV or Parquet, by its name),
    ``chunk_rows`` rows at a time, and return the number of rows. The id column is carried
    into the output when the table has it. ``on_chunk(rows)`` is called after each chunk (a
    progress bar). Nothing is left at ``output`` unless every chunk succeeded."""
    if chunk_rows < 1:
        raise PolytaskError(f"chunk rows must be at least 1, got {chunk_rows}")
    kind = table_format(output)  # an unknown suffix fails before any work
    if kind in ("excel", "conllu"):
        raise PolytaskError(f"cannot write '{output}': predictions are written as .csv or .parquet")
    if not output.parent.is_dir():
        raise PolytaskError(f"cannot write '{output}': folder '{output.parent}' does not exist")
    staging = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    writer = _Writer(staging, kind)
    rows = 0
    try:
        for chunk in iter_table(data, chunk_rows, predictor.na_values):
            frame = predictor.predict(
                chunk,
                tasks,
                source=f"data file '{data}'",
                base_dir=data.parent,
                preference=preference,
                per_task=per_task,
            )
            writer.write(frame)
            rows += len(frame)
            if on_chunk is not None:
                on_chunk(len(frame))
        writer.close()
        staging.replace(output)
    except BaseException:
        writer.close()
        staging.unlink(missing_ok=True)
        raise
    return rows
