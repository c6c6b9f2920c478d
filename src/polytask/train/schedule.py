"""Learning-rate schedules as pure functions of the step, so a resume needs only the step."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, kind: str, warmup: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``.

    ``warmup`` is the fraction of steps spent ramping linearly from 0 to 1; afterwards the rate
    follows ``kind``: constant (``none``), half-cosine to 0 (``cosine``, Loshchilov & Hutter,
    ICLR 2017) or linear decay to 0 (``linear``).
    """
    warm = int(warmup * total_steps)
    if step < warm:
        return (step + 1) / warm
    if kind == "none":
        return 1.0
    progress = (step - warm) / max(1, total_steps - warm)
    progress = min(progress, 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress
