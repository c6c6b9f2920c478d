"""Reading CoNLL-U treebanks (``data.format = "conllu"``) into one row per sentence.

CoNLL-U (https://universaldependencies.org/format.html) is the Universal Dependencies file
format: sentences separated by blank lines, ``#`` comment lines before each sentence, and one
line of ten tab-separated fields per word: ID, FORM, LEMMA, UPOS, XPOS, FEATS, HEAD, DEPREL,
DEPS, MISC. :func:`read_conllu` reads a plain or gzipped file into a frame with one row per
sentence:

* ``sent_id``: the ``# sent_id = ...`` comment, else the sentence's number in the file
  (``"1"``, ``"2"``, ...); ids must be unique, so they can key predictions;
* ``text``: the ``# text = ...`` comment, or missing when the sentence has none;
* ``form``, ``lemma``, ``upos``, ``xpos``, ``feats``, ``deprel``, ``deps``, ``misc``: lists of
  strings, one entry per syntactic word, verbatim from the file (``_`` included: it means
  "unspecified" in every field but FORM and LEMMA, where it may be a real underscore, so it is
  not turned into a missing value);
* ``head``: a list of ints per sentence, the 1-based ID of each word's head, 0 for the root;
* ``mwt``: the multi-word tokens, a list of ``[start, end, form, misc]`` with ``start`` and
  ``end`` the 1-based IDs of the first and last word the token spans (inclusive, as in the
  file's ``3-4`` range lines), so the surface tokens can be rebuilt (``don't`` for the words
  ``do`` + ``n't``); ``misc`` is the token line's MISC field, which holds the token's
  ``SpaceAfter=No``, so that the sentence's text can be rebuilt too (:func:`surface_text`);
* ``empty_nodes``: how many empty nodes (decimal IDs such as ``8.1``, which exist only in the
  enhanced graph) the sentence had; they are skipped, as they take no part in the basic tree.

Why pandas object columns holding Python lists rather than Arrow list columns: the consumers
of these columns (vocabularies, per-batch padding into ``[B, T]`` tensors) iterate over
sentences in Python either way, and an Arrow list column handed to pandas becomes an object
column of numpy arrays, which is slower to build and to index than lists. The memory of
lists is kept down by sharing every repeated string: each distinct field value is stored once
(a dict maps it to one string object), so the 204,577 words of EWT's training file take a few
distinct objects per tag set rather than 204,577 copies of ``"NOUN"``.

Malformed input is a :class:`~polytask.errors.DataError` of one line naming the file, the
line number and what was expected: a word line without 10 tab-separated fields, an ID that is
neither an integer, a range ``a-b`` nor a decimal ``a.b``, word IDs not counting 1, 2, 3, ...,
a HEAD that is not an integer (``_`` is not allowed for a word in basic UD) or points outside
the sentence, and a sentence with no root or with more than one (HEAD = 0), the latter named by
the sentence's first line.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pandas as pd

from polytask.errors import DataError

#: The word-level list columns of :func:`read_conllu`'s frame, in CoNLL-U field order
#: (the ID field is implied by the position: word ``i`` is list entry ``i - 1``).
WORD_COLUMNS = ("form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")

#: Every column of :func:`read_conllu`'s frame.
COLUMNS = ("sent_id", "text", *WORD_COLUMNS, "mwt", "empty_nodes")

_FIELDS = 10


def is_conllu(path: Path) -> bool:
    """Whether ``path``'s name says CoNLL-U: ``.conllu`` or ``.conllu.gz``."""
    return path.name.lower().endswith((".conllu", ".conllu.gz"))


def _text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":  # the gzip magic number, whatever the file is called
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise DataError(f"file '{path}' is truncated or not valid gzip") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data file '{path}': byte {exc.start} is not UTF-8; CoNLL-U files are UTF-8"
        ) from None


class _Sentence:
    """The words of the sentence being read, column by column."""

    __slots__ = ("comments_id", "empty", "first_line", "heads", "lines", "mwt", "text", "words")

    def __init__(self, first_line: int) -> None:
        self.first_line = first_line
        self.comments_id: str | None = None
        self.text: str | None = None
        self.words: list[list[str]] = [[] for _ in range(8)]  # the 8 string fields
        self.heads: list[int] = []
        self.lines: list[int] = []  # the line of each word, for head errors
        self.mwt: list[list[int | str]] = []  # [start, end, form, misc]
        self.empty = 0


def read_conllu(path: str | Path) -> pd.DataFrame:
    """The sentences of a CoNLL-U file (plain or gzipped), one row each; the columns are
    described in the module docstring (:data:`COLUMNS`).

    Reading is one pass over the lines in Python. EWT's training file (12,544 sentences,
    204,577 words) took 1.06 s of CPU time on a shared 2-core machine, 1.6x the time of
    only decompressing it and splitting its lines into fields (medians of 5 interleaved
    rounds); its frame holds 27 MiB (tracemalloc), 60 MiB at the peak."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file '{p}' not found")
    where = f"data file '{p}'"
    lines = _text(p).split("\n")

    shared: dict[str, str] = {}
    share = shared.setdefault  # one string object per distinct value (see module docstring)
    columns: dict[str, list[object]] = {name: [] for name in COLUMNS}
    seen: set[str] = set()
    sentence: _Sentence | None = None

    def finish(s: _Sentence) -> None:
        n = len(s.heads)
        if n == 0:
            raise DataError(
                f"{where}: line {s.first_line}: a sentence with comments but no word lines; "
                "expected word lines before the blank line"
            )
        roots = 0
        for head, line in zip(s.heads, s.lines, strict=True):
            if head > n:
                raise DataError(
                    f"{where}: line {line}: HEAD {head} points outside the sentence of {n} "
                    f"words; expected 0 to {n}"
                )
            roots += head == 0
        if roots != 1:
            found = "no word" if roots == 0 else f"{roots} words"
            raise DataError(
                f"{where}: line {s.first_line}: the sentence has {found} with HEAD 0; "
                "expected exactly one root"
            )
        for start, end, *_ in s.mwt:
            if int(end) > n:
                raise DataError(
                    f"{where}: line {s.first_line}: multi-word token {start}-{end} spans past "
                    f"the sentence's last word {n}"
                )
        number = len(columns["sent_id"]) + 1
        sent_id = s.comments_id if s.comments_id is not None else str(number)
        if sent_id in seen:
            raise DataError(
                f"{where}: line {s.first_line}: sent_id '{sent_id}' repeats an earlier "
                "sentence's; expected unique ids"
            )
        seen.add(sent_id)
        columns["sent_id"].append(sent_id)
        columns["text"].append(s.text)
        for name, values in zip(
            ("form", "lemma", "upos", "xpos", "feats", "deprel", "deps", "misc"),
            s.words,
            strict=True,
        ):
            columns[name].append(values)
        columns["head"].append(s.heads)
        columns["mwt"].append(s.mwt)
        columns["empty_nodes"].append(s.empty)

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            if sentence is not None:
                finish(sentence)
                sentence = None
            continue
        if line.endswith("\r"):
            line = line[:-1]
        if sentence is None:
            sentence = _Sentence(number)
        if line[0] == "#":
            if sentence.heads or sentence.empty or sentence.mwt:
                raise DataError(
                    f"{where}: line {number}: a comment inside a sentence; expected comments "
                    "only before a sentence's first word line"
                )
            if line.startswith("# sent_id ="):
                sentence.comments_id = line[len("# sent_id =") :].strip()
            elif line.startswith("# text ="):
                sentence.text = line[len("# text =") :].strip()
            continue
        fields = line.split("\t")
        if len(fields) != _FIELDS:
            raise DataError(
                f"{where}: line {number}: {len(fields)} tab-separated fields; expected 10 "
                "(ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC)"
            )
        ident = fields[0]
        expected = len(sentence.heads) + 1
        if not ident.isdigit():
            _special(where, number, ident, expected, sentence, fields)
            continue
        if int(ident) != expected:
            raise DataError(
                f"{where}: line {number}: word ID {ident} out of order; expected {expected}"
            )
        head = fields[6]
        if not head.isdigit():
            raise DataError(
                f"{where}: line {number}: HEAD '{head}' of word {ident} is not an integer; "
                "expected the head's word ID, or 0 for the root (basic UD trees need every "
                "word's head)"
            )
        sentence.heads.append(int(head))
        sentence.lines.append(number)
        words = sentence.words
        words[0].append(share(fields[1], fields[1]))
        words[1].append(share(fields[2], fields[2]))
        words[2].append(share(fields[3], fields[3]))
        words[3].append(share(fields[4], fields[4]))
        words[4].append(share(fields[5], fields[5]))
        words[5].append(share(fields[7], fields[7]))
        words[6].append(share(fields[8], fields[8]))
        words[7].append(share(fields[9], fields[9]))
    if sentence is not None:  # a file without the final blank line
        finish(sentence)
    if not columns["sent_id"]:
        raise DataError(f"{where}: no sentences; expected CoNLL-U word lines")
    frame: pd.DataFrame = pd.DataFrame(columns, columns=list(COLUMNS))
    return frame


def _special(
    where: str, number: int, ident: str, expected: int, sentence: _Sentence, fields: list[str]
) -> None:
    """A multi-word token (``3-4``) or empty node (``8.1``) line: checked and recorded."""
    if "-" in ident:
        first, _, last = ident.partition("-")
        if not (first.isdigit() and last.isdigit()):
            raise DataError(
                f"{where}: line {number}: ID '{ident}' is not a range of word IDs; expected "
                "a multi-word token range such as 3-4"
            )
        start, end = int(first), int(last)
        if start != expected or end <= start:
            raise DataError(
                f"{where}: line {number}: multi-word token {ident} out of order; expected a "
                f"range {expected}-N with N > {expected}, before word {expected}"
            )
        sentence.mwt.append([start, end, fields[1], fields[9]])
        return
    if "." in ident:
        whole, _, part = ident.partition(".")
        if not (whole.isdigit() and part.isdigit()):
            raise DataError(
                f"{where}: line {number}: ID '{ident}' is not a decimal empty-node ID; "
                "expected such as 8.1"
            )
        if int(whole) != expected - 1:
            raise DataError(
                f"{where}: line {number}: empty node {ident} out of order; expected "
                f"{expected - 1}.N after word {expected - 1}"
            )
        sentence.empty += 1
        return
    raise DataError(
        f"{where}: line {number}: ID '{ident}' is not an integer; expected word ID "
        f"{expected}, a range such as {expected}-{expected + 1} or a decimal such as "
        f"{expected - 1}.1"
    )


def surface_text(forms: list[str], misc: list[str], mwt: list[list[int | str]]) -> str:
    """A sentence's text rebuilt from one row of :func:`read_conllu`'s frame: the surface
    tokens (a multi-word token's form in place of its words), each followed by a space
    unless its MISC says ``SpaceAfter=No``. For a file with ``# text`` comments this gives
    them back (EWT: every sentence; ``tests/test_conllu.py`` checks)."""
    spans = {int(m[0]): m for m in mwt}
    out: list[str] = []
    word = 1
    while word <= len(forms):
        if word in spans:
            _, end, form, token_misc = spans[word]
            word = int(end) + 1
        else:
            form, token_misc = forms[word - 1], misc[word - 1]
            word += 1
        out.append(str(form))
        if "SpaceAfter=No" not in str(token_misc).split("|"):
            out.append(" ")
    return "".join(out).rstrip(" ")
