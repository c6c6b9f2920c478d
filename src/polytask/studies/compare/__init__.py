"""Should I use multi-task learning here? Single-task baselines and multi-task configurations
trained alike over seeds (and training fractions), compared per task with confidence intervals,
Δm and a paired test. Modules: ``plan`` (the runs), ``runner`` (train or read back one run),
``summary`` (compare.json), ``render`` (compare.md and terminal tables), ``driver``."""

from __future__ import annotations

from polytask.studies.compare.driver import CompareResult, compare

__all__ = ["CompareResult", "compare"]
