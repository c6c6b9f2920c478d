"""Encoders, sharing architectures and heads. Importing the package registers every encoder and
architecture module in the registries."""

from polytask.models import cnn  # noqa: F401  (importing registers the encoder)
