"""Export a model directory as one ONNX graph with its preprocessing and decoding inside
(:func:`export_onnx`, ``polytask export``), and run such a file with onnxruntime in
:meth:`polytask.Predictor.predict`'s format (:class:`OnnxPredictor`).

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional (``pip install 'polytask[export]'``):
this package imports them only when a function needs them.
"""

from __future__ import annotations

from polytask.export.onnx_export import DEFAULT_OPSET, SUPPORTED_OPSETS, export_onnx
from polytask.export.runtime import OnnxPredictor

__all__ = ["DEFAULT_OPSET", "SUPPORTED_OPSETS", "OnnxPredictor", "export_onnx"]
