"""Multi-task learning as multi-objective optimisation: the trade-off between the tasks.

* :mod:`polytask.studies.pareto.front`: dominance, non-dominated sorting, hypervolume, the
  point that matches a preference (all objectives minimised; metrics converted by sign);
* :mod:`polytask.tasks.preferences`: preference vectors on the simplex (lattice, quasi-random)
  and the checking of a user's preference;
* :func:`sweep` (``polytask pareto``): train the configuration over preference vectors (static
  weights or EPO), optionally one preference-conditioned COSMOS model and balancing methods,
  and write the front, its hypervolume and its cost to ``pareto.json`` / ``pareto.md``.

The preference-directed training methods are balancers (``epo``, ``cosmos``:
:mod:`polytask.balance.preference_methods`); the model side of COSMOS is
:mod:`polytask.models.conditioning`.
"""

from __future__ import annotations

from polytask.studies.pareto.driver import ParetoResult, sweep
from polytask.studies.pareto.front import (
    REFERENCE_RULE,
    closest_to_preference,
    default_reference,
    dominates,
    from_minimisation,
    hypervolume,
    non_dominated,
    non_dominated_sort,
    to_minimisation,
)
from polytask.tasks.preferences import (
    parse_preference,
    preference_points,
    simplex_grid,
    simplex_quasi_random,
)

__all__ = [
    "REFERENCE_RULE",
    "ParetoResult",
    "closest_to_preference",
    "default_reference",
    "dominates",
    "from_minimisation",
    "hypervolume",
    "non_dominated",
    "non_dominated_sort",
    "parse_preference",
    "preference_points",
    "simplex_grid",
    "simplex_quasi_random",
    "sweep",
    "to_minimisation",
]
