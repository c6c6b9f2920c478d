"""``polytask export``: one ONNX file that takes raw input columns and returns every task's
outputs in user units.

The graph is three parts in one ``ModelProto``: the fitted preprocessing of the model directory
(:mod:`polytask.export.graph`, ONNX and ``ai.onnx.ml`` operators), the torch network
(:mod:`polytask.export.network`, ``torch.onnx.export``) and the kinds' decoding. Tables take
their raw columns packed in two inputs, ``numbers`` (``tensor(double)[B, N]``, NaN for missing)
and ``categories`` (``tensor(string)[B, C]``, ``""`` for missing), the columns in the order
the metadata's input schema lists; other inputs take the tensors their processor produces,
with the processor's steps documented in the metadata. A preference-conditioned model also takes
``preference`` (``float[B, K]``, normalised to sum to 1 inside the graph). Metadata
(``metadata_props``, https://onnx.ai/onnx/repo-docs/IR.html#metadata) holds the polytask
version, tasks, kinds, classes, the input schema, the outputs and the preprocessing steps (for
image, audio and text models also ``polytask.input_processor``, the steps as data:
:mod:`polytask.export.processors`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from polytask._version import __version__
from polytask.data.preprocess import MAX_STANDARD_SCORE, MISSING_TOKEN, TablePreprocessor
from polytask.errors import PolytaskError
from polytask.export import processors
from polytask.export.graph import (
    CATEGORIES,
    ML_OPSET,
    NUMBERS,
    Builder,
    output_names,
    table_inputs,
    table_preprocessing,
    task_outputs,
)
from polytask.export.network import NET, Exporter, NetworkInput, network_proto
from polytask.export.tokens import TOKEN_KINDS, token_output_names, token_outputs
from polytask.run.predictor import Predictor, load
from polytask.tasks import Task

#: Opsets the export writes: 18 is the first whose reductions and the dynamo exporter agree
#: on; 21 the newest both exporters and onnxruntime 1.17+ run.
SUPPORTED_OPSETS = range(18, 22)
DEFAULT_OPSET = 18
SUPPORTED_KINDS = (
    "binary",
    "multiclass",
    "multilabel",
    "regression",
    "segmentation",
    "dense_regression",
    "detection",
    *TOKEN_KINDS,
)
#: Metadata key prefix (``metadata_props``).
META = "polytask."
#: The file format: 2 packs a table's columns into ``numbers`` and ``categories`` (1 took one
#: input per column).
FORMAT = "polytask.onnx/2"


def check_opset(opset: int | None) -> int:
    """``opset`` (default :data:`DEFAULT_OPSET`) if the export supports it, else a one-line
    error naming the range."""
    chosen = DEFAULT_OPSET if opset is None else opset
    if chosen not in SUPPORTED_OPSETS:
        raise PolytaskError(
            f"--opset {chosen}: unsupported; choose an opset from {SUPPORTED_OPSETS.start} to "
            f"{SUPPORTED_OPSETS.stop - 1}"
        )
    return chosen


def export_onnx(
    model: str | Path | Predictor,
    path: str | Path,
    tasks: list[str] | None = None,
    opset: int | None = None,
    exporter: Exporter = "auto",
) -> Path:
    """Write ``model`` (a model or run directory, or a loaded :class:`Predictor`) as one ONNX
    file at ``path`` (atomically: a temporary sibling renamed into place) and return the path.

    ``tasks``: only these tasks' outputs (default: all). ``opset``: the default-domain opset
    (:data:`SUPPORTED_OPSETS`). ``exporter``: ``auto`` tries the dynamo exporter and falls back
    to TorchScript; ``dynamo`` / ``torchscript`` force one. The graph is checked with
    ``onnx.checker`` before it is written."""
    # onnx is an optional dependency (polytask[export]): imported only when exporting.
    import onnx

    chosen_opset = check_opset(opset)
    target = Path(path)
    if target.is_dir():
        raise PolytaskError(f"export: '{target}' is a directory; give a file name (model.onnx)")
    predictor = model if isinstance(model, Predictor) else load(model)
    if predictor.input_spec.kind == "subwords":
        raise PolytaskError(
            "export: this model reads words through a Hugging Face tokenizer (data.input "
            "'hf_words'), which the ONNX export does not take yet (the word alignment of the "
            "sub-words is made by the tokenizer); serve it with the torch runtime"
        )
    chosen = predictor._select(tasks)  # the predictor's own check and error for unknown names
    unsupported = [t for t in chosen if t.kind not in SUPPORTED_KINDS]
    if unsupported:
        raise PolytaskError(
            f"export: task '{unsupported[0].name}' is of kind '{unsupported[0].kind}', which "
            f"the export does not decode (supported: {', '.join(SUPPORTED_KINDS)})"
        )
    net, net_inputs, used = network_proto(
        predictor, [t.name for t in chosen], chosen_opset, exporter
    )
    graph = _compose(net, predictor, net_inputs, chosen)
    for key, value in metadata(predictor, chosen, net_inputs, chosen_opset, used).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    graph.producer_name, graph.producer_version = "polytask", __version__
    onnx.checker.check_model(graph, full_check=True)
    return _write_atomically(target, graph.SerializeToString())


def _compose(
    net: Any, predictor: Predictor, net_inputs: list[NetworkInput], chosen: list[Task]
) -> Any:
    """The network's graph with the preprocessing before it and the decoding after it."""
    # onnx is an optional dependency (polytask[export]): imported only when exporting.
    import onnx
    from onnx import TensorProto, helper

    b = Builder("polytask/")
    inputs: list[Any] = []
    pre = predictor.preprocessor
    if isinstance(pre, TablePreprocessor):
        dtypes = {NUMBERS: TensorProto.DOUBLE, CATEGORIES: TensorProto.STRING}
        for name, columns in table_inputs(pre):
            shape: list[str | int | None] = ["batch", len(columns)]
            inputs.append(helper.make_tensor_value_info(name, dtypes[name], shape))
        table_preprocessing(b, pre, net_inputs)
    else:
        for i in net_inputs:
            dtype = helper.np_dtype_to_tensor_dtype(_numpy_dtype(i))
            inputs.append(helper.make_tensor_value_info(i.key, dtype, i.axes))
            b.nodes.append(helper.make_node("Identity", [i.key], [NET + i.key]))
    if predictor.preference_conditioned:
        k = len(predictor.tasks)
        inputs.append(helper.make_tensor_value_info("preference", TensorProto.FLOAT, ["batch", k]))
        # Normalised to sum to 1, as parse_preference does ("7,3" means 0.7, 0.3).
        axes = b.const([1], "int64", "axes")
        total = b.op("ReduceSum", ["preference", axes], "total", keepdims=1)
        b.nodes.append(helper.make_node("Div", ["preference", total], [NET + "preference"]))
    names = [i.name for i in inputs]
    clash = sorted(set(names) & {n for t in chosen for n in _output_names(t)})
    clash += [n for n in set(names) if names.count(n) > 1]  # an input named "preference"
    if clash:
        raise PolytaskError(
            f"export: graph input '{clash[0]}' has the name of another graph input or of a "
            "task output; rename the task (or the input)"
        )
    post = Builder("polytask/out/")
    outputs: list[Any] = []
    for task in chosen:
        decoding = token_outputs if task.kind in TOKEN_KINDS else task_outputs
        for out_name, value in decoding(post, task, NET + task.name).items():
            post.nodes.append(helper.make_node("Identity", [value], [out_name]))
            outputs.append(helper.make_empty_tensor_value_info(out_name))
    g = net.graph
    nodes = [*b.nodes, *g.node, *post.nodes]
    new = helper.make_graph(
        nodes,
        "polytask",
        inputs,
        outputs,
        initializer=list(g.initializer) + b.initializers + post.initializers,
        value_info=list(g.value_info),
    )
    model = helper.make_model(
        new,
        opset_imports=[*net.opset_import, helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        ir_version=net.ir_version,
        functions=list(net.functions),
    )
    return onnx.shape_inference.infer_shapes(model)


def _output_names(task: Task) -> dict[str, str]:
    """The graph outputs of ``task`` (token-level kinds: :mod:`polytask.export.tokens`)."""
    return token_output_names(task) if task.kind in TOKEN_KINDS else output_names(task)


def _numpy_dtype(i: NetworkInput) -> Any:
    return torch.empty((), dtype=i.dtype).numpy().dtype


def _input_schema(predictor: Predictor, net_inputs: list[NetworkInput]) -> list[dict[str, Any]]:
    pre = predictor.preprocessor
    if isinstance(pre, TablePreprocessor):
        schema: list[dict[str, Any]] = []
        for name, columns in table_inputs(pre):
            if name == NUMBERS:
                schema.append(
                    {
                        "name": NUMBERS,
                        "type": "numbers",
                        "dtype": "double",
                        "shape": ["batch", len(columns)],
                        "columns": columns,
                        "missing": "NaN (inf and -inf are missing too)",
                    }
                )
            else:
                schema.append(
                    {
                        "name": CATEGORIES,
                        "type": "categories",
                        "dtype": "string",
                        "shape": ["batch", len(columns)],
                        "columns": columns,
                        "missing": "empty string",
                        "categories": {
                            c.name: [x for x in c.categories if x != MISSING_TOKEN]
                            for c in pre.categorical
                        },
                    }
                )
    else:
        schema = []
        for i in net_inputs:
            entry: dict[str, Any] = {
                "name": i.key,
                "type": "tensor",
                "dtype": str(i.dtype).removeprefix("torch."),
                "shape": i.axes,
            }
            if i.pad_id is not None:  # (a graph's atom and bond axes have no padding id)
                entry.update(type="token_ids", max_length=i.shape[0], pad_id=i.pad_id)
            schema.append(entry)
    if predictor.preference_conditioned:
        schema.append(
            {
                "name": "preference",
                "type": "preference",
                "dtype": "float",
                "shape": ["batch", len(predictor.tasks)],
                "order": predictor.task_names,
            }
        )
    return schema


def _steps(predictor: Predictor) -> list[str]:
    """The preprocessing, in words: what the graph does, and what a caller does first."""
    pre = predictor.preprocessor
    if isinstance(pre, TablePreprocessor):
        return [
            f"inputs: the numeric columns as one '{NUMBERS}' matrix and the categorical ones "
            f"as one '{CATEGORIES}' matrix, one row per example, the columns in the order of "
            "polytask.inputs",
            "categories: strip surrounding whitespace and write integral numbers without a "
            "fraction ('3', not '3.0') before feeding (polytask.data.preprocess.as_text); "
            "a missing value is the empty string",
            "in the graph: numbers: NaN/inf filled with the training fill, standardised "
            f"((x - mean) / std in float64), clipped to +-{MAX_STANDARD_SCORE:g}, float32; "
            "missing indicators where fitted",
            "in the graph: categories: fitted vocabulary -> 1-based code, unseen or rare -> "
            "0 (the unknown slot, also with data.unseen = 'error'); one-hot or embedding codes",
        ]
    return processors.steps(predictor)


def metadata(
    predictor: Predictor,
    chosen: list[Task],
    net_inputs: list[NetworkInput],
    opset: int,
    exporter: str,
) -> dict[str, str]:
    """The ``metadata_props`` of the exported graph (JSON values; see the module docstring)."""
    return {
        META + "version": __version__,
        META + "format": FORMAT,
        META + "tasks": json.dumps([t.to_dict() for t in chosen]),
        META + "all_tasks": json.dumps(predictor.task_names),
        META + "kinds": json.dumps({t.name: t.kind for t in chosen}),
        META + "classes": json.dumps({t.name: t.classes for t in chosen if t.classes}),
        META + "inputs": json.dumps(_input_schema(predictor, net_inputs)),
        META + "outputs": json.dumps({k: v for t in chosen for k, v in _output_names(t).items()}),
        META + "preprocessing_steps": json.dumps(_steps(predictor)),
        META + "preprocessing": json.dumps(predictor.preprocessor.to_dict()),
        **(
            {}
            if isinstance(predictor.preprocessor, TablePreprocessor)
            else {META + "input_processor": json.dumps(processors.describe(predictor))}
        ),
        META + "input_spec": json.dumps(asdict(predictor.input_spec)),
        META + "id_column": json.dumps(predictor.id_column),
        META + "na_values": json.dumps(predictor.na_values),
        META + "preference_conditioned": json.dumps(predictor.preference_conditioned),
        META + "opset": str(opset),
        META + "exporter": exporter,
    }


def _write_atomically(path: Path, data: bytes) -> Path:
    """``data`` at ``path`` via a temporary sibling and a rename: a reader never sees half a
    model, and a failed write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's 0600 would hide the model from others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return path
