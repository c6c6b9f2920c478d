"""``polytask init TABLE``: a commented starting configuration written from a table.

A sample of the table's rows is read (:func:`read_sample`), each column profiled
(:func:`profile_columns`: numeric, categorical, binary, id-like, text or constant, with its
distinct values and missing fraction), and a TOML configuration written with one task per
chosen target, its kind inferred from the column (:func:`infer_kind`: 2 values -> binary, a few
labels -> multiclass, numbers -> regression). The text is validated as
:func:`polytask.config.config_from_dict` validates any file before it is written, so what
``init`` writes loads and trains; it is written atomically and never over an existing file
unless asked to (:func:`write_config`).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from polytask.config import config_from_dict
from polytask.data.conllu import read_conllu
from polytask.data.tables import table_format
from polytask.errors import ConfigError, DataError
from polytask.state_io import atomic_write_text
from polytask.tasks.kinds.columns import label_strings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

#: Rows read to profile a table (the first ones).
SAMPLE_ROWS = 10_000
#: Most distinct labels a text target may have to be inferred multiclass.
MAX_CLASSES = 50
#: A text column whose values average this many characters or more holds free text.
TEXT_CHARS = 40
#: Kinds ``--target COL=KIND`` may name (those a table column can hold).
TABLE_KINDS = ("binary", "multiclass", "regression", "token_classification")


@dataclass(frozen=True)
class ColumnProfile:
    """What a sample says about one column."""

    name: str
    type: str  # numeric | binary | categorical | id | text | constant | empty | tokens
    distinct: int
    missing: float  # fraction of the sampled rows
    numeric: bool
    examples: tuple[str, ...]


def read_sample(path: Path, rows: int = SAMPLE_ROWS) -> pd.DataFrame:
    """The first ``rows`` rows of a CSV or Parquet table (one-line errors otherwise)."""
    if not path.is_file():
        raise DataError(f"data file '{path}' not found")
    fmt = table_format(path)
    try:
        if fmt == "conllu":  # a treebank: one row per sentence, list columns per word
            df: pd.DataFrame = read_conllu(path).head(rows)
        elif fmt == "parquet":
            batches = pq.ParquetFile(path).iter_batches(batch_size=rows)
            first = next(batches, None)
            if first is None:
                raise DataError(f"data file '{path}': the table has no rows")
            df = first.to_pandas()
        else:
            sep = "\t" if path.name.lower().endswith(".tsv") else ","
            df = pd.read_csv(path, sep=sep, nrows=rows, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file '{path}': the table is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError, EOFError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"data file '{path}': cannot read it as {fmt}: {first_line}") from None
    if len(df) == 0:
        raise DataError(f"data file '{path}': the table has no rows")
    df.columns = [str(c) for c in df.columns]
    return df


def _id_name(name: str) -> bool:
    low = name.lower()
    return low == "id" or low.endswith(("_id", "id", "_key", "uuid")) or low.startswith("id_")


def profile_column(name: str, series: pd.Series) -> ColumnProfile:
    """The inferred type of one column from its sampled values."""
    present = series.dropna()
    n = len(series)
    missing = 1.0 - len(present) / n if n else 0.0
    if len(present) and isinstance(present.iloc[0], list):
        # A list per row (a treebank's words, tags, heads): profiled by its entries.
        entries = pd.Series([str(v) for cell in present for v in cell], dtype=object)
        examples = tuple(entries.drop_duplicates().head(3))
        return ColumnProfile(name, "tokens", int(entries.nunique()), missing, False, examples)
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    distinct = int(present.nunique())
    examples = tuple(str(v) for v in present.drop_duplicates().head(3))
    if distinct == 0:
        kind = "empty"
    elif distinct == 1:
        kind = "constant"
    elif distinct == 2:
        kind = "binary"
    elif numeric:
        whole = bool((present.astype(float) % 1 == 0).all())
        unique = distinct == len(present) and len(present) >= 20
        kind = "id" if whole and unique and _id_name(name) else "numeric"
    else:
        text = present.astype(str)
        unique = distinct >= 0.95 * len(present) and len(present) >= 20
        if text.str.len().mean() >= TEXT_CHARS or text.str.count(" ").mean() >= 4:
            kind = "text"
        elif unique:
            kind = "id"
        else:
            kind = "categorical"
    return ColumnProfile(name, kind, distinct, missing, numeric, examples)


def profile_columns(df: pd.DataFrame) -> list[ColumnProfile]:
    return [profile_column(str(c), df[c]) for c in df.columns]


def infer_kind(profile: ColumnProfile) -> str:
    """The task kind a target column suggests: 2 values -> binary, numbers -> regression, a
    few labels -> multiclass; a :class:`ConfigError` for a column that is none of these."""
    if profile.type == "tokens":
        return "token_classification"
    if profile.distinct < 2:
        raise ConfigError(
            f"--target {profile.name}: the column has {profile.distinct} distinct value(s) in "
            "the rows read; a target needs at least 2"
        )
    if profile.distinct == 2:
        return "binary"
    if profile.numeric:
        return "regression"
    if profile.distinct <= MAX_CLASSES:
        return "multiclass"
    raise ConfigError(
        f"--target {profile.name}: {profile.distinct} distinct text values is too many to "
        f"guess a kind (multiclass takes up to {MAX_CLASSES} here); name it: "
        f"--target {profile.name}=multiclass"
    )


#: Pairs of labels whose positive member polytask recognises (``kinds/binary.py``).
_OBVIOUS = {("0", "1"), ("false", "true"), ("no", "yes"), ("n", "y"), ("negative", "positive")}


def _positive(series: pd.Series) -> str | None:
    """The label to declare positive for a binary target when polytask cannot tell which it
    is (labels read as the binary kind reads them): the rarer one (ties: the later)."""
    labels, valid = label_strings(series)
    present = pd.Series(labels[valid])
    if tuple(sorted(v.lower() for v in present.unique())) in _OBVIOUS:
        return None
    return _rarest(series)


def _positive_lines(series: pd.Series, asked: tuple[str, ...], where: str) -> list[str]:
    """The ``positive`` line of a binary task: the labels asked for, else the rarer of two
    labels; on a column of more than two labels, the task is one-vs-rest and the comment says
    which labels fall on the negative side (the README's ``positive = "<30"`` on a column of
    ``<30``, ``>30`` and ``NO``)."""
    labels, valid = label_strings(series)
    present = sorted(pd.Series(labels[valid]).unique())
    unknown = [label for label in asked if label not in present]
    if unknown:
        raise DataError(
            f"{where}: label {unknown[0]!r} is not in the rows read "
            f"(labels: {', '.join(map(repr, present[:20]))})"
        )
    if len(present) > 2:
        positive = list(asked) if asked else [_rarest(series)]
        rest = [label for label in present if label not in positive]
        comment = f"one-vs-rest: negative = {', '.join(rest)}"[:60]
        value = positive[0] if len(positive) == 1 else positive
        return [_line(f"positive = {_toml(value)}", comment)]
    if asked:
        value = asked[0] if len(asked) == 1 else list(asked)
        return [_line(f"positive = {_toml(value)}", "as asked")]
    guessed = _positive(series)
    return [] if guessed is None else [_line(f"positive = {_toml(guessed)}", "the rarer label")]


def _rarest(series: pd.Series) -> str:
    """The rarest label (ties: the later), as the binary kind reads labels."""
    labels, valid = label_strings(series)
    counts = pd.Series(labels[valid]).value_counts()
    return str(sorted(counts.index, key=lambda v: (counts[v], v))[0])


def _toml(value: object) -> str:
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _line(code: str, comment: str) -> str:
    return f"{code:<40}# {comment}" if comment else code


def _task_name(column: str, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in column).strip("_") or "task"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


@dataclass(frozen=True)
class Target:
    """One ``--target``: the column, the kind asked for (``None``: inferred) and, for a binary
    task, the labels asked to be positive (one-vs-rest when the column holds more than two)."""

    column: str
    kind: str | None = None
    positive: tuple[str, ...] = ()


def parse_targets(targets: list[str]) -> list[Target]:
    """``COL``, ``COL=KIND`` (kind one of :data:`TABLE_KINDS`) or ``COL=binary:LABEL[,LABEL]``
    (the labels counted positive, every other label negative: one-vs-rest)."""
    parsed: list[Target] = []
    for text in targets:
        if "=" not in text:
            parsed.append(Target(text))
            continue
        column, _, spec = text.rpartition("=")
        kind, colon, labels = spec.partition(":")
        if kind not in TABLE_KINDS:
            raise ConfigError(
                f"--target {text}: unknown kind {kind!r}; valid: {', '.join(TABLE_KINDS)}"
            )
        positive = tuple(label.strip() for label in labels.split(",")) if colon else ()
        if colon and (kind != "binary" or not all(positive)):
            raise ConfigError(
                f"--target {text}: labels after ':' name the positive class of a binary task: "
                f"{column}=binary:LABEL[,LABEL]"
            )
        parsed.append(Target(column, kind, positive))
    return parsed


def starter_config(
    table: Path,
    targets: list[str],
    out: Path,
    *,
    sample_rows: int = SAMPLE_ROWS,
) -> str:
    """The text of a commented configuration training one task per target on ``table``
    (paths relative to ``out``'s folder), checked to load as any config file is."""
    if not targets:
        raise ConfigError("polytask init: name at least one target column: --target COLUMN")
    df = read_sample(table, sample_rows)
    profiles = {p.name: p for p in profile_columns(df)}
    chosen = parse_targets(targets)
    for column in (t.column for t in chosen):
        if column not in profiles:
            close = difflib.get_close_matches(column, list(profiles), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise DataError(
                f"--target {column}: no such column in '{table}'{hint} "
                f"(columns: {', '.join(profiles)})"
            )
    if len({t.column for t in chosen}) != len(chosen):
        raise ConfigError("polytask init: a column is named twice in --target")
    target_cols = {t.column for t in chosen}
    ids = [p.name for p in profiles.values() if p.type == "id" and p.name not in target_cols]
    # A treebank: its word column is the input (``tokens``), the other list columns labels.
    words = "form" if "form" in profiles and profiles["form"].type == "tokens" else None
    unused = [
        p.name
        for p in profiles.values()
        if p.type in ("text", "constant", "empty", "id", *(("tokens",) if words else ()))
        and p.name != words
        and p.name not in target_cols
        and p.name != (ids[0] if ids else None)
    ]
    try:
        location = os.path.relpath(table.resolve(), out.resolve().parent)
    except ValueError:  # another drive (Windows)
        location = str(table.resolve())
    lines = [
        f"# polytask starting configuration, written by `polytask init` from {table.name}",
        f"# ({len(df):,} rows read to profile the columns). Every key: docs/config.md;",
        "# a component's keys: polytask list --params NAME. Train: polytask train THIS_FILE",
        "#",
        f"# {'column':<24} {'type':<20} {'distinct':>8} {'missing':>8}  examples",
    ]
    for p in profiles.values():
        role = " (target)" if p.name in target_cols else ""
        shown = ("id-like" if p.type == "id" else p.type) + role
        examples = ", ".join(p.examples)[:40]
        lines.append(
            f"# {p.name[:24]:<24} {shown:<20} {p.distinct:>8,} {p.missing:>8.1%}  {examples}"
        )
    lines += ["", "seed = 0", "", "[data]"]
    lines.append(_line(f"path = {_toml(location)}", "CSV or Parquet; relative to this file"))
    if ids:
        lines.append(_line(f"id = {_toml(ids[0])}", "id-like: copied into predictions"))
    if unused:
        lines.append(_line(f"ignore = {_toml(unused)}", "id-like, text or constant: not features"))
    lines.append(
        _line('# group = "..."', 'rows sharing a value stay in one split (method "group")')
    )
    lines.append(_line('# na_values = ["?"]', "extra missing-value markers"))
    categorical = [
        p.name
        for p in profiles.values()
        if p.type in ("categorical", "binary") and p.name not in target_cols
    ]
    if categorical:
        lines.append(f"# categorical columns found: {', '.join(categorical)}")
    if words:
        lines += [
            "",
            "[data.input]",
            _line('name = "tokens"', "sentences as lists of words: docs/language.md"),
            f"column = {_toml(words)}",
        ]
    lines += [
        "",
        "[data.split]",
        _line('method = "random"', "random | group | files | column"),
        "val = 0.15",
        "test = 0.15",
    ]
    taken: set[str] = set()
    for target in chosen:
        column, declared = target.column, target.kind
        profile = profiles[column]
        kind = declared or infer_kind(profile)
        why = (
            "as asked"
            if declared
            else {
                "binary": "2 distinct values",
                "multiclass": f"{profile.distinct} distinct labels",
                "regression": "numeric",
                "token_classification": f"a label per word, {profile.distinct} distinct",
            }[kind]
        )
        lines += ["", "[[tasks]]", f"name = {_toml(_task_name(column, taken))}"]
        kinds = "binary | multiclass | regression | token_classification"
        lines.append(_line(f"kind = {_toml(kind)}", f"{why}; {kinds}"))
        lines.append(f"target = {_toml(column)}")
        if kind == "binary":
            lines += _positive_lines(df[column], target.positive, f"--target {column}")
        if profile.missing:
            lines.append(f"# {profile.missing:.1%} of the rows read have no label: masked")
    encoder = [
        _line('name = "mlp"', "polytask list: encoders; keys: polytask list --params mlp"),
        "widths = [256, 128]",
        "dropout = 0.1",
    ]
    if words:
        encoder = [
            _line('name = "tokens"', "word + character embeddings, BiLSTM: a vector per word"),
            "width = 256",
        ]
    lines += [
        "",
        "[model.encoder]",
        *encoder,
        "",
        "[balancer]",
        _line('name = "static"', "fixed weights; try upgrad, nash_mtl, uncertainty, ..."),
        "",
        "[train]",
        "epochs = 20",
        f"batch_size = {32 if words else 256}",
        f"lr = {0.002 if words else 0.001}",
        _line("patience = 5", "early stopping on the validation criterion"),
        "",
    ]
    text = "\n".join(lines)
    try:
        raw = tomllib.loads(text)
        config_from_dict(raw, base_dir=out.resolve().parent)
    except ConfigError as exc:  # what was inferred does not validate: say so, write nothing
        raise ConfigError(f"polytask init: the configuration would not load: {exc}") from None
    return text


def write_config(path: Path, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``path`` atomically; an existing file is replaced only with ``force``
    (the check and the write are one step: a link, which fails if the name exists)."""
    if force:
        atomic_write_text(path, text)
        return
    if path.exists() or path.is_symlink():
        raise ConfigError(f"'{path}' exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ConfigError(f"'{path}' exists; pass --force to replace it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
