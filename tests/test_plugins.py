"""Plug-ins through the entry-point group ``polytask.plugins``, and the walk-throughs of
docs/extending.md, each of which is run here.

The example plug-in (tests/plugins/polytask_example_plugin, installed by ``make install``)
registers the ``inverse_loss`` balancer, the ``residual_mlp`` encoder and the ``poisson`` task
kind. The TOML configs under tests/plugins/configs are the ones the document shows; they train
here and must learn. The document's code blocks are the plug-in's files, compared verbatim.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from polytask import load_config, plugins, run
from polytask.balance import BALANCERS
from polytask.data.synthetic import make_mmoe_synthetic
from polytask.errors import PolytaskError
from polytask.models.encoders import ENCODERS
from polytask.tasks import KINDS

pytestmark = pytest.mark.usefixtures("torch_single_thread")  # 2 shared cores: threads only wait

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "polytask_example_plugin"
CONFIGS = ROOT / "tests" / "plugins" / "configs"
DOC = ROOT / "docs" / "extending.md"
DISTRIBUTION = "polytask-example-plugin"

if not any(ep.name == "inverse_loss" for ep in plugins.entry_points()):
    if os.environ.get("CI") == "true":  # CI installs it (make install): a skip would hide that
        pytest.fail("the example plug-in is not installed", pytrace=False)
    pytest.skip(
        f"the example plug-in is not installed: pip install -e {PLUGIN.relative_to(ROOT)} "
        "(make install does)",
        allow_module_level=True,
    )


def _table(n: int = 2000) -> pd.DataFrame:
    """The MMoE paper's synthetic tasks plus a count column whose log-rate depends on x0, x1."""
    frame = make_mmoe_synthetic(n, 0.9, n_features=16, seed=0)
    rng = np.random.default_rng(0)
    rate = np.exp(0.3 + 0.8 * np.tanh(frame["x0"]) + 0.5 * np.tanh(frame["x1"]))
    frame["visits"] = rng.poisson(rate).astype(float)
    return frame


def _config_with_data(name: str, tmp_path: Path) -> Path:
    """The stored config ``name`` copied into ``tmp_path`` with its data.csv beside it."""
    path = tmp_path / name
    shutil.copy(CONFIGS / name, path)
    _table().to_csv(tmp_path / "data.csv", index=False)
    return path


def test_plugin_components_are_registered_and_listed() -> None:
    loaded = {p.name: p for p in plugins.loaded_plugins()}
    assert {"inverse_loss", "residual_mlp", "poisson"} <= set(loaded)
    assert loaded["inverse_loss"].distribution == DISTRIBUTION
    assert "inverse_loss" in BALANCERS and "residual_mlp" in ENCODERS and "poisson" in KINDS
    assert plugins.source_of(BALANCERS.get("inverse_loss").factory) == DISTRIBUTION
    assert plugins.source_of(ENCODERS.get("residual_mlp").factory) == DISTRIBUTION
    assert plugins.source_of(BALANCERS.get("static").factory) is None  # polytask's own

    res = run_cli("list")
    assert res.code == 0, res.err
    for kind, name, source in [
        ("balancer", "inverse_loss", DISTRIBUTION),
        ("encoder", "residual_mlp", DISTRIBUTION),
        ("balancer", "static", "polytask"),
        ("encoder", "mlp", "polytask"),
    ]:
        row = rf"│\s*{kind}\s*│\s*{name}\s*│[^│]*│\s*{re.escape(source)}\s*│"
        assert re.search(row, res.out), (kind, name, source)


def test_loading_again_is_a_no_op() -> None:
    before = plugins.loaded_plugins()
    assert plugins.load_plugins() == before  # no second registration ("registered twice")


def test_walkthrough_balancer_and_encoder_learn(tmp_path: Path) -> None:
    cfg = load_config(_config_with_data("balancer_encoder.toml", tmp_path))
    assert cfg.model.encoder.name == "residual_mlp" and cfg.balancer.name == "inverse_loss"
    result = run(cfg, out=tmp_path / "run", quiet=True)
    # Chance is r2 = 0 and AUROC = 0.5; the mlp encoder reaches about 0.8 and 0.9 here.
    assert result.metrics["value"]["r2"] > 0.6, result.metrics
    assert result.metrics["label"]["auroc"] > 0.85, result.metrics
    weights = result.fit.history[-1].weights
    assert set(weights) == {"value", "label"} and sum(weights.values()) == pytest.approx(2.0)


def test_walkthrough_poisson_kind_learns(tmp_path: Path) -> None:
    cfg = load_config(_config_with_data("poisson.toml", tmp_path))
    result = run(cfg, out=tmp_path / "run", quiet=True)
    visits = _table()["visits"].to_numpy()
    mu = visits.mean()  # the best constant prediction
    constant = float(
        np.mean(2 * (np.where(visits > 0, visits * np.log(visits / mu), 0) - visits + mu))
    )
    metrics = result.metrics["visits"]
    assert metrics["deviance"] < 0.8 * constant, (metrics, constant)
    assert metrics["mae"] < float(np.mean(np.abs(visits - np.median(visits)))), metrics
    frame = result.predictor.predict(_table(50))
    assert bool((frame["visits"] > 0).all())  # exp(log-rate): expected counts


def test_a_broken_plugin_fails_with_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = importlib.metadata.EntryPoint(
        name="broken", value="polytask_no_such_module", group=plugins.GROUP
    )
    monkeypatch.setattr(plugins, "entry_points", lambda: [broken])
    with pytest.raises(PolytaskError) as info:
        plugins.load_plugins()
    message = str(info.value)
    assert "\n" not in message
    assert "'broken'" in message and "polytask_no_such_module" in message
    assert "ModuleNotFoundError" in message

    res = run_cli("list")
    assert res.code == 2 and "Traceback" not in res.err
    assert re.fullmatch(r"error: plug-in 'broken' .*polytask_no_such_module.*\n", res.err)


def test_a_plugin_registering_a_taken_name_fails_with_the_registry_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A callable entry point registering a second "static" balancer.
    def register_again() -> None:
        BALANCERS.register("static")(BALANCERS.get("static").factory)

    class Twice:
        name, value, dist = "twice", "polytask_twice:register", None

        def load(self) -> object:
            return register_again

    twice = Twice()
    monkeypatch.setattr(plugins, "entry_points", lambda: [twice])
    with pytest.raises(PolytaskError, match=r"plug-in 'twice' .*balancer 'static' is registered"):
        plugins.load_plugins()
    assert ("twice", twice.value) not in {(p.name, p.value) for p in plugins.loaded_plugins()}


def test_the_document_quotes_the_plugin_files_and_configs() -> None:
    """Each ``<!-- doctest: copy=PATH -->`` block of docs/extending.md is that file, verbatim
    (tests/test_docs_blocks.py runs the same check through its shared machinery)."""
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- doctest: copy=(\S+) -->\n```\w*\n(.*?)```\n", text, flags=re.DOTALL)
    quoted = {path for path, _ in blocks}
    expected = {
        str(p.relative_to(ROOT))
        for p in [
            PLUGIN / "pyproject.toml",
            *sorted((PLUGIN / "polytask_example_plugin").glob("*.py")),
            *sorted(CONFIGS.glob("*.toml")),
        ]
    }
    assert quoted == expected, sorted(quoted ^ expected)
    for path, body in blocks:
        assert body == (ROOT / path).read_text(encoding="utf-8"), path
