"""Scaled FP8: ``fp8-e4m3``, ``fp8-e5m2``, each per tensor, ``-channel`` or ``-block128``.

For the values ``x`` that share a scale (the tensor, an output row, or a 128x128 weight tile;
a 1x128 block of an activation row)::

    s     = amax / max_elem                (float32 division; max_elem 448 or 57344;
                                            s = 1 where s is 0, i.e. amax = 0 or underflow)
    q     = cast(x / s)                    (float32 division, then round half to even onto
                                            E4M3 / E5M2 after clamping to +-max_elem)
    value = q * s

(Division by ``s``, not multiplication by ``max_elem / amax``: see docs/formats.md for the tools
that multiply.) Effective bits: 8 (the one fp32 scale per tensor, row or 16384 values is not
counted; it is ``32 / 16384 = 0.002`` bits for ``-block128``).

Example:
    >>> import torch
    >>> from quantlens.quant.formats import fake_quantize
    >>> fake_quantize(torch.tensor([[448.0, 17.0, 19.0, 0.0]]), "fp8-e4m3")
    tensor([[448.,  16.,  20.,   0.]])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from quantlens.quant.formats.elements import ELEMENTS, cast
from quantlens.quant.formats.format import Format
from quantlens.quant.formats.registry import register_format, register_kernel

__all__ = ["fp8_kernel", "FP8_TILE"]

FP8_TILE = 128


def _fp8(element: str, scope: str) -> Format:
    suffix = {"tensor": "", "row": "-channel", "tile": f"-block{FP8_TILE}"}[scope]
    block = FP8_TILE if scope == "tile" else 0
    return Format(f"fp8-{element}{suffix}", "fp8", element, scope, block, "amax/max", 8.0)  # type: ignore[arg-type]


for _element in ("e4m3", "e5m2"):
    for _scope in ("tensor", "row", "tile"):
        _f = _fp8(_element, _scope)
        register_format(_f.name)(lambda _f=_f: _f)


@register_kernel("fp8")
def fp8_kernel(tiles: Tensor, fmt: Format, global_scale: Optional[Tensor]) -> Tensor:
    """``cast(x / s) * s`` with ``s = amax / max_elem`` per scope."""
    elem = ELEMENTS[fmt.element]
    amax = tiles.abs().amax(dim=(1, 3), keepdim=True)
    scale = amax / torch.full((), elem.max, device=amax.device)  # a tensor: CUDA multiplies by 1/scalar
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return cast(tiles / scale, elem).mul_(scale)  # cast returns a new tensor
