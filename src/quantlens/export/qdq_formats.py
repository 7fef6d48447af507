"""Named formats in the QDQ model: which ONNX storage each format gets, its codes and scales.

* weights: ``int{b}`` (``b <= 8``), ``int{b}-channel`` and ``int{b}-g{N}`` (a Linear's or 1x1
  convolution's weight, ``N`` dividing its input width) as INT4 / INT8 codes with the format's
  scales (``s = amax / (2^(b-1) - 1)`` per scope); ``fp8-e4m3`` / ``fp8-e5m2`` per tensor or
  ``-channel`` as FLOAT8E4M3FN / FLOAT8E5M2 codes with ``s = amax / max``; ``bf16`` / ``fp16`` as
  their rounded values in float32;
* activations: ``fp8-e4m3`` / ``fp8-e5m2`` with a static per-tensor scale, as
  QuantizeLinear/DequantizeLinear to FLOAT8 (:class:`ActFP8QDQ`);
* MX, NVFP4, FP8's 128x128 tiles and activation formats with per-batch scales have no
  DequantizeLinear layout: refused in one line that says what onnx-qdq holds (:data:`HOLDS`).

Each code is recovered from the simulated weight (``round(W_q / s)``, or ``e4m3(W_q / s)``) and
checked to give ``W_q`` back as ``fl(q * s)``, the product DequantizeLinear computes.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from quantlens.engine.build import QuantizedNetwork
from quantlens.errors import QuantlensError
from quantlens.quant.formats import ELEMENTS, Format, cast_to_element, get_format
from quantlens.quant.quantizer import ActQuantizer
from quantlens.quant.scopes import scope_rows

# registers torch.ops.quantized_decomposed; must happen before the ONNX exporter builds its op registry
import torch.ao.quantization.fx._decomposed  # noqa: E402,F401

__all__ = ["HOLDS", "FP8_STORAGE", "act_format", "format_layout", "format_codes", "ActFP8QDQ"]

#: What onnx-qdq holds, for the one-line refusals.
HOLDS = ("int2..int8 weights (per tensor, per channel, or groups along a Linear's input), fp8-e4m3 / fp8-e5m2 weights and "
         "activations (per tensor; weights also -channel), uint8 activations, and float (bf16/fp16 values kept in float32)")
#: The ONNX storage of each FP8 element (OCP E4M3 is ONNX's FLOAT8E4M3FN: finite, max 448).
FP8_STORAGE = {"e4m3": "float8e4m3fn", "e5m2": "float8e5m2"}


def act_format(name: str, lq: Any) -> Optional[str]:
    """The layer's activation format if onnx-qdq can hold it (FP8 with a static per-tensor scale); one line if not."""
    fmt = lq.act.format if lq.act is not None else None
    if fmt is None:
        return None
    f = get_format(fmt)
    if f.family == "fp8" and f.scope == "tensor":
        return f.name
    raise QuantlensError(f"layer {name}: {f.name} activations (scales computed from each batch) cannot go to onnx-qdq, which holds "
                         f"{HOLDS}; use --a-format fp8-e4m3 or int8 for this layer, or --keep-float {name}")


def format_layout(name: str, f: Format, w: Tensor, int4: bool) -> tuple[Optional[str], Optional[int], Optional[int]]:
    """``(storage, axis, block_size)`` of a weight in the named format ``f``; one line for what onnx-qdq cannot hold."""
    refuse = f"layer {name}: {f.name} weights cannot go to onnx-qdq"
    if f.family == "float":
        return None, None, None  # its rounded values, kept in float32
    if f.family == "int" and f.bits <= 8:
        storage = "int4" if (int4 and f.bits <= 4) else "int8"
        if f.scope == "tensor":
            return storage, None, None
        if f.scope == "row":
            return storage, 0, None
        kernel = 1
        for d in w.shape[2:]:
            kernel *= int(d)
        if w.dim() < 2 or kernel != 1:
            raise QuantlensError(f"{refuse}: its groups of {f.block} run along the flattened in x kernel axis, which a "
                                 f"DequantizeLinear block (along the input channels) cannot hold; use int{f.bits}-channel, "
                                 f"or --granularity per-group-{f.block}, or --keep-float {name}")
        if w.shape[1] % f.block:
            raise QuantlensError(f"{refuse}: its input width {w.shape[1]} is not a multiple of the group of {f.block} (the "
                                 f"simulation pads the last group; onnx-qdq does not): use int{f.bits}-channel or --keep-float {name}")
        return storage, 1, f.block
    if f.family == "fp8" and f.scope in ("tensor", "row"):
        return FP8_STORAGE[f.element], (0 if f.scope == "row" else None), None
    raise QuantlensError(f"{refuse}, which holds {HOLDS}; choose one of those formats for this layer, or --keep-float {name}")


def format_codes(qnet: QuantizedNetwork, name: str, f: Format) -> tuple[Tensor, Tensor]:
    """The codes and per-scope scales of a weight in an integer or FP8 format: the scale is the
    format kernel's (``amax / qmax`` or ``amax / max_elem`` in float32 from the layer's float
    weight, 1 where it is 0), the codes ``W_q / s`` (checked to give ``W_q`` back bit for bit)."""
    wq = qnet.weights[name].weight
    w = qnet.graph.module(qnet.graph.layer(name)).weight.detach().float()
    rows, _ = scope_rows(w, f)
    qrows, _ = scope_rows(wq, f)
    amax = rows.abs().amax(dim=1, keepdim=True)
    if f.family == "int":
        scale = amax / float(2 ** (f.bits - 1) - 1)
        ok = (scale > 0) & torch.isfinite(1.0 / scale)
    else:
        scale = amax / torch.full((), ELEMENTS[f.element].max)
        ok = scale > 0
    scale = torch.where(ok, scale, torch.ones_like(scale))
    # W_q = fl(q * s): dividing back lands within a rounding of q, which the element's grid recovers
    q = torch.round(qrows / scale) if f.family == "int" else cast_to_element(qrows / scale, ELEMENTS[f.element])
    if not torch.equal(q * scale, qrows):  # the codes must reproduce the simulated weight exactly
        raise AssertionError(f"layer {name}: the {f.name} codes do not reproduce the simulated weights")
    codes = q.reshape(wq.shape)
    return (codes.to(torch.int8) if f.family == "int" else codes), scale.reshape(-1)


class ActFP8QDQ(nn.Module):
    """``DequantizeLinear(QuantizeLinear(x, s, zero_fp8), s)`` on FLOAT8E4M3FN / FLOAT8E5M2, static per-tensor ``s``.

    In torch it computes the simulation's ``cast(x / s) * s`` (round half to even, saturating);
    exporting, torch's decomposed ops (which round to integers in torch, but are written as
    QuantizeLinear/DequantizeLinear with an FP8 zero point) carry it into the graph.
    """

    def __init__(self, q: ActQuantizer) -> None:
        super().__init__()
        self.q = q
        self.s = float(q.scale)
        self.dtype = torch.float8_e4m3fn if get_format(str(q.format)).element == "e4m3" else torch.float8_e5m2
        self.fmax = int(ELEMENTS[get_format(str(q.format)).element].max)  # 448, 57344: the ops take integer bounds
        self.exporting = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.exporting:
            return self.q(x)
        qd = torch.ops.quantized_decomposed
        q = qd.quantize_per_tensor(x, self.s, 0, -self.fmax, self.fmax, self.dtype)
        return qd.dequantize_per_tensor(q, self.s, 0, -self.fmax, self.fmax, self.dtype)
