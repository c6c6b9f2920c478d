"""Multi-objective helpers: dominance, non-dominated sorting, hypervolume and the point that
matches a preference.

Convention: every objective is **minimised**. A point ``a`` dominates ``b`` when it is no worse
in every objective and strictly better in at least one (Pareto dominance; e.g. Miettinen,
"Nonlinear Multiobjective Optimization", 1999). Metrics where higher is better (accuracy,
AUROC) become objectives by a change of sign: :func:`to_minimisation` turns a table of metric
values into objectives and :func:`from_minimisation` back, so a reference point given in metric
units converts the same way.

Non-dominated sorting and the hypervolume are computed by ``moocore`` (López-Ibáñez et al.,
the C library behind the EAF tools): exact hypervolume in any dimension, non-dominated ranks
by repeated filtering. Points that tie exactly do not dominate each other, so both copies of a
repeated point stay non-dominated.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore  # type: ignore[import-untyped]  # ships no type information
import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

#: How the default hypervolume reference point is chosen (also written into pareto.json).
REFERENCE_RULE = (
    "reference point = nadir + margin * (nadir - ideal) per objective, over every evaluated "
    "point (objectives minimised; a higher-is-better metric enters with its sign flipped); an "
    "objective with no spread is moved out by margin * max(|nadir|, 1)"
)


def _points(points: ArrayLike, what: str = "points") -> FloatArray:
    """``points`` as a finite ``[n, m]`` float array (one row per point)."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1:
        array = array.reshape(1, -1) if array.size else array.reshape(0, 0)
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (one row per point), got {array.ndim}-D")
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: every objective value must be finite")
    return array


def dominates(a: ArrayLike, b: ArrayLike) -> bool:
    """Whether ``a`` Pareto-dominates ``b`` (minimisation): ``a <= b`` everywhere and
    ``a < b`` somewhere."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"dominates: two vectors of the same length expected, got {x.shape}, {y.shape}"
        )
    return bool(np.all(x <= y) and np.any(x < y))


def non_dominated(points: ArrayLike) -> NDArray[np.bool_]:
    """Mask of the points no other point dominates (minimisation); exact duplicates are both
    kept."""
    array = _points(points)
    if len(array) == 0:
        return np.zeros(0, dtype=bool)
    mask: NDArray[np.bool_] = np.asarray(moocore.is_nondominated(array, keep_weakly=True))
    return mask


def non_dominated_sort(points: ArrayLike) -> list[list[int]]:
    """Fronts of non-dominated sorting (Deb et al., NSGA-II, 2002): the first holds the indices
    of the non-dominated points, the second those dominated only by the first, and so on."""
    array = _points(points)
    if len(array) == 0:
        return []
    ranks = np.asarray(moocore.pareto_rank(array))
    return [np.flatnonzero(ranks == r).tolist() for r in range(int(ranks.max()) + 1)]


def hypervolume(points: ArrayLike, reference: ArrayLike) -> float:
    """Volume of the objective space dominated by ``points`` and bounded by ``reference``
    (minimisation; Zitzler & Thiele, "Multiobjective Optimization Using Evolutionary
    Algorithms — A Comparative Case Study", PPSN 1998). A point that does not strictly dominate
    the reference adds nothing; no point gives 0."""
    array = _points(points)
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    if not np.isfinite(ref).all():
        raise ValueError("hypervolume: the reference point must be finite")
    if len(array) == 0:
        return 0.0
    if array.shape[1] != len(ref):
        raise ValueError(
            f"hypervolume: points have {array.shape[1]} objectives, the reference {len(ref)}"
        )
    inside = array[np.all(array < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return float(moocore.hypervolume(inside, ref=ref))


def to_minimisation(values: ArrayLike, higher_is_better: Sequence[bool]) -> FloatArray:
    """Objectives to minimise from metric values (columns in the order of
    ``higher_is_better``): a higher-is-better metric has its sign flipped."""
    array = np.asarray(values, dtype=np.float64)
    signs = np.where(np.asarray(higher_is_better, dtype=bool), -1.0, 1.0)
    if array.shape[-1] != len(signs):
        raise ValueError(
            f"to_minimisation: {array.shape[-1]} columns but {len(signs)} metric directions"
        )
    out: FloatArray = array * signs
    return out


def from_minimisation(objectives: ArrayLike, higher_is_better: Sequence[bool]) -> FloatArray:
    """Metric values from objectives: the inverse of :func:`to_minimisation`."""
    return to_minimisation(objectives, higher_is_better)


def default_reference(points: ArrayLike, margin: float = 0.1) -> FloatArray:
    """The reference point of :data:`REFERENCE_RULE`: the nadir (worst value of each objective
    over ``points``) moved out by ``margin`` of the objective's range.

    Computed over every point being compared (all methods, all seeds), so their hypervolumes
    share one reference and can be divided by each other."""
    array = _points(points)
    if len(array) == 0:
        raise ValueError("default_reference: no point to take the nadir of")
    nadir, ideal = array.max(axis=0), array.min(axis=0)
    spread = nadir - ideal
    # No spread (one point, or a tie): a step of the objective's own size keeps the reference
    # strictly worse than the point, so the point still has a volume.
    spread = np.where(spread > 0, spread, np.maximum(np.abs(nadir), 1.0))
    out: FloatArray = nadir + margin * spread
    return out


def closest_to_preference(
    points: ArrayLike,
    preference: ArrayLike,
    *,
    ideal: ArrayLike | None = None,
    nadir: ArrayLike | None = None,
) -> int:
    """Index of the point that best matches ``preference`` (a weight per objective, more
    weight = that objective matters more).

    Criterion: the weighted Tchebycheff scalarisation ``max_k r_k f̃_k`` of the objectives
    normalised to ``[0, 1]`` between ``ideal`` and ``nadir`` (default: the best and worst value
    of each objective over ``points``), ties broken by the weighted sum ``Σ_k r_k f̃_k``. On a
    continuous front its minimiser lies where ``r_k f̃_k`` is equal for every ``k``: the ray
    through the ideal point along ``1/r``, the preference ray of EPO (Mahapatra & Rajan, ICML
    2020), which :mod:`polytask.balance.preference_methods` targets in loss space. Unlike the
    angle to that ray, the criterion stays defined when a weight is 0 (that objective is then
    ignored except to break ties)."""
    array = _points(points)
    if len(array) == 0:
        raise ValueError("closest_to_preference: no point to choose from")
    weights = np.asarray(preference, dtype=np.float64).reshape(-1)
    if len(weights) != array.shape[1]:
        raise ValueError(
            f"closest_to_preference: {len(weights)} weights for {array.shape[1]} objectives"
        )
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("closest_to_preference: weights must be finite, >= 0, not all 0")
    low = array.min(axis=0) if ideal is None else np.asarray(ideal, dtype=np.float64)
    high = array.max(axis=0) if nadir is None else np.asarray(nadir, dtype=np.float64)
    span = np.where(high > low, high - low, 1.0)
    scaled = weights * (array - low) / span
    order = np.lexsort((scaled.sum(axis=1), scaled.max(axis=1)))
    return int(order[0])
