"""Each layer's weight as compressed-tensors stores it: the scheme and the packed tensors.

A :class:`CTWeight` is one layer's compressed-tensors scheme (the ``weights`` quantization
args and the compression format) and the tensors that replace ``<module>.weight``. They hold
**exactly the values the simulation used**: the integers / FP8 / FP4 elements and the scales
are recomputed from the float weight with quantlens's own rule and checked to reproduce the
simulated weight ``W_q`` bit for bit before anything is written.

==============================  =======================  ===================================================
quantlens format                compressed-tensors        stored (``W_q`` =)
==============================  =======================  ===================================================
``int4``/``int8`` (bits or       ``pack-quantized``,       ``weight_packed`` (int32), ``weight_scale`` fp32,
``int{4,8}[-channel|-g{N}]``)    int, tensor/channel/group ``weight_shape``; ``q * s``, ``s = amax / qmax``
``fp8-e4m3[-channel|-block128]`` ``float-quantized``       ``weight`` (float8_e4m3fn), ``weight_scale`` fp32;
                                 tensor/channel/block      ``q * s``, ``s = amax / 448``
``nvfp4``                        ``nvfp4-pack-quantized``  ``weight_packed`` (2 x E2M1 per uint8), ``weight_scale``
                                 tensor_group 16           (E4M3 ``s_b``), ``weight_global_scale`` ``= fl(1 / s2)``
``mxfp4``, ``mxfp4-rceil``       ``mxfp4-pack-quantized``  ``weight_packed``, ``weight_scale`` uint8 ``k + 127``;
                                 group 32                  ``q * 2^k``
``bf16``, ``fp16``               ``ignore``                ``weight`` in that dtype (the cast, exact)
==============================  =======================  ===================================================

Conventions where compressed-tensors' own rule differs (its int scale ``amax / 7.5`` for int4,
``amax / 127.5`` for int8; NVFP4's reciprocal global scale ``gs = 2688 / amax``): the export
writes quantlens's scales, which compressed-tensors dequantizes as written (``q * scale``), so
int and FP8 layers reload bit for bit. NVFP4 reloads as ``q * fl(s_b / gs)``, which
compressed-tensors computes in bfloat16 (0.20: ``unpack_fp4_from_uint8`` returns bfloat16): the
same elements and block scales, the product within bfloat16 rounding (relative ``2^-9``) of the
simulation's ``(q * s_b) * s2``. MXFP4's ``q * 2^k`` is exact in bfloat16.

Refused, in one line naming the layer and what compressed-tensors holds: other bit-widths,
asymmetric weights, FP8 E5M2, MXFP6/MXFP8, per-tensor NVFP4-like formats, a group that does not
divide the input features, quantized activations (the export writes weight-only schemes).

Example:
    >>> w = ct_weight("fc", torch.randn(8, 32), QuantSpec(format="int4-g16"))   # doctest: +SKIP
    >>> w.format, sorted(w.tensors)                                             # doctest: +SKIP
    ('pack-quantized', ['weight_packed', 'weight_scale', 'weight_shape'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.quant.formats import E2M1, E4M3, Format, cast_to_element, get_format, nvfp4_global_scale
from quantlens.quant.formats.bits import pow2
from quantlens.quant.formats.mx import mx_exponent
from quantlens.quant.padded import quantize_padded
from quantlens.quant.quantizer import group_size, quantize_weight, weight_rows
from quantlens.quant.spec import PerChannel, PerGroup, PerTensor, QuantSpec

__all__ = ["CTWeight", "ct_weight", "HOLDS", "pack_int", "pack_fp4", "FLOAT_DTYPES"]

#: What a compressed-tensors checkpoint written here can hold (for the one-line refusals).
HOLDS = ("int4/int8 weights (per tensor, per channel, per group: pack-quantized), fp8-e4m3 weights (per tensor, "
         "channel or 128x128 block: float-quantized), nvfp4, mxfp4, or bf16/fp16/float (left unquantized)")
INT_BITS = (4, 8)
FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_FP4_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


@dataclass(frozen=True)
class CTWeight:
    """One layer in the checkpoint: ``weights`` (the quantization args, JSON), ``format``
    (the compression format; ``dense`` for a layer left unquantized) and ``tensors`` (local
    names, ``weight_packed`` ...) that replace ``<module>.weight``; ``label`` is the quantlens format."""

    label: str
    format: str
    weights: Optional[dict]
    tensors: dict[str, Tensor] = field(default_factory=dict, compare=False)
    values: Optional[Tensor] = field(default=None, compare=False)  # W_q by quantlens's formula from the stored values

    @property
    def quantized(self) -> bool:
        return self.weights is not None

    @property
    def key(self) -> str:
        """Layers with the same key share one config group."""
        return json.dumps({"format": self.format, "weights": self.weights}, sort_keys=True)


def _refuse(layer: str, what: str) -> QuantlensError:
    return QuantlensError(f"layer {layer}: {what} cannot go into a compressed-tensors checkpoint, which holds {HOLDS}")


def _exact(layer: str, got: Tensor, want: Tensor) -> None:
    if not torch.equal(got, want):  # the stored values must reproduce the simulated weight exactly
        raise AssertionError(f"layer {layer}: the stored values do not reproduce the simulated weight "
                             f"(max difference {float((got - want).abs().max()):.3g})")


def pack_int(q: Tensor, bits: int) -> Tensor:
    """``q`` (signed ``bits``-bit integers, ``[O, I]``) packed along ``I`` into int32 as
    compressed-tensors' ``pack_to_int32`` does for 4 and 8 bits: ``q + 2^(bits-1)`` (unsigned),
    ``32 / bits`` values per word, value ``j`` of a word in bits ``j*bits .. j*bits+bits-1``."""
    per = 32 // bits
    u = (q.to(torch.int64) + (1 << (bits - 1))) & ((1 << bits) - 1)
    o, i = u.shape
    pad = (-i) % per
    if pad:
        u = F.pad(u, (0, pad))
    u = u.reshape(o, -1, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (u << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_fp4(q: Tensor) -> Tensor:
    """E2M1 values ``q`` (``[O, I]``, ``I`` even) as compressed-tensors' ``pack_fp4_to_uint8``:
    a nibble ``sign << 3 | index`` (index into 0, 0.5, 1, 1.5, 2, 3, 4, 6), element ``2j`` in the
    low nibble of byte ``j``, element ``2j + 1`` in the high one."""
    idx = (q.abs().unsqueeze(-1) == _FP4_GRID).to(torch.uint8).argmax(-1).to(torch.uint8)
    nib = idx | (torch.signbit(q).to(torch.uint8) << 3)
    nib = nib.reshape(q.shape[0], -1, 2)
    return nib[..., 0] | (nib[..., 1] << 4)


def _args(num_bits: int, kind: str, strategy: str, **extra: object) -> dict:
    return {"num_bits": num_bits, "type": kind, "symmetric": True, "strategy": strategy, "dynamic": False, **extra}


def _tiles(w: Tensor, r: int, c: int) -> Tensor:
    """``w`` ``[O, I]`` zero-padded to multiples of ``r x c`` and viewed as ``[O/r, r, I/c, c]``."""
    o, i = w.shape
    p = F.pad(w, (0, (-i) % c, 0, (-o) % r))
    return p.reshape(p.shape[0] // r, r, p.shape[1] // c, c)


def _int_from_rows(layer: str, w: Tensor, wq: Tensor, bits: int, strategy: str, scale: Tensor, gs: Optional[int]) -> CTWeight:
    """Integers ``q = round(W_q / s)`` per scale row, checked ``q * s == W_q``; CT scale shapes."""
    o, i = w.shape
    n = {"tensor": o * i, "channel": i, "group": gs or i}[strategy]
    rows = wq.reshape(-1, n)
    s = scale.reshape(-1, 1).float()
    q = torch.round(rows / s)
    _exact(layer, q * s, rows)
    if int(q.min()) < -(2 ** (bits - 1)) or int(q.max()) > 2 ** (bits - 1) - 1:
        raise _refuse(layer, f"an int{bits} grid wider than [{-(2 ** (bits - 1))}, {2 ** (bits - 1) - 1}]")
    shape = {"tensor": (1,), "channel": (o, 1), "group": (o, i // n)}[strategy]
    extra = {"group_size": n} if strategy == "group" else {}
    tensors = {"weight_packed": pack_int(q.reshape(o, i), bits), "weight_scale": s.reshape(shape).contiguous(),
               "weight_shape": torch.tensor([o, i], dtype=torch.int64)}
    label = f"int{bits}" + {"tensor": "", "channel": "-channel", "group": f"-g{n}"}[strategy]
    return CTWeight(label, "pack-quantized", _args(bits, "int", strategy, **extra), tensors, wq)


def _from_bits(layer: str, w: Tensor, spec: QuantSpec) -> CTWeight:
    """A bit-width spec (``quantlens plan`` / ``fix``): its scales and integers, exactly."""
    if not spec.symmetric:
        raise _refuse(layer, f"asymmetric (zero-point) int{spec.bits} weights")
    if spec.bits not in INT_BITS:
        raise _refuse(layer, f"int{spec.bits} weights")
    qw = quantize_weight(w, spec)
    g = spec.granularity
    if isinstance(g, PerTensor):
        return _int_from_rows(layer, w, qw.weight, spec.bits, "tensor", qw.scale, None)
    gs = group_size(w, spec) if isinstance(g, PerGroup) else None
    if isinstance(g, PerChannel) or gs is None or gs == w.shape[1]:
        if isinstance(g, PerGroup):
            raise _refuse(layer, f"{g} on {w.shape[1]} input features (not a multiple of the group)")
        return _int_from_rows(layer, w, qw.weight, spec.bits, "channel", qw.scale, None)
    assert weight_rows(w, spec).shape[1] == gs
    return _int_from_rows(layer, w, qw.weight, spec.bits, "group", qw.scale, gs)


def _int_format(layer: str, w: Tensor, fmt: Format) -> CTWeight:
    if fmt.bits not in INT_BITS:
        raise _refuse(layer, f"the format {fmt.name}")
    if fmt.scope == "block" and w.shape[1] % fmt.block:
        raise _refuse(layer, f"{fmt.name} on {w.shape[1]} input features (not a multiple of {fmt.block})")
    strategy = {"tensor": "tensor", "row": "channel", "block": "group"}[fmt.scope]
    wq = quantize_padded(w, fmt, "weight")  # as the simulation quantizes it (an overhanging tile zero-padded)
    c = {"tensor": w.numel(), "channel": w.shape[1], "group": fmt.block}[strategy]
    amax = w.reshape(-1, c).abs().amax(1)
    s = amax / float(2 ** (fmt.bits - 1) - 1)
    s = torch.where((s > 0) & torch.isfinite(1.0 / s), s, torch.ones_like(s))  # the kernel's rule for zero blocks
    return _int_from_rows(layer, w, wq, fmt.bits, strategy, s, fmt.block or None)


def _fp8_format(layer: str, w: Tensor, fmt: Format) -> CTWeight:
    if fmt.element != "e4m3":
        raise _refuse(layer, f"the format {fmt.name} (compressed-tensors' FP8 is E4M3)")
    wq = quantize_padded(w, fmt, "weight")  # as the simulation quantizes it (an overhanging tile zero-padded)
    o, i = w.shape
    r, c = {"tensor": (o, i), "row": (1, i), "tile": (fmt.block, fmt.block)}[fmt.scope]
    s = _tiles(w, r, c).abs().amax(dim=(1, 3), keepdim=True) / torch.full((), E4M3.max)
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = (_tiles(wq, r, c) / s).to(torch.float8_e4m3fn)
    back = (q.float() * s).reshape(-1, _tiles(w, r, c).shape[2] * c)[:o, :i]
    _exact(layer, back, wq)
    strategy = {"tensor": "tensor", "row": "channel", "tile": "block"}[fmt.scope]
    extra = {"block_structure": [fmt.block, fmt.block]} if strategy == "block" else {}
    shape = {"tensor": (1,), "channel": (o, 1), "block": (s.shape[0], s.shape[2])}[strategy]
    weight = q.reshape(q.shape[0] * r, -1)[:o, :i].contiguous()
    return CTWeight(fmt.name, "float-quantized", _args(8, "float", strategy, **extra),
                    {"weight": weight, "weight_scale": s.reshape(shape).contiguous()}, wq)


def _nvfp4(layer: str, w: Tensor, fmt: Format) -> CTWeight:
    if w.shape[1] % fmt.block:
        raise _refuse(layer, f"nvfp4 on {w.shape[1]} input features (not a multiple of {fmt.block})")
    wq = quantize_padded(w, fmt, "weight")  # as the simulation quantizes it (an overhanging tile zero-padded)
    t = _tiles(w, 1, fmt.block)
    s2 = nvfp4_global_scale(w.abs().amax())
    six_s2 = 6.0 * s2
    s_b = cast_to_element(t.abs().amax(dim=(1, 3), keepdim=True) / torch.where(six_s2 > 0, six_s2, torch.ones_like(six_s2)), E4M3)
    denom = s_b * s2
    live = denom > 0
    q = torch.where(live, cast_to_element(t / torch.where(live, denom, torch.ones_like(denom)), E2M1), torch.zeros_like(t))
    _exact(layer, torch.where(live, (q * s_b) * s2, torch.zeros_like(q)).reshape(w.shape), wq)
    gs = 1.0 / s2 if float(s2) > 0 else torch.ones(())
    o, i = w.shape
    return CTWeight("nvfp4", "nvfp4-pack-quantized",
                    _args(4, "float", "tensor_group", group_size=fmt.block, scale_dtype="torch.float8_e4m3fn",
                          zp_dtype="torch.float8_e4m3fn"),
                    {"weight_packed": pack_fp4(q.reshape(o, i)), "weight_scale": s_b.reshape(o, i // fmt.block).to(torch.float8_e4m3fn),
                     "weight_global_scale": torch.as_tensor(gs, dtype=torch.float32).reshape(1)}, wq)


def _mx(layer: str, w: Tensor, fmt: Format) -> CTWeight:
    if fmt.element != "e2m1":
        raise _refuse(layer, f"the format {fmt.name}")
    if w.shape[1] % fmt.block:
        raise _refuse(layer, f"{fmt.name} on {w.shape[1]} input features (not a multiple of {fmt.block})")
    wq = quantize_padded(w, fmt, "weight")  # as the simulation quantizes it (an overhanging tile zero-padded)
    t = _tiles(w, 1, fmt.block)
    k = mx_exponent(t.abs().amax(dim=(1, 3), keepdim=True), E2M1, rceil=fmt.scale_rule == "pow2-rceil")
    x = pow2(k)
    q = cast_to_element(t / x, E2M1)
    _exact(layer, (q * x).reshape(w.shape), wq)
    o, i = w.shape
    return CTWeight(fmt.name, "mxfp4-pack-quantized",
                    _args(4, "float", "group", group_size=fmt.block, scale_dtype="torch.uint8", zp_dtype="torch.uint8"),
                    {"weight_packed": pack_fp4(q.reshape(o, i)), "weight_scale": (k + 127).reshape(o, i // fmt.block).to(torch.uint8)}, wq)


def _cast(layer: str, w: Tensor, fmt: Format) -> CTWeight:
    wq = quantize_padded(w, fmt, "weight")  # as the simulation quantizes it (an overhanging tile zero-padded)
    stored = wq.to(FLOAT_DTYPES[fmt.element])
    _exact(layer, stored.float(), wq.float())
    return CTWeight(fmt.name, "dense", None, {"weight": stored.contiguous()}, wq)


_BY_FAMILY: dict[str, Callable[[str, Tensor, Format], CTWeight]] = {
    "int": _int_format, "fp8": _fp8_format, "nvfp4": _nvfp4, "mx": _mx, "float": _cast,
}


def ct_weight(layer: str, weight: Tensor, spec: Optional[QuantSpec]) -> CTWeight:
    """The compressed-tensors form of ``layer``'s float ``weight`` (``[out, in]``, a Linear's)
    quantized by ``spec`` (None: left in float). One-line error for what the checkpoint cannot hold."""
    w = weight.detach().float().cpu()
    if spec is None:
        return CTWeight("float", "dense", None, {})
    if w.dim() != 2:
        raise _refuse(layer, f"a weight of shape {tuple(w.shape)} (a convolution's)")
    if spec.format is None:
        return _from_bits(layer, w, spec)
    fmt = get_format(spec.format)
    return _BY_FAMILY[fmt.family](layer, w, fmt)
