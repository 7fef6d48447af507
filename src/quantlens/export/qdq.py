"""The quantized network as torch modules whose ONNX export is QuantizeLinear/DequantizeLinear.

:func:`qdq_module` turns a :class:`~quantlens.engine.build.QuantizedNetwork` (the
simulation) into a module that computes the same values with ops that torch's ONNX exporter
writes as QDQ pairs:

* each activation quantizer ``(clamp(round(x/s) + z, 0, 255) - z) * s`` becomes
  ``quantized_decomposed.quantize_per_tensor`` + ``dequantize_per_tensor`` (QuantizeLinear
  + DequantizeLinear, uint8, the same scale and zero point), on the same edge;
* each quantized weight becomes its codes ``q = W_q / s`` (integers, or FP8 element values) and a
  ``dequantize_per_tensor(q, 1.0)`` placeholder; :mod:`quantlens.export.onnx` then gives that
  DequantizeLinear its real scale (per-tensor, per-channel ``axis=0``, or per-group via
  ``block_size`` on axis 1) and stores 4-bit (or narrower) integers as INT4, FP8 codes as
  FLOAT8E4M3FN / FLOAT8E5M2;
* an ``fp8-e4m3`` / ``fp8-e5m2`` activation quantizer (static per-tensor scale) becomes
  QuantizeLinear/DequantizeLinear to FLOAT8E4M3FN / FLOAT8E5M2 with ``saturate=1``: onnxruntime
  divides by the scale and rounds half to even onto the element, saturating, as the simulation does.

Weights in named formats (:mod:`quantlens.quant.formats`): ``int{b}`` (``b <= 8``),
``int{b}-channel`` and ``int{b}-g{N}`` (a Linear's or 1x1 convolution's weight, ``N`` dividing
the input width) are integers with the format's scales (``s = amax / (2^(b-1) - 1)`` per scope);
``fp8-e4m3`` / ``fp8-e5m2`` per tensor or ``-channel`` are FP8 codes with ``s = amax / max``;
``bf16`` / ``fp16`` are their rounded values stored in float32. The block formats with a scale per
16 or 32 values in E8M0 / E4M3 (``mxfp*``, ``nvfp4``) and FP8's 128x128 tiles have no
DequantizeLinear layout here: refused in one line that says what onnx-qdq holds.

:func:`layer_formats` decides per layer how the weights are stored, and refuses what the
format cannot hold with one line naming the layer and what would work.

Example:
    >>> formats = layer_formats(qnet)                 # doctest: +SKIP
    >>> module = qdq_module(qnet, formats)            # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from quantlens.data.batches import extract_output
from quantlens.engine.build import QuantizedNetwork
from quantlens.quant.spec import PerChannel, PerGroup
from quantlens.errors import QuantlensError
from quantlens.engine.cone import QuantLayer, layer_forward
from quantlens.export.qdq_formats import FP8_STORAGE, HOLDS, ActFP8QDQ, act_format, format_codes, format_layout
from quantlens.quant.formats import get_format
from quantlens.quant.quantizer import ActQuantizer, group_size, weight_rows

# registers torch.ops.quantized_decomposed; must happen before the ONNX exporter builds its op registry
import torch.ao.quantization.fx._decomposed  # noqa: E402,F401

__all__ = ["LayerFormat", "layer_formats", "qdq_module", "weight_integers", "ACT_BITS", "HOLDS", "FP8_STORAGE"]

ACT_BITS = 8  # activations go to uint8 QuantizeLinear



def _decomposed() -> Any:
    return torch.ops.quantized_decomposed


@dataclass(frozen=True)
class LayerFormat:
    """How one layer goes into the QDQ model.

    ``storage``: ``int8`` or ``int4`` weight integers, ``float8e4m3fn`` / ``float8e5m2`` FP8
    codes (``None``: float weights); ``axis``/``block_size``: the DequantizeLinear attributes
    (``None``: per-tensor); ``a_bits``: 8 (QDQ on the input edge and after the activation) or
    ``None`` (float); ``format`` / ``a_format``: the layer's named weight / activation format, if any.
    """

    layer: str
    index: int
    w_bits: Optional[int]
    storage: Optional[str]
    granularity: str
    axis: Optional[int]
    block_size: Optional[int]
    a_bits: Optional[int]
    format: Optional[str] = None
    a_format: Optional[str] = None

    def to_dict(self) -> dict:
        d = {"w_bits": self.w_bits, "storage": self.storage, "granularity": self.granularity, "axis": self.axis,
             "block_size": self.block_size, "a_bits": self.a_bits}
        if self.format is not None:
            d["format"] = self.format
        if self.a_format is not None:
            d["a_format"] = self.a_format
        return d


def layer_formats(qnet: QuantizedNetwork, int4: bool = True) -> dict[str, LayerFormat]:
    """Each configured layer's storage; raises a one-line error for what ``onnx-qdq`` cannot hold."""
    out: dict[str, LayerFormat] = {}
    for name, lq in qnet.config.layers:
        layer = qnet.graph.layer(name)
        a_format = act_format(name, lq)
        if a_format is None and lq.a_bits is not None and lq.a_bits != ACT_BITS:
            raise QuantlensError(f"layer {name}: {lq.a_bits}-bit activations cannot go to onnx-qdq, which holds 8-bit "
                                 f"(uint8) or float activations; use --a-bits 8, or 16 (float), or --keep-float {name}")
        act = lq.act_spec()
        if a_format is None and act is not None and (act.qmin, act.qmax) != (0, 255):
            raise QuantlensError(f"layer {name}: activations on [{act.qmin}, {act.qmax}] (the {lq.convention} convention) cannot go "
                                 "to uint8 QuantizeLinear, which saturates at [0, 255]; export a config made with --convention "
                                 "quantlens or onnxruntime")
        fmt = lq.weight.format if lq.weight is not None else None
        if fmt is None and lq.w_bits is not None and lq.w_bits > 8:
            raise QuantlensError(f"layer {name}: {lq.w_bits}-bit weights cannot go to onnx-qdq, which holds 2..8-bit "
                                 f"weights (int8/int4) or float (16 bits); use --w-bits 8, or --keep-float {name}")
        w = qnet.graph.module(layer).weight
        storage, axis, block = (None, None, None)
        if fmt is not None:
            storage, axis, block = format_layout(name, get_format(fmt), w, int4)
        elif lq.w_bits is not None:
            storage = "int4" if (int4 and lq.w_bits <= 4) else "int8"
            g = lq.granularity
            if isinstance(g, PerChannel):
                axis = 0
            elif isinstance(g, PerGroup):
                gs = group_size(w, lq.weight_spec())  # type: ignore[arg-type]
                if gs is None or gs == w.shape[1]:
                    axis = 0  # one group per output channel: per-channel
                else:
                    axis, block = 1, gs
        if qnet.graph.shared(layer) and storage is not None:
            raise QuantlensError(f"layer {name}: its module is called more than once; onnx-qdq export needs one weight per "
                                 f"layer: --keep-float {layer.module_name}")
        out[name] = LayerFormat(name, layer.index, lq.w_bits, storage, fmt or str(lq.granularity), axis, block, lq.a_bits, fmt, a_format)
    return out


def weight_integers(qnet: QuantizedNetwork, name: str) -> tuple[Tensor, Tensor]:
    """``(q, scale)`` with ``q * scale == W_q`` bit for bit (``q`` in the weight's shape: int8, or float32
    FP8 element values for an FP8 format; ``scale`` one per row of :func:`weight_rows` or per scope of the format)."""
    qw = qnet.weights[name]
    spec = qnet.config.layer(name).weight_spec()
    assert spec is not None
    if spec.format is not None:
        return format_codes(qnet, name, get_format(spec.format))
    rows = weight_rows(qw.weight, spec)
    s = qw.scale.reshape(-1, 1).to(rows)
    q = torch.round(rows / s).clamp(spec.qmin, spec.qmax)
    if not torch.equal(q * s, rows):  # the ints must reproduce the simulated weight exactly
        raise AssertionError(f"layer {name}: the integer weights do not reproduce the simulated ones")
    return q.reshape(qw.weight.shape).to(torch.int8), qw.scale.reshape(-1).float()


class ActQDQ(nn.Module):
    """``DequantizeLinear(QuantizeLinear(x, s, z), s, z)`` on a uint8 grid (see module docstring)."""

    def __init__(self, q: ActQuantizer) -> None:
        super().__init__()
        self.s, self.z, self.qmin, self.qmax = float(q.scale), int(q.zero_point), int(q.qmin), int(q.qmax)

    def forward(self, x: Tensor) -> Tensor:
        qd = _decomposed()
        q = qd.quantize_per_tensor(x, self.s, self.z, self.qmin, self.qmax, torch.uint8)
        return qd.dequantize_per_tensor(q, self.s, self.z, self.qmin, self.qmax, torch.uint8)


class WeightDQLayer(nn.Module):
    """``op(x, DequantizeLinear(q, scale), bias)``; in torch the scale is applied directly (``q * scale``)."""

    def __init__(self, ql: QuantLayer, q: Tensor, scale: Tensor, rows_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layer = ql.layer
        # FP8 codes travel as an int8 placeholder; the exporter's graph gets the real codes (onnx.py)
        self.register_buffer("wint", q if q.dtype == torch.int8 else torch.zeros(q.shape, dtype=torch.int8))
        self.register_buffer("wcode", q.float())
        self.register_buffer("wscale", scale)
        self.rows_shape = rows_shape
        self.exporting = False

    def weight(self) -> Tensor:
        if self.exporting:  # the real codes and scale go onto the DequantizeLinear after export
            return _decomposed().dequantize_per_tensor(self.wint, 1.0, 0, -128, 127, torch.int8)
        return (self.wcode.reshape(self.rows_shape[0], -1) * self.wscale.reshape(-1, 1)).reshape(self.wint.shape)

    def forward(self, x: Tensor) -> Tensor:
        return layer_forward(self.layer, x, self.weight())


class QDQNetwork(nn.Module):
    """The QDQ twin of a simulated network; ``forward(*inputs)`` returns the output tensor."""

    def __init__(self, gm: nn.Module, output_key: Union[str, int, None], output: Any = None) -> None:
        super().__init__()
        self.gm = gm
        self.output_key = output_key
        self.rebuild = output if output is not None else (lambda out: out)  # LayerGraph.output

    def set_exporting(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, (WeightDQLayer, ActFP8QDQ)):
                m.exporting = on

    def forward(self, *inputs: Tensor) -> Tensor:
        """``inputs``: the graph's placeholders (``LayerGraph.flat`` of a batch)."""
        out, _ = self.gm(*inputs)
        return extract_output(self.rebuild(out), self.output_key)


def qdq_module(qnet: QuantizedNetwork, formats: dict[str, LayerFormat], output_key: Union[str, int, None] = None) -> QDQNetwork:
    """A copy of ``qnet.gm`` with QDQ modules in place of the simulation's quantizers (module docstring)."""
    gm = copy.deepcopy(qnet.gm).cpu()
    by_index = {f.index: f for f in formats.values()}
    for key, mod in list(gm.named_children()):
        if isinstance(mod, ActQuantizer):
            if not mod.enabled:
                setattr(gm, key, nn.Identity())
            else:
                setattr(gm, key, ActFP8QDQ(mod) if mod.format is not None else ActQDQ(mod))
        elif isinstance(mod, QuantLayer):
            fmt = by_index.get(int(key.rsplit("_", 1)[1]))
            if fmt is None or fmt.storage is None:
                continue  # float weights: the layer computes with them as before
            q, scale = weight_integers(qnet, fmt.layer)
            rows_shape = (scale.numel(), q.numel() // max(scale.numel(), 1))
            setattr(gm, key, WeightDQLayer(mod, q.cpu(), scale.cpu(), rows_shape))
    return QDQNetwork(gm, output_key, qnet.graph.output).eval()


def onnx_scale(qnet: QuantizedNetwork, fmt: LayerFormat) -> Tensor:
    """The DequantizeLinear scale tensor of ``fmt``'s weight: scalar, ``[O]``, or blocked ``[O, I/g, *kernel]``."""
    _, scale = weight_integers(qnet, fmt.layer)
    if fmt.axis is None:
        return scale.reshape(())
    if fmt.block_size is None:
        return scale
    w = qnet.weights[fmt.layer].weight
    o, i = w.shape[0], w.shape[1]
    s = scale.reshape(o, i // fmt.block_size, *([1] * (w.dim() - 2)))
    return s.expand(o, i // fmt.block_size, *w.shape[2:]).contiguous()

