"""Task templates: one ``[[tasks]]`` entry standing for many similar tasks.

Two layouts need them:

* **task-indexed tables** (School, Landmine, the MALSAR format): every row belongs to one task,
  named by ``[data] task_column``; one template (kind, target, loss, metrics, ...) becomes one
  task per distinct value of that column, whose labels are the target's values on the rows of
  that value (missing elsewhere, so masks, balancers, baselines and architectures work
  unchanged);
* **wide tables** with many similar targets: ``targets = ["y_a", "y_b"]`` (optionally with
  ``names = ["a", "b"]``) or a glob ``targets = "y_*"``, one task per target column.

The expansion is one function here (:func:`expand`), called once when the data is read; the
expanded tasks and the :class:`TaskGroup` that records the template are what the run, its
results and its model directory keep. Names are made safe (letters, digits, ``_ . -``) and
unique.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from polytask.errors import ConfigError, PolytaskError
from polytask.tasks.config import TaskConfig
from polytask.tasks.task import FITTED_FIELDS, Task

#: The placeholders a template's ``name`` may hold.
PLACEHOLDERS = ("value", "column", "target", "i")
#: Most tasks one template may expand to (a model holds at most 1024 tasks).
MAX_EXPANDED = 1024
#: Fields of an entry that only a template has.
TEMPLATE_FIELDS = ("names", "targets")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


class TaskEntry(TaskConfig):
    """One ``[[tasks]]`` entry: a task (:class:`TaskConfig`) or a template of tasks. A
    template's ``name`` may be a pattern (``"school_{value}"``) or be left out; a wide
    template lists ``targets`` (or a glob) instead of one ``target``."""

    name: str | None = Field(  # type: ignore[assignment]
        default=None,
        min_length=1,
        description="the task's name; a template's may be a pattern ('school_{value}') or left out",
    )
    target: str | list[str] | None = Field(  # type: ignore[assignment]
        default=None,
        description="the label column (a list of columns for multilabel); a wide template "
        "lists targets instead",
    )
    names: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EXPANDED,
        description="wide template: the name of each task, one per entry of targets",
    )
    targets: str | list[str] | None = Field(
        default=None,
        description="wide template: target columns (a list, or a glob such as 'y_*'), one "
        "task each",
    )

    @model_serializer(mode="wrap")
    def _declared_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A plain task dumps as a :class:`TaskConfig` would (no template keys)."""
        data: dict[str, Any] = handler(self)
        for key in (*TEMPLATE_FIELDS, "name", "target"):
            if key in data and data[key] is None:
                del data[key]
        return data

    @property
    def is_wide(self) -> bool:
        return self.targets is not None

    def template_name(self) -> str:
        """The template's own name: its ``name`` when that is no pattern, else its target
        column (a glob's or the targets' common prefix for a wide template)."""
        if self.name is not None and not _has_placeholder(self.name):
            return self.name
        if isinstance(self.target, str):
            return safe_name(self.target)
        if self.targets is not None:
            listed = [self.targets] if isinstance(self.targets, str) else self.targets
            prefix = _common_prefix([t.replace("*", "").replace("?", "") for t in listed])
            return safe_name(prefix.strip("_.- ")) if prefix.strip("_.- ") else "targets"
        return "template"

    def to_task(self) -> Task:
        """The entry as a task; a template as the task it stands for (its template name and
        first target), which the checks that run before the data is read see."""
        data = {k: v for k, v in self.model_dump().items() if k not in TEMPLATE_FIELDS}
        data["name"] = self.template_name() if self.name is None else self.name
        if _has_placeholder(data["name"]):
            data["name"] = self.template_name()
        if self.target is None and self.targets is not None:
            data["target"] = self.targets if isinstance(self.targets, str) else self.targets[0]
        if data.get("target") is None:
            raise ConfigError(f"task {data['name']!r}: target is missing")
        return Task(**data)


@dataclass(frozen=True)
class TaskTemplate:
    """A ``[[tasks]]`` template as the data layer expands it."""

    #: The template as a task: its name (the template's), kind, target and declared fields.
    task: Task
    #: The name pattern of the expanded tasks (placeholders: see :data:`PLACEHOLDERS`).
    pattern: str
    #: Task-indexed (one task per value of ``[data] task_column``), else wide.
    over_column: bool
    #: Wide: the listed target columns, or a glob (one string).
    targets: tuple[str, ...] | str | None = None
    #: Wide: the listed names, one per target.
    names: tuple[str, ...] | None = None
    #: The entry as declared (what ``templates.json`` and ``results.json`` record).
    declared: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskGroup:
    """The tasks one template expanded to: what a run, its results and its model directory
    record of a template. Predictions of a task-indexed group return each row's own task's
    output in one column set named :attr:`name`; pooled (micro) metrics are keyed by it."""

    name: str
    kind: str
    tasks: tuple[str, ...]
    #: Task-indexed: the task column, and each task's value of it (as text).
    column: str | None = None
    values: tuple[str, ...] | None = None
    template: Mapping[str, Any] = field(default_factory=dict)

    def task_of_value(self) -> dict[str, str]:
        """Value of the task column (as text) -> task name (task-indexed groups)."""
        return dict(zip(self.values or (), self.tasks, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "tasks": list(self.tasks),
            "column": self.column,
            "values": None if self.values is None else list(self.values),
            "template": dict(self.template),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TaskGroup:
        """A group read back from a file, checked (a one-line error naming ``where``)."""
        keys = {"name", "kind", "tasks", "column", "values", "template"}
        if not isinstance(data, dict) or set(data) != keys:
            raise PolytaskError(f"{where}: expected an object with keys {sorted(keys)}")
        name, kind, tasks = data["name"], data["kind"], data["tasks"]
        column, values, template = data["column"], data["values"], data["template"]
        texts = isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)
        if not (isinstance(name, str) and isinstance(kind, str) and texts and tasks):
            raise PolytaskError(f"{where}: name, kind and tasks must be text")
        if len(tasks) > MAX_EXPANDED or not isinstance(template, dict):
            raise PolytaskError(f"{where}: at most {MAX_EXPANDED} tasks and a template object")
        if (column is None) != (values is None):
            raise PolytaskError(f"{where}: column and values come together")
        if values is not None and (
            not isinstance(column, str)
            or not isinstance(values, list)
            or len(values) != len(tasks)
            or not all(isinstance(v, str) for v in values)
        ):
            raise PolytaskError(f"{where}: values must be text, one per task")
        return cls(
            name,
            kind,
            tuple(tasks),
            column,
            None if values is None else tuple(values),
            template,
        )


def safe_name(text: str) -> str:
    """``text`` as a task name: runs of characters other than letters, digits, ``_``, ``.``
    and ``-`` become ``_`` (names key prediction columns and folders)."""
    cleaned = _UNSAFE.sub("_", text.strip()).strip("_")
    return cleaned if cleaned not in ("", ".", "..") else "_"


def _has_placeholder(text: str) -> bool:
    return any(f is not None for _, f, _, _ in string.Formatter().parse(text))


def _common_prefix(texts: Sequence[str]) -> str:
    if not texts:
        return ""
    first, last = min(texts), max(texts)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def check_pattern(pattern: str, where: str) -> None:
    """A name pattern uses only the known placeholders, with valid format syntax."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise ConfigError(f"{where}: name pattern {pattern!r} is not valid: {exc}") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            valid = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ConfigError(
                f"{where}: unknown placeholder {{{name}}} in name {pattern!r}; valid: {valid}"
            )


def templates_of(entries: Sequence[TaskEntry], task_column: str | None) -> dict[str, TaskTemplate]:
    """The templates among the ``[[tasks]]`` entries, by template name, with every rule of
    their declaration checked (a one-line error naming ``tasks.<i>.<key>``)."""
    templates: dict[str, TaskTemplate] = {}
    for i, entry in enumerate(entries):
        where = f"config error: tasks.{i}"
        over_column = task_column is not None and not entry.is_wide
        if entry.name is not None and _has_placeholder(entry.name):
            check_pattern(entry.name, f"{where}.name")
            if not (over_column or entry.is_wide):
                raise ConfigError(
                    f"{where}.name: {entry.name!r} is a name pattern, which only a template "
                    "has; set data.task_column (one task per value) or list targets"
                )
        if entry.is_wide:
            _check_wide(entry, where, task_column)
        elif entry.target is None:
            raise ConfigError(f"{where}.target: missing; the column holding the labels")
        if entry.names is not None and not entry.is_wide:
            raise ConfigError(f"{where}.names: only a template listing targets takes names")
        if not (over_column or entry.is_wide):
            if entry.name is None:
                raise ConfigError(
                    f"{where}.name: missing; every task needs a name (a template over "
                    "data.task_column or listing targets may leave it out)"
                )
            continue
        task = entry.to_task()
        if entry.is_wide:
            default = "{target}"
        else:
            default = "{column}_{value}" if entry.name is None else entry.name + "_{value}"
        pattern = entry.name if entry.name is not None and _has_placeholder(entry.name) else default
        targets = entry.targets
        templates[task.name] = TaskTemplate(
            task,
            pattern,
            over_column,
            targets if isinstance(targets, str) or targets is None else tuple(targets),
            None if entry.names is None else tuple(entry.names),
            entry.model_dump(),
        )
    if task_column is not None and not any(t.over_column for t in templates.values()):
        raise ConfigError(
            "config error: data.task_column: no [[tasks]] template to expand over "
            f"column '{task_column}'; declare one entry with kind and target (name optional)"
        )
    return templates


def _check_wide(entry: TaskEntry, where: str, task_column: str | None) -> None:
    if entry.target is not None:
        raise ConfigError(f"{where}: give target (one task) or targets (a template), not both")
    targets = entry.targets
    if isinstance(targets, list):
        if not targets:
            raise ConfigError(f"{where}.targets: empty; list at least one target column")
        if len(set(targets)) != len(targets):
            raise ConfigError(f"{where}.targets: a column is listed twice")
        if entry.names is not None and len(entry.names) != len(targets):
            raise ConfigError(
                f"{where}.names: {len(entry.names)} names for {len(targets)} targets; give one "
                "name per target"
            )
    elif entry.names is not None:
        raise ConfigError(
            f"{where}.names: a glob of targets ({targets!r}) matches columns in the table's "
            "order; name the tasks with a pattern such as name = '{target}' instead"
        )
    if task_column is not None and entry.name is not None and "{value}" in entry.name:
        raise ConfigError(
            f"{where}.name: {{value}} belongs to a template over data.task_column; a template "
            "listing targets expands over them ({target}, {i})"
        )


def _unique(names: list[str]) -> list[str]:
    """Names made unique by a suffix ``_2``, ``_3``, ... on repeats."""
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, k = name, 2
        while candidate in seen:
            candidate, k = f"{name}_{k}", k + 1
        seen.add(candidate)
        result.append(candidate)
    return result


def _expanded(template: TaskTemplate, name: str, target: str, classes: list[str] | None) -> Task:
    fields = {k: v for k, v in template.task.to_dict().items() if k not in FITTED_FIELDS}
    fields.update(name=name, target=target)
    if classes is not None and fields.get("classes") is None:
        fields["classes"] = list(classes)
    return Task(**fields)


def expand_values(
    template: TaskTemplate, column: str, values: Sequence[str], classes: list[str] | None = None
) -> tuple[list[Task], TaskGroup]:
    """One task per ``values`` entry of ``column`` (text), reading the template's target;
    ``classes``: the template's classes fitted on all its rows (every task gets the same, so
    their outputs pool)."""
    target = template.task.target
    assert isinstance(target, str)
    raw = [
        template.pattern.format(value=v, column=column, target=target, i=i)
        for i, v in enumerate(values)
    ]
    names = _unique([safe_name(n) for n in raw])
    tasks = [_expanded(template, n, target, classes) for n in names]
    group = TaskGroup(
        template.task.name,
        template.task.kind,
        tuple(names),
        column,
        tuple(values),
        dict(template.declared),
    )
    return tasks, group


def expand_targets(
    template: TaskTemplate, targets: Sequence[str], classes: list[str] | None = None
) -> tuple[list[Task], TaskGroup]:
    """One task per target column of a wide template."""
    if template.names is not None:
        raw = list(template.names)
    else:
        raw = [
            template.pattern.format(target=t, i=i, value="", column="")
            for i, t in enumerate(targets)
        ]
    names = _unique([safe_name(n) for n in raw])
    tasks = [_expanded(template, n, t, classes) for n, t in zip(names, targets, strict=True)]
    group = TaskGroup(
        template.task.name,
        template.task.kind,
        tuple(names),
        template=dict(template.declared),
    )
    return tasks, group


def value_text(values: pd.Series) -> pd.Series:
    """A task column's values as text, the same whether the column was read as integers or,
    with a blank cell, as floats (``3`` and ``3.0`` are task ``"3"``); missing stays missing."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype("string")
    if pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce").astype("float64")
        arr = numbers.to_numpy()
        finite = np.isfinite(arr)
        integral = finite & (np.floor(np.where(finite, arr, 0.0)) == np.where(finite, arr, 0.0))
        cells = [
            (str(int(v)) if whole else repr(float(v))) if ok else None
            for v, ok, whole in zip(arr, finite, integral, strict=True)
        ]
        return pd.Series(cells, index=values.index, dtype="string")
    text: pd.Series = values.astype("string").str.strip()
    blank: pd.Series = text == ""
    result: pd.Series = text.mask(blank)
    return result


def ordered_values(values: pd.Series) -> list[str]:
    """The distinct values of a task column as text, in numeric order when they are all
    numbers, else in text order."""
    distinct = sorted(set(value_text(values).dropna().tolist()))
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return distinct


def replace_name(task: Task, name: str) -> Task:
    """``task`` under another name (how a group's outputs are decoded into its columns)."""
    return replace(task, name=name)


def own_task_columns(
    group: TaskGroup, tasks: Mapping[str, Task], outputs: Mapping[str, Any], values: pd.Series
) -> dict[str, np.ndarray]:
    """The prediction columns of a task-indexed ``group``, one set named after the group:
    each row gets its own task's output (``values``: the rows' task column, as read), decoded
    by the kind; a row whose value is no task of the group gets an empty cell."""
    text = value_text(values)
    n = len(values)
    result: dict[str, np.ndarray] = {}
    for value, name in group.task_of_value().items():
        rows = np.flatnonzero((text == value).fillna(False).to_numpy(dtype=bool))
        task = replace(tasks[name], name=group.name)
        decoded = task.spec.decode(task, outputs[name][rows])
        for key, column in decoded.items():
            if key not in result:
                float_column = column.dtype.kind == "f"
                result[key] = np.full(n, np.nan) if float_column else np.full(n, None, dtype=object)
            result[key][rows] = column
    return result
