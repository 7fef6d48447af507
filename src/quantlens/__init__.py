"""quantlens: layer-wise quantization analysis for PyTorch.

Quantize one layer at a time (its weights, input and output), keep the rest in float, and
measure what that layer alone does to the network's output and task metric
(Gluska & Grobman, arXiv 2012.08420).

Example:
    >>> import quantlens as ql                                          # doctest: +SKIP
    >>> result = ql.analyze(model, data, w_bits=range(3, 9), a_bits=8, metric="top1")
    >>> result.worst(bits=4, k=5)
"""

from quantlens.sweep.api import analyze
from quantlens.sweep.results import Cell, LayerInfo, SweepResult
from quantlens.engine.state import SweepState
from quantlens.engine.sweep import QuantlensWarning, Sweep
from quantlens.network.measure import quantize_network
from quantlens.quant.spec import PerChannel, PerGroup, PerTensor, QuantSpec
from quantlens.core.sweep_config import SweepConfig
from quantlens.errors import QuantlensError
from quantlens.graph import LayerGraph, capture
from quantlens.metrics.task import make_metric, metrics, register_metric
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.core.workload import RunOptions, Workload

from quantlens._version import __version__  # noqa: E402

__all__ = [
    "analyze",
    "Sweep",
    "SweepState",
    "SweepResult",
    "Cell",
    "LayerInfo",
    "QuantSpec",
    "SweepConfig",
    "PerTensor",
    "PerChannel",
    "PerGroup",
    "QuantlensError",
    "QuantlensWarning",
    "LayerGraph",
    "capture",
    "make_metric",
    "metrics",
    "register_metric",
    "QuantConfig",
    "LayerQuant",
    "quantize_network",
    "export_onnx",
    "verify_export",
    "Workload",
    "RunOptions",
    "__version__",
]


def __getattr__(name: str):  # the ONNX side (torch.onnx, onnxruntime) loads on first use
    if name == "export_onnx":
        from quantlens.export.onnx import export_onnx

        return export_onnx
    if name == "verify_export":
        from quantlens.runtime import verify_export

        return verify_export
    raise AttributeError(f"module 'quantlens' has no attribute {name!r}")
