"""The trainer's named callbacks, one module each: everything around the step that is not the
step (:mod:`polytask.train.trainer`).

* :mod:`~polytask.train.callbacks.base`: the hooks (:class:`TrainerCallback`) and what a
  callback sees of the trainer (:class:`TrainerView`);
* :mod:`~polytask.train.callbacks.diagnostics`: gradient norms, cosines, conflicts, dominance;
* :mod:`~polytask.train.callbacks.early_stopping`: best weights, patience;
* :mod:`~polytask.train.callbacks.checkpoint`: best/last checkpoints, mid-epoch resume points;
* :mod:`~polytask.train.callbacks.metrics_log`: ``metrics.jsonl`` / ``metrics.csv``;
* :mod:`~polytask.train.callbacks.progress`: the progress bar and the per-epoch console line;
* :mod:`~polytask.train.callbacks.tensorboard`: optional TensorBoard scalars.
"""

from polytask.train.callbacks.base import TrainerCallback, TrainerView
from polytask.train.callbacks.checkpoint import Checkpointing
from polytask.train.callbacks.diagnostics import GradientDiagnostics
from polytask.train.callbacks.early_stopping import EarlyStopping
from polytask.train.callbacks.metrics_log import MetricsLog
from polytask.train.callbacks.progress import ProgressDisplay

__all__ = [
    "Checkpointing",
    "EarlyStopping",
    "GradientDiagnostics",
    "MetricsLog",
    "ProgressDisplay",
    "TrainerCallback",
    "TrainerView",
]
