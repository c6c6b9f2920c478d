"""The run configuration: the sections of one run, assembled from the layers that own them.

Each layer owns the schema of its own section (``[data]`` and ``[sampling]``:
:mod:`polytask.data.config`; ``[[tasks]]``: :mod:`polytask.tasks.config`; ``[model]``:
:mod:`polytask.models.config`; ``[train]`` and ``[finetune]``: :mod:`polytask.train.config`;
``[balancer]`` names a registered balancer). The studies above the run (``[compare]``,
``[pareto]``, ``[affinity]``, ``[distill]``) register their sections with
:func:`register_section`, so one TOML file configures a run and its studies while nothing
here imports a study. This module validates names and keys, builds nothing, and reads TOML
with ``--set`` overrides.

Every section forbids unknown keys, so a typo fails with the key's path and the valid keys.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from polytask.balance.base import BALANCERS
from polytask.config_errors import Schema, Seed, validation_message
from polytask.data.arrays import resolve_path
from polytask.data.config import DataConfig, SourceConfig, check_data, source_data
from polytask.data.sampling import SamplingConfig
from polytask.distributed import DistributedConfig
from polytask.errors import ConfigError
from polytask.models.config import ModelConfig, check_model_config
from polytask.models.fusion import check_fusion_inputs
from polytask.plugins import ensure_loaded
from polytask.registry import ComponentConfig, with_default_name
from polytask.tasks import Task, check_unique_names
from polytask.tasks.template import TaskEntry, TaskTemplate, templates_of
from polytask.train.config import FinetuneConfig, TrainConfig, check_criterion
from polytask.train.task_schedule import ScheduleConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

S = TypeVar("S", bound=BaseModel)

#: Sections registered by the layers above the run (the studies), in registration order.
_SECTIONS: dict[str, type[BaseModel]] = {}


def register_section(name: str, schema: type[BaseModel]) -> None:
    """Declare the top-level section ``[name]`` with its pydantic ``schema`` (unknown keys
    forbidden). A study calls this when it is imported; a config file may then hold the
    section, which is validated with the rest of the file and read with
    :meth:`RunConfig.section`."""
    if name in RunConfig.model_fields or (name in _SECTIONS and _SECTIONS[name] is not schema):
        raise ValueError(f"config section {name!r} is declared twice")
    _SECTIONS[name] = schema


#: Checks of a whole configuration registered by the layers above (see :func:`register_check`).
_CHECKS: list[Callable[[RunConfig], None]] = []


def register_check(check: Callable[[RunConfig], None]) -> Callable[[RunConfig], None]:
    """Register a check that every validated configuration must pass (usable as a decorator):
    the run layer checks here what only its components know (a balancer's weights naming an
    unknown task), so such a mistake fails when the file is read, not after the data is."""
    _CHECKS.append(check)
    return check


def registered_sections() -> dict[str, type[BaseModel]]:
    """The sections studies (and plug-ins) declared, by name."""
    return dict(_SECTIONS)


class RunConfig(Schema):
    """A whole run: data, tasks, model, balancer and training budget."""

    seed: Seed = Field(
        default=0,
        description="seeds every random draw of the run: split, initialisation, batches, "
        "dropout, balancers",
    )
    out: str | None = Field(
        default=None,
        description="run directory to write (model, metrics, checkpoints); relative to the "
        "config file",
    )
    baselines: bool = Field(
        default=True,
        description="also train one single-task model per task under the same budget, to "
        "measure what sharing gives (Δm)",
    )
    data: DataConfig
    tasks: list[TaskEntry] = Field(min_length=1)
    model: ModelConfig = Field(default_factory=ModelConfig)
    balancer: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="static"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    #: The registered study sections (see :func:`register_section`), validated; written back
    #: as top-level sections by ``model_dump``.
    sections: dict[str, Any] = Field(default_factory=dict)
    #: Directory that relative paths are resolved against (the config file's folder).
    base_dir: str = "."

    @field_validator("balancer", mode="before")
    @classmethod
    def _default_balancer(cls, value: Any) -> Any:
        return with_default_name(value, "static")

    @model_validator(mode="before")
    @classmethod
    def _study_sections(cls, raw: Any) -> Any:
        """Take the registered sections out of the raw dict and validate each with its own
        schema (an absent section gets its defaults)."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        given = dict(raw.pop("sections", None) or {})
        for name in _SECTIONS:
            if name in raw:
                given[name] = raw.pop(name)
        sections: dict[str, BaseModel] = {}
        for name, schema in _SECTIONS.items():
            value = given.get(name, {})
            if isinstance(value, schema):
                sections[name] = value
                continue
            try:
                sections[name] = schema.model_validate(value)
            except ValidationError as exc:
                raise ConfigError(validation_message(exc, name, schema)) from None
        raw["sections"] = sections
        return raw

    @model_serializer(mode="wrap")
    def _flatten_sections(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        sections = data.pop("sections", {}) or {}
        base_dir = data.pop("base_dir", None)
        excluded = info.exclude if isinstance(info.exclude, set | dict) else ()
        data.update({k: v for k, v in sections.items() if k not in excluded})
        if base_dir is not None:
            data["base_dir"] = base_dir
        return data

    def section(self, name: str, schema: type[S]) -> S:
        """The validated section ``[name]``, of the ``schema`` its owner registered."""
        value = self.sections.get(name)
        if not isinstance(value, schema):
            raise KeyError(f"config section {name!r} is not registered as {schema.__name__}")
        return value

    def with_section(self, name: str, value: BaseModel) -> RunConfig:
        """A copy with section ``[name]`` replaced."""
        return self.model_copy(update={"sections": {**self.sections, name: value}})

    def task_objects(self) -> list[Task]:
        """The declared tasks; a template (:mod:`polytask.tasks.template`) as the one task it
        stands for until the data is read (``PreparedData.tasks`` holds the expansion)."""
        return [t.to_task() for t in self.tasks]

    def named_tasks(self, command: str) -> list[str]:
        """The declared tasks' names, for a study that plans its runs before the data is read;
        a ``[[tasks]]`` template (whose tasks exist only once the data is read) is refused in
        one line naming ``command``."""
        names = [t.name for t in self.tasks]
        if self.task_templates() or any(n is None for n in names):
            raise ConfigError(
                f"config error: tasks: `polytask {command}` plans one run per task before the "
                "data is read, and a [[tasks]] template names its tasks only then; list the "
                "tasks one by one for this study"
            )
        return [n for n in names if n is not None]

    def task_templates(self) -> dict[str, TaskTemplate]:
        """The ``[[tasks]]`` templates, by template name (expanded when the data is read)."""
        return templates_of(self.tasks, self.data.task_column)

    def resolve(self, path: str) -> Path:
        return resolve_path(path, Path(self.base_dir))


def check_config(cfg: RunConfig) -> RunConfig:
    """Checks that span sections: component names and parameters, tasks, the criterion, the
    data sources, then the checks registered by the layers above (:func:`register_check`).
    Builds nothing itself."""
    check_model_config(cfg.model)
    BALANCERS.check_section(cfg.balancer, "balancer")
    cfg.task_templates()
    tasks = cfg.task_objects()
    check_unique_names(tasks)
    check_criterion(cfg.train.criterion, tasks)
    check_data(cfg.data, cfg.sampling, tasks)
    check_fusion_inputs(cfg.model.encoder, list(cfg.data.inputs))
    for check in _CHECKS:
        check(cfg)
    return cfg


def source_config(cfg: RunConfig, source: SourceConfig) -> RunConfig:
    """The run configuration as seen by one source: ``[data]`` with the source's own keys."""
    return cfg.model_copy(update={"data": source_data(cfg.data, source)})


def parse_override(text: str) -> tuple[list[str], Any]:
    """``key.path=value`` with the value read as TOML (``5``, ``[64, 32]``, ``true``) or,
    failing that, as a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.epochs=5")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_override(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``value`` at ``keys`` in the raw config; list items by index or by task name."""
    node: Any = raw
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            index = _list_index(node, key, ".".join(keys[: i + 1]))
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {'.'.join(keys)}: '{key}' is not a section")


def _list_index(items: list[Any], key: str, where: str) -> int:
    if key.isdigit() and int(key) < len(items):
        return int(key)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == key:
            return i
    raise ConfigError(f"--set {where}: no list item with index or name {key!r}")


def config_from_dict(
    raw: dict[str, Any], overrides: list[str] | None = None, base_dir: str | Path = "."
) -> RunConfig:
    """Validate a raw dict (as read from TOML), after applying ``key=value`` overrides."""
    raw = _deep_copy(raw)
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    raw.setdefault("base_dir", str(base_dir))
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "", RunConfig, tuple(_SECTIONS))) from None
    return check_config(cfg)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a TOML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{p}': not valid TOML: {exc}") from None
    if "base_dir" in raw:
        raise ConfigError(f"config file '{p}': base_dir is set by polytask, not by the file")
    return config_from_dict(raw, overrides, base_dir=p.parent.resolve())


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# Plug-ins register their components before any config is validated against the registries;
# no longer at ``import polytask``, which every command line call (``--help`` too) pays for.
ensure_loaded()
