"""The runtimes a server predicts with: the PyTorch Predictor itself, or onnxruntime.

Both take the frame the request schema builds and return the Predictor's prediction columns,
so the HTTP layer does not know which one runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from polytask.errors import PolytaskError
from polytask.export import OnnxPredictor, export_onnx
from polytask.run.predictor import Predictor
from polytask.serve.batcher import PredictFn, Predictions, Records, Rows
from polytask.serve.schema import task_columns

Runtime = Literal["torch", "onnx"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx")


def torch_runtime(predictor: Predictor) -> PredictFn:
    """Predictions by the Predictor: JSON records through :meth:`Predictor.predict_records`
    (the few-row fast path, no DataFrame either way), a CSV body's frame (or records naming a
    task-indexed model's task column, answered row by row with the row's own task) through
    :meth:`Predictor.predict`."""
    indexed = set(task_columns(predictor))

    def predict(rows: Rows, tasks: list[str] | None, preference: list[float] | None) -> Predictions:
        if isinstance(rows, Records):
            if not indexed.intersection(rows.extra):
                return predictor.predict_records(
                    rows.rows, tasks, source="request body", preference=preference
                )
            rows = rows.to_frame()
        return predictor.predict(rows, tasks, source="request body", preference=preference)

    return predict


def onnx_runtime(predictor: Predictor, workdir: Path) -> PredictFn:
    """Predictions by onnxruntime from the model exported to ``workdir`` at start-up (the
    export is checked there, so a model the exporter cannot translate fails before serving)."""
    path = export_onnx(predictor, workdir / "model.onnx")
    # The thread budget the torch runtime has in this process (not onnxruntime's default of
    # every core, spinning between requests).
    session = OnnxPredictor(path, threads=torch.get_num_threads())
    # The graph returns every task's decoded outputs; a task-indexed model's answer of each
    # row's own task is the Predictor's (torch runtime) alone, so it is refused, not faked.
    indexed = task_columns(predictor)

    def predict(rows: Rows, tasks: list[str] | None, preference: list[float] | None) -> Predictions:
        frame = rows.to_frame() if isinstance(rows, Records) else rows
        sent = [c for c in indexed if c in frame.columns]
        if sent and not tasks:
            raise PolytaskError(
                f"records: '{sent[0]}' asks for each row's own task, which the ONNX runtime "
                "does not answer; leave it out for every task's output, or serve with "
                "--runtime torch"
            )
        return session.predict(frame, tasks, source="request body", preference=preference)

    return predict


def build_runtime(runtime: str, predictor: Predictor, workdir: Path) -> PredictFn:
    """The prediction function of ``runtime`` for the loaded ``predictor``."""
    if runtime == "torch":
        return torch_runtime(predictor)
    if runtime == "onnx":
        return onnx_runtime(predictor, workdir)
    raise PolytaskError(f"unknown runtime {runtime!r}; valid choices: {', '.join(RUNTIMES)}")
