"""The golden check of the code's reorganisation: small seeded runs (one per architecture, one
per balancer family, a distillation, a fine-tuning, a multi-source run with a sampler) end with
the weights they ended with before the code moved.

The fingerprints in ``golden/weights.json`` were recorded by ``golden/golden_runs.py`` on the code
before the reorganisation. Bit-exact floats depend on torch's version and the CPU kernels it
picks: on the recording environment the sha256 must match; elsewhere (another torch or CPU
instruction set, where summation order legitimately differs) every metric must agree to 1e-3.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import golden_runs as golden

RECORD: dict[str, Any] = json.loads(golden.RECORD.read_text())


@pytest.mark.parametrize("name", sorted(RECORD["runs"]))
def test_final_weights_match_the_recorded_run(name: str) -> None:
    expected = RECORD["runs"][name]
    got = golden.measure(name)
    if golden.environment() == RECORD["environment"]:
        assert got["sha256"] == expected["sha256"], f"{name}: final weights changed"
        return
    for task, metrics in expected["metrics"].items():
        for metric, value in metrics.items():
            new = got["metrics"][task][metric]
            assert math.isclose(new, value, rel_tol=1e-3, abs_tol=1e-3), (name, task, metric)


def test_every_run_is_recorded() -> None:
    assert sorted(RECORD["runs"]) == sorted(golden.RUNS)
