"""Pre- and post-processing as ONNX nodes, composed around the exported network.

Preprocessing of a table (:class:`~polytask.data.preprocess.TablePreprocessor`'s fitted
columns, read from the model directory), one graph input per column:

* numeric column ``x`` (``tensor(double)[B]``, NaN or ±inf for missing): ``IsNaN``/``IsInf``
  find the missing cells, ``Where`` fills them with the fitted fill, ``Sub``/``Div`` standardise
  in float64, ``Clip`` bounds the score to ±``MAX_STANDARD_SCORE`` and ``Cast`` makes it float32
  (the order and precision of ``TablePreprocessor.transform``); the missing indicator is the
  ``Cast`` of the missing mask;
* categorical column (``tensor(string)[B]``, empty string for missing): ``ai.onnx.ml``
  ``LabelEncoder`` maps each fitted category to its 1-based code, the empty string to the code
  of the missing token when training saw missing values, and anything else (unseen or rare) to
  ``default_int64 = 0``, the unknown slot; one-hot columns are ``Equal`` against ``1..K`` then
  ``Cast``, embedded columns are stacked as int64 codes;
* ``Concat`` assembles the dense block and the code block in the predictor's column order.

Post-processing per task kind (what the kinds' ``decode`` does, ``polytask.tasks.kinds``):
``Sigmoid``/``Softmax`` probabilities cast to float64, NaN where a logit is not finite
(``IsNaN``/``IsInf``/``Where``); labels from ``GreaterOrEqual`` 0.5 or ``ArgMax`` mapped to the
user's classes by an ``ai.onnx.ml`` ``LabelEncoder`` (int64 → string, empty string where no
label is defined); regression values ``Cast`` to float64, times the target std plus its mean.

Operator semantics: https://onnx.ai/onnx/operators/ (default domain, opset 18+: ``ReduceMin``
and ``Unsqueeze`` take their axes as inputs) and https://onnx.ai/onnx/operators/onnx_aionnxml_LabelEncoder.html
(``ai.onnx.ml`` opset 3, LabelEncoder version 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polytask.data.preprocess import MAX_STANDARD_SCORE, MISSING_TOKEN, TablePreprocessor
from polytask.export.network import NET, NetworkInput
from polytask.tasks import Task

#: Version of the ``ai.onnx.ml`` domain the graph imports (LabelEncoder version 2).
ML_OPSET = 3
#: The empty string: a missing category on input, "no label" on output.
EMPTY = ""


@dataclass
class Builder:
    """Nodes and constants of one graph; every name it makes starts with ``prefix``."""

    prefix: str
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    _count: int = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}/{self._count}"

    def const(self, value: Any, dtype: Any, hint: str = "c") -> str:
        from onnx import numpy_helper  # optional dependency: see polytask.export.network

        name = self.name(hint)
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, domain: str = "", **attrs: Any) -> str:
        from onnx import helper  # optional dependency: see polytask.export.network

        out = self.name(hint)
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=out, domain=domain or None, **attrs)
        )
        return out

    def finite(self, x: str) -> str:
        """The mask of finite entries of float tensor ``x`` (not NaN, not ±inf)."""
        bad = self.op("Or", [self.op("IsNaN", [x], "isnan"), self.op("IsInf", [x], "isinf")], "bad")
        return self.op("Not", [bad], "finite")

    def nan(self) -> str:
        """A float64 NaN: the value of an undefined probability or prediction."""
        return self.const(np.nan, np.float64, "nan")

    def minus_one(self) -> str:
        """An int64 -1: the class index of an undefined label."""
        return self.const(-1, np.int64, "minus_one")

    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.const(axes, np.int64, "axes")], "unsqueeze")

    def all_rows(self, mask: str) -> str:
        """``[B]`` bool: every entry of row ``b`` of ``mask`` (any rank ≥ 2) is true."""
        flat = self.op("Flatten", [mask], "flat", axis=1)
        as_int = self.op("Cast", [flat], "int", to=_tensor_type("int32"))
        axes = self.const([1], np.int64, "axes")
        low = self.op("ReduceMin", [as_int, axes], "rowmin", keepdims=0)
        return self.op("Cast", [low], "rowall", to=_tensor_type("bool"))

    def labels(self, index: str, classes: list[str], hint: str) -> str:
        """int64 class indices → the class names (``ai.onnx.ml`` LabelEncoder); any index
        outside ``0..C-1`` (the -1 of an undefined label) → the empty string."""
        return self.op(
            "LabelEncoder",
            [index],
            hint,
            domain="ai.onnx.ml",
            keys_int64s=list(range(len(classes))),
            values_strings=list(classes),
            default_string=EMPTY,
        )


def _tensor_type(name: str) -> int:
    from onnx import TensorProto  # optional dependency: see polytask.export.network

    value: int = getattr(TensorProto, name.upper())
    return value


# -- preprocessing ------------------------------------------------------------------------
def table_preprocessing(b: Builder, pre: TablePreprocessor, wanted: list[NetworkInput]) -> None:
    """Nodes from the column inputs (named as the columns) to ``net/numeric`` and
    ``net/categorical``, as :meth:`TablePreprocessor.transform` encodes a table."""
    dense: list[str] = []
    for col in pre.numeric:
        present = b.finite(col.name)
        filled = b.op("Where", [present, col.name, b.const(col.fill, np.float64, "fill")], "filled")
        centred = b.op("Sub", [filled, b.const(col.mean, np.float64, "mean")], "centred")
        z = b.op("Div", [centred, b.const(col.std, np.float64, "std")], "z")
        bound = b.op(
            "Clip",
            [
                z,
                b.const(-MAX_STANDARD_SCORE, np.float64, "lo"),
                b.const(MAX_STANDARD_SCORE, np.float64, "hi"),
            ],
            "clipped",
        )
        dense.append(b.unsqueeze(b.op("Cast", [bound], "z32", to=_tensor_type("float")), [1]))
        if col.indicator:
            missing = b.op("Not", [present], "missing")
            flag = b.op("Cast", [missing], "indicator", to=_tensor_type("float"))
            dense.append(b.unsqueeze(flag, [1]))
    codes: list[str] = []
    for cat in pre.categorical:
        keys = list(cat.categories)
        values = list(range(1, len(keys) + 1))
        if MISSING_TOKEN in keys:
            # An empty cell is the missing token (preprocess.as_text): the same code.
            keys.append(EMPTY)
            values.append(keys.index(MISSING_TOKEN) + 1)
        code = b.op(
            "LabelEncoder",
            [cat.name],
            "code",
            domain="ai.onnx.ml",
            keys_strings=keys,
            values_int64s=values,
            default_int64=0,
        )
        column = b.unsqueeze(code, [1])
        if cat.encoding == "onehot":
            slots = b.const(np.arange(1, len(cat.categories) + 1)[None, :], np.int64, "slots")
            hot = b.op("Equal", [column, slots], "hot")
            dense.append(b.op("Cast", [hot], "onehot", to=_tensor_type("float")))
        else:
            codes.append(column)
    blocks = {"numeric": dense, "categorical": codes}
    for net_input in wanted:
        parts = blocks[net_input.key]
        b.nodes.append(_concat(parts, NET + net_input.key))


def _concat(parts: list[str], out: str) -> Any:
    from onnx import helper  # optional dependency: see polytask.export.network

    return helper.make_node("Concat", parts, [out], name=out, axis=1)


# -- post-processing ----------------------------------------------------------------------
def task_outputs(b: Builder, task: Task, raw: str) -> dict[str, str]:
    """Output name → value name of ``task``'s outputs in user units, from its raw output
    ``raw`` (see the module docstring; names listed in :func:`output_names`)."""
    kind = task.kind
    finite = b.finite(raw)
    if kind in ("binary", "multilabel"):
        p = b.op("Cast", [b.op("Sigmoid", [raw], "sigmoid")], "p64", to=_tensor_type("double"))
        proba = b.op("Where", [finite, p, b.nan()], "proba")
        positive = b.op("GreaterOrEqual", [p, b.const(0.5, np.float64, "half")], "positive")
        decided = b.op("Cast", [positive], "decided", to=_tensor_type("int64"))
        index = b.op("Where", [finite, decided, b.minus_one()], "index")
        if kind == "binary":
            assert task.classes is not None
            return {f"{task.name}_proba": proba, task.name: b.labels(index, task.classes, "label")}
        return {f"{task.name}_proba": proba, f"{task.name}_label": index}
    if kind == "multiclass":
        assert task.classes is not None
        known = b.all_rows(finite)
        soft = b.op("Softmax", [raw], "softmax", axis=-1)
        p = b.op("Cast", [soft], "p64", to=_tensor_type("double"))
        proba = b.op("Where", [b.unsqueeze(known, [1]), p, b.nan()], "proba")
        best = b.op("ArgMax", [soft], "argmax", axis=1, keepdims=0)
        index = b.op("Where", [known, best, b.minus_one()], "index")
        return {f"{task.name}_proba": proba, task.name: b.labels(index, task.classes, "label")}
    if kind in ("regression", "dense_regression"):
        mean = task.target_mean if task.target_mean is not None else 0.0
        std = task.target_std if task.target_std is not None else 1.0
        # In float64, as the kinds decode: a large output times the scale may overflow float32.
        wide = b.op("Cast", [raw], "v64", to=_tensor_type("double"))
        scaled = b.op("Mul", [wide, b.const(std, np.float64, "target_std")], "scaled")
        value = b.op("Add", [scaled, b.const(mean, np.float64, "target_mean")], "value")
        return {task.name: b.op("Where", [b.finite(value), value, b.nan()], "finite_value")}
    if kind == "segmentation":
        known = b.all_rows(finite)
        zero = b.const(0.0, np.float32, "zero")
        cleaned = b.op("Where", [b.op("IsNaN", [raw], "isnan"), zero, raw], "nan_to_num")
        maps = b.op("ArgMax", [cleaned], "argmax", axis=1, keepdims=0)
        undefined = b.minus_one()
        return {task.name: b.op("Where", [b.unsqueeze(known, [1, 2]), maps, undefined], "maps")}
    raise NotImplementedError(kind)  # guarded by export.SUPPORTED_KINDS


def output_names(task: Task) -> dict[str, str]:
    """The graph outputs of ``task`` and what each holds (documented in the metadata)."""
    n = task.name
    return {
        "binary": {
            f"{n}_proba": "double[B]: probability of the positive class (NaN: undefined)",
            n: "string[B]: the label ('' where undefined)",
        },
        "multiclass": {
            f"{n}_proba": "double[B, C]: probability of each class, in the order of classes",
            n: "string[B]: the most probable class ('' where undefined)",
        },
        "multilabel": {
            f"{n}_proba": "double[B, L]: probability of each label, in the order of targets",
            f"{n}_label": "int64[B, L]: 1 / 0 decided at 0.5 (-1 where undefined)",
        },
        "regression": {n: "double[B]: the value in the target's unit (NaN: undefined)"},
        "dense_regression": {n: "double[B, H, W]: per-pixel value in the target's unit"},
        "segmentation": {n: "int64[B, H, W]: per-pixel class index (-1: row undefined)"},
    }[task.kind]
