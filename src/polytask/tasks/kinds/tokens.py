"""Helpers shared by the token-level kinds (``token_classification``, ``dependency``).

The contract between token-level data, encoders and kinds (issue 22):

* A sentence is a row; a token-level column holds one list per row, one entry per syntactic
  word (CoNLL-U's word lines; multi-word token ranges and empty nodes are not words, see
  :mod:`polytask.data.conllu`). A missing cell (``None``, NaN) is a sentence without labels.
* Token-level targets are ``[N, T]`` tensors (int64 labels, bool mask) with ``T`` the longest
  sentence of the table being encoded (:func:`pad_lists`); positions past a sentence's end are
  masked out.
* A token encoder returns ``[B, T', D]`` with ``T'`` the longest sentence *of the batch*
  (``T' <= T``: trimmed, so a batch of short sentences does not pay for the longest one of the
  table); a kind's output is ``[B, T', ...]`` and the kind reads its targets and masks through
  :func:`fit_length`, which slices (or, should a table's target column be shorter than its
  input column, pads) them to the output's length.

Only :mod:`numpy`, :mod:`pandas` and :mod:`torch` are imported, so every layer can use these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from polytask.errors import DataError

#: CoNLL-U's "unspecified" value (every field but FORM and LEMMA).
UNSPECIFIED = "_"


def is_missing_cell(value: object) -> bool:
    """A cell meaning "no list for this row": ``None``, NaN or ``pd.NA``."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and value != value


def list_cell(value: object, source: str, column: str, row: object) -> list[Any] | None:
    """The list held by a token-level cell (a list, tuple or 1-d array), ``None`` for a
    missing cell; anything else is a one-line :class:`DataError` naming the column and row."""
    if is_missing_cell(value):
        return None
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return list(value.tolist())
    raise DataError(
        f"{source}: column '{column}' row {row}: expected a list of tokens (one per word, "
        f"as data.format = 'conllu' gives), got {type(value).__name__} {_short(value)}"
    )


def list_column(series: pd.Series, source: str) -> list[list[Any] | None]:
    """Every cell of a token-level column as a list (``None`` where missing), checked by
    :func:`list_cell`."""
    column = str(series.name)
    return [
        list_cell(v, source, column, row)
        for row, v in zip(series.index, series.tolist(), strict=True)
    ]


def sentence_lengths(lists: Sequence[Sequence[Any] | None]) -> np.ndarray:
    """The number of words of each row (0 for a missing row), int64."""
    return np.fromiter((0 if x is None else len(x) for x in lists), np.int64, len(lists))


def pad_lists(
    lists: Sequence[Sequence[int] | None], length: int | None = None, fill: int = 0
) -> tuple[Tensor, Tensor]:
    """Integer lists padded into an ``[N, T]`` int64 tensor (``fill`` past each list's end)
    and the ``[N, T]`` bool mask of the real entries; ``T`` is ``length`` or the longest list
    (at least 1, so an all-empty table still has a token dimension). A list longer than
    ``length`` is cut."""
    lengths = sentence_lengths(lists)
    t = int(length if length is not None else max(int(lengths.max(initial=0)), 1))
    values = np.full((len(lists), t), fill, dtype=np.int64)
    for i, row in enumerate(lists):
        if row:
            n = min(len(row), t)
            values[i, :n] = row[:n]
    return torch.from_numpy(values), length_mask(torch.from_numpy(np.minimum(lengths, t)), t)


def encode_list_column(
    series: pd.Series,
    source: str,
    encode: Callable[[Any, int, int], int | None],
    length: int | None = None,
) -> tuple[Tensor, Tensor]:
    """A token-level column as ``[N, T]`` int64 codes and a bool mask (see the module's
    contract). ``encode(value, row_position, word_position)`` maps one entry to its code, or
    ``None`` for an entry without a label (masked, code 0); it raises a :class:`DataError`
    for a bad value. Missing rows are fully masked."""
    lists = list_column(series, source)
    lengths = sentence_lengths(lists)
    t = int(length if length is not None else max(int(lengths.max(initial=0)), 1))
    codes = np.zeros((len(lists), t), dtype=np.int64)
    valid = np.zeros((len(lists), t), dtype=bool)
    for i, row in enumerate(lists):
        if row is None:
            continue
        for j, value in enumerate(row[:t]):
            code = encode(value, i, j)
            if code is not None:
                codes[i, j] = code
                valid[i, j] = True
    return torch.from_numpy(codes), torch.from_numpy(valid)


def length_mask(lengths: Tensor, length: int) -> Tensor:
    """``[N, length]`` bool: True at the positions before each row's length."""
    return torch.arange(length, device=lengths.device) < lengths.unsqueeze(-1)


def fit_length(values: Tensor, length: int, fill: float | bool = 0) -> Tensor:
    """``values`` (``[N, T, ...]``) cut or padded along dim 1 to ``length``: how a kind lines
    its ``[N, T]`` targets and masks up with an output trimmed to the batch's longest sentence
    (``T' = output.shape[1]``). Cutting drops only padding: positions past ``T'`` are past
    every sentence of the batch, hence masked out."""
    t = values.shape[1]
    if t == length:
        return values
    if t > length:
        return values[:, :length]
    pad = values.new_full((values.shape[0], length - t, *values.shape[2:]), fill)
    return torch.cat([values, pad], dim=1)


def fit_targets(output: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``target`` and ``mask`` lined up with ``output``'s token dimension (dim 1)."""
    length = output.shape[1]
    return fit_length(target, length), fit_length(mask, length, False)


def pad_rows(tensors: Sequence[Tensor], fill: float = 0.0) -> Tensor:
    """Tensors whose dims after the first may differ (outputs of batches trimmed to their own
    longest sentence) padded with ``fill`` to the largest shape and concatenated along dim 0."""
    if not tensors:
        raise ValueError("pad_rows needs at least one tensor")
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        if list(t.shape[1:]) != shape:
            full = t.new_full((t.shape[0], *shape), fill)
            index = (slice(None), *(slice(0, s) for s in t.shape[1:]))
            full[index] = t
            t = full
        padded.append(t)
    return torch.cat(padded)


def per_sentence(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows of a padded ``[N, T]`` array cut to each sentence's length, as an object column of
    lists (what a token-level prediction column holds)."""
    column = np.empty(len(lengths), dtype=object)
    column[:] = [values[i, : int(n)].tolist() for i, n in enumerate(lengths)]
    return column


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
