"""Symmetric integer formats ``int{b}``, ``int{b}-channel``, ``int{b}-g{N}`` (``b`` in 2..16).

For the values ``x`` that share a scale (the tensor, an output row, or a row's block of ``N``)::

    s     = amax / (2^(b-1) - 1)          (float32; s = 1 where it is 0, or where 1/s
                                           overflows: amax < qmax * 2^-128, the values are 0)
    q     = clamp(round_half_even(x * (1/s)), -2^(b-1), 2^(b-1) - 1)
    value = q * s

``x * (1/s)`` multiplies by the float32 reciprocal, as ``torch.fake_quantize_per_channel_affine``
and quantlens' own weight quantizer do (symmetric, ``minmax``), so the values are bit-identical to
``quantize_weight(w, QuantSpec(bits=b, granularity=...))`` (per-tensor, per-channel; per-group
on 2-D weights: ``PerGroup`` spans ``N`` input channels times the kernel, ``-g{N}`` spans ``N``
values of the flattened reduction axis). Effective bits: ``b``, and ``b + 16/N`` with a 16-bit
scale per group.

Example:
    >>> import torch
    >>> from quantlens.quant.formats import fake_quantize
    >>> fake_quantize(torch.tensor([[-7.0, 0.5, 1.5, 2.5, 7.0]]), "int4")
    tensor([[-7.,  0.,  2.,  2.,  7.]])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.quant.formats.format import Format
from quantlens.quant.formats.registry import register_format, register_kernel

__all__ = ["int_format", "int_kernel", "MIN_INT_BITS", "MAX_INT_BITS"]

MIN_INT_BITS = 2
MAX_INT_BITS = 16


def int_format(b: int, scope: str = "tensor", group: int = 0) -> Format:
    """The ``int{b}`` format with one scale per tensor, per row or per ``group`` values."""
    if not MIN_INT_BITS <= b <= MAX_INT_BITS:
        raise QuantlensError(f"integer formats have {MIN_INT_BITS}..{MAX_INT_BITS} bits, got int{b}")
    if scope == "block":
        if group < 1:
            raise QuantlensError(f"int{b}-g{group}: the group size must be >= 1")
        return Format(f"int{b}-g{group}", "int", f"int{b}", "block", group, "amax/qmax", b + 16 / group)
    suffix = "-channel" if scope == "row" else ""
    return Format(f"int{b}{suffix}", "int", f"int{b}", scope, 0, "amax/qmax", float(b))  # type: ignore[arg-type]


@register_format("int{b}")
def _per_tensor(b: int) -> Format:
    return int_format(b)


@register_format("int{b}-channel")
def _per_channel(b: int) -> Format:
    return int_format(b, "row")


@register_format("int{b}-g{N}")
def _per_group(b: int, N: int) -> Format:  # noqa: N803 (the template's name)
    return int_format(b, "block", N)


@register_kernel("int")
def int_kernel(tiles: Tensor, fmt: Format, global_scale: Optional[Tensor]) -> Tensor:
    """``q * s`` with ``s = amax / qmax`` per scope (see the module docstring)."""
    qmax = 2 ** (fmt.bits - 1) - 1
    amax = tiles.abs().amax(dim=(1, 3), keepdim=True)
    scale = amax / float(qmax)
    inv = 1.0 / scale
    ok = (scale > 0) & torch.isfinite(inv)  # 1/s overflows below 2^-128: quantize_weight's NaN, our zeros
    scale = torch.where(ok, scale, torch.ones_like(scale))
    inv = torch.where(ok, inv, torch.ones_like(inv))
    # "+ 0.0" turns round's -0 into +0, as torch's fused kernels (via an integer) do
    q = torch.clamp(torch.round(tiles * inv), -qmax - 1, qmax) + 0.0
    return q * scale
