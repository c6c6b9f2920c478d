"""Task scheduling: which tasks train at each step.

The default (``all``) trains every task whose labels are in the batch. The other schedulers
choose ``tasks_per_step`` tasks per step; only their losses are back-propagated, and with
homogeneous batches the batch is drawn from a source labelling a chosen task.

* ``round_robin``: the tasks in turn, ``tasks_per_step`` at a time.
* ``random``: ``tasks_per_step`` tasks drawn uniformly without replacement at every step.
* ``progress``: a learning-progress curriculum in the spirit of Graves, Bellemare, Menick,
  Munos & Kavukcuoglu, "Automated Curriculum Learning for Neural Networks", ICML 2017: after
  every epoch each task's progress is the relative decrease of its validation loss over the
  last ``window`` epochs, ``r_t = (L_t(e − w) − L_t(e)) / L_t(e − w)``, and the next epoch
  draws tasks with ``p_t ∝ exp(−r_t / temperature)``, so tasks that improve most slowly train
  most (the first epoch is uniform). Its probabilities are logged every epoch.

A schedule for a whole epoch is drawn at the epoch's start from the run's shuffling generator,
so the same seed gives the same schedule and a resumed epoch replays it exactly.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from polytask.config_errors import Epochs, Schema


class ScheduleConfig(Schema):
    """The ``[schedule]`` section."""

    name: Literal["all", "round_robin", "random", "progress"] = Field(
        default="all",
        description="which tasks train at each step: all, in turn, at random, or by slow progress",
    )
    tasks_per_step: int = Field(
        default=1, ge=1, description="round_robin / random / progress: tasks trained per step"
    )
    temperature: float = Field(
        default=0.1, gt=0.0, description="progress: softness of exp(-r / temperature)"
    )
    window: Epochs = Field(default=1, description="progress: epochs progress is measured over")


class TaskScheduler:
    """Draws each epoch's per-step task lists and adapts between epochs (``progress``)."""

    def __init__(self, tasks: list[str], cfg: ScheduleConfig) -> None:
        self.tasks = list(tasks)
        self.cfg = cfg
        self.k = min(cfg.tasks_per_step, len(tasks))
        self.history: list[dict[str, float]] = []  # validation losses, one dict per epoch
        self.position = 0  # round robin: the next task's index

    @property
    def active(self) -> bool:
        """False for ``all`` (or when every task is chosen anyway): no schedule is drawn."""
        return self.cfg.name != "all" and self.k < len(self.tasks)

    def probabilities(self) -> dict[str, float]:
        """Each task's chance of being drawn at a step of the next epoch (uniform except for
        ``progress``)."""
        uniform = {t: 1.0 / len(self.tasks) for t in self.tasks}
        w = self.cfg.window
        if self.cfg.name != "progress" or len(self.history) <= w:
            return uniform
        before, now = self.history[-1 - w], self.history[-1]
        scores: dict[str, float] = {}
        for t in self.tasks:
            old, new = before.get(t, math.nan), now.get(t, math.nan)
            rate = (
                (old - new) / abs(old) if math.isfinite(old) and math.isfinite(new) and old else 0.0
            )
            scores[t] = -rate / self.cfg.temperature
        top = max(scores.values())
        weights = {t: math.exp(v - top) for t, v in scores.items()}
        total = sum(weights.values())
        return {t: v / total for t, v in weights.items()}

    def plan(self, steps: int, generator: torch.Generator) -> list[list[str]] | None:
        """The tasks of each of ``steps`` steps, or None when every step trains every task."""
        if not self.active:
            return None
        n = len(self.tasks)
        if self.cfg.name == "round_robin":
            plan = []
            for _ in range(steps):
                plan.append([self.tasks[(self.position + j) % n] for j in range(self.k)])
                self.position = (self.position + self.k) % n
            return plan
        probs = self.probabilities()
        p = torch.tensor([probs[t] for t in self.tasks], dtype=torch.float64)
        draws = [
            torch.multinomial(p, self.k, replacement=False, generator=generator)
            for _ in range(steps)
        ]
        return [[self.tasks[i] for i in sorted(d.tolist())] for d in draws]

    def end_epoch(self, val_loss: dict[str, float]) -> None:
        self.history.append(dict(val_loss))

    def state(self) -> dict[str, Any]:
        return {"history": self.history, "position": self.position}

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state["history"]]
        self.position = int(state["position"])
