"""polytask: multi-task learning on PyTorch.

One network with shared layers and a head per task, trained jointly on a combined loss, with
masked missing labels, pluggable sharing architectures and loss balancers, and an honest
comparison against single-task models trained under the same budget.

The names below are imported on first use (PEP 562 ``__getattr__``), not by ``import polytask``:
every command-line call imports this package first, and ``polytask --help`` must not pay for
torch and the metrics libraries (seconds of CPU) it never uses. The first use of one of them
imports what ``import polytask`` used to (:func:`_load_all`: the studies, which register their
config sections, and the plug-ins of the group ``polytask.plugins``); so does the command line
before it runs a command.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from polytask._version import __version__
from polytask.errors import ConfigError, DataError, PolytaskError
from polytask.plugins import ensure_loaded

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from polytask.config import RunConfig, config_from_dict, load_config
    from polytask.report import report
    from polytask.run.pipeline import RunResult, fit, run
    from polytask.run.predictor import Predictor, load
    from polytask.studies.affinity import AffinityResult, affinity
    from polytask.studies.compare import CompareResult, compare
    from polytask.studies.finetune import finetune
    from polytask.tasks import Task

#: Public name -> the module that defines it.
_LAZY = {
    "RunConfig": "polytask.config",
    "config_from_dict": "polytask.config",
    "load_config": "polytask.config",
    "report": "polytask.report",
    "RunResult": "polytask.run.pipeline",
    "fit": "polytask.run.pipeline",
    "run": "polytask.run.pipeline",
    "Predictor": "polytask.run.predictor",
    "load": "polytask.run.predictor",
    "AffinityResult": "polytask.studies.affinity",
    "affinity": "polytask.studies.affinity",
    "CompareResult": "polytask.studies.compare",
    "compare": "polytask.studies.compare",
    "finetune": "polytask.studies.finetune",
    "Task": "polytask.tasks",
}

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


def _load_all() -> None:
    """Import everything ``import polytask`` used to import, then the plug-ins: the studies
    register their config sections (``[compare]``, ``[distill]``, ...) when imported, so any
    config is understood after this. Called at the first use of a name below and by the
    command line before it runs a command (not for ``--help``)."""
    for module in dict.fromkeys(_LAZY.values()):
        importlib.import_module(module)
    ensure_loaded()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'polytask' has no attribute {name!r}")
    _load_all()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """``polytask.run`` is the function, not the package polytask/run/: importing that package
    makes the import system bind it on this module, which is skipped here (import its modules
    as ``from polytask.run.x import ...``)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
