"""Quantize a model with onnxruntime's own tool, ``quantize_static``, for the convention checks.

The float model goes to ONNX with torch's exporter, through onnxruntime's ``quant_pre_process``
(shape inference and the basic graph optimizations that fold BatchNorm into the convolution),
then ``quantize_static`` with its defaults: QDQ format, MinMax calibration on ``calib``,
symmetric int8 (or INT4) weights, asymmetric uint8 activations, per-tensor unless
``per_channel``. That is what a user of onnxruntime does; ``quantlens verify --w-bits B
--convention onnxruntime`` then compares its result with quantlens's prediction.

Example:
    >>> path = ort_quantize_static(model, calib, "ort/", w_bits=4)      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Union

import torch
from torch import nn

from quantlens.data.batches import iterate
from quantlens.errors import QuantlensError
from quantlens.core.guard import preserve_model

__all__ = ["float_onnx", "ort_quantize_static"]


def float_onnx(model: nn.Module, sample: tuple, path: Union[str, os.PathLike]) -> Path:
    """The float ``model`` (a copy, eval mode) as ONNX with a dynamic batch."""
    import copy

    with preserve_model(model):
        m = copy.deepcopy(model).eval()
    batch = torch.export.Dim("batch", min=1)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(m, sample, str(path), dynamo=True, opset_version=21, input_names=[f"input_{i}" for i in range(len(sample))],
                              output_names=["output"], dynamic_shapes=tuple({0: batch} for _ in sample), external_data=False)
    finally:
        quiet.setLevel(level)
    return Path(path)


def ort_quantize_static(model: nn.Module, calib: Iterable[Any], out_dir: Union[str, os.PathLike], w_bits: int = 8,
                        per_channel: bool = False) -> Path:
    """``out_dir/model.onnx``: ``model`` quantized by ``onnxruntime.quantization.quantize_static`` (module docstring)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {8: QuantType.QInt8, 4: QuantType.QInt4}
    if w_bits not in types:
        raise QuantlensError(f"onnxruntime's quantize_static has int8 and int4 weights, not {w_bits} bits")
    batches = [tuple(t.detach().cpu() for t in getattr(x, "args", x)) for x, _ in iterate(calib, "calibration data")]
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    f32, pre, out = d / "float.onnx", d / "float.pre.onnx", d / "model.onnx"
    float_onnx(model, batches[0], f32)
    quant_pre_process(str(f32), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):  # noqa: ANN201
            b = next(self.it, None)
            return None if b is None else {f"input_{i}": t.numpy() for i, t in enumerate(b)}

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    weight_type=types[w_bits], activation_type=QuantType.QUInt8)
    return out
