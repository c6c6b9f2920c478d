"""``polytask.distill``: the public name of :mod:`polytask.studies.distill` (a student trained
on teachers' outputs), kept so that user code importing it works unchanged."""

from polytask.studies.distill import *  # noqa: F403
from polytask.studies.distill import __all__  # noqa: F401
