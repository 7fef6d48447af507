"""Quantizer conventions: the integer grid and scale rule each tool uses, so that quantlens predicts it.

A :class:`Convention` (frozen, registered by name) says, for ``b`` bits:

* weights (symmetric, zero point 0): the integer range and the scale rule,
  ``scale = max|w| / qmax`` or, "half range", ``scale = max|w| / ((qmax - qmin) / 2)``;
* activations: symmetric or not, full or reduced range (``[0, 2^(b-1) - 1]``);
* the default weight granularity and its per-channel axis (the output channel in every tool
  here, axis 0 of a PyTorch weight), and which tensors the tool quantizes.

==============  =====================================  ========================  ==============
convention      weights (8 bits / 4 bits)               activations               default
==============  =====================================  ========================  ==============
``quantlens``   [-128,127] max/127 / [-8,7] max/7       uint8 [0,255] asymmetric  per-tensor
``onnxruntime`` [-127,127] max/127 / [-8,7] max/7.5     uint8 [0,255] asymmetric  per-tensor
``tflite``      [-127,127] max/127 / [-7,7] max/7       int8 asymmetric (=uint8)  per-channel
``torch-ao``    [-128,127] max/127.5 / [-8,7] max/7.5   uint8 [0,127] (reduced)   per-channel
==============  =====================================  ========================  ==============

onnxruntime: ``quantize_static`` defaults (QDQ, ``WeightSymmetric``, MinMax calibration): int8
and int16 weights use the symmetric range ``[-127, 127]`` / ``[-32767, 32767]``, every other
type its full range, always with ``scale = 2 max|w| / (qmax - qmin)``
(``onnxruntime.quantization.quant_utils.compute_scale_zp``). torch.ao: the ``x86`` default qconfig
(``per_channel_symmetric`` qint8 weights, ``reduce_range`` uint8 activations;
``torch.ao.quantization.observer``). TFLite: int8 weights narrow-range symmetric per output
channel, int8 asymmetric activations (the uint8 grid shifted by 128, the same values).

Tested against the tools that install here: ``onnxruntime.quantization.quantize_static`` and
torch.ao's observers (tests/quant/test_conventions.py).

Example:
    >>> get_convention("onnxruntime").grid(4, symmetric=True)
    (-8, 7, True)
    >>> get_convention("tflite").grid(8, symmetric=True)
    (-127, 127, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from quantlens.errors import QuantlensError

__all__ = ["Convention", "register_convention", "conventions", "get_convention"]


@dataclass(frozen=True)
class Convention:
    """One tool's quantizer details (see module docstring)."""

    name: str
    tool: str
    weight_grid: Callable[[int], tuple[int, int, bool]]  # bits -> (qmin, qmax, half_range)
    act_reduced: bool = False
    act_symmetric: bool = False
    granularity: str = "per-tensor"
    channel_axis: int = 0
    quantized: str = "layer inputs, weights and outputs"

    def grid(self, bits: int, symmetric: bool) -> tuple[int, int, bool]:
        """``(qmin, qmax, half_range)`` of a symmetric (weight) or asymmetric (activation) tensor at ``bits``."""
        if symmetric:
            return self.weight_grid(bits)
        top = 2 ** (bits - 1) - 1 if self.act_reduced else 2**bits - 1
        return 0, top, False

    def describe(self) -> str:
        w8, w4 = self.weight_grid(8), self.weight_grid(4)

        def rule(g: tuple[int, int, bool]) -> str:
            d = (g[1] - g[0]) / 2 if g[2] else g[1]
            return f"[{g[0]},{g[1]}] max/{d:g}"

        act = "uint8 [0,127] (reduced range)" if self.act_reduced else "uint8 [0,255]"
        return f"{self.tool}: weights 8b {rule(w8)}, 4b {rule(w4)}; activations {act}; default {self.granularity}; quantizes {self.quantized}"


_REGISTRY: dict[str, Convention] = {}


def register_convention(c: Convention) -> Convention:
    _REGISTRY[c.name] = c
    return c


def conventions() -> list[str]:
    """Names of the registered conventions."""
    return sorted(_REGISTRY)


def get_convention(name: str) -> Convention:
    if name not in _REGISTRY:
        raise QuantlensError(f"unknown convention {name!r}: choose one of {', '.join(conventions())}")
    return _REGISTRY[name]


def _full(bits: int) -> tuple[int, int, bool]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, False


def _full_half(bits: int) -> tuple[int, int, bool]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, True


def _narrow(bits: int) -> tuple[int, int, bool]:
    return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, False


def _onnxruntime(bits: int) -> tuple[int, int, bool]:
    # ONNX_INT_TYPE_SYMMETRIC_RANGE has INT8 and INT16 only; INT4 (and anything else) keeps its full range
    if bits in (8, 16):
        lo, hi, _ = _narrow(bits)
        return lo, hi, True  # 2 max / (hi - lo) == max / hi here
    return _full_half(bits)


register_convention(Convention("quantlens", "quantlens", _full))
register_convention(Convention("onnxruntime", "onnxruntime quantize_static (QDQ, MinMax)", _onnxruntime,
                               quantized="inputs and outputs of Conv/Gemm/MatMul and of Add/Concat/pooling (QDQ on every "
                                         "tensor between quantizable ops); weights; bias as int32"))
register_convention(Convention("tflite", "TFLite int8 converter", _narrow, granularity="per-channel",
                               quantized="every tensor of an int8 graph; bias as int32"))
register_convention(Convention("torch-ao", "torch.ao x86 default qconfig", _full_half, act_reduced=True, granularity="per-channel",
                               quantized="inputs and outputs of quantized modules; bias float"))
