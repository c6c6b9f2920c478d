"""The example configs in examples/: they validate, match their datasets, and train.

The training tests cut the budget to one epoch without baselines and check the test-split
metrics against loose floors measured on this machine (one epoch of the examples gives census
income AUROC ~0.94 and never-married AUROC ~0.993, diabetes readmission AUROC ~0.65 and
length-of-stay MAE ~1.60 days, against ~2.3 days for predicting the mean).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from pathlib import Path

import pytest

from polytask.config import load_config
from polytask.data.datasets import DATASETS
from polytask.run.pipeline import run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = ["train.epochs=1", "baselines=false", "train.progress=false"]

# (task, metric) -> (comparison, bound) after one epoch on the test split.
FLOORS: dict[str, dict[tuple[str, str], tuple[Callable[[float, float], bool], float]]] = {
    "census": {
        ("income", "auroc"): (operator.gt, 0.90),
        ("never_married", "auroc"): (operator.gt, 0.98),
    },
    "diabetes": {
        ("readmit_30", "auroc"): (operator.gt, 0.60),
        ("length_of_stay", "mae"): (operator.lt, 1.85),
        ("length_of_stay", "r2"): (operator.gt, 0.35),
    },
}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_example_matches_its_dataset(name: str) -> None:
    cfg = load_config(EXAMPLES / f"{name}.toml")
    info = DATASETS[name]
    assert cfg.data.dataset == name
    assert cfg.data.path is None and cfg.data.root is None  # the data root is resolved at run
    assert {t.target: t.kind for t in cfg.tasks} == info.targets
    assert {t.name for t in cfg.tasks} == {task for task, _ in FLOORS[name]}
    assert cfg.data.split.method == ("group" if info.group else "random")
    assert cfg.data.split.test > 0  # the benchmarks report test-split metrics
    assert cfg.baselines is True
    assert cfg.train.progress is False


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_example_trains_from_any_directory(
    name: str,
    require_data: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_data(name)
    # A working directory with no ../shared/data: the root must come from POLYTASK_DATA or
    # the checkout's location, not from where the command happens to run.
    cwd = tmp_path / "elsewhere" / "cwd"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    cfg = load_config(EXAMPLES / f"{name}.toml", FAST)
    result = run(cfg, out="run", quiet=True)

    assert result.baseline_metrics == {}
    assert len(result.fit.history) == 1
    for (task, metric), (compare, bound) in FLOORS[name].items():
        value = result.metrics[task][metric]
        assert compare(value, bound), f"{name} {task}.{metric} = {value:.4f}"
    saved = json.loads((cwd / "run" / "results.json").read_text(encoding="utf-8"))
    assert saved["split"] == "test"
    assert saved["multi_task"] == result.metrics  # JSON keeps every float exactly
