"""quantlens: layer-wise quantization analysis for PyTorch.

Quantize one layer at a time (its weights, input and output), keep the rest in float, and
measure what that layer alone does to the network's output and task metric
(Gluska & Grobman, arXiv 2012.08420).

The verbs match the CLI's commands: :func:`analyze` (the layers x bits sweep), :func:`measure`
(one whole-network configuration), :func:`additivity`, :func:`fix`, :func:`plan`,
:func:`export_onnx` and :func:`verify_export`. They take a :class:`Workload` (what is
measured) and :class:`RunOptions` (how it runs); the experiments take an
:class:`ExperimentSpec`. Engine internals (``Sweep``, ``SweepState``, ``LayerGraph``) live in
their modules (:mod:`quantlens.engine.sweep`, :mod:`quantlens.graph.layers`).

Example:
    >>> import quantlens as ql                                          # doctest: +SKIP
    >>> result = ql.analyze(model, data, w_bits=range(3, 9), a_bits=8, metric="top1")
    >>> result.worst(bits=4, k=5)
"""

from typing import TYPE_CHECKING

from quantlens._version import __version__
from quantlens.core.experiment import ExperimentSpec
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.core.sweep_config import SweepConfig
from quantlens.core.workload import RunOptions, Workload
from quantlens.errors import QuantlensError, QuantlensWarning
from quantlens.experiments.additivity import AdditivityResult
from quantlens.experiments.additivity import run_additivity as additivity
from quantlens.experiments.fixloop import FixResult, fix
from quantlens.experiments.plan import PlanResult
from quantlens.experiments.plan import run_plan as plan
from quantlens.fixes import fixes, register_fix
from quantlens.metrics import make_metric, metrics, register_metric
from quantlens.network.measure import NetworkResult, measure
from quantlens.quant.formats import Format, formats, get_format, register_format
from quantlens.quant.ranges import estimators, register_estimator
from quantlens.quant.spec import PerChannel, PerGroup, PerTensor, QuantSpec
from quantlens.stats.measurement import Measurement
from quantlens.sweep.api import analyze
from quantlens.sweep.methods import Adaptive, Estimate, Exact
from quantlens.sweep.results import Cell, LayerInfo, SweepResult

if TYPE_CHECKING:
    import torch

__all__ = [
    # verbs
    "fake_quantize", "analyze", "measure", "additivity", "fix", "plan", "export_onnx", "verify_export",
    # what a user builds
    "Workload", "RunOptions", "SweepConfig", "ExperimentSpec", "QuantSpec", "PerTensor", "PerChannel", "PerGroup",
    "QuantConfig", "LayerQuant", "Exact", "Adaptive", "Estimate",
    # what a user gets back
    "SweepResult", "Cell", "LayerInfo", "Measurement", "NetworkResult", "AdditivityResult", "FixResult", "PlanResult",
    # registration hooks and what is registered
    "register_metric", "register_estimator", "register_fix", "register_format", "metrics", "estimators", "fixes", "formats",
    "get_format", "Format", "make_metric",
    "QuantlensError", "QuantlensWarning", "__version__",
]


def fake_quantize(tensor: "torch.Tensor", format: "str | Format") -> "torch.Tensor":
    """``tensor`` quantized and dequantized in ``format`` (a name of :func:`formats` or a
    :class:`Format`), as a weight: axis 0 is the output axis, the flattened rest the reduction
    axis; in the input's dtype, computed in float32. A block that does not divide the reduction
    axis is padded with zeros (:mod:`quantlens.quant.padded`), as the sweep does.

    Example:
        >>> import torch
        >>> fake_quantize(torch.tensor([[1.25, 1.75, -3.0, 6.0] * 8]), "mxfp4")[0, :4].tolist()  # ties to even
        [1.0, 2.0, -3.0, 6.0]
    """
    from quantlens.quant.padded import quantize_padded

    return quantize_padded(tensor, format, "weight")


def __getattr__(name: str):  # the ONNX side (torch.onnx, onnxruntime) loads on first use
    if name == "export_onnx":
        from quantlens.export.onnx import export_onnx

        return export_onnx
    if name == "verify_export":
        from quantlens.runtime import verify_export

        return verify_export
    raise AttributeError(f"module 'quantlens' has no attribute {name!r}")
