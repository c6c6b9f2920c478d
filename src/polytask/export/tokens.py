"""Export of models on the ``tokens`` input (sentences as lists of words): the token-level
kinds' outputs as ONNX nodes after the network, and their prediction columns from those
outputs.

**Inputs.** The network starts at the tensors :class:`~polytask.data.inputs.tokens.TokensInput`
produces (:func:`polytask.export.network.network_inputs`): ``words`` int64 ``[B, T]`` (word
ids, 0 past each sentence's end), ``chars`` int16 ``[B, T, max_word_chars]`` (character ids,
0 padding) and ``lengths`` int64 ``[B]``; ``words`` and ``chars`` share one dynamic axis
``words`` (``1 <= T <= max_words``). Encoding words is a dictionary lookup with no standard
ONNX operator, so it stays outside the graph: the vocabularies are in the metadata
(``polytask.preprocessing``) and the steps in ``polytask.input_processor``
(:mod:`polytask.export.processors`); :class:`~polytask.export.runtime.OnnxPredictor` runs the
processor itself. While exported, the token encoder neither trims nor packs
(:mod:`polytask.models.sequence`), so the graph computes on the width it is given; every
output is as wide as ``T`` and holds padding past each sentence's end.

**Outputs** per task kind (:func:`token_output_names` lists them, with their types, in the
metadata ``polytask.outputs``):

* ``token_classification`` ``<task>``: per word the label (``ai.onnx.ml`` ``LabelEncoder`` of
  the class index; ``""`` past a sentence's end), ``<task>_index`` the class index (-1 there),
  ``<task>_proba`` the softmax probabilities (NaN there) and ``<task>_lengths`` the words per
  sentence read from the logits as the kind's ``decode`` reads them (one past the last word
  whose logits are not all zero; -1 for a sentence whose logits are not all finite, which has
  no labels). Labels are the per-word argmax; for canonical BIO classes (named entities) an
  ``I-X`` that does not continue a span of type X is repaired to ``B-X`` in the graph, as
  :func:`~polytask.tasks.kinds.token_classification.repair_bio` does (vectorised: whether a
  word starts a span depends on the type of the word before it, which the repair never
  changes, so no scan over positions is needed).
* ``dependency``: a tree is found by the Chu-Liu/Edmonds algorithm
  (:func:`polytask.tasks.trees.decode_tree`), which has no ONNX form, so the graph gives the
  scores a decoder reads: ``<task>_arcs`` (``float[B, T, T + 1]``: the score of head ``j`` for
  word ``i + 1``, column 0 the ROOT, ``-inf`` for a head that is padding or the word itself),
  ``<task>_relations`` (``float[B, T, T + 1, L]``: the relation scores under every head, the
  low-rank bilinear factors of :mod:`polytask.tasks.biaffine` multiplied out by an ``Einsum``),
  ``<task>_lengths`` (words per sentence) and ``<task>_scores``, the network's raw output.
  :class:`OnnxPredictor` decodes ``<task>_scores`` with the kind's own ``decode`` (the torch
  predictor's code, not a copy of it), so its heads and relations are the torch predictor's;
  another runtime decodes ``decode_tree(s)`` with ``s[1:, :] = arcs[b, :n, :n + 1]`` and takes
  each word's relation as the argmax of ``relations[b, i, head]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from polytask.export.graph import Builder, _tensor_type
from polytask.tasks import Task
from polytask.tasks.biaffine import fixed_channels
from polytask.tasks.kinds.dependency import RANK
from polytask.tasks.kinds.token_classification import canonical_bio

#: The token-level kinds this module exports.
TOKEN_KINDS = ("token_classification", "dependency")


def token_output_names(task: Task) -> dict[str, str]:
    """The graph outputs of a token-level ``task`` and what each holds (metadata)."""
    n = task.name
    if task.kind == "token_classification":
        return {
            n: "string[B, T]: each word's label ('' past the sentence's end)",
            f"{n}_index": "int64[B, T]: each word's class index (-1 past the sentence's end)",
            f"{n}_proba": "double[B, T, C]: each word's class probabilities (NaN past the end)",
            f"{n}_lengths": "int64[B]: words per sentence (-1: outputs not finite, no labels)",
        }
    if task.kind == "dependency":
        return {
            f"{n}_arcs": "float[B, T, T+1]: score of head j (0 = ROOT) for word i+1; -inf "
            "where j is padding or the word itself; decode with a maximum spanning tree",
            f"{n}_relations": "float[B, T, T+1, L]: relation scores under each head",
            f"{n}_lengths": "int64[B]: words per sentence",
            f"{n}_scores": "float[B, T, F+T+1]: the raw biaffine output (polytask.tasks.biaffine)",
        }
    raise NotImplementedError(task.kind)


def token_outputs(b: Builder, task: Task, raw: str) -> dict[str, str]:
    """Output name → value name of a token-level ``task``'s outputs from its raw output
    ``raw`` (see the module docstring)."""
    if task.kind == "token_classification":
        return _token_classification(b, task, raw)
    if task.kind == "dependency":
        return _dependency(b, task, raw)
    raise NotImplementedError(task.kind)


def _i64(b: Builder, values: Any, hint: str = "c") -> str:
    return b.const(values, np.int64, hint)


def _width(b: Builder, raw: str) -> str:
    """``T``, the sentence axis of ``raw``, as an int64 scalar."""
    shape = b.op("Shape", [raw], "shape")
    return b.op("Gather", [shape, _i64(b, 1, "one")], "width", axis=0)


def _positions(b: Builder, start: int, width: str) -> str:
    """int64 ``[T]``: ``start, start + 1, ..., start + T - 1``."""
    begin = _i64(b, start, "start")
    stop = b.op("Add", [width, begin], "stop")
    return b.op("Range", [begin, stop, _i64(b, 1, "step")], "positions")


def _slice(b: Builder, x: str, start: int, stop: int, axis: int) -> str:
    return b.op(
        "Slice",
        [x, _i64(b, [start], "starts"), _i64(b, [stop], "ends"), _i64(b, [axis], "axes")],
        "slice",
    )


def _token_classification(b: Builder, task: Task, raw: str) -> dict[str, str]:
    assert task.classes is not None
    n = task.name
    # A sentence is defined when all its logits are finite (padding included: zeros).
    known = b.all_rows(b.finite(raw))
    # Lengths as output_lengths reads them: one past the last word with a non-zero logit.
    nonzero = b.op("Not", [b.op("Equal", [raw, b.const(0.0, np.float32, "zero")], "eq0")], "nz")
    as_int = b.op("Cast", [nonzero], "nz_int", to=_tensor_type("int64"))
    is_word = b.op("ReduceMax", [as_int, _i64(b, [2], "axes")], "is_word", keepdims=0)
    width = _width(b, raw)
    ordinal = _positions(b, 1, width)
    lengths = b.op(
        "ReduceMax",
        [b.op("Mul", [is_word, ordinal], "ordinal"), _i64(b, [1], "axes")],
        "lengths",
        keepdims=0,
    )
    index = b.op("ArgMax", [raw], "argmax", axis=2, keepdims=0)
    if canonical_bio(task.classes):
        index = _repair_bio(b, index)
    inside = b.op("Less", [_positions(b, 0, width), b.unsqueeze(lengths, [1])], "inside")
    valid = b.op("And", [inside, b.unsqueeze(known, [1])], "valid")
    labelled = b.op("Where", [valid, index, b.minus_one()], "index")
    soft = b.op("Softmax", [raw], "softmax", axis=-1)
    p = b.op("Cast", [soft], "p64", to=_tensor_type("double"))
    proba = b.op("Where", [b.unsqueeze(valid, [2]), p, b.nan()], "proba")
    return {
        n: b.labels(labelled, task.classes, "label"),
        f"{n}_index": labelled,
        f"{n}_proba": proba,
        f"{n}_lengths": b.op("Where", [known, lengths, b.minus_one()], "defined_lengths"),
    }


def _repair_bio(b: Builder, ids: str) -> str:
    """:func:`~polytask.tasks.kinds.token_classification.repair_bio` on int64 ``[B, T]``
    canonical BIO ids (0 ``O``, ``2k+1`` ``B-k``, ``2k+2`` ``I-k``): an ``I`` whose previous
    word is not a B or I of the same type becomes the ``B`` of its type."""
    zero, one, two = _i64(b, 0, "zero"), _i64(b, 1, "one"), _i64(b, 2, "two")
    # The previous word's id, O (0) before the first word.
    first = _slice(b, ids, 0, 1, 1)
    before = b.op("Concat", [b.op("Mul", [first, zero], "o"), ids], "shifted", axis=1)
    width = _width(b, ids)
    ends = b.unsqueeze(width, [0])
    prev = b.op("Slice", [before, _i64(b, [0], "starts"), ends, _i64(b, [1], "axes")], "prev")
    is_inside = b.op(
        "And",
        [
            b.op("Greater", [ids, zero], "pos"),
            b.op("Equal", [b.op("Mod", [ids, two], "parity"), zero], "even"),
        ],
        "is_i",
    )

    def kind(x: str) -> str:
        # (id - 1) / 2 is the span type; ids compared here are >= 1, where truncating
        # division is floor division.
        return b.op("Div", [b.op("Sub", [x, one], "minus1"), two], "type")

    same = b.op(
        "And",
        [b.op("Greater", [prev, zero], "prev_pos"), b.op("Equal", [kind(prev), kind(ids)], "eq")],
        "same",
    )
    starts = b.op("And", [is_inside, b.op("Not", [same], "new")], "starts")
    shift = b.op("Cast", [starts], "shift", to=_tensor_type("int64"))
    return b.op("Sub", [ids, shift], "repaired")


def _dependency(b: Builder, task: Task, raw: str) -> dict[str, str]:
    assert task.classes is not None
    n = task.name
    labels = len(task.classes)
    fixed = fixed_channels(labels, RANK)
    factors = labels * (RANK + 1)
    words = b.op(
        "Greater",
        [
            b.op("Squeeze", [_slice(b, raw, 0, 1, 2), _i64(b, [2], "axes")], "flag"),
            b.const(0.0, np.float32, "zero"),
        ],
        "words",
    )
    width = _width(b, raw)
    # Candidate heads (Scores.allowed): ROOT and the sentence's words, never the word itself.
    rows = _slice(b, b.op("Shape", [raw], "shape"), 0, 1, 0)
    column = b.op("Concat", [rows, _i64(b, [1], "one")], "column_shape", axis=0)
    root_ok = b.op("Expand", [b.const([[True]], np.bool_, "true"), column], "root_ok")
    heads_ok = b.unsqueeze(b.op("Concat", [root_ok, words], "heads_ok", axis=1), [1])
    itself = b.op(
        "Equal",
        [
            b.unsqueeze(_positions(b, 0, b.op("Add", [width, _i64(b, 1, "one")], "t1")), [0]),
            b.unsqueeze(_positions(b, 1, width), [1]),
        ],
        "itself",
    )
    allowed = b.op("And", [heads_ok, b.op("Not", [itself], "other")], "allowed")
    arcs = _slice(b, raw, fixed, np.iinfo(np.int64).max, 2)
    masked = b.op("Where", [allowed, arcs, b.const(-np.inf, np.float32, "neg_inf")], "arcs")
    # Relation scores under every head (Scores.all_labels), from the factors.
    shape = _i64(b, [0, 0, labels, RANK + 1], "factor_shape")
    dep = b.op("Reshape", [_slice(b, raw, 1 + labels, 1 + labels + factors, 2), shape], "dep")
    head = b.op("Reshape", [_slice(b, raw, 1 + labels + factors, fixed, 2), shape], "head_factors")
    bilinear = b.op(
        "Einsum",
        [_slice(b, dep, 0, RANK, 3), _slice(b, head, 0, RANK, 3)],
        "bilinear",
        equation="bilr,bjlr->bijl",
    )
    dep_bias = b.op("Squeeze", [_slice(b, dep, RANK, RANK + 1, 3), _i64(b, [3], "a")], "db")
    head_bias = b.op("Squeeze", [_slice(b, head, RANK, RANK + 1, 3), _i64(b, [3], "a")], "hb")
    under_words = b.op(
        "Add",
        [
            b.op("Add", [bilinear, b.unsqueeze(dep_bias, [2])], "plus_dep"),
            b.unsqueeze(head_bias, [1]),
        ],
        "under_words",
    )
    under_root = b.unsqueeze(_slice(b, raw, 1, 1 + labels, 2), [2])
    relations = b.op("Concat", [under_root, under_words], "relations", axis=2)
    count = b.op("Cast", [words], "word_int", to=_tensor_type("int64"))
    lengths = b.op("ReduceSum", [count, _i64(b, [1], "axes")], "lengths", keepdims=0)
    return {
        f"{n}_arcs": masked,
        f"{n}_relations": relations,
        f"{n}_lengths": lengths,
        f"{n}_scores": b.op("Identity", [raw], "scores"),
    }


# -- the runtime ----------------------------------------------------------------------------
def token_graph_outputs(task: Task) -> list[str]:
    """The graph outputs :func:`token_columns` reads for ``task``."""
    n = task.name
    if task.kind == "token_classification":
        return [n, f"{n}_lengths"]
    if task.kind == "dependency":
        return [f"{n}_scores"]
    raise NotImplementedError(task.kind)


def token_columns(task: Task, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A token-level ``task``'s prediction columns (those of ``Predictor.predict``) from the
    graph's outputs: a list of labels per sentence (None where undefined); a dependency
    task's heads and relations decoded by the kind itself from the exported scores."""
    n = task.name
    if task.kind == "token_classification":
        labels, lengths = values[n], values[f"{n}_lengths"]
        column = np.empty(len(lengths), dtype=object)
        column[:] = [
            labels[i, : int(k)].astype(object).tolist() if k >= 0 else None
            for i, k in enumerate(lengths.tolist())
        ]
        return {n: column}
    if task.kind == "dependency":
        # The tree decoder (Chu-Liu/Edmonds, one root) runs on the exported scores through
        # the kind's own decode: the same heads and relations as the torch predictor's.
        scores = torch.from_numpy(np.ascontiguousarray(values[f"{n}_scores"]))
        return task.spec.decode(task, scores)
    raise NotImplementedError(task.kind)
