"""Reading CoNLL-U files (``data.format = "conllu"``): hand-made snippets, every malformed
case with its message, and the real EWT dev file when ``../shared/data/ud-ewt`` is present."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from polytask.data.config import DataConfig
from polytask.data.conllu import COLUMNS, read_conllu, surface_text
from polytask.data.tables import read_table, table_format
from polytask.errors import DataError


def _line(ident: str, form: str, head: str, deprel: str, misc: str = "_") -> str:
    upos = "PUNCT" if deprel == "punct" else "X"
    return "\t".join([ident, form, form.lower(), upos, "_", "_", head, deprel, "_", misc])


SNIPPET = "\n".join(
    [
        "# newdoc id = d1",
        "# sent_id = s1",
        "# text = I don't know.",
        _line("1", "I", "3", "nsubj"),
        _line("2-3", "don't", "_", "_"),
        _line("2", "do", "4", "aux"),
        _line("3", "n't", "4", "advmod"),
        _line("4", "know", "0", "root", "SpaceAfter=No"),
        _line("4.1", "know", "_", "_"),
        _line("5", ".", "4", "punct"),
        "",
        "# a comment that is neither sent_id nor text",
        _line("1", "Hi", "0", "root"),
        _line("1.1", "is", "_", "_"),
        _line("1.2", "there", "_", "_"),
        "",
    ]
)


def _write(tmp_path: Path, text: str, name: str = "t.conllu") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_sentences_words_and_multiword_tokens(tmp_path: Path) -> None:
    df = read_conllu(_write(tmp_path, SNIPPET))
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 2
    first = df.iloc[0]
    assert first["sent_id"] == "s1"
    assert first["text"] == "I don't know."
    assert first["form"] == ["I", "do", "n't", "know", "."]
    assert first["lemma"] == ["i", "do", "n't", "know", "."]
    assert first["head"] == [3, 4, 4, 0, 4]
    assert first["deprel"] == ["nsubj", "aux", "advmod", "root", "punct"]
    assert first["upos"] == ["X", "X", "X", "X", "PUNCT"]
    assert first["misc"][3] == "SpaceAfter=No"
    assert first["mwt"] == [[2, 3, "don't", "_"]]
    assert first["empty_nodes"] == 1  # 4.1 is skipped, not a word
    second = df.iloc[1]
    assert second["sent_id"] == "2"  # no sent_id comment: the sentence's number
    assert pd.isna(second["text"])
    assert second["form"] == ["Hi"]
    assert second["head"] == [0]
    assert second["empty_nodes"] == 2
    assert second["mwt"] == []
    # Surface text comes back from the words, the multi-word token and SpaceAfter=No.
    assert surface_text(first["form"], first["misc"], first["mwt"]) == "I don't know."


def test_repeated_values_share_one_string(tmp_path: Path) -> None:
    df = read_conllu(_write(tmp_path, SNIPPET))
    # One object per distinct value (memory: see the module docstring).
    assert df.iloc[0]["upos"][0] is df.iloc[1]["upos"][0]


def test_gzip_crlf_and_no_final_blank_line(tmp_path: Path) -> None:
    plain = read_conllu(_write(tmp_path, SNIPPET))
    crlf = SNIPPET.rstrip("\n").replace("\n", "\r\n")  # Windows line ends, no final blank
    path = tmp_path / "t.conllu.gz"
    path.write_bytes(gzip.compress(crlf.encode("utf-8")))
    zipped = read_conllu(path)
    pd.testing.assert_frame_equal(plain, zipped)


def test_read_table_detects_and_dispatches(tmp_path: Path) -> None:
    path = _write(tmp_path, SNIPPET, "UD.conllu")
    assert table_format(path) == "conllu"
    assert table_format(tmp_path / "x.CONLLU.GZ") == "conllu"
    assert table_format(tmp_path / "x.txt", "conllu") == "conllu"
    assert read_table(path)["form"].tolist() == read_conllu(path)["form"].tolist()
    other = _write(tmp_path, SNIPPET, "ud.txt")  # another name: declared format
    assert len(read_table(other, fmt="conllu")) == 2
    with pytest.raises(DataError, match=r"use \.csv, \.parquet, \.xlsx or \.conllu"):
        table_format(tmp_path / "x.unknown")
    assert DataConfig(path="x.conllu", format="conllu").format == "conllu"


def _word(i: int, head: str = "0") -> str:
    return _line(str(i), f"w{i}", head, "root" if head == "0" else "dep")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["1\tw1\tw1\tX\t_\t_\t0\troot\t_"], r"line 1: 9 tab-separated fields; expected 10"),
        ([_word(1), "x\tw\tw\tX\t_\t_\t1\tdep\t_\t_"], r"line 2: ID 'x' is not an integer"),
        ([_word(1), _line("3", "w3", "1", "dep")], r"line 2: word ID 3 out of order; expected 2"),
        ([_word(1), _line("2", "w2", "_", "dep")], r"line 2: HEAD '_' of word 2 is not an int"),
        ([_word(1), _line("2", "w2", "-1", "dep")], r"line 2: HEAD '-1' of word 2 is not an int"),
        (
            ["# sent_id = a", _word(1), _line("2", "w2", "3", "dep")],
            r"line 3: HEAD 3 points outside the sentence of 2 words; expected 0 to 2",
        ),
        (
            ["# sent_id = a", _word(1, "2"), _word(2, "1")],
            r"line 1: the sentence has no word with HEAD 0; expected exactly one root",
        ),
        (
            ["# sent_id = a", _word(1), _word(2)],
            r"line 1: the sentence has 2 words with HEAD 0; expected exactly one root",
        ),
        ([_word(1), _line("3-4", "ab", "_", "_")], r"line 2: multi-word token 3-4 out of order"),
        ([_word(1), _line("2-2", "ab", "_", "_")], r"line 2: multi-word token 2-2 out of order"),
        ([_word(1), _line("2-x", "ab", "_", "_")], r"line 2: ID '2-x' is not a range"),
        (
            [_line("1-3", "abc", "_", "_"), _word(1), _line("2", "b", "1", "dep")],
            r"line 1: multi-word token 1-3 spans past the sentence's last word 2",
        ),
        ([_word(1), _line("2.1", "e", "_", "_")], r"line 2: empty node 2.1 out of order"),
        ([_word(1), _line("1.x", "e", "_", "_")], r"line 2: ID '1.x' is not a decimal"),
        ([_word(1), "# late"], r"line 2: a comment inside a sentence"),
        (["# sent_id = a", "", _word(1)], r"line 1: a sentence with comments but no word"),
        (
            ["# sent_id = a", _word(1), "", "# sent_id = a", _word(1)],
            r"line 4: sent_id 'a' repeats an earlier sentence's",
        ),
        (["", "  "], r"no sentences; expected CoNLL-U word lines"),
    ],
)
def test_malformed_input_names_file_and_line(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    path = _write(tmp_path, "\n".join(lines) + "\n", "bad.conllu")
    with pytest.raises(DataError, match=message) as info:
        read_conllu(path)
    text = str(info.value)
    assert text.startswith(f"data file '{path}'")
    assert "\n" not in text


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_conllu(tmp_path / "missing.conllu")
    cut = tmp_path / "cut.conllu.gz"
    cut.write_bytes(gzip.compress(SNIPPET.encode())[:40])
    with pytest.raises(DataError, match="truncated or not valid gzip"):
        read_conllu(cut)
    latin = tmp_path / "latin.conllu"
    latin.write_bytes(SNIPPET.replace("know", "kn\u00f6w").encode("latin-1"))
    with pytest.raises(DataError, match=r"byte \d+ is not UTF-8"):
        read_conllu(latin)


def test_ewt_dev_round_trip(require_data: Callable[[str], Path]) -> None:
    root = require_data("ud-ewt/en_ewt-dev.conllu.gz")
    path = root / "ud-ewt" / "en_ewt-dev.conllu.gz"
    df = read_conllu(path)
    # The counts of the data README (UD English EWT dev).
    assert len(df) == 2001
    assert sum(len(f) for f in df["form"]) == 25147
    # Every word line of the file comes back, field for field, in order.
    words = [
        line.split("\t")
        for line in gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        if line and line[0].isdigit() and line.split("\t", 1)[0].isdigit()
    ]
    flat = {name: [v for sentence in df[name] for v in sentence] for name in COLUMNS[2:11]}
    assert len(words) == 25147
    assert flat["form"] == [w[1] for w in words]
    assert flat["head"] == [int(w[6]) for w in words]
    assert flat["deprel"] == [w[7] for w in words]
    assert flat["feats"] == [w[5] for w in words]
    # Surface text rebuilt from tokens equals every sentence's "# text" comment.
    rebuilt = [
        surface_text(f, m, t) for f, m, t in zip(df["form"], df["misc"], df["mwt"], strict=True)
    ]
    assert rebuilt == df["text"].tolist()
    assert df["sent_id"].is_unique
    assert sum(len(t) for t in df["mwt"]) == 359  # counted with grep on the file
    assert int(df["empty_nodes"].sum()) == 4
