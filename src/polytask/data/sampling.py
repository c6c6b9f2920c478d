"""Sampling across data sources of unequal size: which source each batch (or each example)
comes from, and what an epoch is.

A source is a dataset labelling some of the tasks (one per task, or one table for all). With
sizes ``n_i``, every strategy is a probability ``p_i ∝ n_i^α`` over the sources:

* ``proportional``: α = 1 (every example equally likely; large sources dominate);
* ``uniform``: α = 0 (every source equally often);
* ``temperature``: α = 1/T (Arivazhagan et al., "Massively Multilingual Neural Machine
  Translation in the Wild", 2019; T = 1 is proportional, T → ∞ uniform);
* ``annealed``: α falls linearly from 1 at the first epoch to ``anneal_end`` at the last
  (Stickland & Murray, "BERT and PALs", ICML 2019, who use α = 1 − 0.8 (e − 1)/(E − 1));
* ``round_robin``: the sources in turn, one batch each (deterministic; homogeneous batches).

Batches are ``homogeneous`` (each from one source, drawn with ``p``) or ``mixed`` (each
example's source drawn with ``p``: multinomial counts per batch). Each source is read in
shuffled passes; a pass that ends mid-batch continues with a fresh permutation, so small
sources cycle and every example of a source is seen once per pass.

Epoch length (``epoch``): ``sum`` = Σ n_i / batch steps; ``largest`` / ``smallest`` = enough
steps to draw, in expectation, as many examples from the largest / smallest source as it holds
(n_i / (p_i · batch)); ``steps`` = a fixed number. With one source and ``sum``, an epoch is
exactly one shuffled pass, as without sampling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from polytask.config_errors import Schema, Steps

Strategy = Literal["proportional", "uniform", "temperature", "annealed", "round_robin"]


class SamplingConfig(Schema):
    """The ``[sampling]`` section: how batches are drawn from the data sources."""

    strategy: Strategy = Field(
        default="proportional",
        description="how often each source is drawn: p_i ∝ n_i^α (proportional α=1, uniform "
        "α=0, temperature α=1/T, annealed), or in turn",
    )
    temperature: float = Field(default=2.0, gt=0.0, description="temperature: T of n^(1/T)")
    anneal_end: float = Field(
        default=0.2, ge=0.0, le=1.0, description="annealed: the exponent α at the last epoch"
    )
    batches: Literal["homogeneous", "mixed"] = Field(
        default="homogeneous",
        description="homogeneous: each batch from one source; mixed: rows of every source "
        "in a batch",
    )
    epoch: Literal["sum", "largest", "smallest", "steps"] = Field(
        default="sum",
        description="what an epoch is: the sum of the sources' batches, the largest, the "
        "smallest, or sampling.steps",
    )
    steps: Steps | None = Field(default=None, description="epoch = 'steps': steps per epoch")


def sampling_exponent(cfg: SamplingConfig, epoch: int, epochs: int) -> float:
    """α of ``p ∝ n^α`` at 0-based ``epoch`` of ``epochs``."""
    if cfg.strategy == "proportional":
        return 1.0
    if cfg.strategy in ("uniform", "round_robin"):
        return 0.0
    if cfg.strategy == "temperature":
        return 1.0 / cfg.temperature
    progress = epoch / (epochs - 1) if epochs > 1 else 1.0
    return 1.0 - (1.0 - cfg.anneal_end) * min(progress, 1.0)


def source_probabilities(
    sizes: list[int], cfg: SamplingConfig, epoch: int, epochs: int
) -> np.ndarray:
    """``p_i ∝ n_i^α`` over the sources (float64, sums to 1)."""
    n = np.asarray(sizes, dtype=np.float64)
    weights = n ** sampling_exponent(cfg, epoch, epochs)
    result: np.ndarray = weights / weights.sum()
    return result


def epoch_steps(sizes: list[int], probs: np.ndarray, batch_size: int, cfg: SamplingConfig) -> int:
    """Steps in one epoch (see the module docstring)."""
    if cfg.epoch == "steps":
        if cfg.steps is None:
            raise ValueError("sampling.epoch = 'steps' needs sampling.steps")
        return cfg.steps
    if cfg.epoch == "sum":
        return max(1, math.ceil(sum(sizes) / batch_size))
    pick = int(np.argmax(sizes)) if cfg.epoch == "largest" else int(np.argmin(sizes))
    # Rounded before the ceiling: 40 / (1/3 · 10) is 12.000000000000002 in floating point.
    return max(1, math.ceil(round(sizes[pick] / (float(probs[pick]) * batch_size), 9)))


class RowStream:
    """The rows of one source in shuffled passes, a fresh permutation for every pass."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.order: Tensor | None = None
        self.cursor = 0
        self.passes = 0

    def take(self, k: int, generator: torch.Generator) -> Tensor:
        parts: list[Tensor] = []
        while k > 0:
            if self.order is None or self.cursor >= self.n:
                self.order = torch.randperm(self.n, generator=generator)
                self.cursor = 0
                self.passes += 1
            part = self.order[self.cursor : self.cursor + k]
            self.cursor += len(part)
            k -= len(part)
            parts.append(part)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def state(self) -> dict[str, Any]:
        return {
            "order": self.order if self.order is not None else torch.empty(0, dtype=torch.int64),
            "cursor": self.cursor,
            "passes": self.passes,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        order = state["order"]
        self.order = order if order.numel() else None
        self.cursor, self.passes = int(state["cursor"]), int(state["passes"])


@dataclass
class Draw:
    """Step ``step``'s rows: source index -> row indices into that source."""

    step: int
    rows: dict[int, Tensor]

    def counts(self) -> dict[int, int]:
        return {i: len(r) for i, r in self.rows.items()}


class SourceSampler:
    """Draws each step's rows from sources of ``sizes`` following a :class:`SamplingConfig`."""

    def __init__(self, sizes: list[int], cfg: SamplingConfig) -> None:
        if not sizes or min(sizes) < 1:
            raise ValueError(f"every source needs at least one row (sizes {sizes})")
        if cfg.strategy == "round_robin" and cfg.batches == "mixed":
            raise ValueError("sampling.strategy 'round_robin' draws whole batches: use homogeneous")
        self.sizes = list(sizes)
        self.cfg = cfg
        self.streams = [RowStream(n) for n in sizes]

    def probabilities(self, epoch: int, epochs: int) -> np.ndarray:
        return source_probabilities(self.sizes, self.cfg, epoch, epochs)

    def steps(self, batch_size: int, epoch: int, epochs: int) -> int:
        if self._single_pass():
            n = self.sizes[0]
            steps = -(-n // batch_size)
            return steps - 1 if batch_size > 1 and n % batch_size == 1 else steps
        return epoch_steps(self.sizes, self.probabilities(epoch, epochs), batch_size, self.cfg)

    def _single_pass(self) -> bool:
        return len(self.sizes) == 1 and self.cfg.epoch == "sum"

    def epoch(
        self,
        batch_size: int,
        epoch: int,
        epochs: int,
        generator: torch.Generator,
        allowed: list[list[int]] | None = None,
    ) -> Iterator[Draw]:
        """The draws of one epoch. ``allowed[s]``, when given, restricts step ``s`` of
        homogeneous batches to those sources (the task scheduler's choice); mixed batches
        ignore it (the trainer drops the unscheduled tasks' losses instead)."""
        if self._single_pass():
            # Exactly one shuffled pass, dropping a final single row as TensorData.batches
            # does (batch norm cannot train on it): runs without sources are unchanged. With
            # batch_size 1 every batch is a single row and none is a leftover to drop.
            n = self.sizes[0]
            order = torch.randperm(n, generator=generator)
            for step, start in enumerate(range(0, n, batch_size)):
                stop = min(start + batch_size, n)
                if stop - start == 1 and batch_size > 1:
                    break
                yield Draw(step, {0: order[start:stop]})
            return
        probs = self.probabilities(epoch, epochs)
        k = len(self.sizes)
        for step in range(self.steps(batch_size, epoch, epochs)):
            if self.cfg.batches == "mixed":
                counts = torch.multinomial(
                    torch.from_numpy(probs), batch_size, replacement=True, generator=generator
                ).bincount(minlength=k)
                rows = {
                    i: self.streams[i].take(int(c), generator)
                    for i, c in enumerate(counts.tolist())
                    if c > 0
                }
                yield Draw(step, rows)
                continue
            choices = allowed[step] if allowed is not None else list(range(k))
            if self.cfg.strategy == "round_robin":
                # The sources in turn; a restriction skips ahead to the next allowed one.
                turn = [(step + j) % k for j in range(k)]
                source = next(i for i in turn if i in choices)
            else:
                p = torch.from_numpy(probs[choices] / probs[choices].sum())
                source = choices[int(torch.multinomial(p, 1, generator=generator))]
            yield Draw(step, {source: self.streams[source].take(batch_size, generator)})

    def state(self) -> dict[str, Any]:
        return {"streams": [s.state() for s in self.streams]}

    def load_state(self, state: dict[str, Any]) -> None:
        for stream, s in zip(self.streams, state["streams"], strict=True):
            stream.load_state(s)
