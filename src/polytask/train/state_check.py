"""Checking a checkpoint against the run it should continue, before anything is restored.

A checkpoint written for another architecture or config, or edited by hand, would otherwise
fail deep inside ``load_state_dict`` (or, worse, load and train on garbage). Every part of the
trainer's state (:meth:`polytask.train.trainer.Trainer.state`) is compared with what the built
run expects: the model's tensors (names, shapes, dtypes, finite values), the optimiser's groups
and moments, the balancer's state, the random number generators, the task scheduler and the
trainer's counters. The first difference is reported as one line, ``<key>: expected <...>,
found <...>``; nothing has been mutated when it is raised.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from polytask.errors import PolytaskError
from polytask.train.record import EpochRecord


class CheckpointMismatch(PolytaskError):
    """A checkpoint that the run cannot continue from; ``detail`` is ``key: expected, found``
    (the trainer prefixes the checkpoint's directory)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"checkpoint does not match the config: {detail}")


def _mismatch(key: str, expected: str, found: str, more: int = 0) -> CheckpointMismatch:
    extra = f" (and {more} more difference{'s' if more > 1 else ''})" if more else ""
    return CheckpointMismatch(f"{key}: expected {expected}, found {found}{extra}")


def _shape(t: Tensor) -> str:
    return f"shape [{', '.join(map(str, t.shape))}]"


def _what(value: Any) -> str:
    """How a message names a found value."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of {_shape(value)}"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    return f"{type(value).__name__} {value!r}"[:80]


def _kind_matches(expected: Any, found: Any) -> bool:
    """Same kind of plain value: a bool is not a number, an int may stand for a float."""
    if isinstance(expected, bool) or isinstance(found, bool):
        return isinstance(expected, bool) and isinstance(found, bool)
    if isinstance(expected, float):
        return isinstance(found, int | float)
    if isinstance(expected, int):
        return isinstance(found, int)
    if isinstance(expected, str):
        return isinstance(found, str)
    if isinstance(expected, list | tuple):
        return isinstance(found, list | tuple)
    if isinstance(expected, Mapping):
        return isinstance(found, Mapping)
    return True


def match(key: str, expected: Any, found: Any, *, shapes: bool = True) -> None:
    """Raise unless ``found`` has the structure of ``expected``: the same keys of every table,
    the same length of every non-empty list, tensors of the same dtype (and, with ``shapes``,
    shape), plain values of the same kind. ``None`` or an empty list expected accepts any
    value of its place (a reference not measured yet, a history still empty)."""
    if expected is None:
        return
    if isinstance(expected, Tensor):
        if not isinstance(found, Tensor):
            raise _mismatch(key, _what(expected), _what(found))
        if found.dtype != expected.dtype or (shapes and found.shape != expected.shape):
            raise _mismatch(key, _what(expected), _what(found))
        return
    if not _kind_matches(expected, found):
        raise _mismatch(key, _what(expected), _what(found))
    if isinstance(expected, Mapping):
        if set(expected) != set(found):
            raise _mismatch(key, f"keys {_keys(expected)}", f"keys {_keys(found)}")
        for k, v in expected.items():
            match(f"{key}.{k}", v, found[k], shapes=shapes)
    elif isinstance(expected, list | tuple) and expected:
        if len(found) != len(expected):
            raise _mismatch(key, f"a list of {len(expected)}", _what(found))
        for i, (e, f) in enumerate(zip(expected, found, strict=True)):
            match(f"{key}[{i}]", e, f, shapes=shapes)


def _keys(table: Mapping[Any, Any]) -> str:
    names = [repr(k) for k in table]
    return "none" if not names else ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def check_tensors(
    prefix: str, expected: Mapping[str, Any], found: Any, *, finite: bool, owner: str
) -> None:
    """``found`` holds exactly the tensors of the state dict ``expected`` (names, shapes,
    dtypes; with ``finite``, no NaN or inf); non-tensor entries (a module's extra state) must
    be of the same kind. ``owner`` names whose tensors they are (messages)."""
    if not isinstance(found, Mapping):
        raise _mismatch(prefix, f"the {owner}'s tensors", _what(found))
    problems: list[tuple[str, str, str]] = []
    for name, want in expected.items():
        key = f"{prefix}.{name}"
        if name not in found:
            problems.append((key, _what(want), "nothing"))
            continue
        got = found[name]
        if isinstance(want, Tensor):
            if not isinstance(got, Tensor):
                problems.append((key, _what(want), _what(got)))
            elif got.shape != want.shape:
                problems.append((key, _shape(want), _shape(got)))
            elif got.dtype != want.dtype:
                problems.append((key, str(want.dtype), str(got.dtype)))
            elif finite and got.is_floating_point() and not bool(torch.isfinite(got).all()):
                problems.append((key, "finite values", "NaN or inf"))
        elif not _kind_matches(want, got):
            problems.append((key, _what(want), _what(got)))
    for name in found:
        if name not in expected:
            problems.append(
                (f"{prefix}.{name}", f"no such tensor in the {owner}", _what(found[name]))
            )
    if problems:
        key, want_s, got_s = problems[0]
        raise _mismatch(key, want_s, got_s, len(problems) - 1)


def check_extra_state(prefix: str, module: nn.Module, found: Mapping[str, Any]) -> None:
    """Try each ``_extra_state`` entry on a copy of the submodule it belongs to: its format is
    the module's own, so only the module can say whether it reads it."""
    for name, value in found.items():
        if not name.endswith("_extra_state"):
            continue
        path = name.removesuffix("_extra_state").removesuffix(".")
        probe = copy.deepcopy(module.get_submodule(path))
        try:
            probe.set_extra_state(value)
        except Exception as exc:  # any failure of the module's own reader is a mismatch
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise _mismatch(f"{prefix}.{name}", "state this balancer can read", reason) from None


def check_optimizer(optimizer: torch.optim.Optimizer, found: Any) -> None:
    """The optimiser's state: as many groups of as many parameters, the same hyperparameters,
    and moments of each parameter's shape."""
    if not isinstance(found, Mapping) or set(found) != {"state", "param_groups"}:
        raise _mismatch("optimizer", "keys 'state', 'param_groups'", _what(found))
    groups, saved = optimizer.param_groups, found["param_groups"]
    if not isinstance(saved, list | tuple) or len(saved) != len(groups):
        raise _mismatch("optimizer.param_groups", f"{len(groups)} parameter groups", _what(saved))
    params: list[Tensor] = []
    for i, (group, got) in enumerate(zip(groups, saved, strict=True)):
        key = f"optimizer.param_groups[{i}]"
        if not isinstance(got, Mapping):
            raise _mismatch(key, "a table", _what(got))
        ids = got.get("params")
        if not isinstance(ids, list | tuple) or len(ids) != len(group["params"]):
            raise _mismatch(f"{key}.params", f"{len(group['params'])} parameters", _what(ids))
        # torch numbers the parameters 0, 1, ... across the groups in order; another numbering
        # would pair moments with the wrong parameters (or fail to hash, for a list).
        numbering = list(range(len(params), len(params) + len(ids)))
        if (
            any(isinstance(i, bool) or not isinstance(i, int) for i in ids)
            or list(ids) != numbering
        ):
            shown = f"{numbering[0]}..{numbering[-1]}" if numbering else "none"
            raise _mismatch(f"{key}.params", f"parameter numbers {shown}", _what(list(ids)))
        for name, want in group.items():
            # lr is set from the config at every step; fused/foreach say how the update is
            # computed (the same numbers up to rounding), not what it is.
            if name in ("params", "lr", "fused", "foreach"):
                continue
            if name not in got:
                raise _mismatch(f"{key}.{name}", _what(want), "nothing")
            match(f"{key}.{name}", want, got[name])
        params.extend(group["params"])
    state = found["state"]
    if not isinstance(state, Mapping):
        raise _mismatch("optimizer.state", "a table", _what(state))
    reference = _reference_entry(optimizer)
    for index, entry in state.items():
        key = f"optimizer.state[{index}]"
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(params):
            raise _mismatch(
                "optimizer.state", f"parameter indices 0..{len(params) - 1}", repr(index)
            )
        if not isinstance(entry, Mapping):
            raise _mismatch(key, "a table", _what(entry))
        _check_entry_kinds(key, reference, entry)
        for name, value in entry.items():
            if not isinstance(value, Tensor):
                continue
            want = params[index]
            if name != "step" and value.shape != want.shape:
                raise _mismatch(f"{key}.{name}", _shape(want), _shape(value))
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise _mismatch(f"{key}.{name}", "finite values", "NaN or inf")


def _reference_entry(optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """What one parameter's state looks like for this optimiser and its settings: the state of
    a throwaway copy after one step on a one-element parameter (None if it cannot be built).

    The optimiser's own reader trusts the file: a moment edited to ``null`` passes
    ``load_state_dict`` and fails inside the next ``step``, as a traceback.
    """
    probe = torch.nn.Parameter(torch.zeros(1))
    # Only what the constructor takes: groups also carry polytask's keys (lr_scale) and some
    # derived ones (AdamW's decoupled_weight_decay is in its defaults, not its signature).
    accepted = inspect.signature(type(optimizer)).parameters
    settings = {
        k: v for k, v in optimizer.param_groups[0].items() if k in accepted and k != "params"
    }
    try:
        throwaway = type(optimizer)([probe], **settings)
        probe.grad = torch.zeros(1)
        throwaway.step()
    except Exception:  # an optimiser that cannot be rebuilt this way: kinds are not checked
        return None
    return dict(throwaway.state[probe])


def _check_entry_kinds(
    key: str, reference: dict[str, Any] | None, entry: Mapping[Any, Any]
) -> None:
    """Each saved per-parameter entry holds the reference's keys, each a tensor where the
    reference has one (its shape is checked by the caller)."""
    if reference is None:
        return
    if set(entry) != set(reference):
        raise _mismatch(key, f"keys {_names(reference)}", f"keys {_names(entry)}")
    for name, want in reference.items():
        if isinstance(want, Tensor) != isinstance(entry[name], Tensor):
            raise _mismatch(f"{key}.{name}", _what(want), _what(entry[name]))


def _names(table: Mapping[Any, Any]) -> str:
    return ", ".join(repr(k) for k in sorted(table, key=str)) or "none"


#: Counters that cannot be negative (a callback's own numbers may be).
_COUNTS = ("epoch", "step", "skipped", "best_epoch", "bad_epochs")


def check_counters(key: str, expected: Mapping[str, Any], found: Any) -> None:
    """The trainer's counters: each expected entry present and of its kind, counts not
    negative, the history a list of epoch records."""
    if not isinstance(found, Mapping):
        raise _mismatch(key, "a table", _what(found))
    for name, want in expected.items():
        if name == "history":
            continue
        if name not in found:
            raise _mismatch(f"{key}.{name}", _what(want), "nothing")
        got = found[name]
        if not _kind_matches(want, got):  # containers by kind only: a callback's may grow
            raise _mismatch(f"{key}.{name}", _what(want), _what(got))
        if name in _COUNTS and got < 0:
            raise _mismatch(f"{key}.{name}", "a count of 0 or more", repr(got))
    history = found.get("history")
    if not isinstance(history, list | tuple):
        raise _mismatch(f"{key}.history", "a list of epoch records", _what(history))
    for i, row in enumerate(history):
        check_record(f"{key}.history[{i}]", row)


def check_record(key: str, row: Any) -> None:
    """One saved :class:`~polytask.train.record.EpochRecord`: its fields, of their kinds."""
    from_fields = _record_fields()
    if not isinstance(row, Mapping):
        raise _mismatch(key, "an epoch record", _what(row))
    for name in row:
        if name not in from_fields:
            raise _mismatch(f"{key}.{name}", "no such field of an epoch record", _what(row[name]))
    for name, (example, required) in from_fields.items():
        if name not in row:
            if required:
                raise _mismatch(f"{key}.{name}", _what(example), "nothing")
            continue
        if not _kind_matches(example, row[name]):
            raise _mismatch(f"{key}.{name}", _what(example), _what(row[name]))


def _record_fields() -> dict[str, tuple[Any, bool]]:
    """Each EpochRecord field: an example value of its kind, and whether it is required."""
    from_type = {"int": 0, "float": 0.0, "bool": False}
    fields: dict[str, tuple[Any, bool]] = {}
    for f in dataclasses.fields(EpochRecord):
        annotation = str(f.type)
        example: Any = from_type.get(annotation, {} if annotation.startswith("dict") else None)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields[f.name] = (example, required)
    return fields


def check_scaler(expected: Mapping[str, Any], found: Any) -> None:
    """The float16 gradient scaler's state (``scaler``): the same keys, numbers, and a
    finite scale > 0 (a checkpoint of another precision carries none, and is not checked)."""
    match("scaler", dict(expected), found)
    scale = found.get("scale")
    if not (isinstance(scale, int | float) and 0 < float(scale) < float("inf")):
        raise CheckpointMismatch(f"scaler.scale: expected a finite number > 0, found {scale!r}")
