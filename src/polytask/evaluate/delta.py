"""Relative change between two sets of per-task metrics, and Δm.

One definition, used everywhere (early stopping, reports, benchmarks):

    rel_k = s_k * (M_k - B_k) / |B_k|,   s_k = -1 if higher is better else +1
    Δm%   = 100 * mean_k rel_k

where ``M_k`` is the multi-task model's primary metric on task k and ``B_k`` the reference
(the single-task baseline trained with the same budget). Lower is better: a negative Δm means
the multi-task model improves on the baselines on average. This is the "Δm" of Maninis et al.
(CVPR 2019) and Vandenhende et al. (TPAMI 2021) with the sign flipped so that both the loss and
Δm are minimised; reports name this variant explicitly. :func:`delta_m_all_metrics` is the
per-metric variant: the same mean taken over every metric of every task.
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


def delta_m_all_metrics(
    values: Mapping[str, Mapping[str, float]],
    references: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, Mapping[str, bool]],
) -> float:
    """Δm in percent over every metric of every task, each counting once.

    The variant of Navon et al. (ICML 2022, "Multi-Task Learning as a Bargaining Game") and
    Liu et al. (NeurIPS 2023, FAMO), who average the same signed relative change over all the
    metrics a benchmark reports rather than one primary metric per task; a task with three
    metrics therefore weighs three times. Same sign as :func:`delta_m` (negative = better);
    NaN metrics are skipped.
    """
    flat_values: dict[str, float] = {}
    flat_refs: dict[str, float] = {}
    flat_hib: dict[str, bool] = {}
    for task, metrics in values.items():
        for metric, value in metrics.items():
            key = f"{task}\x00{metric}"  # tasks and metrics are any strings; NUL joins them
            flat_values[key] = value
            if metric in references.get(task, {}):
                flat_refs[key] = references[task][metric]
            if metric in higher_is_better.get(task, {}):
                flat_hib[key] = higher_is_better[task][metric]
    return delta_m(flat_values, flat_refs, flat_hib)
