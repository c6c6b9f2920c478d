"""polytask: multi-task learning on PyTorch.

One network with shared layers and a head per task, trained jointly on a combined loss, with
masked missing labels, pluggable sharing architectures and loss balancers, and an honest
comparison against single-task models trained under the same budget.
"""

from __future__ import annotations

__version__ = "0.1.0"

from polytask.artifacts import Predictor, load
from polytask.comparison import CompareResult, compare
from polytask.config import RunConfig, config_from_dict, load_config
from polytask.errors import ConfigError, DataError, PolytaskError
from polytask.evaluate.affinity import AffinityResult, affinity
from polytask.finetune import finetune
from polytask.pipeline import RunResult, fit, run
from polytask.report import report
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
