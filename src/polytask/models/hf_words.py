"""``hf_words``: a pretrained Hugging Face encoder fine-tuned for word-level tasks, its sub-word
states pooled back to one vector per word (``[B, T', D]``, a sequence encoder).

It reads the ``hf_words`` input of the same model directory (:mod:`polytask.data.inputs.hf_words`:
sub-word ids, the word each sub-word belongs to, words per sentence), runs the Transformer body
(BERT, RoBERTa, DistilBERT, MiniLM, ...; :func:`polytask.data.inputs.hf.load_hf_encoder`) and
pools its last hidden states to the sentence's words:

* ``first``: the state of each word's first sub-word, as Devlin et al. fine-tune BERT for named
  entities ("BERT: Pre-training of Deep Bidirectional Transformers for Language
  Understanding", NAACL 2019, Section 5.3: "we use the representation of the first sub-token
  as the input to the token-level classifier");
* ``mean``: the mean of the states of each word's sub-words.

Both are one scatter over the batch (``index_add_`` / ``index_copy_`` on the flattened
``[B * T', D]`` grid), with no loop over sentences or words.

**The sequence contract** of :mod:`polytask.models.sequence` holds, so every token-level kind
(``token_classification``, ``dependency``) and the sentence-level heads (the mean of the word
vectors) work unchanged: the output is trimmed to the batch's longest sentence in words and is
**exactly zero** past each sentence's end. A word none of whose sub-words reached the model (cut
by ``data.input.max_tokens``, or a word the tokenizer turns into nothing, such as a lone
zero-width space) gets a learned vector instead: zero would read as "no word" to the heads, and
the word would lose its prediction.

Freezing, layer-wise learning rates and gradual unfreezing (``[finetune]``) see the body's
embeddings and each Transformer layer, as for the sentence-level ``hf`` encoder
(:class:`polytask.models.text.PretrainedTextEncoder`, which this class extends); so does
``train_layers``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from polytask.data.inputs.hf import resolve_model_dir, trim_padding
from polytask.data.inputs.hf_words import NO_WORD
from polytask.data.spec import InputSpec
from polytask.models.encoders import ENCODERS, Encoder
from polytask.models.text import PretrainedTextEncoder, PretrainedTextParams

WordPooling = Literal["first", "mean"]


class HfWordsParams(PretrainedTextParams):
    """Parameters of the word-level fine-tuned Hugging Face encoder."""

    path: str = Field(
        description="directory of the model (config.json, model.safetensors, tokenizer files, "
        "as save_pretrained writes them), or a Hub id already in the local Hugging Face cache; "
        "the same as data.input.path; nothing is downloaded"
    )
    pooling: WordPooling = Field(
        default="first",
        description="a word's vector: its first sub-word's state (Devlin et al. 2019) or the "
        "mean of its sub-words' states",
    )
    dropout: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="dropout on the word vectors (BERT's 0.1 before its token classifier)",
    )
    normalize: bool = Field(default=False, description="L2-normalise each word vector")


class HfWordsEncoder(PretrainedTextEncoder):
    """Sub-words -> the pretrained body's last hidden states -> one vector per word
    ``[B, T', D]``, zero past each sentence's end (see the module docstring)."""

    sequence = True

    def __init__(self, spec: InputSpec, params: HfWordsParams) -> None:
        directory = resolve_model_dir(params.path, "model.encoder.path")
        super().__init__(
            spec, "hf_words", directory, params, input_hint="hf_words", kind="subwords"
        )
        self.word_pooling: WordPooling = params.pooling
        self.dropout = nn.Dropout(params.dropout)
        # The vector of a word no sub-word of which reached the body (see the module docstring),
        # registered after the body so that [finetune] counts it with the top layer.
        self.uncovered = UncoveredWord(self.out_dim)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        lengths = inputs["lengths"]
        # Trim to the batch's longest sentence (in words, then in sub-words): one host
        # synchronisation each, and the body runs on the sub-words the batch has.
        t = max(int(lengths.max()), 1) if lengths.numel() else 1
        ids = trim_padding(inputs["tokens"], self.pad_id)
        word_index = inputs["word_index"][:, : ids.shape[1]]
        attention = ids != self.pad_id
        # A sentence of no words is all padding: attending to nothing is a softmax over no
        # keys (NaN in some attention kernels); it attends to its first position instead and
        # gets zeros below anyway.
        attention[:, 0] = True
        hidden = self.body(input_ids=ids, attention_mask=attention.long()).last_hidden_state
        words, covered = pool_words(hidden, word_index, t, self.word_pooling)
        real = torch.arange(t, device=ids.device) < lengths.unsqueeze(1)
        words = torch.where(
            (real & ~covered).unsqueeze(-1), self.uncovered.vector.to(words.dtype), words
        )
        if self.normalize:
            words = F.normalize(words, p=2.0, dim=-1)
        words = self.dropout(words)
        return torch.where(real.unsqueeze(-1), words, torch.zeros((), dtype=words.dtype))


class UncoveredWord(nn.Module):
    """The learned vector of a word without sub-words in the body's input. A module of its own,
    after the body: :mod:`polytask.train.freeze` puts a module of one-dimensional parameters in
    the layer before it (the top Transformer layer), not in a layer of its own below the
    embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        # BERT's initialisation scale; never exactly zero (zero means "no word" downstream).
        self.vector = nn.Parameter(torch.randn(dim) * 0.02)


def pool_words(
    hidden: Tensor, word_index: Tensor, n_words: int, pooling: WordPooling
) -> tuple[Tensor, Tensor]:
    """Sub-word states ``hidden`` ``[B, L, D]`` pooled to words: ``[B, n_words, D]`` (zero for
    a word without sub-words) and the ``[B, n_words]`` bool mask of the words that have some.

    ``word_index`` ``[B, L]`` holds each sub-word's word (:data:`NO_WORD` for special tokens
    and padding; indices at or past ``n_words`` are ignored). ``first`` takes each word's
    first sub-word, ``mean`` averages its sub-words."""
    b, length, d = hidden.shape
    keep = (word_index != NO_WORD) & (word_index < n_words)
    rows = torch.arange(b, device=hidden.device).unsqueeze(1).expand(b, length)
    # Every kept sub-word's slot in the flattened [B * n_words] grid of words.
    slot = (rows * n_words + word_index.clamp(min=0))[keep]
    states = hidden[keep]
    counts = torch.zeros(b * n_words, device=hidden.device, dtype=hidden.dtype)
    counts.index_add_(0, slot, torch.ones_like(slot, dtype=hidden.dtype))
    out = hidden.new_zeros(b * n_words, d)
    if pooling == "mean":
        out.index_add_(0, slot, states)
        out = out / counts.clamp(min=1).unsqueeze(1)
    else:
        # A word's first sub-word is the kept sub-word whose previous one belongs to another
        # word (or is a special token): the sub-words of a word are contiguous.
        previous = F.pad(word_index[:, :-1], (1, 0), value=NO_WORD)
        first = (keep & (word_index != previous))[keep]
        out.index_copy_(0, slot[first], states[first])
    return out.view(b, n_words, d), (counts > 0).view(b, n_words)


@ENCODERS.register(
    "hf_words",
    params=HfWordsParams,
    summary="sentences: a pretrained Hugging Face encoder from a local directory, fine-tuned, "
    "sub-words pooled to a vector per word (needs polytask[text])",
)
def build_hf_words(spec: InputSpec, params: BaseModel) -> Encoder:
    assert isinstance(params, HfWordsParams)
    return HfWordsEncoder(spec, params)
