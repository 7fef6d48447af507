"""onnxruntime sessions for ``quantlens verify``: load, check the data's inputs, run.

Two sessions of the same file are compared:

* ``optimized`` (``ORT_ENABLE_ALL``, what an application gets): onnxruntime fuses
  ``DequantizeLinear -> Conv -> QuantizeLinear`` into integer kernels (``QLinearConv``,
  ``QGemm``, ``QLinearAdd``, ...) that accumulate in int32 and requantize with their own
  rounding, and folds activations (Relu, Clip) into the output range;
* ``plain`` (``ORT_DISABLE_ALL``): every QuantizeLinear/DequantizeLinear runs as written,
  in float, which is the simulation's arithmetic up to float summation order and
  QuantizeLinear dividing by the scale where the simulation multiplies by its reciprocal.

Example:
    >>> s = RuntimeSession("run/onnx/model.onnx")          # doctest: +SKIP
    >>> y = s.run((x,))                                    # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from quantlens.errors import QuantlensError

__all__ = ["RuntimeSession", "FUSED_OPS"]

FUSED_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
             "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger")

_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
       "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_}


class RuntimeSession:
    """An onnxruntime CPU session of ``path`` at ``optimized`` (all graph optimizations) or plain level."""

    def __init__(self, path: Union[str, os.PathLike], optimized: bool = True) -> None:
        from quantlens.export.onnx import check_onnx_available

        check_onnx_available()
        import onnxruntime as ort

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise QuantlensError(f"--onnx {self.path}: no such file")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self._optimized_path = ""
        if optimized:  # onnxruntime writes the graph it runs, for op_counts()
            fd, self._optimized_path = tempfile.mkstemp(suffix=".onnx")
            os.close(fd)
            so.optimized_model_filepath = self._optimized_path
        try:
            self.session = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            if self._optimized_path:
                os.unlink(self._optimized_path)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise QuantlensError(f"onnxruntime cannot load {self.path}: {first}") from None
        self.inputs = list(self.session.get_inputs())
        self.optimized = optimized

    def op_counts(self) -> dict[str, int]:
        """Node types of the graph onnxruntime runs (after its optimizations), with counts."""
        import onnx

        if not self._optimized_path:
            return {}
        try:
            g = onnx.load(self._optimized_path).graph
        except Exception:  # pragma: no cover - the runtime could not serialize its graph
            return {}
        finally:
            if os.path.exists(self._optimized_path):
                os.unlink(self._optimized_path)
        return dict(sorted(Counter(n.op_type for n in g.node).items()))

    def check_inputs(self, inputs: Sequence[Tensor], batch: int = 0) -> None:
        """One line if the batch's tensors do not match the model's inputs (count, rank, fixed sizes)."""
        want = self.inputs
        if len(inputs) != len(want):
            raise QuantlensError(f"data batch {batch} has {len(inputs)} input tensor(s); the ONNX model takes {len(want)} "
                                 f"({', '.join(i.name for i in want)})")
        for t, w in zip(inputs, want):
            shape = list(w.shape)
            ok = t.dim() == len(shape) and all(not isinstance(d, int) or d == s for d, s in zip(shape, t.shape))
            if not ok:
                dims = ", ".join(str(d) if isinstance(d, int) else "N" for d in shape)
                raise QuantlensError(f"data batch {batch}: input {w.name!r} has shape {tuple(t.shape)}, the ONNX model expects "
                                     f"[{dims}]: give --data whose inputs match the exported model")

    def run(self, inputs: Sequence[Tensor], batch: int = 0) -> Tensor:
        """The model's first output for one batch (a float32 CPU tensor)."""
        self.check_inputs(inputs, batch)
        feeds = {w.name: t.detach().cpu().numpy().astype(_NP.get(w.type, np.float32), copy=False) for t, w in zip(inputs, self.inputs)}
        try:
            out = self.session.run(None, feeds)[0]
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise QuantlensError(f"onnxruntime failed on data batch {batch}: {first}") from None
        return torch.from_numpy(np.asarray(out, dtype=np.float32))
