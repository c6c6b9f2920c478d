"""Sentences as lists of words, tokenised into the sub-words of a pretrained Hugging Face
tokenizer (``data.input.name = "hf_words"``), for the ``hf_words`` encoder
(:mod:`polytask.models.hf_words`) that fine-tunes the model of the same directory and pools its
sub-word states back to one vector per word.

A row is a sentence, read as the ``tokens`` input reads it (:mod:`polytask.data.inputs.tokens`):
its column (``form`` by default, as ``data.format = "conllu"`` gives it) holds a list of words,
or a string split on whitespace. The words are the data's (gold tokens in a treebank): labels
are attached to them, so the tokenizer never re-splits the sentence into its own words. Each
word is tokenised on its own (``is_split_into_words=True``) and every sub-word keeps the index
of its word (the fast tokenizer's ``word_ids()``), which is how the encoder finds a word's
sub-words. This is the word-level fine-tuning of Devlin et al., "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding" (NAACL 2019), Section 5.3.

**Tensors** of a table of ``N`` sentences, computed once when the table is prepared (no
tokenising, and no Python per row, in the training loop):

* ``tokens``: int64 ``[N, L]`` sub-word ids with the tokenizer's special tokens (``[CLS]`` ...
  ``[SEP]`` for BERT), left-aligned and padded with its padding id; ``L`` is the longest
  sentence of the table in sub-words, at most ``max_tokens``;
* ``word_index``: int64 ``[N, L]``: the word (0-based) each sub-word belongs to, -1 for the
  special tokens and the padding;
* ``lengths``: int64 ``[N]`` words per sentence (0 for a missing or empty sentence).

**Truncation.** A sentence of more than ``max_tokens`` sub-words (the model's position limit by
default: 512 for BERT) keeps its first ``max_tokens`` (special tokens included), and a
:class:`UserWarning` counts such sentences and the words they lose. The lost words stay in
``lengths``: the encoder gives them a learned vector rather than a contextual one, so every word
still gets a prediction and its label is still scored (a silent drop would shift every metric).

Only *fast* tokenizers (those backed by the ``tokenizers`` library) give ``word_ids()``; a slow
one is a one-line error. ``transformers`` is an optional extra (``polytask[text]``), loaded by
:mod:`polytask.data.inputs.hf` when a processor is built.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from torch import Tensor

from polytask.config_errors import Schema
from polytask.data.inputs.base import INPUTS, InputProcessor
from polytask.data.inputs.hf import hf_tokenizer, pad_id_of, resolve_model_dir
from polytask.data.inputs.tokens import _words
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError

#: ``word_index`` of the special tokens and of the padding.
NO_WORD = -1


class HfWordsParams(Schema):
    """Parameters of the sub-word input of a pretrained Hugging Face tokenizer."""

    column: str = Field(
        default="form", description="column of sentences: lists of words, or whitespace-split text"
    )
    path: str = Field(
        description="directory holding the tokenizer (what save_pretrained writes), or a Hub "
        "id already in the local Hugging Face cache; the same as model.encoder.path"
    )
    max_tokens: int | None = Field(
        default=None,
        ge=3,
        le=8192,
        description="sub-words per sentence incl. special tokens (longer: cut, with a warning); "
        "default: the model's limit (512 for BERT)",
    )


@functools.lru_cache(maxsize=8)
def position_limit(directory: Path) -> int | None:
    """How many tokens the model in ``directory`` reads at most: its position table
    (``max_position_embeddings``), or less where its tokenizer says so (RoBERTa's table has 514
    rows, two of them offsets, and its tokenizer's ``model_max_length`` is 512); None for a model
    without a limit."""
    from transformers import AutoConfig  # optional extra, present once hf_tokenizer loaded

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    limits = [getattr(config, "max_position_embeddings", None)]
    limits.append(getattr(hf_tokenizer(directory), "model_max_length", None))
    # Tokenizers saved without a limit report a huge sentinel (int(1e30)); it is no limit.
    known = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(known) if known else None


class HfWordsInput(InputProcessor):
    """Sentences -> ``{"tokens", "word_index", "lengths"}``: the sub-words of a pretrained
    tokenizer and the word each belongs to (see the module docstring). Nothing is fitted: the
    vocabulary is the tokenizer's."""

    name = "hf_words"

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, HfWordsParams)
        super().__init__(params)
        self.p = params
        # Fails now, naming the setting, if the directory or its tokenizer cannot be read.
        self.directory = resolve_model_dir(params.path, "data.input.path")
        self.tokenizer = hf_tokenizer(self.directory)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(
                f"config error: data.input.path: the tokenizer in '{self.directory}' is a slow "
                f"({type(self.tokenizer).__name__}) one without word_ids(); data.input "
                "'hf_words' needs a fast tokenizer (tokenizer.json, the tokenizers library)"
            )
        limit = position_limit(self.directory)
        if params.max_tokens is not None and limit is not None and params.max_tokens > limit:
            raise ConfigError(
                f"config error: data.input.max_tokens: {params.max_tokens} sub-words, but the "
                f"model in '{self.directory}' reads at most {limit}"
            )
        self.max_tokens: int = params.max_tokens or limit or 512
        self.pad_id = pad_id_of(self.tokenizer)

    @property
    def columns(self) -> list[str]:
        return [self.p.column]

    def sentences(self, df: pd.DataFrame, source: str) -> list[list[str]]:
        """The column's sentences as lists of words (empty where missing); a cell that is
        neither a list of strings nor a string is a one-line error naming the column and row."""
        self.require_columns(df, source)
        column = self.p.column
        return [
            _words(cell, source, column, row)
            for row, cell in zip(df.index, df[column].tolist(), strict=True)
        ]

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        self.sentences(train, source)  # the column's checks; nothing is learned

    def encode(self, sentences: list[list[str]], source: str) -> list[tuple[list[int], list[int]]]:
        """Each sentence's sub-word ids and word indices (:data:`NO_WORD` for special tokens),
        at most ``max_tokens`` of them; a warning counts the sentences cut."""
        if not sentences:
            return []
        tokenizer = self.tokenizer
        # Untruncated first, so a cut can be counted; verbose=False: transformers' own warning
        # about a sequence longer than the model would repeat ours in other words.
        full = tokenizer(sentences, is_split_into_words=True, truncation=False, verbose=False)
        rows = [(full["input_ids"][i], full.word_ids(i)) for i in range(len(sentences))]
        long = [i for i, (ids, _) in enumerate(rows) if len(ids) > self.max_tokens]
        lost = 0
        if long:
            # Re-tokenised with truncation so the special tokens ([SEP]) stay at the end.
            cut = tokenizer(
                [sentences[i] for i in long],
                is_split_into_words=True,
                truncation=True,
                max_length=self.max_tokens,
            )
            for k, i in enumerate(long):
                rows[i] = (cut["input_ids"][k], cut.word_ids(k))
                kept = max((w for w in rows[i][1] if w is not None), default=-1)
                lost += len(sentences[i]) - 1 - kept
            warnings.warn(
                f"{source}: column '{self.p.column}': {len(long)} of {len(sentences)} sentences "
                f"have more than data.input.max_tokens = {self.max_tokens} sub-words and are "
                f"cut; their last {lost} words get no context (a learned vector instead)",
                UserWarning,
                stacklevel=3,
            )
        return [(ids, [NO_WORD if w is None else w for w in words]) for ids, words in rows]

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        sentences = self.sentences(df, source)
        # An empty sentence is not tokenised: some tokenizers refuse an empty word list.
        present = [i for i, s in enumerate(sentences) if s]
        encoded = self.encode([sentences[i] for i in present], source)
        n = len(sentences)
        width = max((len(ids) for ids, _ in encoded), default=1)
        tokens = np.full((n, width), self.pad_id, dtype=np.int64)
        word_index = np.full((n, width), NO_WORD, dtype=np.int64)
        for i, (ids, words) in zip(present, encoded, strict=True):
            tokens[i, : len(ids)] = ids
            word_index[i, : len(words)] = words
        lengths = np.fromiter((len(s) for s in sentences), np.int64, n)
        return {
            "tokens": torch.from_numpy(tokens),
            "word_index": torch.from_numpy(word_index),
            "lengths": torch.from_numpy(lengths),
        }

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(kind="subwords", shape=[self.max_tokens], vocab_size=len(self.tokenizer))

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


@INPUTS.register(
    "hf_words",
    params=HfWordsParams,
    summary="a sentence per row as a list of words: a local Hugging Face tokenizer's sub-words "
    "and their word indices (needs polytask[text])",
)
def build_hf_words(params: BaseModel) -> InputProcessor:
    return HfWordsInput(params)
