"""NVIDIA NVFP4: E2M1 values, an E4M3 scale per 16 values, a float32 scale per tensor.

For a tensor (a weight, or an activation) with blocks ``x`` of 16 along the reduction axis::

    s2    = amax_tensor / (6 * 448)            (float32; or a given, calibrated s2)
    s_b   = e4m3(amax_block / (6 * s2))        (fp32 6*s2, fp32 division, then round half to
                                                even onto E4M3, saturating at 448; subnormal
                                                E4M3 scales 2^-9 .. 2^-7 included)
    q     = e2m1(x / (s_b * s2))               (fp32 product, fp32 division, RNE, clamp +-6)
    value = (q * s_b) * s2                     (q * s_b is exact; one rounding)

A block whose ``s_b * s2`` is 0 (``s_b`` rounded to 0: the block is below ``2^-10`` of the
scale that would make it full) is zero; a tensor whose ``s2`` is 0 (``amax`` 0, or below
``2688 * 2^-150``) is zero. With a given ``s2``, blocks above ``6 * 448 * s2`` saturate.
The tensor's largest value comes back as ``6 * 448 * fl(amax / 2688)``, which is ``amax`` only up
to that rounding (e.g. 6.0000005 for ``amax = 6``).

Effective bits: 4 + 8/16 = 4.5.

Example:
    >>> import torch
    >>> from quantlens.quant.formats import fake_quantize
    >>> x = torch.tensor([[2.625, 1.09375, 0.109375, 0.328125] * 4])  # s2 = 2^-10: ties 2.5, 0.25, 0.75
    >>> fake_quantize(x, "nvfp4")[0, :4].tolist()
    [2.625, 0.875, 0.0, 0.4375]
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from quantlens.quant.formats.elements import E2M1, E4M3, cast
from quantlens.quant.formats.format import Format
from quantlens.quant.formats.registry import register_format, register_kernel

__all__ = ["nvfp4_kernel", "nvfp4_global_scale", "NVFP4_BLOCK", "NVFP4"]

NVFP4_BLOCK = 16
NVFP4 = Format("nvfp4", "nvfp4", "e2m1", "block", NVFP4_BLOCK, "e4m3*fp32", 4 + 8 / NVFP4_BLOCK)
register_format("nvfp4")(lambda: NVFP4)

_S2_DIVISOR = E2M1.max * E4M3.max  # 2688, exact


def nvfp4_global_scale(amax: Tensor) -> Tensor:
    """``s2 = amax / 2688`` in float32 (the per-tensor scale of a tensor with maximum ``amax``)."""
    amax = amax.to(torch.float32)
    return amax / torch.full((), _S2_DIVISOR, device=amax.device)


@register_kernel("nvfp4")
def nvfp4_kernel(tiles: Tensor, fmt: Format, global_scale: Optional[Tensor]) -> Tensor:
    """Two-level NVFP4 (see the module docstring); ``global_scale`` is a given ``s2``."""
    s2 = nvfp4_global_scale(tiles.abs().amax()) if global_scale is None else global_scale
    s2 = s2.to(device=tiles.device, dtype=torch.float32).reshape(())
    amax = tiles.abs().amax(dim=(1, 3), keepdim=True)
    six_s2 = 6.0 * s2
    s_b = cast(amax / torch.where(six_s2 > 0, six_s2, torch.ones_like(six_s2)), E4M3)
    denom = s_b * s2
    live = denom > 0
    q = cast(tiles / torch.where(live, denom, torch.ones_like(denom)), E2M1)  # a new tensor: the rest in place
    return q.mul_(s_b).mul_(s2).masked_fill_(~live, 0.0)
