"""The configuration reference, generated from the schemas: ``docs/config.md`` (markdown) and
the JSON Schema of a whole run configuration (``polytask config --reference`` / ``--schema``).

Nothing here is written by hand about a key: every section, key, type, default, bound and
description is read from the pydantic schemas when this runs, and every registered component's
own parameters from its registry (inputs, encoders, architectures, balancers), the task kinds
from :data:`~polytask.tasks.kinds.KINDS`, the datasets from
:data:`~polytask.data.datasets.DATASETS` and the study sections from
:func:`~polytask.config.registered_sections`. A key added to a schema appears in the next
generation; ``tests/test_config_reference.py`` fails while the committed ``docs/config.md``
differs from what this module generates.

The study sections are registered when the studies are imported, above this layer: the caller
loads them first (the command line does before any command; ``polytask._load_all()``
otherwise). ``docs/config.md`` holds polytask's own components only (``include_plugins=False``),
so it does not depend on what is installed; the command line shows the plug-ins' too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.json_schema import models_json_schema

from polytask.balance.base import BALANCERS
from polytask.catalog import Component, Key, unknown_component
from polytask.config import RunConfig, registered_sections
from polytask.config_errors import _inner_model
from polytask.data.datasets import DATASETS
from polytask.data.inputs import INPUTS
from polytask.models.architectures import ARCHITECTURES
from polytask.models.encoders import ENCODERS
from polytask.registry import ComponentConfig, Entry, Registry
from polytask.tasks.kinds import KINDS
from polytask.tasks.kinds.base import Kind

#: The config paths whose section names a registered component, and the registry it names.
#: ``tests/test_config_reference.py`` checks that every :class:`ComponentConfig` field of the
#: schemas is listed here, so a new one cannot be documented without its components.
COMPONENT_FIELDS: dict[str, Registry[Any]] = {
    "data.input": INPUTS,
    "data.inputs": INPUTS,  # [data.inputs.<name>]: one input processor per named input
    "model.encoder": ENCODERS,
    "model.architecture": ARCHITECTURES,
    "balancer": BALANCERS,
}

#: Keys whose valid values are names registered elsewhere than in the schema (looked up when
#: the reference is generated).
NAMED_VALUES: dict[str, Callable[[], list[str]]] = {
    # polytask's own kinds: docs/config.md must not depend on the plug-ins of the machine
    # that generated it (the test plug-in's kind appeared there).
    "tasks.kind": lambda: [kind.name for kind in KINDS if _is_own(kind)],
    "data.dataset": lambda: sorted(DATASETS),
}

#: Fields polytask sets itself (never written in a file).
_INTERNAL = frozenset({"base_dir", "sections"})

#: The command that regenerates docs/config.md (named in its header and in the stale-docs test).
REGENERATE = "polytask config --reference -o docs/config.md"


# -- what the schemas hold ----------------------------------------------------------------------
@dataclass
class Section:
    """One documented table: its TOML header, what it is, its keys."""

    path: str
    header: str
    summary: str
    keys: list[Key] = field(default_factory=list)
    note: str = ""


def _is_own(obj: object) -> bool:
    """Whether ``obj`` (a factory, class or schema) is polytask's own, not a plug-in's."""
    module = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", "")
    return isinstance(module, str) and (module == "polytask" or module.startswith("polytask."))


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """reST markup as markdown: ``x`` -> `x`, :class:`~a.b.C` -> `C`."""
    text = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    return text.replace("``", "`")


def _first_line(doc: str | None) -> str:
    return plain(" ".join((doc or "").strip().split("\n\n", 1)[0].split()))


def _schema_doc(model: type[BaseModel]) -> str:
    """A schema's docstring, unless it is pydantic's or the base class's."""
    doc = model.__dict__.get("__doc__")
    return _first_line(doc) if isinstance(doc, str) else ""


def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    try:
        schema: dict[str, Any] = model.model_json_schema()
    except Exception:  # a plug-in's schema pydantic cannot express: its keys, untyped
        return {"properties": {}, "$defs": {}}
    return schema


def _deref(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return dict(defs.get(ref.rsplit("/", 1)[1], {}))
    return schema


_JSON_TYPES = {
    "integer": "int",
    "number": "float",
    "string": "str",
    "boolean": "bool",
    "null": "none",
    "object": "table",
}


def type_text(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """A JSON Schema type as a config author reads it: ``int``, ``float | none``,
    ``list[str]``, ``table of str | list[str]``."""
    if "$ref" in schema:
        return "table"
    if "anyOf" in schema or "oneOf" in schema:
        parts = [type_text(s, defs) for s in schema.get("anyOf", schema.get("oneOf", []))]
        unique = list(dict.fromkeys(parts))
        unique.sort(key=lambda p: p == "none")
        return " | ".join(unique)
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        kinds = {type(v).__name__ for v in values}
        return (
            {"int": "int", "float": "float", "bool": "bool"}.get(kinds.pop(), "str")
            if (len(kinds) == 1)
            else "any"
        )
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_JSON_TYPES.get(k, str(k)) for k in kind)
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, dict) and items:
            inner = type_text(_deref(items, defs), defs) if "$ref" not in items else "table"
            return f"list[{inner}]"
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):
            return f"list[{', '.join(type_text(p, defs) for p in prefix)}]"
        return "list"
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"table of {type_text(extra, defs)}"
        return "table"
    if kind is None:
        return "any"
    return _JSON_TYPES.get(str(kind), str(kind))


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if abs(value) >= 1e6 else f"{value:g}"
    return (
        f"{value:,}".replace(",", "_")
        if isinstance(value, int) and value >= 100_000
        else str(value)
    )


def _bounds(schema: dict[str, Any]) -> str:
    low = high = ""
    if "minimum" in schema:
        low = f"{_number(schema['minimum'])} ≤"
    elif "exclusiveMinimum" in schema:
        low = f"{_number(schema['exclusiveMinimum'])} <"
    if "maximum" in schema:
        high = f"≤ {_number(schema['maximum'])}"
    elif "exclusiveMaximum" in schema:
        high = f"< {_number(schema['exclusiveMaximum'])}"
    if low and high:
        return f"{low} x {high}"
    if low:  # "≥ 1", "> 0"
        return ("≥ " if low.endswith("≤") else "> ") + low[:-2]
    return high


def _count(schema: dict[str, Any], what: str, low: str, high: str) -> str:
    lo, hi = schema.get(low), schema.get(high)
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None:
        return f"{lo} to {_number(hi)} {what}" if lo != hi else f"exactly {lo} {what}"
    if lo is not None:
        return f"at least {lo} {what if lo != 1 else what[:-1]}"
    return f"at most {_number(hi)} {what}"


def valid_text(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """The values a JSON Schema accepts beyond its type: choices, bounds, lengths, patterns."""
    if "$ref" in schema:
        return ""
    if "anyOf" in schema or "oneOf" in schema:
        parts = [valid_text(s, defs) for s in schema.get("anyOf", schema.get("oneOf", []))]
        return "; ".join(dict.fromkeys(p for p in parts if p))
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return ", ".join(f"`{toml_text(v)}`" for v in values)
    parts = [p for p in (_bounds(schema),) if p]
    kind = schema.get("type")
    if kind == "string":
        parts.append(_count(schema, "characters", "minLength", "maxLength"))
        if "pattern" in schema:
            parts.append(f"matching `{schema['pattern']}`")
    if kind == "array":
        items = schema.get("items")
        inner = valid_text(_deref(items, defs), defs) if isinstance(items, dict) else ""
        if inner:
            parts.append(f"each: {inner}")
        parts.append(_count(schema, "items", "minItems", "maxItems"))
    if kind == "object":
        extra = schema.get("additionalProperties")
        inner = valid_text(extra, defs) if isinstance(extra, dict) else ""
        if inner:
            parts.append(f"each value: {inner}")
    return "; ".join(p for p in parts if p)


def toml_text(value: Any) -> str:
    """A value as it would be written in a TOML file."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{" + ", ".join(f"{k} = {toml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def default_text(info: FieldInfo) -> str:
    """A field's default as written in TOML; ``required`` or ``unset`` (None) otherwise."""
    if info.is_required():
        return "required"
    try:
        value = info.get_default(call_default_factory=True, validated_data={})
    except Exception:
        return "(computed)"
    if value is None:
        return "unset"
    if isinstance(value, ComponentConfig):
        params = value.params()
        return toml_text({"name": value.name, **params}) if params else f"`{value.name}`"
    if isinstance(value, BaseModel):
        return "(its defaults)"
    return toml_text(value)


def model_keys(model: type[BaseModel], path: str = "") -> list[Key]:
    """The documented keys of one schema (its own level; nested tables as ``table``)."""
    schema = _json_schema(model)
    defs = schema.get("$defs", {})
    props = schema.get("properties", {})
    keys = []
    for name, info in model.model_fields.items():
        if name in _INTERNAL:
            continue
        prop = props.get(name, {})
        ftype = type_text(prop, defs) if prop else "any"
        valid = valid_text(prop, defs) if prop else ""
        description = info.description or ""
        nested = _inner_model(info.annotation)
        registry = COMPONENT_FIELDS.get(_join(path, name))
        if registry is not None and not description:
            description = (
                f"the {registry.kind}: `name` and that {registry.kind}'s own keys (see "
                f"`[{_join(path, name)}]`)"
            )
        elif nested is not None and not description:
            description = _schema_doc(nested)
        named = NAMED_VALUES.get(_join(path, name))
        if named is not None and not valid:
            valid = ", ".join(f"`{toml_text(v)}`" for v in named())
        description = plain(" ".join(description.split()))
        keys.append(Key(name, ftype, default_text(info), valid, description))
    return keys


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_list(annotation: Any) -> bool:
    """Whether a field holds a list of tables (``[[...]]``)."""
    origin = getattr(annotation, "__origin__", None)
    if origin is list:
        return True
    return any(_is_list(a) for a in getattr(annotation, "__args__", ()))


def walk(model: type[BaseModel], path: str, *, include_plugins: bool) -> Iterator[Section]:
    """The section of ``model`` at ``path``, then its nested tables, depth first: a table
    naming a registered component lists each component's own keys."""
    seen: set[type[BaseModel]] = set()
    yield from _walk(model, path, False, include_plugins, seen)


def _walk(
    model: type[BaseModel],
    path: str,
    many: bool,
    include_plugins: bool,
    seen: set[type[BaseModel]],
) -> Iterator[Section]:
    header = f"`[[{path}]]`" if many else f"`[{path}]`" if path else "top level"
    section = Section(path, header, _schema_doc(model), model_keys(model, path))
    nested: list[tuple[str, type[BaseModel], bool]] = []
    for name, info in model.model_fields.items():
        if name in _INTERNAL:
            continue
        inner = _inner_model(info.annotation)
        if inner is not None:
            nested.append((_join(path, name), inner, _is_list(info.annotation)))
    if model in seen:
        return
    seen.add(model)
    yield section
    for sub_path, inner, sub_many in nested:
        if issubclass(inner, ComponentConfig):
            registry = COMPONENT_FIELDS.get(sub_path)
            if registry is not None:
                yield from component_sections(sub_path, registry, include_plugins)
            continue
        if inner in seen:
            yield Section(
                sub_path,
                f"`[[{sub_path}]]`" if sub_many else f"`[{sub_path}]`",
                _schema_doc(inner),
                note=f"The keys of {_first_header(inner)}.",
            )
            continue
        yield from _walk(inner, sub_path, sub_many, include_plugins, seen)


def _first_header(model: type[BaseModel]) -> str:
    for sub_path, schema in _paths(RunConfig, ""):
        if schema is model:
            return f"`[{sub_path}]`"
    return f"`{model.__name__}`"


def _paths(model: type[BaseModel], path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    for name, info in model.model_fields.items():
        inner = _inner_model(info.annotation)
        if inner is not None and name not in _INTERNAL:
            yield _join(path, name), inner
            yield from _paths(inner, _join(path, name))


def _entries(registry: Registry[Any], include_plugins: bool) -> list[Entry[Any]]:
    return [e for e in registry if include_plugins or _is_own(e.factory)]


def component_sections(
    path: str, registry: Registry[Any], include_plugins: bool
) -> Iterator[Section]:
    """``[path]`` naming one of ``registry``'s components: the choices, then each one's keys."""
    entries = _entries(registry, include_plugins)
    choices = ", ".join(f"`{e.name}`" for e in entries)
    yield Section(
        path,
        f"`[{path}]`",
        f"`name` = the {registry.kind}: {choices}; the other keys are that {registry.kind}'s "
        f"own (below). `polytask list --params NAME` prints them too.",
    )
    for entry in entries:
        yield component_section(path, registry, entry)


def component_section(path: str, registry: Registry[Any], entry: Entry[Any]) -> Section:
    keys = model_keys(entry.params)
    summary = entry.summary or _schema_doc(entry.params)
    origin = "" if _is_own(entry.factory) else " (plug-in)"
    section = Section(
        f"{path}:{entry.name}",
        f"{registry.kind} `{entry.name}`{origin}",
        summary,
        keys,
        note="" if keys else "No parameters.",
    )
    return section


# -- task kinds and datasets -------------------------------------------------------------------
def _kind_fields(kind: Kind) -> list[str]:
    return [
        name.removeprefix("accepts_")
        for name in sorted(dir(type(kind)))
        if name.startswith("accepts_") and getattr(kind, name) is True
    ]


def kinds_table(include_plugins: bool) -> list[str]:
    rows = [
        "| kind | losses (first: default) | metrics (first: default primary) "
        "| optional keys it takes | what it predicts |",
        "|---|---|---|---|---|",
    ]
    for kind in KINDS:
        if not (include_plugins or _is_own(type(kind))):
            continue
        losses = ", ".join(f"`{x}`" for x in getattr(kind, "losses", ()))
        metrics = ", ".join(f"`{x}`" for x in getattr(kind, "metric_factories", {}))
        fields = ", ".join(f"`{x}`" for x in _kind_fields(kind)) or "—"
        doc = _first_line(type(kind).__doc__)
        rows.append(f"| `{kind.name}` | {losses} | {metrics} | {fields} | {_cell(doc)} |")
    return rows


def datasets_table() -> list[str]:
    rows = ["| dataset | what it is |", "|---|---|"]
    for name in sorted(DATASETS):
        rows.append(f"| `{name}` | {_cell(getattr(DATASETS[name], 'summary', ''))} |")
    return rows


# -- markdown ------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if text and text not in ("required", "unset") else text


def _anchor(header: str) -> str:
    text = header.lower()
    text = re.sub(r"[^\w\- ]", "", text)  # as GitHub makes heading anchors
    return text.replace(" ", "-")


def keys_table(keys: list[Key]) -> list[str]:
    rows = ["| key | type | default | valid values | description |", "|---|---|---|---|---|"]
    for key in keys:
        default = key.default if key.default.startswith("`") else _code(key.default)
        rows.append(
            f"| `{key.name}` | {_cell(key.type)} | {_cell(default)} | {_cell(key.valid)} "
            f"| {_cell(key.description)} |"
        )
    return rows


def sections(include_plugins: bool = False) -> list[Section]:
    """Every documented table of a run configuration, in file order, then the study
    sections (by name)."""
    found = list(walk(RunConfig, "", include_plugins=include_plugins))
    for name, schema in sorted(registered_sections().items()):
        if include_plugins or _is_own(schema):
            found.extend(walk(schema, name, include_plugins=include_plugins))
    return found


def reference_markdown(include_plugins: bool = False) -> str:
    """``docs/config.md``: every section, key and registered component's parameters."""
    found = sections(include_plugins)
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the schemas by src/polytask/config_reference.py; do not edit. "
        f"Regenerate: {REGENERATE} -->",
        "",
        "Every key a run configuration (TOML) may hold, generated from the schemas that "
        "validate it: its type, default, valid values and what it does; each registered "
        "component's own keys under the section that names it. Unknown keys are errors. "
        "`polytask config --schema` prints the same as a JSON Schema (for editors), "
        "`polytask list --params NAME` one component's keys, and `polytask init TABLE` writes "
        "a starting configuration from a table. Any key can be overridden on the command line: "
        "`--set train.epochs=5`.",
        "",
        "Types: `table` is a TOML table (`[section]`), `list[...]` an array, `none` means the "
        "key may be left out (unset). Bounds read `0 ≤ x < 1`.",
        "",
        "## Contents",
        "",
    ]
    for section in found:
        if ":" in section.path:
            continue
        lines.append(f"- [{section.header}](#{_anchor(section.header)})")
    lines += ["- [task kinds](#task-kinds)", "- [datasets](#datasets)", ""]
    for section in found:
        level = "###" if ":" in section.path else "##"
        lines += [f"{level} {section.header}", ""]
        if section.summary:
            lines += [section.summary, ""]
        if section.note:
            lines += [section.note, ""]
        if section.keys:
            lines += [*keys_table(section.keys), ""]
        if section.path == "tasks":
            lines += ["The kinds and what each takes: [task kinds](#task-kinds).", ""]
    lines += [
        "## task kinds",
        "",
        "`kind` of a `[[tasks]]` entry; `loss` and `metrics` take the names listed for its kind.",
        "",
        *kinds_table(include_plugins),
        "",
        "## datasets",
        "",
        "`data.dataset` names one of these built-in loaders (`polytask fetch NAME --root DIR` "
        "downloads it).",
        "",
        *datasets_table(),
        "",
    ]
    return "\n".join(lines)


# -- JSON Schema ---------------------------------------------------------------------------------
def _walk_to(schema: dict[str, Any], defs: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """The (dereferenced) schema of the table holding the last key of ``path``."""
    node = schema
    for key in path:
        node = _deref(node, defs)
        for option in node.get("anyOf", []):  # X | None: the table
            if "$ref" in option:
                node = _deref(option, defs)
                break
        node = node["properties"][key]
    node = _deref(node, defs)
    for option in node.get("anyOf", []):
        if "$ref" in option:
            return _deref(option, defs)
    return node


def json_schema(include_plugins: bool = True) -> dict[str, Any]:
    """The JSON Schema of a whole run configuration: the study sections as top-level tables,
    and each component-naming table as one alternative per registered component (its ``name``
    and its own keys)."""
    studies = {
        name: schema
        for name, schema in sorted(registered_sections().items())
        if include_plugins or _is_own(schema)
    }
    components = {
        path: _entries(registry, include_plugins) for path, registry in COMPONENT_FIELDS.items()
    }
    models: list[type[BaseModel]] = [RunConfig, *studies.values()]
    models += [e.params for entries in components.values() for e in entries]
    unique = list(dict.fromkeys(models))
    refs, top = models_json_schema([(m, "validation") for m in unique])
    defs: dict[str, Any] = top.get("$defs", {})

    def name_of(model: type[BaseModel]) -> str:
        return str(refs[(model, "validation")]["$ref"]).rsplit("/", 1)[1]

    root = copy.deepcopy(defs.pop(name_of(RunConfig)))
    props = root["properties"]
    for key in _INTERNAL:
        props.pop(key, None)
    for name, schema in studies.items():
        props[name] = {"$ref": f"#/$defs/{name_of(schema)}"}
    for path, entries in components.items():
        *parents, key = path.split(".")
        table = _table_def(root, defs, parents)
        if table is None or key not in table.get("properties", {}):
            continue
        old = table["properties"][key]
        nullable = any(o.get("type") == "null" for o in old.get("anyOf", []))
        default_name = _default_component(path)
        options = []
        for entry in entries:
            params = copy.deepcopy(defs[name_of(entry.params)])
            params["properties"] = {
                "name": {"const": entry.name},
                **params.get("properties", {}),
            }
            if entry.name != default_name:
                params["required"] = ["name", *params.get("required", [])]
            params["title"] = f"{path} = {entry.name}"
            options.append(params)
        if nullable:
            options.append({"type": "null"})
        new = {k: v for k, v in old.items() if k not in ("$ref", "anyOf", "allOf")}
        new["anyOf"] = options
        table["properties"][key] = new
    for def_name in [n for n in defs if n.startswith("ComponentConfig")]:
        if f'"#/$defs/{def_name}"' not in json.dumps([root, defs]):
            del defs[def_name]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "polytask run configuration",
        **{k: v for k, v in root.items() if k != "title"},
        "$defs": defs,
    }


def _table_def(
    root: dict[str, Any], defs: dict[str, Any], parents: list[str]
) -> dict[str, Any] | None:
    """The definition (in ``defs``, or ``root`` itself) of the table at ``parents``."""
    node: dict[str, Any] = root
    for key in parents:
        prop = node.get("properties", {}).get(key)
        if prop is None:
            return None
        ref = prop.get("$ref") or next(
            (o["$ref"] for o in prop.get("anyOf", []) if "$ref" in o), None
        )
        if not isinstance(ref, str):
            return None
        node = defs[ref.rsplit("/", 1)[1]]
    return node


def _default_component(path: str) -> str | None:
    """The component a table at ``path`` names when ``name`` is left out (its default)."""
    model: Any = RunConfig
    info: FieldInfo | None = None
    for key in path.split("."):
        if model is None:
            return None
        info = model.model_fields.get(key)
        if info is None:
            return None
        model = _inner_model(info.annotation)
    if info is None or info.is_required():
        return None
    value = info.get_default(call_default_factory=True, validated_data={})
    return value.name if isinstance(value, ComponentConfig) else None


# -- one component ---------------------------------------------------------------------------------
# ``Component`` and ``Key`` live in polytask.catalog (the bottom layer), so that the committed
# catalogue and this live look-up print through the same types.


def _entry_component(path: str, registry: Registry[Any], entry: Entry[Any]) -> Component:
    summary = entry.summary or _schema_doc(entry.params)
    return Component(registry.kind, entry.name, summary, model_keys(entry.params), path)


def _kind_component(kind: Kind) -> Component:
    extra = [
        ("losses", ", ".join(getattr(kind, "losses", ()))),
        ("metrics", ", ".join(getattr(kind, "metric_factories", {}))),
        ("optional keys", ", ".join(_kind_fields(kind)) or "none"),
    ]
    summary = _first_line(type(kind).__doc__)
    return Component("task kind", kind.name, summary, [], "tasks.kind", extra)


def _section_component(name: str, schema: type[BaseModel]) -> Component:
    return Component("section", name, _schema_doc(schema), model_keys(schema), name)


def find_components(name: str) -> list[Component]:
    """Every registered component (plug-ins included) called ``name``: an input, encoder,
    architecture, balancer or task kind (one name may be several), or a study section. An
    unknown name is a :class:`ConfigError` naming the close matches."""
    found: list[Component] = []
    for path, registry in COMPONENT_FIELDS.items():
        if name in registry:
            found.append(_entry_component(path, registry, registry.get(name)))
    if name in KINDS:
        found.append(_kind_component(KINDS.get(name)))
    studies = registered_sections()
    if name in studies:
        found.append(_section_component(name, studies[name]))
    if found:
        return found
    names = sorted(
        {n for r in COMPONENT_FIELDS.values() for n in r.names()}
        | set(KINDS.names())
        | set(studies)
    )
    raise unknown_component(name, names)


def builtin_components() -> list[Component]:
    """Every component of polytask's own that :func:`find_components` can return, plug-ins
    left out, in the order it returns them for one name (registries in
    :data:`COMPONENT_FIELDS` order, then the task kinds, then the study sections): the
    ``params`` of the committed catalogue (:mod:`polytask.catalog`)."""
    return _components(include_plugins=False)


def all_components() -> list[Component]:
    """:func:`builtin_components` with the loaded plug-ins' components: what ``polytask list
    --params`` reads from the cached listing when plug-ins are installed."""
    return _components(include_plugins=True)


def _components(include_plugins: bool) -> list[Component]:
    found = [
        _entry_component(path, registry, entry)
        for path, registry in COMPONENT_FIELDS.items()
        for entry in _entries(registry, include_plugins)
    ]
    found += [_kind_component(k) for k in KINDS if include_plugins or _is_own(type(k))]
    found += [
        _section_component(name, schema)
        for name, schema in sorted(registered_sections().items())
        if include_plugins or _is_own(schema)
    ]
    return found
