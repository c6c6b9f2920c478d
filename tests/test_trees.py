"""The dependency-tree decoder (Chu-Liu/Edmonds, single root) and attachment scores."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from polytask.data.conllu import read_conllu
from polytask.tasks.trees import attachment_scores, decode_tree, decode_trees, tree_score


def _is_single_root_tree(heads: np.ndarray) -> bool:
    """Every word 1..n has one head in 0..n other than itself, following heads from any word
    reaches the root 0 (no cycle), and exactly one word hangs from the root."""
    n = len(heads)
    if heads.shape != (n,) or heads.min() < 0 or heads.max() > n:
        return False
    if int((heads == 0).sum()) != 1:
        return False
    for word in range(1, n + 1):
        node, steps = word, 0
        while node != 0:
            node = int(heads[node - 1])
            steps += 1
            if steps > n:
                return False
    return True


@functools.cache
def _all_trees(n: int) -> np.ndarray:
    """Every single-root dependency tree over n words, as rows of heads (brute force)."""
    trees = [
        heads
        for heads in itertools.product(range(n + 1), repeat=n)
        if all(h != d + 1 for d, h in enumerate(heads))
        and _is_single_root_tree(np.array(heads, dtype=np.int64))
    ]
    return np.array(trees, dtype=np.int64)


def _best_score(scores: np.ndarray) -> float:
    trees = _all_trees(scores.shape[0] - 1)
    words = np.arange(1, scores.shape[0])
    return float(scores[words, trees].sum(axis=1).max())


def test_tree_counts_match_cayley() -> None:
    # Single-root trees over n words are the trees over n labelled nodes with a chosen root
    # (the root's one child): n^(n-1) by Cayley's formula. Checks the brute-force enumerator.
    for n in range(1, 6):
        assert len(_all_trees(n)) == n ** (n - 1)


def test_greedy_cycle_is_broken() -> None:
    # Words 1 and 2 prefer each other (a cycle), word 3 prefers word 1; the root arcs are
    # weak. The greedy argmax is the cycle 1 <-> 2, which the best tree must break.
    s = np.zeros((4, 4))
    s[1, 2] = 5.0  # head 2 for word 1
    s[2, 1] = 4.0  # head 1 for word 2
    s[3, 1] = 2.0
    s[1, 0] = 1.0
    s[2, 0] = 0.5
    greedy = s[1:].argmax(axis=1)
    assert greedy.tolist() == [2, 1, 1]  # 1 -> 2 -> 1: a cycle
    heads = decode_tree(s)
    # Break the cycle at word 1 (lose 5, gain 1: root -> 1 -> 2) or word 2 (lose 4, gain
    # 0.5: root -> 2 -> 1): totals 1 + 4 + 2 = 7 versus 0.5 + 5 + 2 = 7.5.
    assert heads.tolist() == [2, 0, 1]
    assert tree_score(s, heads) == pytest.approx(7.5)
    assert tree_score(s, heads) == pytest.approx(_best_score(s))


def test_single_root_beats_multi_root() -> None:
    # Every word prefers the root: the unconstrained best has 3 root children (score 30);
    # UD allows one, so two words must take their next best heads.
    s = np.zeros((4, 4))
    s[1:, 0] = 10.0
    s[2, 1] = 3.0
    s[3, 1] = 2.0
    s[3, 2] = 1.0
    heads = decode_tree(s)
    assert heads.tolist() == [0, 1, 1]
    assert tree_score(s, heads) == pytest.approx(15.0)


def test_nested_cycles() -> None:
    # Two greedy cycles (1 <-> 2 and 3 <-> 4) and a third word preferring the first cycle:
    # the decoder contracts both and still matches the brute-force best.
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 6)) * 0.1
    s[1, 2] = s[2, 1] = 3.0
    s[3, 4] = s[4, 3] = 3.0
    s[5, 3] = 2.0
    heads = decode_tree(s)
    assert _is_single_root_tree(heads)
    assert tree_score(s, heads) == pytest.approx(_best_score(s))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    scale=st.sampled_from([0.01, 1.0, 100.0]),
    ties=st.booleans(),
)
def test_decoder_finds_the_best_tree(n: int, seed: int, scale: float, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n + 1, n + 1)) * scale
    if ties:  # few distinct values: many equal-scoring trees and greedy cycles
        s = np.round(s / scale)
    heads = decode_tree(s)
    assert heads.dtype == np.int64
    assert _is_single_root_tree(heads)
    assert tree_score(s, heads) == pytest.approx(_best_score(s), rel=1e-9, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=1, max_value=120), seed=st.integers(0, 2**32 - 1))
def test_long_sentences_give_trees(n: int, seed: int) -> None:
    # Beyond brute force: the output is still a well-formed single-root tree, never worse
    # than a chain (a valid tree), and the greedy argmax when that is already a tree.
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n + 1, n + 1))
    heads = decode_tree(s)
    assert _is_single_root_tree(heads)
    chain = np.arange(n)  # word 1 on the root, each next word on the one before
    assert tree_score(s, heads) >= tree_score(s, chain) - 1e-9


def test_greedy_tree_is_kept() -> None:
    s = np.full((4, 4), -5.0)
    s[1, 0] = 0.0
    s[2, 1] = 0.0
    s[3, 2] = 0.0
    assert decode_tree(s).tolist() == [0, 1, 2]


def test_forbidden_arcs_and_masked_diagonal() -> None:
    # -inf on the diagonal and row 0 (a model's masks) is ignored; -inf on a word's arc
    # keeps the decoder off it even when it would otherwise be best.
    s = np.full((4, 4), -10.0)
    np.fill_diagonal(s, -np.inf)
    s[0] = -np.inf
    s[1, 0] = 1.0
    s[2, 1] = 1.0
    s[3, 2] = -np.inf
    s[3, 1] = -3.0
    heads = decode_tree(s)
    assert heads.tolist() == [0, 1, 1]  # word 3 on its allowed -3 arc, not the -inf one
    assert tree_score(s, heads) == pytest.approx(-1.0)


def test_bad_scores_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected a square \[n\+1, n\+1\]"):
        decode_tree(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="n >= 1"):
        decode_tree(np.zeros((1, 1)))
    bad = np.zeros((3, 3))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        decode_tree(bad)


def test_batched_decoding_matches_one_by_one() -> None:
    rng = np.random.default_rng(3)
    lengths = [5, 1, 3]
    scores = rng.normal(size=(3, 6, 6))
    scores[1, 2:, :] = np.nan  # padding: never read
    out = decode_trees(torch.from_numpy(scores), lengths)
    assert out.shape == (3, 5)
    for b, n in enumerate(lengths):
        assert out[b, :n].tolist() == decode_tree(scores[b, : n + 1, : n + 1]).tolist()
        assert (out[b, n:] == -1).all()
    with pytest.raises(ValueError, match="lengths: expected 1 to 5"):
        decode_trees(scores, [6, 1, 1])
    with pytest.raises(ValueError, match="one length per sentence"):
        decode_trees(scores, [1, 1])


def test_attachment_scores() -> None:
    gold_heads = [[2, 0, 2], [0, 1]]
    pred_heads = [[2, 0, 1], [0, 1]]
    gold_labels = [["nsubj", "root", "punct"], ["root", "nmod:poss"]]
    pred_labels = [["obj", "root", "punct"], ["root", "nmod"]]
    scores = attachment_scores(gold_heads, pred_heads, gold_labels, pred_labels)
    assert scores.words == 5  # punctuation counts
    assert scores.uas == pytest.approx(4 / 5)
    # Right head and relation: root, root, nmod(:poss) on its universal part.
    assert scores.las == pytest.approx(3 / 5)
    exact = attachment_scores(gold_heads, pred_heads, gold_labels, pred_labels, subtypes=True)
    assert exact.las == pytest.approx(2 / 5)
    assert math.isnan(attachment_scores(gold_heads, pred_heads).las)
    with pytest.raises(ValueError, match="sentence 1 has 2 gold words but 1 predicted"):
        attachment_scores(gold_heads, [[2, 0, 1], [0]])
    with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
        attachment_scores(gold_heads, [[2, 0, 1]])


def test_gold_ewt_trees_come_back(require_data: Callable[[str], Path]) -> None:
    # Each EWT dev tree (non-projective ones included) is the unique best tree when its own
    # arcs score 1 and every other arc 0 plus noise below 1/n: the decoder must return it.
    root = require_data("ud-ewt/en_ewt-dev.conllu.gz")
    df = read_conllu(root / "ud-ewt" / "en_ewt-dev.conllu.gz")
    rng = np.random.default_rng(0)
    for heads in df["head"]:
        n = len(heads)
        s = rng.uniform(0.0, 0.5 / n, size=(n + 1, n + 1))
        s[np.arange(1, n + 1), heads] += 1.0
        assert decode_tree(s).tolist() == heads
    scores = attachment_scores(df["head"].tolist(), df["head"].tolist())
    assert (scores.uas, scores.words) == (1.0, 25147)
