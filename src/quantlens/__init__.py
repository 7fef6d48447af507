"""quantlens: layer-wise quantization analysis for PyTorch.

Quantize one layer at a time (its weights, input and output), keep the rest in float, and
measure what that layer alone does to the network's output and task metric
(Gluska & Grobman, arXiv 2012.08420).

Example:
    >>> import quantlens as ql                                          # doctest: +SKIP
    >>> result = ql.analyze(model, data, w_bits=range(3, 9), a_bits=8, metric="top1")
    >>> result.worst(bits=4, k=5)
"""

from .analysis import (
    Cell,
    LayerInfo,
    QuantlensWarning,
    Sweep,
    SweepResult,
    SweepState,
    analyze,
)
from .analysis.network.measure import quantize_network
from .config import PerChannel, PerGroup, PerTensor, QuantSpec, SweepConfig
from .errors import QuantlensError
from .graph import LayerGraph, capture
from .metrics import make_metric, metrics, register_metric
from .qconfig import LayerQuant, QuantConfig
from .workload import RunOptions, Workload

from ._version import __version__  # noqa: E402

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
        from .export.onnx import export_onnx

        return export_onnx
    if name == "verify_export":
        from .runtime import verify_export

        return verify_export
    raise AttributeError(f"module 'quantlens' has no attribute {name!r}")
