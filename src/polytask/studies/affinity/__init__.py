"""Task affinity: lookahead affinity measured during training, gradient cosines, suggested
groupings (:mod:`polytask.studies.affinity.study`, :mod:`polytask.studies.affinity.grouping`)."""

from polytask.studies.affinity.study import (
    AffinityProbe,
    AffinityResult,
    PairSearch,
    affinity,
    pair_search,
)

__all__ = ["AffinityProbe", "AffinityResult", "PairSearch", "affinity", "pair_search"]
