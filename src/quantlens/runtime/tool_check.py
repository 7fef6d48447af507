"""The runtime check of a model quantized by the runtime's own tool (not exported by quantlens).

quantlens predicts it by measuring the same network quantized under the tool's convention
(:mod:`quantlens.quant.conventions`): every layer at ``w_bits`` weights and ``a_bits``
activations, ranges calibrated on ``calib`` as the tool does (MinMax). The comparison is
then :func:`quantlens.runtime.verify.verify_onnx`'s: the tool's model in onnxruntime, the
prediction, the float model.

Example:
    >>> r = verify_tool_model("ort/model.onnx", model, data, w_bits=4, convention="onnxruntime", calib=calib)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Iterable, Optional, Union

from torch import nn

from quantlens.network.measure import NetworkMeasurer
from quantlens.core.workload import Workload
from quantlens.quant.spec import check_bits
from quantlens.core.guard import preserve_model
from quantlens.metrics.task import Metric
from quantlens.core.layer_config import QuantConfig
from quantlens.runtime.verify import VerifyResult, verify_onnx

__all__ = ["verify_tool_model"]


def verify_tool_model(
    onnx_path: Union[str, os.PathLike],
    model: nn.Module,
    data: Iterable[Any],
    *,
    w_bits: int,
    a_bits: Union[int, str, None] = 8,
    granularity: str = "per-tensor",
    convention: str = "onnxruntime",
    metric: Union[str, Callable[..., Any], Metric] = "top1",
    calib: Optional[Iterable[Any]] = None,
    output_key: Union[str, int, None] = None,
) -> VerifyResult:
    """Compare a tool-quantized ONNX model with quantlens's prediction under ``convention`` (module docstring)."""
    from quantlens.quant.spec import parse_a_bits

    check_bits(w_bits, "--w-bits")
    a = parse_a_bits(str(a_bits)) if not isinstance(a_bits, int) else a_bits
    m = NetworkMeasurer(Workload(model, data, calib, metric, output_key=output_key))
    cfg = QuantConfig.uniform(m.names, w_bits, a, granularity, convention=convention)
    qnet = m.build(cfg)
    with preserve_model(model):
        reference = copy.deepcopy(model).eval()

    def simulate(inputs: Any) -> Any:
        return qnet.graph.output(qnet.gm(*qnet.graph.flat(inputs))[0])

    return verify_onnx(onnx_path, lambda inputs: inputs.call(reference), data, simulate, metric=metric, output_key=output_key, source=f"tool ({convention})",
                       extra={"onnx": str(onnx_path), "config": cfg.to_dict(), "convention": convention})
