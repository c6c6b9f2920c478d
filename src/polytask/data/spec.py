"""What the data hands to the models: :class:`InputSpec` describes the encoded inputs (their
modality, widths, shapes, vocabulary, sample rate), so encoders can be built for them and reject
inputs they cannot read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from polytask.errors import ConfigError

InputKind = Literal["table", "image", "audio", "text", "multi", "tokens", "graph", "subwords"]


@dataclass
class InputSpec:
    """What the encoded inputs look like, as an encoder needs to know it.

    Attributes:
        n_numeric: tables: width of the dense block (standardised numbers, one-hot columns).
        cardinalities: tables: vocabulary size of each embedded categorical column.
        kind: the input modality; each encoder accepts some kinds only. ``subwords``:
            sentences of words in a pretrained tokenizer's sub-words (``data.input.name =
            "hf_words"``): ``shape`` is ``(sub-words per sentence,)``, ``vocab_size`` the
            tokenizer's.
        shape: per-example shape of the main input tensor: images ``(C, H, W)``, audio
            ``(samples,)``, text ``(tokens,)``; empty for tables.
        vocab_size: text: number of token ids (0 is padding).
        sample_rate: audio: samples per second.
        char_vocab_size: tokens (sentences as lists of words, ``data.input.name =
            "tokens"``): number of character ids (0 is padding); ``vocab_size`` counts the word
            ids and ``shape`` is ``(characters per word,)``.
        parts: multi (several named inputs per example, ``[data.inputs]``): each input's own
            spec by input name; empty for the other kinds.
        numeric_at: tables fitted with ``data.numeric_bins``: the dense position of each
            numeric column's standardised value (what numeric embeddings embed; missing
            indicators and one-hot columns are not numbers); empty otherwise.
        numeric_bins: with ``numeric_at``: each of those columns' quantile bin edges, in
            standardised units, fitted on the training rows (piecewise-linear embeddings).
    """

    n_numeric: int = 0
    cardinalities: list[int] = field(default_factory=list)
    kind: InputKind = "table"
    shape: list[int] = field(default_factory=list)
    vocab_size: int = 0
    sample_rate: int = 0
    char_vocab_size: int = 0
    parts: dict[str, InputSpec] = field(default_factory=dict)
    numeric_at: list[int] = field(default_factory=list)
    numeric_bins: list[list[float]] = field(default_factory=list)

    def require(self, kind: str, encoder: str) -> None:
        """Raise a :class:`ConfigError` unless the inputs are of ``kind``."""
        if self.kind != kind:
            raise ConfigError(
                f"config error: model.encoder: encoder {encoder!r} reads {kind} inputs, but the "
                f"data gives {self.kind} inputs (set data.input or choose another encoder)"
            )
