"""What the data hands to the models: :class:`InputSpec` describes the encoded inputs (their
modality, widths, shapes, vocabulary, sample rate), so encoders can be built for them and reject
inputs they cannot read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from polytask.errors import ConfigError

InputKind = Literal["table", "image", "audio", "text"]


@dataclass
class InputSpec:
    """What the encoded inputs look like, as an encoder needs to know it.

    Attributes:
        n_numeric: tables: width of the dense block (standardised numbers, one-hot columns).
        cardinalities: tables: vocabulary size of each embedded categorical column.
        kind: the input modality; each encoder accepts some kinds only.
        shape: per-example shape of the main input tensor: images ``(C, H, W)``, audio
            ``(samples,)``, text ``(tokens,)``; empty for tables.
        vocab_size: text: number of token ids (0 is padding).
        sample_rate: audio: samples per second.
    """

    n_numeric: int = 0
    cardinalities: list[int] = field(default_factory=list)
    kind: InputKind = "table"
    shape: list[int] = field(default_factory=list)
    vocab_size: int = 0
    sample_rate: int = 0

    def require(self, kind: str, encoder: str) -> None:
        """Raise a :class:`ConfigError` unless the inputs are of ``kind``."""
        if self.kind != kind:
            raise ConfigError(
                f"config error: model.encoder: encoder {encoder!r} reads {kind} inputs, but the "
                f"data gives {self.kind} inputs (set data.input or choose another encoder)"
            )
