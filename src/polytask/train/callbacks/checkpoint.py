"""Checkpointing: ``checkpoints/last`` (everything needed to resume: model, optimiser, balancer,
random number generators, task scheduler, the trainer's counters and history) after every epoch
and every ``checkpoint_every`` steps (then with the position in the epoch), and
``checkpoints/best`` (the best epoch's weights) when an epoch improves the criterion.

Files are safetensors + JSON (:mod:`polytask.state_io`); the layout is the trainer's
:meth:`~polytask.train.trainer.Trainer.state`. Resuming restores it, so training continues to
the same weights as an uninterrupted run.

A checkpoint is one atomic unit: each save stages a whole new ``checkpoints`` folder (``last/``
written, ``best/`` written or hard-linked from the previous one) and exchanges it with the old
one in one step, so a kill at any moment leaves the previous checkpoint or the new one, whole,
and never a ``last`` that disagrees with its ``best``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from polytask.balance.base import BackwardResult
from polytask.devices import to_cpu
from polytask.errors import PolytaskError
from polytask.state_io import atomic_directory, fault_point, load_state, recover, save_state
from polytask.train.callbacks.base import TrainerCallback, TrainerView
from polytask.train.callbacks.early_stopping import EarlyStopping
from polytask.train.record import EpochRecord


class Checkpointing(TrainerCallback):
    """Writes the checkpoints of a run into ``run_dir/checkpoints`` (module docstring);
    ``early_stopping`` gets the best weights back on :meth:`restore`."""

    def __init__(self, run_dir: Path, every: int | None, early_stopping: EarlyStopping) -> None:
        self.dir = run_dir / "checkpoints"
        self.every = every
        self.early_stopping = early_stopping

    def after_step(
        self, trainer: TrainerView, losses: dict[str, Tensor], result: BackwardResult | None
    ) -> None:
        done, every = trainer.step_in_epoch, self.every
        if every and done % every == 0 and done < trainer.steps_in_epoch:
            self.save(trainer, best=False)

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        self.save(trainer, best=record.best)

    def save(self, trainer: TrainerView, *, best: bool) -> None:
        """Write ``last`` (full state) and ``best`` (the model's weights: new if ``best``, else
        the previous ones) as one new ``checkpoints`` folder (module docstring)."""
        previous = self.dir / "best"
        with atomic_directory(self.dir) as staging:
            (staging / "last").mkdir()
            save_state(staging / "last", trainer.state())
            fault_point("checkpoint.last")
            if best:
                (staging / "best").mkdir()
                save_state(
                    staging / "best",
                    {"model": to_cpu(trainer.model.state_dict()), "epoch": trainer.epoch},
                )
            elif previous.is_dir():
                _link_files(previous, staging / "best")

    def restore(self, trainer: TrainerView) -> None:
        """Restore everything :meth:`save` wrote, so training continues exactly."""
        # A save killed half-way leaves staging folders; where there is no atomic exchange it
        # may have moved the checkpoint aside: put it back before reading it.
        state, best = self.read()
        trainer.load_state(state)
        if best is not None:
            self.early_stopping.best_weights = best

    def read(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The last checkpoint's state and the best checkpoint's weights (None: none yet)."""
        recover(self.dir)
        last = self.dir / "last"
        if not (last / "state.json").is_file():
            raise PolytaskError(f"cannot resume: no checkpoint in '{last}'")
        state = load_state(last)
        best = self.dir / "best"
        weights = load_state(best)["model"] if (best / "state.json").is_file() else None
        return state, weights


def _link_files(source: Path, target: Path) -> None:
    """Give ``target`` the files of ``source`` (flat), hard-linked: saved files are never
    changed in place, so sharing them is safe and costs no copy; a copy where links fail."""
    target.mkdir()
    for path in source.iterdir():
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)
