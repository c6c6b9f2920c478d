"""Sentences as lists of words (``data.input.name = "tokens"``), for the token encoders of
:mod:`polytask.models.sequence` and the token-level task kinds.

A row is a sentence: its column (``form`` by default, as ``data.format = "conllu"`` reads
it) holds a list of words, or a string, which is split on whitespace (a "token column" of
pre-tokenised text, ``"The cat sat ."``). The words are kept as they are: the tokenisation
is the data's (gold tokens in a treebank), since token-level labels are attached to exactly
these words.

**Vocabularies**, fitted on the training rows:

* words (lower-cased when ``lowercase``): every word seen at least ``min_frequency`` times,
  the ``max_size`` most frequent (ties alphabetical); id 0 is padding, id 1 every other word.
  Rare words share the unknown id on purpose, so that the unknown embedding is trained on
  words like the unseen ones of test time; their character features tell them apart (Plank,
  Søgaard & Goldberg, "Multilingual Part-of-Speech Tagging with Bidirectional LSTM Models and
  Auxiliary Loss", ACL 2016: character representations help most on rare words);
* characters (case kept: capitals mark names): every character seen at least
  ``char_min_frequency`` times; id 0 is padding, id 1 an unknown character.

**Tensors** of a table of ``N`` sentences, ``T`` the longest (in words; the contract of
:mod:`polytask.tasks.kinds.tokens`):

* ``words``: int64 ``[N, T]`` word ids, 0 past each sentence's end;
* ``chars``: int16 ``[N, T, max_word_chars]`` character ids. A longer word keeps its first
  and last characters (half the width each): prefixes and suffixes (``un-``, ``-ing``,
  ``-ly``) are what a tagger reads of a rare word. int16 because a treebank's ``[N, T, L]``
  grid is mostly padding: EWT's training file at 20 characters is 80 MB instead of 320;
* ``lengths``: int64 ``[N]`` words per sentence (0 for a missing or empty sentence).

A sentence longer than ``max_words`` is an error naming its row rather than cut: its words'
labels would no longer line up with the words.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from torch import Tensor

from polytask.config_errors import MAX_VOCAB, Schema, VocabSize, Width
from polytask.data.inputs.base import INPUTS, InputProcessor, StoredState, parse_state
from polytask.data.inputs.text import frequent
from polytask.data.spec import InputSpec
from polytask.errors import DataError
from polytask.tasks.kinds.tokens import is_missing_cell

PAD_ID = 0
UNKNOWN_ID = 1
_FIRST_ID = 2
#: Character ids are stored as int16 (see the module docstring).
MAX_CHARS = 2**15 - 1 - _FIRST_ID


class TokensParams(Schema):
    """Parameters of the sentence input (words and their characters)."""

    column: str = Field(
        default="form", description="column of sentences: lists of words, or whitespace-split text"
    )
    lowercase: bool = Field(
        default=True, description="lower-case words for the word vocabulary (characters keep case)"
    )
    min_frequency: int = Field(
        default=2, ge=1, description="training count for a word to get its own embedding"
    )
    max_size: VocabSize | None = Field(
        default=50_000, description="word vocabulary size cap (most frequent words)"
    )
    char_min_frequency: int = Field(
        default=1, ge=1, description="training count for a character to get its own id"
    )
    max_word_chars: Width = Field(
        default=20, le=256, description="characters kept per word (the first and last halves)"
    )
    max_words: Width = Field(
        default=1024, description="longest sentence accepted, in words (longer: an error)"
    )


class TokensState(StoredState):
    """What :class:`TokensInput` fits, as stored."""

    vocabulary: list[str] = Field(max_length=MAX_VOCAB)
    characters: list[str] = Field(max_length=MAX_CHARS)


class TokensInput(InputProcessor):
    """Sentences -> ``{"words", "chars", "lengths"}`` over fitted vocabularies."""

    name = "tokens"

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, TokensParams)
        super().__init__(params)
        self.p = params
        self.vocabulary: list[str] = []  # id i + 2 -> word
        self.characters: list[str] = []  # id i + 2 -> character
        self._word_ids: dict[str, int] = {}
        self._char_ids: dict[str, int] = {}

    @property
    def columns(self) -> list[str]:
        return [self.p.column]

    def sentences(self, df: pd.DataFrame, source: str) -> list[list[str]]:
        """The column's sentences as lists of words (empty where missing); a cell that is
        neither a list of strings nor a string is a one-line error naming the row."""
        self.require_columns(df, source)
        column = self.p.column
        out: list[list[str]] = []
        for row, cell in zip(df.index, df[column].tolist(), strict=True):
            words = _words(cell, source, column, row)
            if len(words) > self.p.max_words:
                raise DataError(
                    f"{source}: column '{column}' row {row} has {len(words)} words; at most "
                    f"data.input.max_words = {self.p.max_words}"
                )
            out.append(words)
        return out

    def _key(self, word: str) -> str:
        return word.lower() if self.p.lowercase else word

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        words: Counter[str] = Counter()
        chars: Counter[str] = Counter()
        for sentence in self.sentences(train, source):
            words.update(self._key(w) for w in sentence)
            for w in sentence:
                chars.update(w)
        self.vocabulary = frequent(words, self.p.min_frequency, self.p.max_size)
        self.characters = frequent(chars, self.p.char_min_frequency, MAX_CHARS)
        self._index()

    def _index(self) -> None:
        self._word_ids = {w: i for i, w in enumerate(self.vocabulary, start=_FIRST_ID)}
        self._char_ids = {c: i for i, c in enumerate(self.characters, start=_FIRST_ID)}

    def _char_codes(self, word: str) -> list[int]:
        width = self.p.max_word_chars
        if len(word) > width:
            head = width - width // 2
            word = word[:head] + word[len(word) - width // 2 :]
        ids = self._char_ids
        return [ids.get(c, UNKNOWN_ID) for c in word]

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        sentences = self.sentences(df, source)
        n = len(sentences)
        lengths = np.fromiter((len(s) for s in sentences), np.int64, n)
        t = max(int(lengths.max(initial=0)), 1)
        words = np.zeros((n, t), dtype=np.int64)
        chars = np.zeros((n, t, self.p.max_word_chars), dtype=np.int16)
        # Each distinct word is encoded once: a treebank repeats its few thousand words.
        cache: dict[str, tuple[int, list[int]]] = {}
        for i, sentence in enumerate(sentences):
            for j, word in enumerate(sentence):
                code = cache.get(word)
                if code is None:
                    code = cache[word] = (
                        self._word_ids.get(self._key(word), UNKNOWN_ID),
                        self._char_codes(word),
                    )
                words[i, j] = code[0]
                chars[i, j, : len(code[1])] = code[1]
        return {
            "words": torch.from_numpy(words),
            "chars": torch.from_numpy(chars),
            "lengths": torch.from_numpy(lengths),
        }

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(
            kind="tokens",
            shape=[self.p.max_word_chars],
            vocab_size=_FIRST_ID + len(self.vocabulary),
            char_vocab_size=_FIRST_ID + len(self.characters),
        )

    def state(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "characters": self.characters}

    def load_state(self, state: dict[str, Any]) -> None:
        stored = parse_state(TokensState, state)
        self.vocabulary = stored.vocabulary
        self.characters = stored.characters
        self._index()


def _words(cell: object, source: str, column: str, row: object) -> list[str]:
    """A cell's words: a list (tuple, 1-d array) of strings as it is, a string split on
    whitespace, nothing for a missing cell."""
    if is_missing_cell(cell):
        return []
    if isinstance(cell, str):
        return cell.split()
    if isinstance(cell, np.ndarray) and cell.ndim == 1:
        cell = cell.tolist()
    if isinstance(cell, list | tuple):
        for k, word in enumerate(cell):
            if not isinstance(word, str):
                raise DataError(
                    f"{source}: column '{column}' row {row}: word {k + 1} is "
                    f"{type(word).__name__} {str(word)[:30]!r}; expected a list of strings "
                    "(one per word) or a whitespace-separated string"
                )
        return list(cell)
    raise DataError(
        f"{source}: column '{column}' row {row}: expected a list of strings (one per word) or "
        f"a whitespace-separated string, got {type(cell).__name__} {str(cell)[:30]!r}"
    )


@INPUTS.register(
    "tokens",
    params=TokensParams,
    summary="a sentence per row as a list of words (CoNLL-U form): word and character ids",
)
def build_tokens(params: BaseModel) -> InputProcessor:
    return TokensInput(params)
