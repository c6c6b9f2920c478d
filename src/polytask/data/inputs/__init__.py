"""Input processors for non-tabular data: images, audio, text and molecules (SMILES).
Importing the package registers every processor in :data:`INPUTS`."""

from polytask.data.inputs import (
    audio,  # noqa: F401  (importing registers the processor)
    hf_words,  # noqa: F401  (importing registers the processor)
    image,  # noqa: F401  (importing registers the processor)
    multi,  # noqa: F401  (importing registers the processor)
    smiles,  # noqa: F401  (importing registers the processor)
    table,  # noqa: F401  (importing registers the processor)
    text,  # noqa: F401  (importing registers the processors)
    tokens,  # noqa: F401  (importing registers the processor)
)
from polytask.data.inputs.base import INPUTS, InputProcessor, input_from_dict

__all__ = ["INPUTS", "InputProcessor", "input_from_dict"]
