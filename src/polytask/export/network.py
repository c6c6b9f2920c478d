"""The torch network of a model directory as an ONNX graph: encoded tensors in, raw outputs out.

:func:`network_proto` wraps :class:`~polytask.models.model.MultiTaskModel` in a module with
positional tensor inputs (the encoded tensors the model's input processor produces, and the
preference of a preference-conditioned model) and one output per task, in task order, then
exports it with ``torch.onnx.export``: the dynamo exporter first (``torch.export`` +
onnxscript), the TorchScript exporter when dynamo cannot capture an architecture. Both give a
dynamic batch dimension. Pre- and post-processing are composed around it by
:mod:`polytask.export.graph`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor, nn

from polytask.data.inputs.tokens import PAD_ID as TOKENS_PAD_ID
from polytask.data.inputs.tokens import TokensInput
from polytask.data.preprocess import TablePreprocessor
from polytask.errors import PolytaskError
from polytask.export.graphs import GRAPH_AXES, example_blocks
from polytask.export.processors import pad_id
from polytask.run.predictor import Predictor

Exporter = Literal["auto", "dynamo", "torchscript"]

#: Prefix of the network's own input and output names inside the composed graph, so they
#: cannot collide with a column name (the composed graph's inputs) or a task output.
NET = "net/"
#: The dynamic sentence axis of a tokens model's ``words`` and ``chars`` inputs (one axis:
#: both are as wide as the longest sentence of the batch).
WORDS_AXIS = "words"


@dataclass(frozen=True)
class NetworkInput:
    """One encoded tensor the network reads: its name in the processor's output, dtype and
    per-example shape (the batch dimension is dynamic). A token-id input has a dynamic
    sequence axis too (``length``: its name, up to ``shape[0]``), padded with ``pad_id``; a
    molecular graph's atom and bond blocks have a dynamic, unbounded axis 1 (``length`` set,
    ``pad_id`` None: :data:`~polytask.export.graphs.GRAPH_AXES`)."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    length: str | None = None
    pad_id: int | None = None

    @property
    def axes(self) -> list[str | int]:
        """The graph input's shape: ``batch``, then the length axis or fixed sizes."""
        if self.length is None:
            return ["batch", *self.shape]
        return ["batch", self.length, *self.shape[1:]]


class _Network(nn.Module):
    """``MultiTaskModel`` with positional inputs and a tuple of outputs (what the exporters
    trace). Inputs the table does not use (an empty numeric or categorical block) are built
    inside, so the graph has no zero-width input."""

    def __init__(
        self,
        predictor: Predictor,
        inputs: list[NetworkInput],
        absent: dict[str, torch.dtype],
        tasks: list[str],
    ) -> None:
        super().__init__()
        self.model = predictor.model
        self.keys = [i.key for i in inputs]
        self.absent = absent
        self.tasks = tasks
        self.conditioned = predictor.preference_conditioned

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        given = dict(zip(self.keys, tensors, strict=False))
        rows = tensors[0].shape[0]
        for key, dtype in self.absent.items():
            given[key] = tensors[0].new_zeros((rows, 0), dtype=dtype)
        if self.conditioned:
            # The preference rides along per row ([B, K]); batch_preference accepts that shape.
            self.model.preference = tensors[-1]
        try:
            out = self.model(given)
        finally:
            self.model.preference = None
        return tuple(out[t] for t in self.tasks)


def network_inputs(predictor: Predictor) -> tuple[list[NetworkInput], dict[str, torch.dtype]]:
    """The encoded tensors the network reads and the empty table blocks built inside it.

    Table: ``numeric`` float32 ``[B, D]`` and ``categorical`` int64 ``[B, C]`` (a zero-width
    block is built inside the graph instead). Other inputs: the processor's own output keys,
    dtypes and shapes, read from its transform of zero rows (images from the fitted shape);
    token ids (``[B, L]`` int64 of a text input) get a dynamic length axis. Sentences
    (``tokens``): ``words`` int64 ``[B, T]``, ``chars`` int16 ``[B, T, max_word_chars]`` (one
    dynamic axis :data:`WORDS_AXIS`, up to ``max_words``) and ``lengths`` int64 ``[B]``."""
    pre = predictor.preprocessor
    spec = predictor.input_spec
    if isinstance(pre, TablePreprocessor):
        blocks = [
            NetworkInput("numeric", torch.float32, (pre.numeric_width,)),
            NetworkInput("categorical", torch.int64, (len(pre.cardinalities),)),
        ]
        used = [b for b in blocks if b.shape[0] > 0]
        absent = {b.key: b.dtype for b in blocks if b.shape[0] == 0}
        return used, absent
    if spec.kind == "image":
        return [NetworkInput("image", torch.float32, tuple(spec.shape))], {}
    if isinstance(pre, TokensInput):
        # Words and their characters share one dynamic sentence axis (words past a sentence's
        # end are padding: id 0, no characters); lengths say where each sentence ends.
        p = pre.p
        return [
            NetworkInput("words", torch.int64, (p.max_words,), WORDS_AXIS, TOKENS_PAD_ID),
            NetworkInput(
                "chars", torch.int16, (p.max_words, p.max_word_chars), WORDS_AXIS, TOKENS_PAD_ID
            ),
            NetworkInput("lengths", torch.int64, ()),
        ], {}
    # Zero rows; a text processor encodes one empty text (a Hugging Face tokenizer cannot
    # encode an empty list).
    rows: list[object] = [""] if spec.kind == "text" else []
    try:
        empty = pre.transform(
            pd.DataFrame({c: pd.Series(rows, dtype=object) for c in pre.columns}), "export"
        )
    except Exception as exc:  # a processor that cannot encode these rows: say which
        raise PolytaskError(
            f"export: cannot derive the tensors of data.input '{pre.name}' ({exc})"
        ) from None
    pad = pad_id(predictor)
    inputs = []
    for k, v in empty.items():
        shape = tuple(v.shape[1:])
        # A width of 1 would be specialised by torch.export (0/1 sizes are): kept fixed.
        ids = pad is not None and v.dtype == torch.int64 and len(shape) == 1 and shape[0] > 1
        length = f"{k}_length" if ids else None
        if spec.kind == "graph":  # padded atoms or bonds: as many as the batch's largest
            length = GRAPH_AXES.get(k)
        inputs.append(NetworkInput(k, v.dtype, shape, length, pad if ids else None))
    return inputs, {}


def _examples(inputs: list[NetworkInput], n_tasks: int | None, rows: int = 3) -> tuple[Tensor, ...]:
    """Tensors to trace with: zeros (valid token ids, category codes and pixels alike);
    molecular graphs' blocks hold small graphs of different sizes (zeros would have no atom)."""
    graphs = example_blocks(rows) if any(i.key in GRAPH_AXES for i in inputs) else {}
    tensors = [graphs.get(i.key, torch.zeros((rows, *i.shape), dtype=i.dtype)) for i in inputs]
    if n_tasks is not None:
        tensors.append(torch.full((rows, n_tasks), 1.0 / n_tasks))
    return tuple(tensors)


def _reason(exc: BaseException) -> str:
    """One line on why an exporter failed: the underlying error (torch.onnx wraps it in a
    generic one), its first line, without terminal colour codes, at most 200 characters."""
    cause = exc.__cause__ or exc
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[0][:200] if lines else ''}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The dynamo exporter prints its progress and logs warnings about packages polytask
    does not use (torchvision): kept off the user's console."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def network_proto(
    predictor: Predictor, tasks: list[str], opset: int, exporter: Exporter = "auto"
) -> tuple[Any, list[NetworkInput], str]:
    """The network as an ``onnx.ModelProto`` with inputs ``net/<key>`` (and ``net/preference``
    for a conditioned model) and outputs ``net/<task>`` for ``tasks`` only (the heads of the
    other tasks are not traced, so not computed); the encoded inputs; and which exporter
    produced it (``dynamo`` or ``torchscript``)."""
    # onnx is an optional dependency (polytask[export]), imported only when exporting.
    import onnx

    inputs, absent = network_inputs(predictor)
    wrapper = _Network(predictor, inputs, absent, tasks).eval()
    n_tasks = len(predictor.tasks) if predictor.preference_conditioned else None
    examples = _examples(inputs, n_tasks)
    names = [NET + i.key for i in inputs] + ([NET + "preference"] if n_tasks else [])
    outputs = [NET + t for t in tasks]
    errors: list[str] = []
    recurrent = any(isinstance(m, nn.LSTM) for m in predictor.model.modules())
    if recurrent and exporter == "dynamo":
        raise PolytaskError(
            "export: the dynamo exporter unrolls an LSTM step by step, so the sentence length "
            "could not stay dynamic; use exporter = 'torchscript' or 'auto' (the default)"
        )
    # An LSTM goes straight to TorchScript, which writes one ONNX LSTM node over a dynamic
    # length (dynamo would spend minutes unrolling max_words steps, then fix the length).
    if exporter in ("auto", "dynamo") and not recurrent:
        try:
            batch = torch.export.Dim("batch")
            # One Dim per axis name: inputs that share a length axis share its symbol.
            lengths = {
                # Token ids: up to their padded width; graph atoms and bonds: unbounded.
                i.length: torch.export.Dim(
                    i.length, min=1, max=i.shape[0] if i.pad_id is not None else None
                )
                for i in inputs
                if i.length is not None
            }
            axes: list[dict[int, Any]] = [
                {0: batch} if i.length is None else {0: batch, 1: lengths[i.length]} for i in inputs
            ]
            axes += [{0: batch}] * (len(examples) - len(inputs))
            with _quiet():
                program = torch.onnx.export(
                    wrapper,
                    examples,
                    dynamo=True,
                    input_names=names,
                    output_names=outputs,
                    # forward(*tensors): one entry, the tuple of the positional tensors.
                    dynamic_shapes=(tuple(axes),),
                    opset_version=opset,
                    verbose=False,
                    report=False,
                )
            assert program is not None
            return program.model_proto, inputs, "dynamo"
        except Exception as exc:  # dynamo cannot capture every architecture: fall back
            errors.append(f"dynamo: {_reason(exc)}")
            if exporter == "dynamo":
                raise PolytaskError(f"export: the dynamo exporter failed ({errors[0]})") from None
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo; it is the fallback.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                examples,
                buffer,  # type: ignore[arg-type]  # (a file object works; the stub says path)
                dynamo=False,
                input_names=names,
                output_names=outputs,
                dynamic_axes={
                    **{n: {0: "batch"} for n in names + outputs},
                    **{NET + i.key: {0: "batch", 1: i.length} for i in inputs if i.length},
                },
                opset_version=opset,
            )
    except Exception as exc:
        errors.append(f"torchscript: {_reason(exc)}")
        raise PolytaskError(
            f"export: the network could not be exported ({'; '.join(errors)})"
        ) from None
    return onnx.load_from_string(buffer.getvalue()), inputs, "torchscript"
