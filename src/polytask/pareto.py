"""``polytask.pareto``: the public name of :mod:`polytask.studies.pareto` (front helpers,
preference vectors, the sweep), kept so that user code importing it works unchanged."""

from polytask.studies.pareto import *  # noqa: F403
from polytask.studies.pareto import __all__  # noqa: F401
