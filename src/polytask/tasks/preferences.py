"""Preference vectors: points of the probability simplex, one weight per task summing to 1.

* :func:`simplex_grid`: the regular lattice of Das & Dennis ("Normal-Boundary Intersection",
  SIAM J. Optim. 1998): every vector ``(i_1, ..., i_K) / H`` with non-negative integers summing
  to ``H``. Used for 2 and 3 tasks, where it covers the simplex evenly with few points.
* :func:`simplex_quasi_random`: a scrambled Halton sequence in ``[0, 1]^(K-1)`` mapped onto the
  simplex by sorted uniform spacings (the gaps between sorted uniforms are uniformly distributed
  on the simplex; Devroye, "Non-Uniform Random Variate Generation", 1986, V.2). For more tasks,
  where a lattice with a useful resolution has too many points. Halton rather than Sobol: its
  balance does not need a power-of-two number of points.
* :func:`preference_points`: the sweep's preferences, lattice or quasi-random, shrunk onto the
  part of the simplex where every weight is at least ``min_weight``.
* :func:`parse_preference`: a user's preference (``"0.7,0.3"`` or a list) checked and
  normalised, for prediction with a preference-conditioned model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from polytask.errors import PolytaskError

FloatArray = NDArray[np.float64]


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Every tuple of ``parts`` non-negative integers summing to ``total`` (lexicographic)."""
    if parts == 1:
        return [(total,)]
    return [
        (first, *rest)
        for first in range(total + 1)
        for rest in _compositions(total - first, parts - 1)
    ]


def lattice_size(n_tasks: int, divisions: int) -> int:
    """Points of the Das–Dennis lattice: ``C(H + K - 1, K - 1)``."""
    return math.comb(divisions + n_tasks - 1, n_tasks - 1)


def simplex_grid(n_tasks: int, n_points: int) -> FloatArray:
    """The finest Das–Dennis lattice with at most ``n_points`` points (exactly ``n_points``
    for 2 tasks: weights ``0, 1/(n-1), ..., 1`` on the first task). Rows sum to 1; for 2 tasks
    the first task's weight decreases from row to row."""
    if n_tasks < 2:
        raise ValueError("simplex_grid: at least 2 tasks")
    if n_points < 2:
        raise ValueError("simplex_grid: at least 2 points")
    divisions = 1
    while lattice_size(n_tasks, divisions + 1) <= n_points:
        divisions += 1
    grid = np.array(_compositions(divisions, n_tasks), dtype=np.float64)[::-1] / divisions
    out: FloatArray = grid
    return out


def simplex_quasi_random(n_tasks: int, n_points: int, seed: int = 0) -> FloatArray:
    """``n_points`` quasi-random preference vectors: a scrambled Halton sequence (seeded) in
    ``[0, 1]^(K-1)`` mapped to the simplex by sorted uniform spacings."""
    if n_tasks < 2 or n_points < 1:
        raise ValueError("simplex_quasi_random: at least 2 tasks and 1 point")
    # scipy.stats takes most of a second to import, and only Pareto sweeps draw preferences:
    # every other command (predict, serve, train) would pay it at start-up.
    from scipy.stats import qmc

    cube = qmc.Halton(d=n_tasks - 1, scramble=True, seed=seed).random(n_points)
    cuts = np.sort(cube, axis=1)
    edges = np.concatenate([np.zeros((n_points, 1)), cuts, np.ones((n_points, 1))], axis=1)
    out: FloatArray = np.diff(edges, axis=1)
    return out


def shrink(preferences: FloatArray, min_weight: float) -> FloatArray:
    """The affine map ``r -> m + (1 - K m) r``: keeps every row on the simplex and raises
    every weight to at least ``m`` (a vertex of the simplex goes to ``(1 - (K-1) m, m, ...)``)."""
    k = preferences.shape[1]
    if not 0.0 <= min_weight < 1.0 / k:
        raise ValueError(f"min_weight must be in [0, 1/{k}) for {k} tasks, got {min_weight}")
    out: FloatArray = min_weight + (1.0 - k * min_weight) * preferences
    return out


def preference_points(
    n_tasks: int, n_points: int, *, min_weight: float = 0.0, seed: int = 0
) -> FloatArray:
    """The preferences of a sweep: the lattice for 2-3 tasks, quasi-random points for more,
    then :func:`shrink` to ``min_weight``."""
    base = (
        simplex_grid(n_tasks, n_points)
        if n_tasks <= 3
        else simplex_quasi_random(n_tasks, n_points, seed)
    )
    return shrink(base, min_weight)


def parse_preference(value: str | Sequence[float], tasks: Sequence[str]) -> FloatArray:
    """A preference over ``tasks`` as a vector summing to 1.

    ``value`` is a comma-separated string (``"0.7,0.3"``) or a sequence of numbers, one per
    task in the model's task order. Wrong length, non-numbers, negative or non-finite weights
    and an all-zero vector are errors; positive vectors are normalised to sum to 1 (so
    ``"7,3"`` means ``0.7, 0.3``)."""
    names = ", ".join(tasks)
    if isinstance(value, str):
        try:
            numbers = [float(part) for part in value.split(",")]
        except ValueError:
            raise PolytaskError(
                f"preference {value!r}: expected numbers separated by commas, one per task "
                f"({names})"
            ) from None
    else:
        numbers = [float(v) for v in value]
    if len(numbers) != len(tasks):
        raise PolytaskError(
            f"preference has {len(numbers)} weight(s) but the model has {len(tasks)} tasks "
            f"({names}); give one weight per task in that order"
        )
    array = np.asarray(numbers, dtype=np.float64)
    if not np.isfinite(array).all() or (array < 0).any():
        raise PolytaskError(
            f"preference {numbers}: weights must be finite and non-negative (tasks: {names})"
        )
    total = float(array.sum())
    if total <= 0:
        raise PolytaskError(f"preference {numbers}: at least one weight must be positive")
    out: FloatArray = array / total
    return out
