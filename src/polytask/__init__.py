"""polytask: multi-task learning on PyTorch.

One network with shared layers and a head per task, trained jointly on a combined loss, with
masked missing labels, pluggable sharing architectures and loss balancers, and an honest
comparison against single-task models trained under the same budget.
"""

from __future__ import annotations

from polytask._version import __version__
from polytask.config import RunConfig, config_from_dict, load_config
from polytask.errors import ConfigError, DataError, PolytaskError
from polytask.plugins import load_plugins
from polytask.report import report

# ``polytask.run`` names the function below, not the package polytask/run/: the package is
# imported first, then the name is rebound (import its modules as ``from polytask.run.x``).
from polytask.run.pipeline import RunResult, fit, run
from polytask.run.predictor import Predictor, load
from polytask.studies.affinity import AffinityResult, affinity
from polytask.studies.compare import CompareResult, compare
from polytask.studies.finetune import finetune
from polytask.tasks import Task

__all__ = [
    "AffinityResult",
    "CompareResult",
    "ConfigError",
    "DataError",
    "PolytaskError",
    "Predictor",
    "RunConfig",
    "RunResult",
    "Task",
    "__version__",
    "affinity",
    "compare",
    "config_from_dict",
    "finetune",
    "fit",
    "load",
    "load_config",
    "report",
    "run",
]

# Last: plug-ins (entry points of the group "polytask.plugins") register into the registries.
load_plugins()
