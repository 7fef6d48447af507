"""Run exported (or tool-quantized) ONNX models in onnxruntime and check them against the simulation.

* :mod:`quantlens.runtime.ort`: sessions, input checks.
* :mod:`quantlens.runtime.verify`: :func:`verify_onnx` and :class:`VerifyResult` (``verify.json``).
* :func:`verify_export`: the whole check for a ``model.onnx`` written by ``quantlens export``.
* :mod:`quantlens.runtime.ct_check`: :func:`verify_compressed_tensors`, a compressed-tensors
  checkpoint in transformers against the simulation.
"""

from quantlens.runtime.verify import Comparison, VerifyResult, verify_onnx
from quantlens.runtime.export_check import verify_export
from quantlens.runtime.ct_check import verify_compressed_tensors

__all__ = ["VerifyResult", "Comparison", "verify_onnx", "verify_export", "verify_compressed_tensors"]
