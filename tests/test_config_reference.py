"""The configuration reference generated from the schemas (docs/config.md, ``polytask config``)
and ``polytask list --params``."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

import polytask
from conftest import run_cli

polytask._load_all()  # the studies register their sections; the plug-ins load

from polytask import config_reference as ref  # noqa: E402
from polytask.config import RunConfig, registered_sections  # noqa: E402
from polytask.registry import ComponentConfig  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_committed_docs_config_md_is_current() -> None:
    generated = ref.reference_markdown()
    committed = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else ""
    if committed != generated:
        diff = "\n".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(),
                    generated.splitlines(),
                    "docs/config.md (committed)",
                    "generated from the schemas",
                    lineterm="",
                )
            )[:40]
        )
        pytest.fail(
            f"docs/config.md is stale: the config schemas changed since it was generated. "
            f"Regenerate it with `{ref.REGENERATE}` and commit it.\n{diff}",
            pytrace=False,
        )


def _row(markdown: str, section: str, key: str) -> list[str]:
    """The cells of ``key``'s row in the table under heading ``section``."""
    part = markdown.split(f" {section}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    for line in part.splitlines():
        if line.startswith(f"| `{key}` |"):
            return [c.strip() for c in line.strip("|").split(" | ")]
    raise AssertionError(f"{key} not in {section}")


def test_reference_names_the_keys_users_could_not_find() -> None:
    md = ref.reference_markdown()
    assert _row(md, "`[train]`", "threads")[1:4] == ["int \\| none", "unset", "1 ≤ x ≤ 4096"]
    where = _row(md, "`[data]`", "where")
    assert where[1:3] == ["table of str \\| list[str]", "`{}`"]
    assert "keep only rows" in where[4]
    method = _row(md, "`[data.split]`", "method")
    assert method[2] == '`"random"`'
    assert '`"column"`' in method[3] and '`"group"`' in method[3]
    assert "train, val or test" in method[4]
    assert _row(md, "`[data.split]`", "column")[1] == "str \\| none"
    image = {k: _row(md, "input `image`", k) for k in ("column", "size", "channels", "flip")}
    assert image["column"][2] == '`"image"`'
    assert image["size"][3] == "each: 1 ≤ x ≤ 16384; exactly 2 items"
    assert image["channels"][3] == "`1`, `3`"
    assert _row(md, "encoder `mlp`", "widths")[2] == "`[256, 128]`"
    assert _row(md, "balancer `upgrad`", "update_every")[2:4] == ["`1`", "1 ≤ x ≤ 1_000_000_000"]
    kind = _row(md, "`[[tasks]]`", "kind")[3]
    assert '`"binary"`' in kind and '`"regression"`' in kind


def _section_models() -> list[tuple[str, type]]:
    found = [("", RunConfig)]
    found += list(ref._paths(RunConfig, ""))
    for name, schema in registered_sections().items():
        found += [(name, schema), *ref._paths(schema, name)]
    return found


def test_every_section_key_and_component_parameter_is_documented() -> None:
    md = ref.reference_markdown()
    documented = 0
    for path, model in _section_models():
        if issubclass(model, ComponentConfig):
            assert path in ref.COMPONENT_FIELDS, f"{path}: a component field no registry serves"
            continue
        for key in model.model_fields:
            if key not in ("base_dir", "sections"):
                assert f"| `{key}` |" in md, f"{path}.{key}"
                documented += 1
    assert documented >= 150
    components = 0
    for registry in ref.COMPONENT_FIELDS.values():
        for entry in ref._entries(registry, include_plugins=False):
            section = f"{registry.kind} `{entry.name}`"
            assert f"### {section}\n" in md, section
            for key in entry.params.model_fields:
                assert _row(md, section, key)[0] == f"`{key}`"
            components += 1
    assert components >= 40  # 6 inputs, 8 encoders, 6 architectures, 24 balancers
    for name in registered_sections():
        assert f"## `[{name}]`\n" in md


def test_plugins_are_left_out_of_the_docs_but_listed_on_request() -> None:
    from polytask.models.encoders import ENCODERS

    if "residual_mlp" not in ENCODERS:
        pytest.skip("the example plug-in is not installed")
    assert "residual_mlp" not in ref.reference_markdown()
    assert "encoder `residual_mlp` (plug-in)" in ref.reference_markdown(include_plugins=True)


def test_json_schema_accepts_valid_configs_and_rejects_bad_keys() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = ref.json_schema(include_plugins=False)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$defs"]["TrainConfig"]["properties"]["threads"]["anyOf"][0]["maximum"] == 4096
    assert {"compare", "pareto", "affinity", "distill", "data", "train"} <= set(
        schema["properties"]
    )
    assert "base_dir" not in schema["properties"] and "sections" not in schema["properties"]
    good = {
        "seed": 3,
        "data": {"path": "t.csv", "where": {"site": ["a", "b"]}, "input": {"name": "image"}},
        "tasks": [{"name": "y", "kind": "binary", "target": "y"}],
        "model": {"encoder": {"widths": [8, 4]}, "architecture": {"name": "mmoe"}},
        "balancer": {"name": "upgrad", "update_every": 2},
        "train": {"threads": 2},
        "compare": {},
    }
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(good)) == []
    for path, value in [
        (("train", "threads"), 0),
        (("model", "encoder"), {"name": "mlp", "widht": 3}),
        (("balancer",), {"name": "upgrad", "mode": "nope"}),
        (("balancer",), {"name": "no_such_balancer"}),
        (("data", "split"), {"method": "columns"}),
        (("data", "input"), {"name": "image", "channels": 2}),
    ]:
        bad = json.loads(json.dumps(good))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert list(validator.iter_errors(bad)), path


def test_config_command_prints_and_writes_schema_and_reference(tmp_path: Path) -> None:
    res = run_cli("config", "--schema")
    assert res.code == 0, res.err
    assert json.loads(res.out) == json.loads(json.dumps(ref.json_schema(include_plugins=False)))
    res = run_cli("config", "--reference", "-o", tmp_path / "config.md")
    assert res.code == 0, res.err
    assert (tmp_path / "config.md").read_text(encoding="utf-8") == ref.reference_markdown()
    for args in (("config",), ("config", "--schema", "--reference")):
        res = run_cli(*args)
        assert res.code == 2
        assert res.err.strip() == "error: polytask config: give one of --schema or --reference"


def test_list_params_prints_a_components_keys() -> None:
    res = run_cli("list", "--params", "mlp")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0] == "encoder mlp: tabular MLP with categorical embeddings"
    assert lines[1] == '  in a config: [model.encoder] name = "mlp"'
    assert "  widths: list[int] = [256, 128]; each: 1 ≤ x ≤ 16384; 1 to 256 items" in lines
    assert "  dropout: float = 0.1; 0 ≤ x < 1" in lines
    res = run_cli("list", "--params", "upgrad")
    assert res.code == 0, res.err
    assert "  update_every: int = 1; 1 ≤ x ≤ 1_000_000_000" in res.out.splitlines()
    res = run_cli("list", "--params", "binary")
    assert "  losses: bce" in res.out.splitlines()
    res = run_cli("list", "--params", "compare")
    assert res.out.startswith("section compare")


def test_list_params_unknown_name_is_one_line_with_close_matches() -> None:
    res = run_cli("list", "--params", "upgad")
    assert res.code == 2
    assert res.out == ""
    assert res.err.strip() == (
        "error: unknown component 'upgad'; close matches: upgrad, pcgrad, cagrad, gradvac "
        "(polytask list shows them all)"
    )
    res = run_cli("list", "--params", "zzzzzz")
    assert res.code == 2
    assert res.err.strip() == "error: unknown component 'zzzzzz' (polytask list shows them all)"
