"""Relative change between two sets of per-task metrics, and Δm.

One definition, used everywhere (early stopping, reports, benchmarks):

    rel_k = s_k * (M_k - B_k) / |B_k|,   s_k = -1 if higher is better else +1
    Δm%   = 100 * mean_k rel_k

where ``M_k`` is the multi-task model's primary metric on task k and ``B_k`` the reference
(the single-task baseline trained with the same budget). Lower is better: a negative Δm means
the multi-task model improves on the baselines on average. This is the "Δm" of Maninis et al.
(CVPR 2019) and Vandenhende et al. (TPAMI 2021) with the sign flipped so that both the loss and
Δm are minimised; reports name this variant explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

_EPS = 1e-12


def relative_change(value: float, reference: float, higher_is_better: bool) -> float:
    """Signed relative change of ``value`` vs ``reference``; negative means an improvement."""
    if math.isnan(value) or math.isnan(reference):
        return math.nan
    sign = -1.0 if higher_is_better else 1.0
    return sign * (value - reference) / max(abs(reference), _EPS)


def delta_m(
    values: Mapping[str, float],
    references: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> float:
    """Δm in percent over the tasks present in all three mappings (NaN tasks are skipped)."""
    changes = [
        relative_change(values[k], references[k], higher_is_better[k])
        for k in values
        if k in references and k in higher_is_better
    ]
    finite = [c for c in changes if not math.isnan(c)]
    if not finite:
        return math.nan
    return 100.0 * sum(finite) / len(finite)
