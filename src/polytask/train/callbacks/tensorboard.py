"""Optional TensorBoard logging (``train.tensorboard = true``): an epoch callback writing the
numbers of each :class:`~polytask.train.record.EpochRecord` as scalars, one step per epoch.

The metrics log (``metrics.jsonl``) stays the record; this is a second view of the same numbers
for people who watch training in TensorBoard (``tensorboard --logdir RUN_DIR``). Tags, with
``<a|b>`` a task pair as in the metrics log:

* ``loss/train/<task>``, ``loss/val/<task>``: mean training loss over the epoch's steps,
  validation loss;
* ``metric/<task>/<metric>``: every validation metric;
* ``criterion``, ``lr``: the early-stopping criterion, the learning rate at the epoch's end;
* ``weight/<task>``, ``grad_norm/<task>``: mean task weight, mean gradient norm;
* ``grad_cosine/<a|b>``, ``conflict/<a|b>``: mean gradient cosine, fraction of measured steps
  with a negative cosine;
* ``dominance/<task>``: mean share of the combined update;
* ``sampling/<source>``, ``schedule/<task>``: each data source's sampling probability, each
  task's probability under task scheduling.

TensorBoard stores scalars in single precision. NaN entries (a task without a step or a label
in the epoch, where the metrics log writes ``null``) are left out. The ``tensorboard`` package
is an optional extra; it is imported only when logging is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from polytask.errors import ConfigError
from polytask.train.callbacks.base import TrainerView
from polytask.train.record import EpochRecord

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

#: How to install what logging needs, named in the error when it is missing.
EXTRA_HINT = "pip install 'polytask[tensorboard]'"


def require_tensorboard() -> type[SummaryWriter]:
    """PyTorch's ``SummaryWriter``, or a :class:`ConfigError` naming the extra if the
    ``tensorboard`` package is not installed."""
    try:
        # torch.utils.tensorboard is part of torch but writes through the tensorboard package;
        # importing that first names the missing package rather than torch's wording of it.
        import tensorboard  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            f"config error: train.tensorboard: logging to TensorBoard needs the tensorboard "
            f"package; run: {EXTRA_HINT} ({exc})"
        ) from None
    return SummaryWriter


def scalars(record: EpochRecord) -> dict[str, float]:
    """The tags and values written for one epoch (module docstring), NaN entries left out."""
    out: dict[str, float] = {}

    def put(prefix: str, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            out[f"{prefix}/{key}"] = float(value)

    put("loss/train", record.train_loss)
    put("loss/val", record.val_loss)
    for task, metrics in record.val_metrics.items():
        put(f"metric/{task}", metrics)
    out["criterion"] = float(record.criterion)
    out["lr"] = float(record.lr)
    put("weight", record.weights)
    put("grad_norm", record.grad_norms)
    put("grad_cosine", record.grad_cosines)
    put("conflict", record.conflicts)
    put("dominance", record.dominance)
    put("sampling", record.sampling)
    put("schedule", record.schedule)
    return {tag: value for tag, value in out.items() if not math.isnan(value)}


class TensorBoardLogger:
    """Epoch callback writing :func:`scalars` of each epoch to ``log_dir``, the epoch number as
    the step.

    Raises :class:`ConfigError` at construction (before any training) if the ``tensorboard``
    package is missing. The writer opens at the first epoch; in a resumed run that first call
    rewrites every earlier epoch of the restored history, and events an interrupted run left at
    those steps are purged (TensorBoard's ``purge_step``), so each epoch appears once even if
    the interruption fell between the checkpoint and this callback. Call :meth:`close` when
    training ends.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self._writer_class = require_tensorboard()
        self.log_dir = Path(log_dir)
        self._writer: SummaryWriter | None = None

    def __call__(self, trainer: TrainerView, record: EpochRecord) -> None:
        if self._writer is None:
            earlier = [r for r in trainer.history if r.epoch < record.epoch]
            first = earlier[0].epoch if earlier else None
            self._writer = self._writer_class(log_dir=str(self.log_dir), purge_step=first)
            for past in earlier:
                self._write(past)
        self._write(record)
        # An epoch is long next to a flush: make it visible to a running TensorBoard now.
        self._writer.flush()

    def _write(self, record: EpochRecord) -> None:
        assert self._writer is not None
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=record.epoch)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
