"""Token encoders: a sentence's words in, one vector per word out (``[B, T', D]``).

``tokens`` reads the ``tokens`` input (:mod:`polytask.data.inputs.tokens`: word ids, character
ids, lengths) and is the shared encoder of the "shared encoder with task-specific decoders"
language model: every token-level task (tags, morphology, entities, dependency arcs) reads
its per-word vectors, and sentence-level tasks read their mean.

* **Word embeddings** (id 0 padding, id 1 unknown) concatenated with **character features**:
  a character CNN over each word, max-pooled over its characters (Ma & Hovy, "End-to-end
  Sequence Labeling via Bi-directional LSTM-CNNs-CRF", ACL 2016), which describe the rare and
  unseen words that share the unknown word id (suffixes, capitals, digits);
* a **body**: a BiLSTM over the words, packed by length so padding never enters the
  recurrence (Hochreiter & Schmidhuber 1997; the BiLSTM tagger of Plank, Søgaard & Goldberg,
  ACL 2016 and the parser of Kiperwasser & Goldberg, TACL 2016), or a small pre-layer-norm
  **Transformer** encoder (Vaswani et al. 2017) with sinusoidal positions and a key padding
  mask;
* dropout on the embeddings and on the output (Dozat & Manning's 0.33 by default, "Deep
  Biaffine Attention for Neural Dependency Parsing", ICLR 2017).

**While the network is exported** (``torch.export``, TorchScript tracing: see
:func:`exporting`) the forward pass avoids what an ONNX graph cannot hold: it does not trim to
the longest sentence (a data-dependent shape; the exported graph's runner trims before feeding
instead), runs the character CNN on the whole ``[B, T]`` grid rather than on the gathered real
words (a data-dependent count; padding words have no characters, so their features are the
same zeros), and runs the BiLSTM without ``pack_padded_sequence`` (:func:`bilstm_padded`:
each direction on the padded batch, the backward one on every sentence reversed within its
length), which gives the same outputs at every real word.

**The sequence contract** (:attr:`polytask.models.encoders.Encoder.sequence`): the output is
trimmed to the longest sentence of the batch (``T' <= T``, the input's padded width), and the
positions past each sentence's end are **exact zeros**. That zero padding is how the mask
reaches what reads the representation without a second tensor beside it (heads read one
representation, in representation mode a detached copy of it): sentence-level heads average
the non-zero positions (:func:`polytask.models.heads.masked_mean_words`), token heads keep
zeros there (:class:`polytask.tasks.kinds.token_classification.TokenHead`). A real word's
vector is never exactly zero: it is the output of a recurrence (tanh) or of a layer norm with
a bias, and dropout would have to drop all D of its entries at once.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from polytask.config_errors import Layers, Schema, Width
from polytask.data.spec import InputSpec
from polytask.errors import ConfigError
from polytask.models.encoders import ENCODERS, Encoder
from polytask.models.text import pre_ln_transformer


class TokenEncoderParams(Schema):
    """Parameters of the token encoder."""

    word_dim: Width = Field(default=100, description="word embedding width")
    char_dim: int = Field(
        default=32, ge=0, le=1024, description="character embedding width (0: no characters)"
    )
    char_filters: Width = Field(default=64, description="character CNN filters (features)")
    char_kernel: int = Field(default=3, ge=1, le=9, description="character CNN kernel width")
    body: Literal["bilstm", "transformer"] = Field(
        default="bilstm", description="the contextual layers over the words"
    )
    width: Width = Field(
        default=256, ge=8, description="output width per word (a BiLSTM: half per direction)"
    )
    layers: Layers = Field(default=2, description="BiLSTM or Transformer layers")
    heads: Layers = Field(default=4, description="transformer: attention heads (divide width)")
    dropout: float = Field(
        default=0.33, ge=0.0, lt=1.0, description="dropout on the embeddings and the output"
    )
    word_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="training: probability of replacing a word by the unknown id",
    )


class CharCNN(nn.Module):
    """Character embeddings, one convolution and a max over each word's characters."""

    def __init__(self, n_chars: int, dim: int, filters: int, kernel: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_chars, dim, padding_idx=0)
        self.conv = nn.Conv1d(dim, filters, kernel, padding=kernel // 2)
        self.out_dim = filters

    def forward(self, chars: Tensor) -> Tensor:
        """``[n, L]`` character ids (0 padding) -> ``[n, filters]``."""
        h = self.conv(self.embedding(chars.long()).transpose(1, 2))[..., : chars.shape[1]]
        # Padding characters must not win the max (a short word would read its padding).
        h = h.masked_fill((chars == 0).unsqueeze(1), -math.inf)
        pooled = h.amax(dim=2)
        return torch.where(torch.isfinite(pooled), pooled, torch.zeros((), dtype=pooled.dtype))


class TokenEncoder(Encoder):
    """Words and characters -> contextual word vectors ``[B, T', width]``, zero past each
    sentence's end (see the module docstring)."""

    sequence = True

    def __init__(self, spec: InputSpec, params: TokenEncoderParams) -> None:
        super().__init__()
        spec.require("tokens", "tokens")
        if spec.vocab_size < 2:
            raise ConfigError("config error: model.encoder: the tokens input has no vocabulary")
        if params.body == "bilstm" and params.width % 2:
            raise ConfigError(
                f"config error: model.encoder.width: a BiLSTM splits the width over two "
                f"directions; {params.width} is odd"
            )
        if params.body == "transformer" and params.width % params.heads:
            raise ConfigError(
                f"config error: model.encoder.heads: {params.heads} heads do not divide "
                f"width {params.width}"
            )
        self.params = params
        self.words = nn.Embedding(spec.vocab_size, params.word_dim, padding_idx=0)
        nn.init.normal_(self.words.weight, std=1.0 / math.sqrt(params.word_dim))
        with torch.no_grad():
            self.words.weight[0].zero_()
        in_dim = params.word_dim
        self.chars: CharCNN | None = None
        if params.char_dim > 0 and spec.char_vocab_size > 2:
            self.chars = CharCNN(
                spec.char_vocab_size, params.char_dim, params.char_filters, params.char_kernel
            )
            in_dim += self.chars.out_dim
        self.dropout = nn.Dropout(params.dropout)
        self.lstm: nn.LSTM | None = None
        self.transformer: nn.TransformerEncoder | None = None
        if params.body == "bilstm":
            self.lstm = nn.LSTM(
                in_dim,
                params.width // 2,
                num_layers=params.layers,
                batch_first=True,
                bidirectional=True,
                dropout=params.dropout if params.layers > 1 else 0.0,
            )
        else:
            self.project = nn.Linear(in_dim, params.width)
            self.transformer = pre_ln_transformer(
                params.width, params.heads, params.layers, params.dropout
            )
        self.out_dim = params.width

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        lengths = inputs["lengths"]
        export = exporting()
        if export:
            # No trimming: the width would be a data-dependent shape (module docstring).
            t = inputs["words"].shape[1]
        else:
            # Trim to the batch's longest sentence: one host synchronisation, and every layer
            # after it works on T' positions instead of the table's T.
            t = max(int(lengths.max()), 1) if lengths.numel() else 1
        words = inputs["words"][:, :t]
        real = torch.arange(t, device=words.device) < lengths.unsqueeze(1)
        if self.training and self.params.word_dropout > 0:
            dropped = torch.rand(words.shape, device=words.device) < self.params.word_dropout
            words = words.masked_fill(dropped & (words > 0), 1)
        x = self.words(words)
        if self.chars is not None:
            if export:
                # Every position of the grid: a padding word's characters are all padding,
                # so the CNN gives it zeros, as the gathered version leaves it.
                grid = inputs["chars"][:, :t]
                flat = self.chars(grid.flatten(0, 1)).to(x.dtype)
                features = flat.reshape(grid.shape[0], grid.shape[1], self.chars.out_dim)
                features = torch.where(real.unsqueeze(-1), features, torch.zeros((), dtype=x.dtype))
            else:
                # The CNN runs on the real words only: most of a [B, T', L] grid is padding.
                chars = inputs["chars"][:, :t][real]
                features = x.new_zeros(*words.shape, self.chars.out_dim)
                features[real] = self.chars(chars).to(x.dtype)
            x = torch.cat([x, features], dim=-1)
        x = self.dropout(x)
        if self.lstm is not None:
            if export:
                h = bilstm_padded(self.lstm, x, lengths)
            else:
                packed = pack_padded_sequence(
                    x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
                )
                out, _ = self.lstm(packed)
                h, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        else:
            assert self.transformer is not None
            position = (_sinusoid_export if export else _sinusoid)(
                t, self.out_dim, x.device, x.dtype
            )
            h = self.project(x) + position
            # A sentence of no words would have every key masked (softmax over nothing =
            # NaN): let it attend to its first position; it is zeroed below anyway.
            # (Out of place: the TorchScript exporter has no in-place and.)
            first = ~real[:, :1] & real.any(dim=1, keepdim=True)
            padding = torch.cat([first, ~real[:, 1:]], dim=1)
            h = self.transformer(h, src_key_padding_mask=padding)
        h = self.dropout(h)
        return torch.where(real.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype))


def exporting() -> bool:
    """Whether the module is being exported (``torch.export`` / dynamo, or TorchScript
    tracing), as :func:`polytask.data.inputs.hf.trim_padding` tells it."""
    return bool(torch.compiler.is_exporting() or torch._C._is_tracing())


def _reverse_within(lengths: Tensor, t: int) -> Tensor:
    """``[B, T]`` positions that reverse each sentence within its length: position ``i <
    n`` reads ``n - 1 - i``; padding positions read themselves (an involution)."""
    position = torch.arange(t, device=lengths.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return torch.where(position < n, n - 1 - position, position)


def bilstm_padded(lstm: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
    """A bidirectional, batch-first ``lstm`` over the padded ``x`` (``[B, T, D]``, real words
    first) without ``pack_padded_sequence``, equal to the packed run at every real word.

    Layer by layer: the forward direction runs on the padded batch (trailing padding comes
    after every real word, so it never reaches one); the backward direction runs forward on
    each sentence reversed within its length (a gather by :func:`_reverse_within`, which keeps
    the padding trailing) and its output is reversed back by the same gather. The two
    directions are concatenated as ``nn.LSTM`` does, with its dropout between layers. Values
    at padding positions differ from the packed run's zeros (callers zero them). Each call is
    a plain unidirectional ``torch.lstm``, which the ONNX exporters write as an ``LSTM`` node
    with a dynamic sequence length."""
    if not (lstm.bidirectional and lstm.batch_first) or lstm.proj_size:
        raise ValueError("bilstm_padded: expected a batch-first bidirectional nn.LSTM")
    index = _reverse_within(lengths, x.shape[1]).unsqueeze(-1)
    batch = x.shape[0]
    for layer in range(lstm.num_layers):
        outputs = []
        for suffix in ("", "_reverse"):
            names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
            if lstm.bias:
                names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
            weights = [getattr(lstm, n) for n in names]
            source = x if not suffix else x.gather(1, index.expand(-1, -1, x.shape[2]))
            zeros = x.new_zeros(1, batch, lstm.hidden_size)
            out = torch.lstm(
                source, (zeros, zeros), weights, lstm.bias, 1, 0.0, False, False, True
            )[0]
            if suffix:
                out = out.gather(1, index.expand(-1, -1, out.shape[2]))
            outputs.append(out)
        x = torch.cat(outputs, dim=-1)
        if layer < lstm.num_layers - 1 and lstm.dropout > 0:
            x = F.dropout(x, lstm.dropout, lstm.training)
    return x


def _sinusoid_export(length: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """:func:`_sinusoid` without writes into slices (the exporters trace a dynamic
    ``length``): the sine and cosine columns interleaved by a stack, the same values."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(
        torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    angle = position * rate  # [length, ceil(width / 2)]
    half = width // 2
    pairs = torch.stack([torch.sin(angle[:, :half]), torch.cos(angle[:, :half])], dim=-1)
    table = pairs.flatten(1)
    if width % 2:
        table = torch.cat([table, torch.sin(angle[:, half:])], dim=1)
    return table.to(dtype)


def _sinusoid(length: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The fixed sine/cosine position encodings of Vaswani et al. (2017), ``[length, width]``:
    no learned table, so no sentence is too long for it."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(
        torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: width // 2])
    return table.to(dtype)


@ENCODERS.register(
    "tokens",
    params=TokenEncoderParams,
    summary="sentences: word + character-CNN embeddings, BiLSTM or Transformer; a vector per word",
)
def build_tokens(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, TokenEncoderParams)
    return TokenEncoder(spec, params)
