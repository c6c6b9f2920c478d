"""Which tasks to train together: the network-selection step of Task Affinity Grouping.

Fifty, Amid, Zhao, Yu, Anil and Finn, "Efficiently Identifying Task Groupings for Multi-Task
Learning", NeurIPS 2021 (TAG), network selection as in the authors' notebook
(google-research/google-research, ``tag/network_selection/TAG_network_selection.ipynb``):

* the affinity *onto* task ``j`` of a group ``S ∋ j`` is the mean of ``Z[i, j]`` over the other
  members ``i ∈ S \\ {j}`` (row = the task whose step is taken, column = the task whose loss
  changes; the diagonal, self-affinity, takes no part);
* a choice of at most ``G`` groups (models) serves every task; groups may overlap (a task can be
  in a group only to help the others) and each task is served by the chosen group with the
  highest affinity onto it;
* the score of a choice is the mean over tasks of the affinity onto each task from its serving
  group; the search maximises it.

A group of one gives its task no affinity: the authors score it ``-10⁶``, i.e. every task must
share its serving group with at least one other task, which is the default here (for two or
more tasks the group of all tasks is always available, so a choice always exists).
``alone_score`` replaces that rule: a task served by a group of one then scores
``alone_score`` (``0.0`` = "no transfer"), so a task that only loses from sharing can be
trained alone.

The same objective applied to a matrix of measured pairwise gains (training every pair and
every task alone, :func:`polytask.studies.affinity.study.pair_search`) is the higher-order
approximation of Standley et al., "Which Tasks Should Be Learned Together in Multi-task
Learning?", ICML 2020, which estimates a group's performance on a task from its pairs.

Search (``search``):

``exhaustive``
    every combination of at most ``G`` candidate groups (each a subset of the tasks); used
    when there are at most :data:`EXHAUSTIVE_LIMIT` combinations.
``dynamic-programming``
    exact for larger K. In an optimal choice each task is served by one group, so the
    optimum is the best partition of the tasks into at most ``G`` blocks ``T`` (the tasks each
    group serves), each block worth ``v(T) = max_{S ⊇ T} Σ_{j ∈ T} onto(S, j)``. ``v`` is
    computed over all (block, group) pairs and the partition by a dynamic programme over
    subsets, both ``O(3^K)``: Tox21's 12 tasks take well under a second. Used up to
    :data:`EXACT_MAX_TASKS` tasks.
``beam``
    a heuristic for more tasks: tasks are inserted one at a time, each into any subset of the
    current groups or into a new one, keeping the ``beam_width`` best partial choices, then the
    best is polished by single moves (toggle a task in a group, drop a group, add a pair) until
    none improves. Not guaranteed optimal: on random 2-6 task matrices it missed the optimum in
    1 of 60 cases; on a random 12-task matrix with 3 groups it reached 0.7093 against the
    optimum 0.7095.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

SearchMethod = Literal["auto", "exhaustive", "dynamic-programming", "beam"]

#: Largest number of candidate-group combinations the exhaustive search enumerates.
EXHAUSTIVE_LIMIT = 20_000
#: Largest number of tasks the exact dynamic programme handles (3^K work and 2^K memory).
EXACT_MAX_TASKS = 14
#: Partial choices kept per inserted task by the beam search.
BEAM_WIDTH = 256

_FloatArray = npt.NDArray[np.float64]
_IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Grouping:
    """A suggested choice of groups (models) and how it was found."""

    #: Groups as task names in task order, groups ordered by their first task.
    groups: list[list[str]]
    #: Mean over tasks of the affinity onto each task from the group serving it.
    score: float
    search: str
    max_groups: int
    #: Index in ``groups`` of the group serving each task.
    served_by: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "score": self.score,
            "search": self.search,
            "max_groups": self.max_groups,
        }


def onto_scores(affinity: npt.ArrayLike, group: Sequence[int]) -> dict[int, float]:
    """The affinity onto each member ``j`` of ``group``: mean of ``Z[i, j]`` over the other
    members (a group of one: NaN, the caller's rule decides)."""
    z = _square(affinity)
    members = sorted(set(group))
    if len(members) < 2:
        return {j: math.nan for j in members}
    return {j: float(np.mean([z[i, j] for i in members if i != j])) for j in members}


def grouping_score(
    affinity: npt.ArrayLike,
    groups: Sequence[Sequence[int]],
    *,
    alone_score: float | None = None,
) -> float:
    """The objective of the module docstring for ``groups`` (task indices): mean over tasks of
    the best affinity onto each; ``-inf`` if a task is not served (absent, or only in a group
    of one without ``alone_score``)."""
    z = _square(affinity)
    best = np.full(z.shape[0], -math.inf)
    for group in groups:
        members = sorted(set(group))
        if len(members) == 1:
            if alone_score is not None:
                best[members[0]] = max(best[members[0]], alone_score)
            continue
        for j, value in onto_scores(z, members).items():
            best[j] = max(best[j], value)
    return float(best.mean()) if np.all(np.isfinite(best)) else -math.inf


def search_groups(
    affinity: npt.ArrayLike,
    max_groups: int,
    names: Sequence[str] | None = None,
    *,
    alone_score: float | None = None,
    method: SearchMethod = "auto",
    beam_width: int = BEAM_WIDTH,
) -> Grouping:
    """Choose at most ``max_groups`` groups maximising TAG's objective (module docstring).

    Args:
        affinity: ``K × K`` matrix, ``[i, j]`` = affinity of task i's step onto task j's loss.
        max_groups: Budget of groups (models), at least 1.
        names: Task names (default ``"0"`` .. ``"K-1"``).
        alone_score: Score of a task served by a group of one (default: not allowed, as in
            the paper).
        method: ``auto`` picks exhaustive, then dynamic programming, then beam by size.
        beam_width: Partial choices kept by the beam search.

    Raises:
        ValueError: on a non-square or non-finite matrix, fewer than two tasks, a bad budget
            or an exact method asked for more tasks than it handles.
    """
    z = _square(affinity)
    k = z.shape[0]
    if k < 2:
        raise ValueError("grouping needs at least two tasks")
    if not np.all(np.isfinite(z)):
        raise ValueError("affinity must be finite")
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    labels = [str(i) for i in range(k)] if names is None else list(names)
    if len(labels) != k:
        raise ValueError(f"{len(labels)} names for {k} tasks")
    candidates = 2**k - 1 - (k if alone_score is None else 0)
    combos = sum(math.comb(candidates, g) for g in range(1, min(max_groups, candidates) + 1))
    if method == "auto":
        method = (
            "exhaustive"
            if combos <= EXHAUSTIVE_LIMIT
            else "dynamic-programming"
            if k <= EXACT_MAX_TASKS
            else "beam"
        )
    if method == "exhaustive" and combos > 100 * EXHAUSTIVE_LIMIT:
        raise ValueError(f"exhaustive search: {combos} combinations; use dynamic-programming")
    if method == "dynamic-programming" and k > EXACT_MAX_TASKS + 2:
        raise ValueError(f"dynamic programming handles at most {EXACT_MAX_TASKS + 2} tasks")
    if method == "exhaustive":
        chosen = _exhaustive(z, max_groups, alone_score)
    elif method == "dynamic-programming":
        chosen = _dynamic_programme(z, max_groups, alone_score)
    elif method == "beam":
        chosen = _beam(z, max_groups, alone_score, beam_width)
    else:
        raise ValueError(f"unknown search method {method!r}")
    return _result(z, chosen, labels, method, max_groups, alone_score)


# -- candidates ------------------------------------------------------------------------------
def _square(affinity: npt.ArrayLike) -> _FloatArray:
    z = np.asarray(affinity, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != z.shape[1]:
        raise ValueError(f"affinity must be a square matrix, got shape {z.shape}")
    return z


def _bits(k: int) -> _IntArray:
    """``[2^k, k]`` 0/1 matrix: row ``m`` holds the bits of mask ``m``."""
    masks = np.arange(2**k, dtype=np.int64)
    bits: _IntArray = (masks[:, None] >> np.arange(k, dtype=np.int64)) & 1
    return bits


def _candidate_table(z: _FloatArray, alone_score: float | None) -> tuple[_FloatArray, _IntArray]:
    """``onto[m, j]``: affinity onto task j of the group with mask m (-inf if j ∉ m or the group
    cannot serve), and each mask's size."""
    k = z.shape[0]
    bits = _bits(k)
    size = bits.sum(axis=1)
    bits_f = bits.astype(np.float64)
    summed = bits_f @ z - bits_f * np.diag(z)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        onto = summed / (size[:, None] - 1)
    onto = np.where(bits.astype(bool) & (size[:, None] >= 2), onto, -math.inf)
    if alone_score is not None:
        for j in range(k):
            onto[1 << j, j] = alone_score
    return onto, size


def _masks_to_groups(masks: Sequence[int], k: int) -> list[list[int]]:
    return [[j for j in range(k) if m >> j & 1] for m in masks]


# -- searches --------------------------------------------------------------------------------
def _exhaustive(z: _FloatArray, max_groups: int, alone_score: float | None) -> list[list[int]]:
    k = z.shape[0]
    onto, _ = _candidate_table(z, alone_score)
    valid = [m for m in range(1, 2**k) if np.isfinite(onto[m]).any()]
    # Fewer groups first, so a tie keeps the smaller choice.
    best_value, best_choice = -math.inf, [2**k - 1]
    for g in range(1, max_groups + 1):
        for combo in itertools.combinations(valid, g):
            value = onto[list(combo)].max(axis=0)
            if not np.all(np.isfinite(value)):
                continue
            total = float(value.sum())
            if total > best_value + 1e-12:
                best_value, best_choice = total, list(combo)
    return _masks_to_groups(best_choice, k)


def _dynamic_programme(
    z: _FloatArray, max_groups: int, alone_score: float | None
) -> list[list[int]]:
    k = z.shape[0]
    full = 2**k - 1
    onto, size = _candidate_table(z, alone_score)
    bit_tables = {m: _bits(m)[1:] for m in range(1, k + 1)}  # non-empty subsets of m bits
    # v(T) and the group S ⊇ T achieving it; smaller groups first so ties keep them.
    value = np.full(full + 1, -math.inf)
    group_of = np.zeros(full + 1, dtype=np.int64)
    for s in sorted(range(1, full + 1), key=lambda m: (int(size[m]), m)):
        row = onto[s]
        positions = np.flatnonzero(np.isfinite(row))
        if positions.size == 0:
            continue
        table = bit_tables[positions.size]
        served = table @ (np.int64(1) << positions)
        sums = table @ row[positions]
        better = sums > value[served] + 1e-12
        value[served[better]] = sums[better]
        group_of[served[better]] = s
    # best[g][mask]: best split of mask into at most g blocks; choice = the block holding the
    # lowest task of mask (0 = no split, the whole mask is one block).
    best = value.copy()
    choices: list[_IntArray] = []
    for _ in range(2, max_groups + 1):
        previous = best
        best = previous.copy()
        choice = np.zeros(full + 1, dtype=np.int64)
        for mask in range(3, full + 1):
            low = mask & -mask
            rest = mask ^ low
            if rest == 0:
                continue
            positions = np.flatnonzero((rest >> np.arange(k)) & 1)
            table = bit_tables[positions.size]
            others = table @ (np.int64(1) << positions)  # non-empty subsets of rest
            # block = low ∪ (rest minus a non-empty part that goes to the other blocks)
            remainder = others
            block = mask ^ remainder
            totals = value[block] + previous[remainder]
            i = int(np.argmax(totals))
            if totals[i] > best[mask] + 1e-12:
                best[mask] = totals[i]
                choice[mask] = block[i]
        choices.append(choice)
    # Walk back: at level L (at most L + 1 blocks) a choice of 0 means the mask is split no
    # better with L + 1 blocks than with L.
    blocks: list[int] = []
    mask, level = full, len(choices)
    while mask:
        if level == 0:
            blocks.append(mask)
            break
        block = int(choices[level - 1][mask])
        level -= 1
        if block:
            blocks.append(block)
            mask ^= block
    groups = sorted({int(group_of[b]) for b in blocks})
    return _masks_to_groups(groups, k)


def _beam(
    z: _FloatArray, max_groups: int, alone_score: float | None, width: int
) -> list[list[int]]:
    k = z.shape[0]
    penalty = -1e6  # the paper's score of a task left in a group of one

    def score(groups: tuple[int, ...], inserted: int) -> float:
        total = 0.0
        for j in range(inserted):
            best = -math.inf
            for g in groups:
                if not g >> j & 1:
                    continue
                members = [i for i in range(k) if g >> i & 1]
                if len(members) == 1:
                    value = penalty if alone_score is None else alone_score
                else:
                    value = (sum(z[i, j] for i in members) - z[j, j]) / (len(members) - 1)
                best = max(best, value)
            total += best
        return total

    states: list[tuple[int, ...]] = [()]
    for t in range(k):
        bit = 1 << t
        seen: set[tuple[int, ...]] = set()
        scored: list[tuple[float, tuple[int, ...]]] = []
        for groups in states:
            n = len(groups)
            options: list[tuple[int, ...]] = []
            for r in range(1, n + 1):
                for picked in itertools.combinations(range(n), r):
                    options.append(
                        tuple(g | bit if i in picked else g for i, g in enumerate(groups))
                    )
            if n < max_groups:
                # A new group: t alone (possibly also joining existing groups), or a copy of
                # an existing group plus t (the original then serves its tasks without t).
                for r in range(0, n + 1):
                    for picked in itertools.combinations(range(n), r):
                        joined = [g | bit if i in picked else g for i, g in enumerate(groups)]
                        options.append((*joined, bit))
                options.extend((*groups, g | bit) for g in groups)
            for option in options:
                canonical = tuple(sorted(set(option)))
                if canonical in seen:
                    continue
                seen.add(canonical)
                scored.append((score(canonical, t + 1), canonical))
        scored.sort(key=lambda item: (-item[0], len(item[1]), item[1]))
        states = [groups for _, groups in scored[:width]]
    feasible = [
        g
        for g in states
        if grouping_score(z, _masks_to_groups(g, k), alone_score=alone_score) > -math.inf
    ]
    chosen = feasible[0] if feasible else (2**k - 1,)
    return _masks_to_groups(_hill_climb(z, chosen, max_groups, alone_score), k)


def _hill_climb(
    z: _FloatArray, start: tuple[int, ...], max_groups: int, alone_score: float | None
) -> tuple[int, ...]:
    """Polish a choice by best-improvement moves until none improves: toggle one task in one
    group, drop a group, or add a group of two (insertion order alone cannot build, e.g.,
    ``{0,1}, {0,2}, {1,2}``)."""
    k = z.shape[0]

    def value(groups: tuple[int, ...]) -> float:
        return grouping_score(z, _masks_to_groups(groups, k), alone_score=alone_score)

    current, current_value = start, value(start)
    while True:
        moves: list[tuple[int, ...]] = []
        for i, g in enumerate(current):
            for t in range(k):
                toggled = g ^ (1 << t)
                if toggled:
                    moves.append((*current[:i], toggled, *current[i + 1 :]))
            if len(current) > 1:
                moves.append((*current[:i], *current[i + 1 :]))
        if len(current) < max_groups:
            pairs = itertools.combinations(range(k), 2)
            moves.extend((*current, (1 << a) | (1 << b)) for a, b in pairs)
        best, best_value = current, current_value
        for move in moves:
            canonical = tuple(sorted(set(move)))
            v = value(canonical)
            if v > best_value + 1e-12:
                best, best_value = canonical, v
        if best == current:
            return current
        current, current_value = best, best_value


def _result(
    z: _FloatArray,
    groups: list[list[int]],
    labels: list[str],
    method: str,
    max_groups: int,
    alone_score: float | None,
) -> Grouping:
    groups = sorted(groups)
    served: dict[str, int] = {}
    for j, name in enumerate(labels):
        best, where = -math.inf, -1
        for index, members in enumerate(groups):
            if j not in members:
                continue
            if len(members) == 1:
                value = -math.inf if alone_score is None else alone_score
            else:
                value = onto_scores(z, members)[j]
            if value > best:
                best, where = value, index
        served[name] = where
    return Grouping(
        groups=[[labels[j] for j in members] for members in groups],
        score=grouping_score(z, groups, alone_score=alone_score),
        search=method,
        max_groups=max_groups,
        served_by=served,
    )
