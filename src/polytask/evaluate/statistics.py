"""Statistics over seeds: a mean with its Student-t confidence interval, and a per-task verdict
from a paired t-test of multi-task against single-task runs of the same seed.

Seeds are the unit of replication: each seed trains every model once (and, when the data split
follows the run seed, draws its own split and training subset), so the spread over seeds is
what a user would see by retraining. With ``n`` seeds the interval is

    mean ± t_{(1 + c) / 2, n - 1} · s / √n        (s: sample standard deviation, c = 0.95)

Student (1908), "The probable error of a mean"; the paired test is the one-sample t-test of the
per-seed differences ``multi - single`` against 0 (on choosing such tests for model comparisons:
Dror et al., ACL 2018, "The Hitchhiker's Guide to Testing Statistical Significance in NLP").

Undefined values (NaN: a metric without valid labels, a run not finished yet) are left out;
the paired test keeps only seeds where both sides are defined. Degenerate cases are decided, not
left to the library:

* one value: the mean is that value and the interval is undefined (NaN, ``null`` in JSON);
* identical values (zero variance): the interval has zero width;
* an interval reaching past what the metric can take (AUROC above 1) is clipped to its range;
* a verdict from fewer than ``FEW_SEEDS`` pairs carries a note saying how little it rests on;
* paired differences all identical (zero variance): all zero -> p = 1 ("no significant
  difference"); all equal and non-zero -> p = 0 (the limit of the t statistic, |t| -> ∞), the
  verdict follows the sign. Seeds then make no difference to the comparison, so the constant
  difference is the answer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from polytask.evaluate.delta import relative_change

VerdictText = Literal["helps", "no significant difference", "hurts", "too few seeds"]

#: Paired seeds a verdict needs; with one pair there is no variance to test against.
MIN_PAIRED_SEEDS = 2
#: Below this many paired seeds a verdict says how little it rests on (with 2 seeds the
#: t-test has one degree of freedom: its p-value swings with every retraining).
FEW_SEEDS = 5


def evidence_note(n_pairs: int) -> str | None:
    """How little a verdict from ``n_pairs`` paired seeds rests on (None from FEW_SEEDS on)."""
    if n_pairs >= FEW_SEEDS or n_pairs < MIN_PAIRED_SEEDS:
        return None
    return (
        f"only {n_pairs} seeds: weak evidence, the test has {n_pairs - 1} degree"
        f"{'s' if n_pairs > 2 else ''} of freedom; train {FEW_SEEDS} or more seeds to rely on it"
    )


def verdict_test_description(alpha: float) -> str:
    """The verdict test in words, as written to compare.json."""
    return (
        f"paired t-test over seeds (multi-task vs single-task of the same seed, on the task's "
        f"primary test metric), two-sided, α = {alpha:g}; fewer than {MIN_PAIRED_SEEDS} paired "
        "seeds: 'too few seeds'"
    )


def _finite(values: Sequence[float | None]) -> np.ndarray:
    array = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return array[np.isfinite(array)]


@dataclass(frozen=True)
class Interval:
    """A mean over seeds, its confidence interval and the per-seed values it came from."""

    mean: float
    low: float
    high: float
    values: list[float | None] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of defined values the mean is over."""
        return int(_finite(self.values).size)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "values": self.values}


def mean_ci(
    values: Sequence[float | None],
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Interval:
    """Mean of the defined ``values`` with a two-sided Student-t interval at ``confidence``,
    clipped to ``bounds``, the values the metric can take (with few seeds the t interval of an
    AUROC near 1 reaches past 1, where no model can be: :func:`polytask.evaluate.metrics.
    metric_range`)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    kept = list(values)
    x = _finite(kept)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, kept)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, math.nan, math.nan, kept)
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, x.size - 1)) * sd / math.sqrt(x.size)
    low, high = bounds
    return Interval(mean, max(mean - half, low), min(mean + half, high), kept)


@dataclass(frozen=True)
class Verdict:
    """Whether multi-task training helps one task, from paired per-seed values.

    ``change_pct`` is the mean over paired seeds of the task's relative change in percent,
    signed like Δm (:func:`polytask.evaluate.delta.relative_change`): negative = multi-task
    better. ``p_value`` is NaN below :data:`MIN_PAIRED_SEEDS` pairs.
    """

    verdict: VerdictText
    change_pct: float
    p_value: float
    n_pairs: int

    @property
    def evidence(self) -> str | None:
        """How little the verdict rests on, when few seeds decided it (:func:`evidence_note`)."""
        return evidence_note(self.n_pairs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "change_pct": self.change_pct,
            "p_value": self.p_value,
            "n_pairs": self.n_pairs,
            "evidence": self.evidence,
        }


def paired_p_value(differences: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of ``differences`` against 0 (see the module
    docstring for the zero-variance cases)."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size < MIN_PAIRED_SEEDS:
        return math.nan
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0.0 else 0.0
    with warnings.catch_warnings():
        # Nearly identical differences make scipy warn about precision; the p-value it returns
        # (tiny) is still the right reading of a near-constant non-zero difference.
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    # Defensive: an undefined statistic is no evidence of a difference.
    return p if math.isfinite(p) else 1.0


def paired_verdict(
    multi: Sequence[float | None],
    single: Sequence[float | None],
    higher_is_better: bool,
    alpha: float = 0.05,
) -> Verdict:
    """Verdict for one task from per-seed values of the multi-task and single-task runs.

    ``multi[i]`` and ``single[i]`` belong to the same seed. Significant at ``alpha`` means
    "helps" when the metric moved in its good direction (up if ``higher_is_better``), "hurts"
    otherwise; not significant: "no significant difference".
    """
    if len(multi) != len(single):
        raise ValueError("multi and single need one value per seed each")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    pairs = [
        (float(m), float(s))
        for m, s in zip(multi, single, strict=True)
        if m is not None and s is not None and math.isfinite(m) and math.isfinite(s)
    ]
    changes = [relative_change(m, s, higher_is_better) for m, s in pairs]
    change_pct = 100.0 * float(np.mean(changes)) if changes else math.nan
    if len(pairs) < MIN_PAIRED_SEEDS:
        return Verdict("too few seeds", change_pct, math.nan, len(pairs))
    p = paired_p_value([m - s for m, s in pairs])
    if p >= alpha:
        return Verdict("no significant difference", change_pct, p, len(pairs))
    gain = float(np.mean([m - s for m, s in pairs]))
    better = gain > 0 if higher_is_better else gain < 0
    return Verdict("helps" if better else "hurts", change_pct, p, len(pairs))
