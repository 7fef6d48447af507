"""The runtime check of a model written by ``quantlens export`` (its ``export.json`` says how).

The simulation is rebuilt from the config the export recorded (the saved fixed weights and
activation ranges, the same ``--keep-float`` layers), so that the comparison is between the
same quantized network run two ways. ``recorded_metric`` is the metric that ``fix`` (its
``local`` row) or ``plan`` (its measured plan) wrote for that config, when the export kept
no layer in float.

Example:
    >>> r = verify_export("run/onnx/model.onnx", model, data)      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from torch import nn

from quantlens.core import jsonio
from quantlens.errors import QuantlensError
from quantlens.core.guard import preserve_model
from quantlens.metrics.task import Metric
from quantlens.runtime.verify import VerifyResult, verify_onnx

__all__ = ["verify_export", "read_export_info"]


def read_export_info(onnx_path: Union[str, os.PathLike]) -> Optional[dict]:
    """``export.json`` beside ``onnx_path``, or None (a model quantized by another tool)."""
    p = Path(onnx_path).parent / "export.json"
    if not p.is_file():
        return None
    from quantlens.export.onnx import EXPORT_SCHEMA

    return jsonio.load(p, EXPORT_SCHEMA, "export record")


def verify_export(
    onnx_path: Union[str, os.PathLike],
    model: nn.Module,
    data: Iterable[Any],
    *,
    metric: Union[str, Callable[..., Any], Metric] = "top1",
    calib: Optional[Iterable[Any]] = None,
    output_key: Union[str, int, None] = None,
) -> VerifyResult:
    """Compare ``onnx_path`` (from ``quantlens export``) in onnxruntime with its simulation and the float ``model``."""
    from quantlens.export.rebuild import load_quantized

    info = read_export_info(onnx_path)
    if info is None:
        raise QuantlensError(f"{Path(onnx_path).parent / 'export.json'} is missing: for a model quantized by another tool, "
                             "give --w-bits (and --convention) so that quantlens can predict it")
    src = info.get("source_config")
    if not src or not Path(src).exists():
        raise QuantlensError(f"the config this model was exported from ({src}) is gone: export it again")
    key = output_key if output_key is not None else info.get("output_key")
    qnet, _ = load_quantized(model, src, calib=calib, keep_float=info.get("keep_float", []), data=data)
    recorded = None
    if not info.get("keep_float"):
        raw = json.loads(Path(src if not Path(src).is_dir() else Path(src) / "quant_config.json").read_text(encoding="utf-8"))
        for k in ("local", "measured_metric"):
            if isinstance(raw.get(k), (int, float)):
                recorded = float(raw[k])
    with preserve_model(model):
        reference = copy.deepcopy(model).eval()

    def simulate(inputs: Any) -> Any:
        return qnet.graph.output(qnet.gm(*qnet.graph.flat(inputs))[0])

    return verify_onnx(onnx_path, lambda inputs: inputs.call(reference), data, simulate, feeds=qnet.graph.flat, metric=metric, output_key=key, recorded_metric=recorded,
                       source="export", extra={"onnx": str(onnx_path), "config": info.get("config"), "keep_float": info.get("keep_float", [])})
