"""The base model of a fine-tuning run: loading it, checking the run's configuration against
it, and starting the fine-tuned model from its weights.

Fine-tuning keeps the base's architecture and input preprocessing (the inputs must mean what
they meant to the base); it may add tasks (new heads), continue some of the base's tasks on new
data, keep the others unchanged or drop them. Everything here runs before any output is written.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polytask.config import RunConfig
from polytask.data.inputs import INPUTS, InputProcessor
from polytask.errors import ConfigError, PolytaskError
from polytask.models.architectures import ARCHITECTURES
from polytask.models.config import ModelConfig
from polytask.models.encoders import ENCODERS
from polytask.models.model import MultiTaskModel
from polytask.run.predictor import Predictor, load, model_dir
from polytask.state_io import file_sha256
from polytask.studies.distill.config import DistillConfig
from polytask.tasks import Task
from polytask.tasks.kinds.binary import positive_class

_KEEP_ARCHITECTURE = "finetune keeps the base's architecture; remove [model] or match it"


@dataclass
class BaseModelDir:
    """A trained model directory to fine-tune from."""

    predictor: Predictor
    #: The model directory, absolute.
    directory: Path
    #: SHA-256 of its ``model.safetensors``: which weights exactly the run started from.
    sha256: str

    @property
    def tasks(self) -> dict[str, Task]:
        return {t.name: t for t in self.predictor.tasks}

    @property
    def model(self) -> MultiTaskModel:
        return self.predictor.model


def load_base(path: str | Path) -> BaseModelDir:
    """Load the model (or run) directory ``path``."""
    directory = model_dir(path).resolve()
    predictor = load(directory)
    return BaseModelDir(predictor, directory, file_sha256(directory / "model.safetensors"))


@dataclass
class TaskPlan:
    """What the run does with each task. ``model_tasks`` is the fine-tuned model's task list:
    the base's tasks that stay (in the base's order), then the new ones."""

    new: list[str] = field(default_factory=list)
    continued: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    #: Continued tasks completed from the base (classes and target scaling the head learned),
    #: with the run's own training options (loss, weight, metrics).
    fitted: dict[str, Task] = field(default_factory=dict)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "new": self.new,
            "continued": self.continued,
            "kept_frozen": self.kept,
            "dropped": self.dropped,
        }


def _effective_model(cfg: ModelConfig) -> dict[str, Any]:
    """The model section as JSON values with every component's defaults filled in: two
    configurations building the same network compare equal."""
    enc = ENCODERS.validate_params(cfg.encoder.name, cfg.encoder.params(), "model.encoder")
    arch = ARCHITECTURES.validate_params(
        cfg.architecture.name, cfg.architecture.params(), "model.architecture"
    )
    return {
        **cfg.model_dump(mode="json"),
        "encoder": {"name": cfg.encoder.name, **enc.model_dump(mode="json")},
        "architecture": {"name": cfg.architecture.name, **arch.model_dump(mode="json")},
    }


def first_difference(mine: Any, theirs: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first key (dotted path) where two JSON-like values differ, with both values
    (``None`` where a key is absent); ``None`` if they are equal."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in [*mine, *(k for k in theirs if k not in mine)]:
            where = f"{path}.{key}"
            if key not in mine or key not in theirs:
                return where, mine.get(key), theirs.get(key)
            found = first_difference(mine[key], theirs[key], where)
            if found is not None:
                return found
        return None
    return None if mine == theirs else (path, mine, theirs)


def _shown(value: Any) -> str:
    return json.dumps(value)


def check_model_section(cfg: RunConfig, base: BaseModelDir) -> None:
    """A ``[model]`` section in the run's configuration must build the base's network."""
    if "model" not in cfg.model_fields_set:
        return
    found = first_difference(
        _effective_model(cfg.model), _effective_model(base.predictor.model_config), "model"
    )
    if found is not None:
        key, mine, theirs = found
        raise ConfigError(
            f"config error: {key}: {_shown(mine)} differs from the base model's "
            f"{_shown(theirs)} ({_KEEP_ARCHITECTURE})"
        )


def check_input_section(cfg: RunConfig, base: BaseModelDir) -> None:
    """A ``[data.input]`` section must be the base's input processor: the run reads its
    inputs with the base's fitted preprocessing."""
    wanted = cfg.data.input
    if wanted is None:
        return
    pre = base.predictor.preprocessor
    if not isinstance(pre, InputProcessor):
        raise ConfigError(
            "config error: data.input: the base model reads table columns; remove data.input "
            "(finetune reads the inputs with the base's preprocessing)"
        )
    params = INPUTS.validate_params(wanted.name, wanted.params(), "data.input")
    mine = {"name": wanted.name, **params.model_dump(mode="json")}
    theirs = {"name": pre.name, **pre.params.model_dump(mode="json")}
    found = first_difference(mine, theirs, "data.input")
    if found is not None:
        key, a, b = found
        raise ConfigError(
            f"config error: {key}: {_shown(a)} differs from the base model's {_shown(b)} "
            "(finetune reads the inputs with the base's fitted preprocessing; remove "
            "data.input or match it)"
        )


def _continued(declared: Task, fitted: Task, directory: Path) -> Task:
    """``declared`` (a task of the run with a base task's name) completed from the base's
    ``fitted`` task; an error naming the task if it is another task under the same name."""
    where = f"config error: task {declared.name!r}"
    base = f"base model '{directory}'"
    if declared.kind != fitted.kind:
        raise ConfigError(
            f"{where}: kind {declared.kind!r} differs from the {base}'s task of that name "
            f"({fitted.kind!r}); give a new task another name"
        )
    if declared.targets != fitted.targets:
        raise ConfigError(
            f"{where}: target {declared.target!r} differs from the {base}'s task of that name "
            f"({fitted.target!r}); give a new task another name"
        )
    if declared.classes is not None and declared.classes != fitted.classes:
        raise ConfigError(
            f"{where}: classes {declared.classes} differ from the {base}'s {fitted.classes} "
            "(in order: the head's outputs are the base's classes)"
        )
    if (
        declared.positive is not None
        and fitted.classes is not None
        and positive_class(declared.positive) != fitted.classes[-1]
    ):
        raise ConfigError(
            f"{where}: positive {declared.positive!r} differs from the {base}'s positive class "
            f"{fitted.classes[-1]!r}"
        )
    return dataclasses.replace(
        declared,
        classes=fitted.classes,
        positive=fitted.positive,
        target_mean=fitted.target_mean,
        target_std=fitted.target_std,
    )


def plan_tasks(cfg: RunConfig, base: BaseModelDir) -> TaskPlan:
    """Sort the run's and the base's tasks into new / continued / kept / dropped, checking
    that a task named like a base task is that task and that no new task predicts one of the
    base's inputs."""
    base_tasks = base.tasks
    plan = TaskPlan()
    features = set(base.predictor.preprocessor.columns)
    for declared in cfg.task_objects():
        if declared.name in base_tasks:
            plan.continued.append(declared.name)
            plan.fitted[declared.name] = _continued(
                declared, base_tasks[declared.name], base.directory
            )
            continue
        plan.new.append(declared.name)
        clash = [c for c in declared.targets if c in features]
        if clash:
            raise ConfigError(
                f"config error: task {declared.name!r}: its target column '{clash[0]}' is an "
                f"input of the base model '{base.directory}'; a task cannot predict its own input"
            )
    others = [name for name in base_tasks if name not in plan.fitted]
    if cfg.finetune.keep_tasks:
        plan.kept = others
    else:
        plan.dropped = others
    return plan


def check_run_config(cfg: RunConfig, base: BaseModelDir) -> TaskPlan:
    """Every check of the run's configuration against the base; the task plan."""
    if cfg.section("distill", DistillConfig).teachers:
        raise ConfigError(
            "config error: distill.teachers: polytask finetune does not distil; remove "
            "[distill] (a fine-tuned model can then teach a student with polytask distill)"
        )
    check_model_section(cfg, base)
    check_input_section(cfg, base)
    return plan_tasks(cfg, base)


def _task_state_keys(model: MultiTaskModel, tasks: list[str]) -> set[str]:
    """State-dict keys of the parameters of ``tasks`` and of the buffers of modules whose
    parameters are all theirs (a head's batch-norm statistics)."""
    owned = {id(p) for t in tasks for p in model.task_parameters(t)}
    if not owned:
        return set()
    modules = dict(model.named_modules())
    keys: set[str] = set()
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        keys.update(prefix + n for n, p in module.named_parameters(recurse=False) if id(p) in owned)
        buffers = [prefix + n for n, _ in module.named_buffers(recurse=False)]
        if buffers and _owned_module(name, modules, owned):
            keys.update(buffers)
    return keys


def _owned_module(name: str, modules: dict[str, Any], owned: set[int]) -> bool:
    """Whether the nearest module at or above ``name`` that holds parameters holds only
    parameters in ``owned``."""
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        params = list(modules[".".join(parts[:depth])].parameters())
        if params:
            return all(id(p) in owned for p in params)
    return False


def load_base_weights(model: MultiTaskModel, base: BaseModelDir, plan: TaskPlan) -> None:
    """Copy the base's weights into ``model`` (built for ``plan``'s tasks): every tensor but
    the new tasks' must come from the base, and every base tensor but the dropped tasks' must
    find its place, with its shape."""
    theirs = base.model.state_dict()
    mine = model.state_dict()
    architecture = base.predictor.model_config.architecture.name
    change = " or ".join(
        w for w, on in (("take new tasks", plan.new), ("drop tasks", plan.dropped)) if on
    )
    context = "with the new tasks" if plan.new else "without the dropped tasks"
    where = f"base model '{base.directory}': architecture {architecture!r} cannot {change}"
    for key, tensor in mine.items():
        if key in theirs and theirs[key].shape != tensor.shape:
            raise ConfigError(
                f"{where}: parameter {key} has shape {list(theirs[key].shape)} in the base, "
                f"{list(tensor.shape)} {context}"
            )
    new_keys = _task_state_keys(model, plan.new)
    missing = [k for k in mine if k not in theirs and k not in new_keys]
    if missing:
        raise ConfigError(f"{where}: shared parameter {missing[0]} would start untrained")
    dropped_keys = _task_state_keys(base.model, plan.dropped)
    unexpected = [k for k in theirs if k not in mine and k not in dropped_keys]
    if unexpected:
        raise PolytaskError(
            f"base model '{base.directory}': its weight {unexpected[0]} has no place in the "
            "fine-tuned model"
        )
    model.load_state_dict({k: v for k, v in theirs.items() if k in mine}, strict=False)
