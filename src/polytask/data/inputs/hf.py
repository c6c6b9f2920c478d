"""Pretrained Hugging Face text encoders read from local files: the tokenizer and the
Transformer body of a model directory, and the pooling of its last hidden states into one vector
per text. The ``hf_tokens`` input (:mod:`polytask.data.inputs.text`) tokenises with it and the
``hf`` encoder (:mod:`polytask.models.text`) fine-tunes the body; all-MiniLM-L6-v2
(:mod:`polytask.data.inputs.minilm`) is one such directory.

A model is named by a local directory (what ``save_pretrained`` writes: ``config.json``, the
weights as ``model.safetensors`` and the tokenizer files) or by a Hub id already in the user's
Hugging Face cache. Everything loads with ``local_files_only=True``: nothing is downloaded, and
weights are read from safetensors only (a pickled ``pytorch_model.bin`` is refused, as
everywhere in polytask).

Pooling (``mean`` or ``cls``): the mean of the last hidden states over the real tokens is what
sentence-transformers computes for its mean-pooling models (Reimers & Gurevych,
"Sentence-BERT", EMNLP 2019); the first token's state is BERT's ``[CLS]`` representation
(Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", NAACL 2019).

``transformers`` is an optional extra (``polytask[text]``), imported inside the functions that
need it: importing it costs seconds, and a table-only run must not pay for it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytask.errors import ConfigError

EXTRA_HINT = "pip install 'polytask[text]'"
Pooling = Literal["mean", "cls"]


def trim_padding(ids: Tensor, pad_id: int = 0) -> Tensor:
    """``ids`` without the trailing columns that are padding (``pad_id``) in every row.

    Rows are left-aligned (real tokens first), so the longest row bounds the useful width;
    at least one column is kept so that an all-empty batch still has a shape.

    While the network is exported (``torch.export``, TorchScript tracing) ``ids`` pass
    untrimmed: the width would be a data-dependent shape. The encoders mask padding (bags
    leave id ``pad_id`` out, attention and pooling mask it), so the full width gives the
    same vectors; the exported graph takes any width and its runner trims before feeding
    (:mod:`polytask.export.runtime`).
    """
    if torch.compiler.is_exporting() or torch._C._is_tracing():
        return ids
    lengths = (ids != pad_id).sum(dim=1)
    width = max(int(lengths.max()), 1) if ids.shape[0] else 1
    return ids[:, :width]


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` ``[B, L, D]`` over the positions where ``mask`` ``[B, L]`` is True
    (a row without any is 0): sentence-transformers' mean pooling."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    total = (hidden * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp(min=1e-9)


def require_transformers(what: str) -> None:
    """A one-line :class:`ConfigError` naming the extra when ``transformers`` is missing."""
    try:
        import transformers  # noqa: F401  (optional extra: only checked here)
    except ImportError as exc:
        raise ConfigError(f"{what} needs the optional extra: {EXTRA_HINT} ({exc})") from None


def resolve_model_dir(path: str, key: str) -> Path:
    """The directory of the model ``path`` names: a local directory, or a Hub id (``org/name``)
    found in the local Hugging Face cache (never downloaded). ``key`` is the setting, named in
    the one-line error."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(
                f"config error: {key}: '{local}' has no config.json (save the model with "
                "save_pretrained)"
            )
        return local.resolve()
    if local.exists():
        raise ConfigError(f"config error: {key}: '{local}' is not a directory")
    require_transformers(f"{key}: a Hugging Face model")
    from huggingface_hub import snapshot_download

    try:
        # Only a Hub id of the user's cache: local_files_only never touches the network.
        cached = snapshot_download(path, local_files_only=True)
    except Exception:  # huggingface_hub raises several kinds for "not in the cache"
        raise ConfigError(
            f"config error: {key}: '{path}' is neither a directory nor a model in the local "
            "Hugging Face cache (nothing is downloaded)"
        ) from None
    return Path(cached)


@functools.lru_cache(maxsize=8)
def hf_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in ``directory``, read from local files only (cached per process:
    the table's rows and every batch use the same one)."""
    require_transformers("a Hugging Face tokenizer")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no tokenizer can be read from '{directory}': {_first(exc)}") from None


def _first(exc: Exception) -> str:
    """The first line of an exception's message (library errors span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@functools.lru_cache(maxsize=8)
def hidden_size(directory: Path) -> int:
    """The width of the model's hidden states, from its config alone (no weights read)."""
    require_transformers("a Hugging Face model")
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(directory), local_files_only=True).hidden_size)


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's padding id (0 for BERT's [PAD], 1 for RoBERTa's <pad>)."""
    pad = tokenizer.pad_token_id
    return 0 if pad is None else int(pad)


def load_hf_encoder(directory: Path, key: str = "model.encoder.path") -> nn.Module:
    """A fresh Transformer body (``AutoModel``) with the weights of ``directory``'s safetensors
    file(s), in float32 and without its pooler (neither pooling here uses it, and a layer no
    loss reaches would sit in the shared parameters without gradients)."""
    require_transformers("a Hugging Face encoder")
    from transformers import AutoConfig
    from transformers import AutoModel as _AutoModel
    from transformers.utils import logging

    # Typed Any: transformers' auto classes and logging helpers are untyped.
    auto: Any = _AutoModel
    hf_logging: Any = logging

    if torch.get_default_device().type == "meta":
        # A saved model's shapes are checked on the meta device before anything is read
        # (run/model_schema.py): the architecture is all that is needed, and weights cannot load.
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
        return _without_pooler(auto.from_config(config))

    weights = list(directory.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for g in ("*.bin", "*.pt", "*.pth") for p in directory.glob(g))
        found = f" ({', '.join(pickled)}: pickle, which polytask never loads)" if pickled else ""
        raise ConfigError(
            f"config error: {key}: '{directory}' holds no .safetensors weights{found}; save "
            "the model with save_pretrained(..., safe_serialization=True)"
        )
    # transformers draws a progress bar per load; a quiet run must stay quiet.
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            # Whatever random initialisation transformers runs before the weights overwrite it
            # must not move the seeded stream the heads are initialised from after the body.
            model, info = auto.from_pretrained(
                str(directory),
                local_files_only=True,
                use_safetensors=True,
                dtype=torch.float32,
                output_loading_info=True,
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"config error: {key}: cannot load '{directory}': {_first(exc)}"
        ) from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    # A weight missing from the file would silently start random: refuse it (the pooler is
    # dropped below, so it may be absent).
    missing = [k for k in info.get("missing_keys", []) if k.split(".")[0] != "pooler"]
    if missing:
        raise ConfigError(
            f"config error: {key}: the weights in '{directory}' lack {sorted(missing)[:3]}"
        )
    return _without_pooler(model)


def _without_pooler(model: Any) -> nn.Module:
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    module: nn.Module = model
    return module


def hf_embed(
    model: nn.Module, ids: Tensor, pad_id: int, pooling: Pooling, normalize: bool
) -> Tensor:
    """Text vectors ``[B, D]`` of token ``ids`` ``[B, L]`` (left-aligned, padded with
    ``pad_id``): the mean of the last hidden states over the real tokens, or the first
    token's, L2-normalised if ``normalize``."""
    ids = trim_padding(ids, pad_id)
    valid = ids != pad_id
    hidden = model(input_ids=ids, attention_mask=valid.long()).last_hidden_state
    pooled = masked_mean(hidden, valid) if pooling == "mean" else hidden[:, 0]
    return F.normalize(pooled, p=2.0, dim=1) if normalize else pooled
