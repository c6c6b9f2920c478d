"""Dependency trees: decoding arc scores into well-formed trees, and attachment scores.

A dependency parser (the biaffine parser of Dozat & Manning, "Deep Biaffine Attention for
Neural Dependency Parsing", ICLR 2017) scores every (dependent, head) pair of a sentence of
``n`` words; picking each word's best head independently may give cycles or several words
attached to the root. :func:`decode_tree` returns instead the highest-scoring tree:

* the maximum spanning arborescence rooted at the artificial root 0, found by the
  Chu-Liu/Edmonds algorithm (Chu & Liu 1965; Edmonds 1967), which allows non-projective
  trees (EWT has some, so Eisner's projective algorithm would not fit);
* with exactly one word attached to the root, as Universal Dependencies requires. Zmigrod,
  Vieira & Cotterell ("Please Mind the Root: Decoding Arborescences for Dependency Parsing",
  EMNLP 2020) show that ignoring this constraint gives multi-root trees for a sizable share
  of sentences. Here it costs one run of the algorithm, not one per candidate root child:
  every root arc's score is lowered by a constant ``M`` larger than the score difference
  between any two trees. Every tree has at least one root arc, so a tree with ``k`` root arcs
  pays ``k M``; a single-root tree (one always exists, e.g. a chain) beats every tree with
  more root arcs, and among single-root trees the penalty is the same ``M``, so the best one
  under the lowered scores is the best single-root tree under the original scores.

The algorithm works on numpy arrays: each contraction of a cycle is O(n^2) array work, and
there are at most n contractions (in practice a handful), no Python loop over arcs.

:func:`attachment_scores` gives UAS and LAS over every word, punctuation included, as the
CoNLL 2018 shared task's evaluation (``conll18_ud_eval.py``) counts them; like that script it
compares only the universal part of a relation (``nmod`` for ``nmod:poss``) unless
``subtypes=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["AttachmentScores", "attachment_scores", "decode_tree", "decode_trees", "tree_score"]


def _check(scores: npt.ArrayLike) -> np.ndarray:
    """``scores`` as a float64 ``[n+1, n+1]`` array with forbidden arcs made finite."""
    s = np.array(scores, dtype=np.float64)  # a copy: the decoder writes into it
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise ValueError(
            f"arc scores: shape {s.shape}; expected a square [n+1, n+1] matrix with n >= 1 "
            "(row = dependent, column = head, index 0 = the root)"
        )
    size = s.shape[0]
    # Only the arcs of words (rows 1..n) to other nodes count: the root's row and the
    # diagonal (a word heading itself) are never used, so a model may mask them with -inf.
    arcs = s[1:].copy()
    arcs[np.arange(size - 1), np.arange(1, size)] = 0.0
    if np.isnan(arcs).any() or np.isposinf(arcs).any():
        raise ValueError("arc scores: NaN or +inf among the arcs; expected finite scores or -inf")
    finite = np.isfinite(arcs)
    if not finite.all():
        # -inf marks a forbidden arc: it becomes a score below any tree of allowed arcs, so
        # it is used only when no tree avoids it (all root arcs forbidden, say).
        low, high = arcs[finite].min(initial=0.0), arcs[finite].max(initial=0.0)
        s[1:][~finite] = low - size * (high - low + 1.0)
    # The ignored entries become 0, so that they neither overflow nor set the penalty below.
    np.fill_diagonal(s, 0.0)
    s[0] = 0.0
    return s


def decode_tree(scores: npt.ArrayLike) -> np.ndarray:
    """The heads of the best single-root dependency tree under ``scores``.

    ``scores[d, h]`` is the score of head ``h`` for dependent ``d`` (rows are dependents, as
    a biaffine scorer's softmax over heads runs along a row); index 0 is the root, words are
    1..n. Scores add up over a tree's arcs (log-probabilities, or raw scores). Row 0 and the
    diagonal are ignored; ``-inf`` forbids an arc.

    Returns an int64 array of length ``n``: entry ``i`` is the head (0..n) of word ``i + 1``,
    the convention of the CoNLL-U ``head`` column. The result is always a tree: every word has
    one head, there is no cycle, and exactly one word is attached to the root.
    """
    s = _check(scores)
    size = s.shape[0]
    span = float(s[1:].max() - s[1:].min())
    penalty = (size - 1) * span + 1.0  # > the largest score gap between two trees
    s[1:, 0] -= penalty
    heads = _chu_liu_edmonds(s)
    return heads[1:].astype(np.int64)


def _find_cycle(heads: np.ndarray) -> np.ndarray | None:
    """A boolean mask of the nodes on one cycle of ``heads`` (node 0 is the root and has
    none), or None when there is no cycle. O(n): each node is walked once."""
    size = len(heads)
    state = np.zeros(size, dtype=np.int8)  # 0 unvisited, 1 on the current walk, 2 done
    state[0] = 2
    for start in range(1, size):
        if state[start]:
            continue
        node = start
        walk = []
        while state[node] == 0:
            state[node] = 1
            walk.append(node)
            node = int(heads[node])
        if state[node] == 1:  # the walk came back to itself: node is on a cycle
            mask = np.zeros(size, dtype=bool)
            mask[walk[walk.index(node) :]] = True
            return mask
        state[walk] = 2
    return None


@dataclass
class _Contraction:
    """What undoing one cycle contraction needs (see :func:`_chu_liu_edmonds`)."""

    heads: np.ndarray  # the greedy heads at this level
    cycle: np.ndarray  # indices (at this level) of the cycle's nodes
    rest: np.ndarray  # indices of the other nodes; position k is node k of the next level
    enter: np.ndarray  # for each outside head, the cycle node it best enters the cycle at
    leave: np.ndarray  # for each outside dependent, the cycle node that best heads it


def _chu_liu_edmonds(scores: np.ndarray) -> np.ndarray:
    """The maximum spanning arborescence rooted at 0 of ``scores[d, h]`` (modified in
    place), as a heads array of length n+1 with ``heads[0] = 0``.

    Edmonds' algorithm: take each node's best head; if that has a cycle, contract the cycle
    into one node whose incoming arcs are scored by how much they gain over the cycle arc
    they break, solve the smaller problem, and expand. Contractions are stacked and undone in
    reverse, so long sentences need no recursion."""
    stack: list[_Contraction] = []
    while True:
        np.fill_diagonal(scores, -np.inf)
        scores[0] = -np.inf
        heads = scores.argmax(axis=1)
        heads[0] = 0
        mask = _find_cycle(heads)
        if mask is None:
            break
        cycle = np.flatnonzero(mask)
        rest = np.flatnonzero(~mask)
        inner = scores[cycle, heads[cycle]]  # the cycle's own arcs
        # Entering the cycle at node c from outside head h breaks c's cycle arc:
        # gain s[c, h] - s[c, head(c)], on top of the whole cycle's score.
        into = scores[np.ix_(cycle, rest)] - inner[:, None] + inner.sum()
        enter = into.argmax(axis=0)
        # An outside dependent headed by the cycle takes its best head among the cycle.
        out_of = scores[np.ix_(rest, cycle)]
        leave = out_of.argmax(axis=1)
        smaller = np.empty((len(rest) + 1, len(rest) + 1))
        smaller[:-1, :-1] = scores[np.ix_(rest, rest)]
        smaller[-1, :-1] = into[enter, np.arange(len(rest))]  # the cycle as dependent
        smaller[:-1, -1] = out_of[np.arange(len(rest)), leave]  # the cycle as head
        smaller[-1, -1] = -np.inf
        stack.append(_Contraction(heads, cycle, rest, enter, leave))
        scores = smaller
    while stack:
        level = stack.pop()
        outer = level.heads.copy()  # the cycle keeps its own arcs but for the one entered
        meta = len(level.rest)  # the contracted node's index at the smaller level
        below = heads[1:meta]  # the smaller level's heads of the outside words (not the root)
        by_cycle = below == meta
        outer[level.rest[1:]] = np.where(
            by_cycle,
            level.cycle[level.leave[1:]],  # headed by the cycle: its best head there
            level.rest[np.minimum(below, meta - 1)],  # headed by an outside node
        )
        entered_from = heads[meta]  # the outside head the cycle hangs from (a rest index)
        outer[level.cycle[level.enter[entered_from]]] = level.rest[entered_from]
        heads = outer
    result: np.ndarray = heads
    return result


def decode_trees(scores: npt.ArrayLike, lengths: Sequence[int] | npt.ArrayLike) -> np.ndarray:
    """:func:`decode_tree` over a padded batch: ``scores`` is ``[B, T+1, T+1]`` (row =
    dependent, column = head, index 0 = the root) and sentence ``b`` has ``lengths[b]``
    words, its scores in ``scores[b, :lengths[b]+1, :lengths[b]+1]`` (the rest is padding,
    never read). Returns ``[B, T]`` int64 heads, ``-1`` past each sentence's end.

    A torch tensor is accepted (``.detach().cpu()`` first if it needs a gradient); the
    decoding itself is sequential per sentence, as Chu-Liu/Edmonds is."""
    batch = np.asarray(scores)
    sizes = np.asarray(lengths, dtype=np.int64)
    if batch.ndim != 3 or batch.shape[1] != batch.shape[2]:
        raise ValueError(f"arc scores: shape {batch.shape}; expected [B, T+1, T+1]")
    if sizes.shape != (batch.shape[0],):
        raise ValueError(
            f"lengths: shape {sizes.shape}; expected one length per sentence ({batch.shape[0]})"
        )
    longest = batch.shape[1] - 1
    if sizes.size and (sizes.min() < 1 or sizes.max() > longest):
        raise ValueError(f"lengths: expected 1 to {longest} words per sentence (T = {longest})")
    out = np.full((batch.shape[0], longest), -1, dtype=np.int64)
    for b, n in enumerate(sizes.tolist()):
        out[b, :n] = decode_tree(batch[b, : n + 1, : n + 1])
    return out


def tree_score(scores: npt.ArrayLike, heads: Sequence[int] | npt.ArrayLike) -> float:
    """The sum of ``scores[d, heads[d-1]]`` over the words ``d = 1..n``."""
    s = np.asarray(scores, dtype=np.float64)
    h = np.asarray(heads, dtype=np.int64)
    return float(s[np.arange(1, len(h) + 1), h].sum())


@dataclass(frozen=True)
class AttachmentScores:
    """Unlabelled and labelled attachment scores, as fractions of the words counted."""

    uas: float  # words whose head is right
    las: float  # words whose head and relation are both right
    words: int  # words counted (all of them, punctuation included)


def attachment_scores(
    gold_heads: Sequence[Sequence[int]],
    pred_heads: Sequence[Sequence[int]],
    gold_labels: Sequence[Sequence[str]] | None = None,
    pred_labels: Sequence[Sequence[str]] | None = None,
    *,
    subtypes: bool = False,
) -> AttachmentScores:
    """UAS and LAS over sentences (one sequence of heads, and of relations, per sentence).

    Every word counts, punctuation included, as in the CoNLL 2018 shared task evaluation
    (Zeman et al. 2018); older evaluations (CoNLL 2006/2007 ``eval.pl``) left punctuation
    out, which gives higher numbers. Relations compare on their universal part (``acl`` for
    ``acl:relcl``) unless ``subtypes``, also as CoNLL 2018 does. Without labels, ``las`` is
    NaN. Sentences must pair up word for word (gold tokenisation)."""
    if len(gold_heads) != len(pred_heads):
        raise ValueError(
            f"attachment scores: {len(gold_heads)} gold sentences but {len(pred_heads)} "
            "predicted; expected the same sentences"
        )
    labelled = gold_labels is not None and pred_labels is not None
    if labelled and not (len(gold_labels or ()) == len(pred_labels or ()) == len(gold_heads)):
        raise ValueError("attachment scores: expected one label sequence per sentence")
    words = heads_right = both_right = 0
    for i, (gold, pred) in enumerate(zip(gold_heads, pred_heads, strict=True)):
        g, p = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
        if g.shape != p.shape:
            raise ValueError(
                f"attachment scores: sentence {i} has {g.size} gold words but {p.size} "
                "predicted; expected the same words"
            )
        right = g == p
        words += g.size
        heads_right += int(right.sum())
        if labelled:
            assert gold_labels is not None and pred_labels is not None
            gl, pl = gold_labels[i], pred_labels[i]
            if len(gl) != g.size or len(pl) != g.size:
                raise ValueError(
                    f"attachment scores: sentence {i} has {g.size} words but {len(gl)} gold "
                    f"and {len(pl)} predicted relations; expected one per word"
                )
            same = np.array(
                [
                    _relation(a, subtypes) == _relation(b, subtypes)
                    for a, b in zip(gl, pl, strict=True)
                ],
                dtype=bool,
            )
            both_right += int((right & same).sum())
    if words == 0:
        raise ValueError("attachment scores: no words to score")
    las = both_right / words if labelled else float("nan")
    return AttachmentScores(uas=heads_right / words, las=las, words=words)


def _relation(label: str, subtypes: bool) -> str:
    return label if subtypes else label.split(":", 1)[0]
