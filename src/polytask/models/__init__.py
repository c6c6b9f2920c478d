"""Encoders, sharing architectures and heads. Importing the package registers every encoder and
architecture module in the registries."""

from polytask.models import (
    audio,  # noqa: F401  (importing registers the encoder)
    cnn,  # noqa: F401  (importing registers the encoder)
    fusion,  # noqa: F401  (importing registers the encoder)
    hf_words,  # noqa: F401  (importing registers the encoder)
    mpnn,  # noqa: F401  (importing registers the dmpnn and gin encoders)
    mtan,  # noqa: F401  (importing registers the architecture)
    pretrained,  # noqa: F401  (importing registers the encoder; timm itself is lazy)
    sequence,  # noqa: F401  (importing registers the encoder)
    text,  # noqa: F401  (importing registers the encoders)
)
