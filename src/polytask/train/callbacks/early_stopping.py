"""Early stopping: keep the weights of the best epoch by the validation criterion and stop when
``patience`` epochs in a row failed to improve it by more than ``min_delta``."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from polytask.train.callbacks.base import TrainerCallback, TrainerView
from polytask.train.config import TrainConfig
from polytask.train.record import EpochRecord


class EarlyStopping(TrainerCallback):
    """Tracks the best epoch (marking its record ``best``), holds its weights and loads them
    into the model when training ends. ``patience`` None: never stop early (the best weights
    are still the ones kept)."""

    def __init__(self, patience: int | None, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_criterion = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        #: The best epoch's model weights (None before the first epoch).
        self.best_weights: dict[str, Tensor] | None = None

    @property
    def exhausted(self) -> bool:
        """Patience ran out: training should stop."""
        return self.patience is not None and self.bad_epochs >= self.patience

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        score = record.criterion
        improved = score < self.best_criterion - self.min_delta or self.best_weights is None
        if improved:
            self.best_criterion, self.best_epoch, self.bad_epochs = score, record.epoch, 0
            self.best_weights = {
                k: v.detach().clone() for k, v in trainer.model.state_dict().items()
            }
        else:
            self.bad_epochs += 1
        record.best = improved

    def on_fit_end(self, trainer: TrainerView) -> None:
        if self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)
        if self.exhausted and trainer.epoch < trainer.config.epochs and not trainer.quiet:
            trainer.console.print(
                f"[{trainer.label}] {self.announcement(trainer.epoch, trainer.config)}",
                markup=False,
                highlight=False,
            )

    def announcement(self, epoch: int, config: TrainConfig) -> str:
        """Which epoch training stopped at, and why (printed unless the trainer is quiet)."""
        by = f" by more than {self.min_delta:g}" if self.min_delta > 0 else ""
        return (
            f"early stopping after epoch {epoch} of {config.epochs}: the validation criterion "
            f"({config.criterion}) did not improve{by} for {self.bad_epochs} epochs "
            f"(train.patience = {self.patience}); keeping the weights of epoch "
            f"{self.best_epoch} (criterion {self.best_criterion:+.4f})"
        )

    def state(self) -> dict[str, Any]:
        return {
            "best_criterion": self.best_criterion,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.best_criterion, self.best_epoch = (
            float(state["best_criterion"]),
            int(state["best_epoch"]),
        )
        self.bad_epochs = int(state["bad_epochs"])
