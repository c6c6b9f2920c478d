"""Encoders, sharing architectures and heads. Importing the package registers every encoder and
architecture module in the registries."""

from polytask.models import (
    audio,  # noqa: F401  (importing registers the encoder)
    cnn,  # noqa: F401  (importing registers the encoder)
    mtan,  # noqa: F401  (importing registers the architecture)
    pretrained,  # noqa: F401  (importing registers the encoder; timm itself is lazy)
    text,  # noqa: F401  (importing registers the encoders)
)
