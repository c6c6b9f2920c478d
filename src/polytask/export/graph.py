"""Pre- and post-processing as ONNX nodes, composed around the exported network.

Preprocessing of a table (:class:`~polytask.data.preprocess.TablePreprocessor`'s fitted
columns, read from the model directory) from two packed inputs, the columns in the order the
metadata lists (:func:`table_inputs`): one input per column cost onnxruntime a feed and about
ten nodes per column (2,064 inputs and 20,000 nodes for a fingerprint table, 70 ms a row), so
every step below runs once on a whole matrix:

* ``numbers`` (``tensor(double)[B, N]``, NaN or ±inf for missing): ``IsNaN``/``IsInf`` find
  the missing cells, ``Where`` fills them with the fitted fills (a ``[N]`` constant broadcast
  over the rows), ``Sub``/``Div`` standardise in float64, ``Clip`` bounds the scores to
  ±``MAX_STANDARD_SCORE`` and ``Cast`` makes them float32 (the order and precision of
  ``TablePreprocessor.transform``); the missing indicators are the ``Gather`` of the flagged
  columns of the missing mask, ``Cast`` to float;
* ``categories`` (``tensor(string)[B, C]``, empty string for missing): ``Split`` into its
  columns, each through its own ``ai.onnx.ml`` ``LabelEncoder`` (the vocabularies differ per
  column), which maps each fitted category to its 1-based code, the empty string to the code
  of the missing token when training saw missing values, and anything else (unseen or rare)
  to ``default_int64 = 0``, the unknown slot; the codes are concatenated to ``[B, C]``; every
  one-hot block at once: ``Gather`` of each one-hot slot's column, ``Equal`` against the
  slot's code, ``Cast``; the embedded columns' codes: one ``Gather``;
* ``Concat`` of the scores, indicators and one-hot cells and one ``Gather`` that puts them in
  the predictor's dense column order.

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
from polytask.export import detection
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
#: The graph input of a table's numeric columns (``double[B, N]``) and of its categorical
#: columns (``string[B, C]``), each in the fitted column order.
NUMBERS = "numbers"
CATEGORIES = "categories"


def table_inputs(pre: TablePreprocessor) -> list[tuple[str, list[str]]]:
    """The packed graph inputs of a table model and the columns each holds, in order
    (an input without columns is left out)."""
    packed = [
        (NUMBERS, [c.name for c in pre.numeric]),
        (CATEGORIES, [c.name for c in pre.categorical]),
    ]
    return [(name, columns) for name, columns in packed if columns]


def table_preprocessing(b: Builder, pre: TablePreprocessor, wanted: list[NetworkInput]) -> None:
    """Nodes from the packed inputs ``numbers`` and ``categories`` to ``net/numeric`` and
    ``net/categorical``, as :meth:`TablePreprocessor.transform` encodes a table (see the
    module docstring)."""
    # Dense blocks in the order they are concatenated, with each column's dense position.
    blocks: list[str] = []
    positions: list[int] = []
    at = 0
    value_at: list[int] = []
    flagged: list[int] = []
    for i, col in enumerate(pre.numeric):
        value_at.append(at)
        at += 2 if col.indicator else 1
        if col.indicator:
            flagged.append(i)
    if pre.numeric:
        x = NUMBERS
        present = b.finite(x)

        def per_column(values: list[float]) -> str:
            return b.const(np.array(values, dtype=np.float64), np.float64, "per_column")

        filled = b.op("Where", [present, x, per_column([c.fill for c in pre.numeric])], "filled")
        centred = b.op("Sub", [filled, per_column([c.mean for c in pre.numeric])], "centred")
        z = b.op("Div", [centred, per_column([c.std for c in pre.numeric])], "z")
        lo = b.const(-MAX_STANDARD_SCORE, np.float64, "lo")
        hi = b.const(MAX_STANDARD_SCORE, np.float64, "hi")
        bound = b.op("Clip", [z, lo, hi], "clipped")
        blocks.append(b.op("Cast", [bound], "z32", to=_tensor_type("float")))
        positions += value_at
        if flagged:
            missing = b.op("Not", [present], "missing")
            picked = b.op(
                "Gather", [missing, b.const(flagged, np.int64, "flagged")], "flags", axis=1
            )
            blocks.append(b.op("Cast", [picked], "indicators", to=_tensor_type("float")))
            positions += [value_at[i] + 1 for i in flagged]
    embedded: list[int] = []
    owner: list[int] = []
    slot: list[int] = []
    for j, cat in enumerate(pre.categorical):
        if cat.encoding == "onehot":
            owner += [j] * len(cat.categories)
            slot += range(1, len(cat.categories) + 1)
            positions += range(at, at + len(cat.categories))
            at += len(cat.categories)
        else:
            embedded.append(j)
    codes = _category_codes(b, pre) if pre.categorical else ""
    if owner:
        spread = b.op("Gather", [codes, b.const(owner, np.int64, "owner")], "spread", axis=1)
        hot = b.op("Equal", [spread, b.const(slot, np.int64, "slots")], "hot")
        blocks.append(b.op("Cast", [hot], "onehot", to=_tensor_type("float")))
    targets: dict[str, str] = {}
    if blocks:
        dense = blocks[0] if len(blocks) == 1 else b.op("Concat", blocks, "dense", axis=1)
        if positions != list(range(len(positions))):
            # Concatenated block by block; the predictor's layout interleaves them (a value,
            # then its indicator; one-hot blocks after the numbers): one Gather reorders.
            order = np.argsort(np.array(positions, dtype=np.int64), kind="stable")
            dense = b.op("Gather", [dense, b.const(order, np.int64, "layout")], "ordered", axis=1)
        targets["numeric"] = dense
    if embedded:
        every = list(range(len(pre.categorical)))
        targets["categorical"] = (
            codes
            if embedded == every
            else b.op("Gather", [codes, b.const(embedded, np.int64, "embedded")], "ids", axis=1)
        )
    for net_input in wanted:
        b.nodes.append(_identity(targets[net_input.key], NET + net_input.key))


def _category_codes(b: Builder, pre: TablePreprocessor) -> str:
    """``int64[B, C]``: each categorical column's 1-based code in its fitted vocabulary (0
    unknown), by a ``LabelEncoder`` per column of ``categories``."""
    count = len(pre.categorical)
    if count == 1:
        columns = [CATEGORIES]
    else:
        from onnx import helper  # optional dependency: see polytask.export.network

        columns = [b.name("column") for _ in range(count)]
        ones = b.const([1] * count, np.int64, "split")
        b.nodes.append(
            helper.make_node("Split", [CATEGORIES, ones], columns, name=b.name("split"), axis=1)
        )
    codes: list[str] = []
    for column, cat in zip(columns, pre.categorical, strict=True):
        keys = list(cat.categories)
        values = list(range(1, len(keys) + 1))
        if MISSING_TOKEN in keys:
            # An empty cell is the missing token (preprocess.as_text): the same code.
            keys.append(EMPTY)
            values.append(keys.index(MISSING_TOKEN) + 1)
        codes.append(
            b.op(
                "LabelEncoder",
                [column],
                "code",
                domain="ai.onnx.ml",
                keys_strings=keys,
                values_int64s=values,
                default_int64=0,
            )
        )
    return codes[0] if count == 1 else b.op("Concat", codes, "codes", axis=1)


def _identity(value: str, out: str) -> Any:
    from onnx import helper  # optional dependency: see polytask.export.network

    return helper.make_node("Identity", [value], [out], name=out)


# -- post-processing ----------------------------------------------------------------------
def task_outputs(b: Builder, task: Task, raw: str) -> dict[str, str]:
    """Output name → value name of ``task``'s outputs in user units, from its raw output
    ``raw`` (see the module docstring; names listed in :func:`output_names`)."""
    kind = task.kind
    if kind == "detection":  # peaks, top-k, boxes and NMS: polytask.export.detection
        return detection.detection_outputs(b, task, raw)
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
    if task.kind == "detection":
        return detection.output_names(task)
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
