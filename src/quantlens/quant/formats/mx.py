"""OCP Microscaling (MX v1.0): ``mxfp8``, ``mxfp8-e5m2``, ``mxfp6``, ``mxfp6-e3m2``, ``mxfp4``.

Blocks of 32 consecutive values along the reduction axis share one E8M0 scale ``X = 2^k``
(OCP MX v1.0 section 6.3)::

    k     = floor(log2 amax) - emax_elem           (emax_elem = floor(log2 max_elem):
                                                    E4M3 8, E5M2 15, E3M2 4, E2M3 2, E2M1 2)
    k     = clamp(k, -127, 127)                    (E8M0's exponents; -127 for an all-zero block)
    q     = cast(x / X)                            (round half to even, clamp to +-max_elem)
    value = q * X

``floor(log2 amax)`` comes from the float32 exponent (``frexp``), exactly. The floor rule can
put the block's largest values above ``max_elem`` (``amax / X`` is in ``[2^emax, 2^(emax+1))``,
up to 512 for E4M3, 8 for E2M1); they clip to ``max_elem``.

The ``-rceil`` variants round the scale up instead: ``k = ceil(log2(amax / max_elem))``, the
smallest ``k`` with ``amax / 2^k <= max_elem`` (computed exactly: ``floor(log2 amax) - emax_elem``
plus one when ``amax``'s significand exceeds ``max_elem / 2^emax_elem``), so nothing clips.

Effective bits: element bits + 8/32 (8.25, 6.25, 4.25).

Example:
    >>> import torch
    >>> from quantlens.quant.formats import fake_quantize
    >>> x = torch.tensor([[7.0] + [1.25] * 31])
    >>> fake_quantize(x, "mxfp4")[0, :2], fake_quantize(x, "mxfp4-rceil")[0, :2]
    (tensor([6., 1.]), tensor([8., 1.]))
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from quantlens.quant.formats.bits import frexp_exponent, pow2
from quantlens.quant.formats.elements import ELEMENTS, ElementType, cast
from quantlens.quant.formats.format import Format
from quantlens.quant.formats.registry import register_format, register_kernel

__all__ = ["mx_kernel", "mx_exponent", "MX_BLOCK", "E8M0_MIN", "E8M0_MAX"]

MX_BLOCK = 32
E8M0_MIN = -127
E8M0_MAX = 127

_MX = {"mxfp8": "e4m3", "mxfp8-e5m2": "e5m2", "mxfp6": "e2m3", "mxfp6-e3m2": "e3m2", "mxfp4": "e2m1"}


def _mx(name: str, element: str, rule: str) -> Format:
    bits = ELEMENTS[element].bits + 8 / MX_BLOCK
    return Format(name, "mx", element, "block", MX_BLOCK, rule, bits)


for _base, _element in _MX.items():
    for _suffix, _rule in (("", "pow2-floor"), ("-rceil", "pow2-rceil")):
        _f = _mx(_base + _suffix, _element, _rule)
        register_format(_f.name)(lambda _f=_f: _f)


def mx_exponent(amax: Tensor, elem: ElementType, rceil: bool = False) -> Tensor:
    """The E8M0 exponent ``k`` (int32, in ``[-127, 127]``) of blocks with maxima ``amax``."""
    e, m = frexp_exponent(amax)  # amax = m * 2^e, m in [1, 2)
    k = e - elem.emax
    if rceil:
        k = k + (m > elem.max / 2**elem.emax).to(torch.int32)
    k = torch.where(amax > 0, k, torch.full_like(k, E8M0_MIN))
    return torch.clamp(k, E8M0_MIN, E8M0_MAX)


@register_kernel("mx")
def mx_kernel(tiles: Tensor, fmt: Format, global_scale: Optional[Tensor]) -> Tensor:
    """``cast(x / X) * X`` with one power-of-two ``X`` per block (see the module docstring)."""
    elem = ELEMENTS[fmt.element]
    amax = tiles.abs().amax(dim=(1, 3), keepdim=True)
    scale = pow2(mx_exponent(amax, elem, rceil=fmt.scale_rule == "pow2-rceil"))
    return cast(tiles / scale, elem).mul_(scale)  # cast returns a new tensor
