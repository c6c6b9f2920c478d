"""The committed catalogue of built-in components (``src/polytask/catalog.json``, issue 18:
``polytask list`` under 1 s of CPU): current with the registries and schemas, printing exactly
what the live registries print, read without importing torch or the registries, and used only
when no plug-in is installed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from conftest import run_cli
from polytask import catalog, cli, plugins
from polytask.catalog import BUILT_IN, CATALOG_FILE, REGENERATE, Catalog
from polytask.config_reference import find_components
from polytask.console import PolytaskConsole
from polytask.errors import ConfigError, PolytaskError

ROOT = Path(__file__).resolve().parent.parent

#: ``polytask ARGS`` in a fresh process with the plug-ins' entry points hidden (a plain
#: install), then the heavy modules it imported, as the last line of stdout. (Not pydantic:
#: typer 0.29 builds a pydantic adapter for every option, ``polytask --help`` included.)
NO_PLUGINS = """
import json, sys
import polytask.plugins as p
p.entry_points = lambda: []
from polytask.cli import main
main()
heavy = (
    "torch", "numpy", "pandas", "torchmetrics", "polytask.config", "polytask.balance.base",
    "polytask.config_reference",
)
print(json.dumps([m for m in heavy if m in sys.modules]))
"""


def _no_plugins(*args: str) -> tuple[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", NO_PLUGINS, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    *out, imported = done.stdout.splitlines()
    return "\n".join(out) + "\n", json.loads(imported)


def _table_text(rows: list[catalog.Row], *, plain: bool = False) -> str:
    """``rows`` as ``polytask list`` prints them 80 columns wide: on a plain-text polytask
    console (``plain``, as a real process), or on the console ``run_cli`` swaps in."""
    console = (
        PolytaskConsole(width=80, color_system=None, markup=False, highlight=False, emoji=False)
        if plain
        else Console(width=80, color_system=None)
    )
    with console.capture() as captured:
        console.print(cli._components_table(rows))
    return captured.get()


def test_committed_catalogue_is_current(tmp_path: Path) -> None:
    written = tmp_path / "catalog.json"
    res = run_cli("list", "--write-catalog", written)
    assert res.code == 0, res.err
    fresh = written.read_text(encoding="utf-8")
    committed = CATALOG_FILE.read_text(encoding="utf-8")
    assert fresh == committed, (
        f"{CATALOG_FILE.relative_to(ROOT)} is stale (the registries or schemas changed); "
        f"regenerate it: {REGENERATE}"
    )
    # What was written reads back as the same catalogue, and holds polytask's own only.
    again = Catalog.from_json(json.loads(fresh))
    assert again.to_text() == fresh
    assert {r.source for r in again.rows} == {BUILT_IN}
    live = cli._live_rows()
    assert again.rows == [r for r in live if r.source == BUILT_IN]
    assert len(again.rows) < len(live)  # the example plug-in's rows are left out


def test_list_from_the_catalogue_prints_what_the_registries_print(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = [r for r in cli._live_rows() if r.source == BUILT_IN]
    monkeypatch.setattr(cli, "_use_catalog", lambda: True)
    res = run_cli("list")
    assert res.code == 0, res.err
    assert res.out == _table_text(own)
    res = run_cli("list", "--json")
    assert res.code == 0, res.err
    listed = json.loads(res.out)
    assert listed == [
        {"kind": r.kind, "name": r.name, "summary": r.summary, "from": r.source} for r in own
    ]
    assert {"kind": "balancer", "name": "upgrad"} in [
        {"kind": x["kind"], "name": x["name"]} for x in listed
    ]


def test_list_params_from_the_catalogue_prints_what_the_schemas_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = catalog.load()
    assert len(loaded.names()) > 40
    for name in loaded.names():
        assert loaded.find(name) == find_components(name), name
    # Printed the same way, both ways, including a name that is two components.
    live = {n: run_cli("list", "--params", n) for n in ("mlp", "upgrad", "binary", "compare")}
    monkeypatch.setattr(cli, "_use_catalog", lambda: True)
    for name, expected in live.items():
        res = run_cli("list", "--params", name)
        assert (res.code, res.out, res.err) == (expected.code, expected.out, ""), name
    assert live["upgrad"].out.startswith("balancer upgrad: ")
    # An unknown name: the same one line as the live look-up gives.
    for name in ("upgad", "zzzzzz"):
        with pytest.raises(ConfigError) as from_catalog:
            loaded.find(name)
        with pytest.raises(ConfigError) as from_schemas:
            find_components(name)
        assert str(from_catalog.value) == str(from_schemas.value)
    res = run_cli("list", "--params", "upgad")
    assert (res.code, res.out) == (2, "")
    assert res.err == (
        "error: unknown component 'upgad'; close matches: upgrad, pcgrad, cagrad, gradvac "
        "(polytask list shows them all)\n"
    )


def test_list_without_plugins_imports_no_torch_nor_registries() -> None:
    out, imported = _no_plugins("list")
    assert imported == []
    assert out == _table_text(catalog.load().rows, plain=True)
    assert "(needs polytask[text])" in out  # plain text: no markup swallowed
    out, imported = _no_plugins("list", "--json")
    assert imported == []
    assert json.loads(out) == [
        {"kind": r.kind, "name": r.name, "summary": r.summary, "from": r.source}
        for r in catalog.load().rows
    ]
    out, imported = _no_plugins("list", "--params", "upgrad")
    assert imported == []
    lines = out.splitlines()
    assert lines[0] == "balancer upgrad: unconflicting projections, UPGrad (Quinton & Rey 2024)"
    assert lines[1] == '  in a config: [balancer] name = "upgrad"'
    assert "  update_every: int = 1; 1 ≤ x ≤ 1_000_000_000" in lines


def test_the_catalogue_is_read_only_when_it_spares_the_imports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In this process the registries are imported (live rows cost nothing more): live.
    assert cli._use_catalog() is False
    # Registries not imported and no plug-in: the catalogue.
    monkeypatch.setattr(cli, "_REGISTRY_MODULES", ("polytask_no_such_module",))
    monkeypatch.setattr(plugins, "entry_points", lambda: [])
    assert cli._use_catalog() is True
    # An installed plug-in (found, not imported): the live registries.
    plugin = importlib.metadata.EntryPoint(name="x", value="x_plugin", group=plugins.GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda: [plugin])
    assert cli._use_catalog() is False


def test_a_damaged_catalogue_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(PolytaskError) as info:
        Catalog.from_json({"list": [["balancer", "upgrad"]], "params": []}, source="c.json")
    message = str(info.value)
    assert message.startswith("component catalogue 'c.json': field 'list' is not what polytask")
    assert message.endswith(f"regenerate it: {REGENERATE}")
    with pytest.raises(PolytaskError, match="field 'params'"):
        Catalog.from_json({"list": [], "params": [{"kind": "balancer"}]}, source="c.json")

    missing = tmp_path / "catalog.json"
    monkeypatch.setattr(catalog, "CATALOG_FILE", missing)
    catalog.load.cache_clear()
    try:
        with pytest.raises(PolytaskError) as info:
            catalog.load()
        assert str(info.value).startswith(
            f"component catalogue '{missing}' cannot be read (FileNotFoundError"
        )
        monkeypatch.setattr(cli, "_use_catalog", lambda: True)
        res = run_cli("list")
        assert res.code == 2 and "Traceback" not in res.err
        assert res.err.startswith(f"error: component catalogue '{missing}' cannot be read")
    finally:
        catalog.load.cache_clear()


# -- with plug-ins installed: the listing cached under their digest ----------------------------
#: ``polytask ARGS`` in a fresh process with the installed plug-ins, then the heavy modules it
#: imported (as NO_PLUGINS does).
WITH_PLUGINS = NO_PLUGINS.replace("import polytask.plugins as p\np.entry_points = lambda: []\n", "")


def _with_plugins(cache: Path, *args: str) -> tuple[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", WITH_PLUGINS, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "80", "POLYTASK_CACHE_DIR": str(cache)},
    )
    assert done.returncode == 0, done.stderr
    *out, imported = done.stdout.splitlines()
    return "\n".join(out) + "\n", json.loads(imported)


def test_list_with_plugins_reads_the_listing_cached_by_the_first_run(tmp_path: Path) -> None:
    if not plugins.entry_points():
        pytest.skip("no polytask plug-in installed (make dev installs the example plug-in)")
    cache = tmp_path / "cache"
    first, imported = _with_plugins(cache, "list")
    assert "torch" in imported  # the first run asked the live registries
    assert "polytask-example-plugin" in first  # a plug-in's component, with its source
    written = json.loads((cache / catalog.CACHE_FILE).read_text())
    assert written["format"] == catalog.CACHE_FORMAT
    second, imported = _with_plugins(cache, "list")
    assert imported == []  # neither torch nor the registries nor the plug-in
    assert second == first
    params, imported = _with_plugins(cache, "list", "--params", "upgrad")
    assert imported == []
    assert params.splitlines()[0].startswith("balancer upgrad: ")
    listed, _ = _with_plugins(cache, "list", "--json")
    assert {r["from"] for r in json.loads(listed)} >= {BUILT_IN, "polytask-example-plugin"}

    # A damaged cache is rebuilt, never an error; so is one written under another digest.
    (cache / catalog.CACHE_FILE).write_text('{"format": "polytask.catalog-cache/1", "list": 3')
    again, imported = _with_plugins(cache, "list")
    assert again == first and "torch" in imported
    # A cache folder that cannot be written costs the speed only.
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    again, _ = _with_plugins(blocked, "list")
    assert again == first


def test_the_plugin_digest_follows_the_plugin_source(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = tmp_path / "digest_probe_plugin"
    package.mkdir()
    module = package / "__init__.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint(
        name="probe", value="digest_probe_plugin", group=plugins.GROUP
    )
    monkeypatch.setattr(plugins, "entry_points", lambda: [ep])
    built_in = tmp_path / "catalog.json"
    built_in.write_text("{}")
    first = plugins.fingerprint(built_in)
    assert plugins.fingerprint(built_in) == first  # nothing changed: the same digest
    assert "digest_probe_plugin" not in sys.modules  # found, never imported
    module.write_text("X = 22\n")  # an edited plug-in (an editable install)
    second = plugins.fingerprint(built_in)
    assert second != first
    (package / "extra.py").write_text("")  # a new module
    third = plugins.fingerprint(built_in)
    assert third not in (first, second)
    built_in.write_text('{"list": []}')  # another polytask's own components
    assert plugins.fingerprint(built_in) != third
    monkeypatch.setattr(plugins, "entry_points", lambda: [])
    assert plugins.fingerprint(built_in) not in (first, second, third)
    # The cache keyed by a digest is read back under that digest only.
    monkeypatch.setenv("POLYTASK_CACHE_DIR", str(tmp_path / "cache"))
    rows = [catalog.Row("balancer", "probe", "a probe", "probe-dist")]
    found = Catalog(rows, [])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / catalog.CACHE_FILE).write_text(catalog.cached_document("k1", found))
    assert catalog.read_cached("k1") == found
    assert catalog.read_cached("k2") is None
