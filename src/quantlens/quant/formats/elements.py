"""Low-precision float element types and their saturating round-to-nearest-even casts.

An :class:`ElementType` is a sign bit, ``ebits`` exponent bits and ``mbits`` mantissa bits
with bias ``2^(ebits-1) - 1`` and no infinities (E5M2's are never produced: values saturate).

==========  =====  =====  ==========  ================  =================  ===========
element     ebits  mbits  max         min normal        min subnormal      emax
==========  =====  =====  ==========  ================  =================  ===========
``e4m3``    4      3      448         2^-6              2^-9               8
``e5m2``    5      2      57344       2^-14             2^-16              15
``e3m2``    3      2      28          2^-2              2^-4               4
``e2m3``    2      3      7.5         1                 2^-3               2
``e2m1``    2      1      6           1                 2^-1               2
==========  =====  =====  ==========  ================  =================  ===========

(``emax = floor(log2 max)``, the exponent the OCP MX scale rule subtracts.)

The cast, for float32 ``x``::

    y = clamp(x, -max, max)                       # saturate: never NaN or inf
    e = max(floor(log2 |y|), emin)                # emin = 1 - bias; subnormals share emin
    cast(x) = round_half_even(y / 2^(e - mbits)) * 2^(e - mbits)

:func:`round_to_grid` is that formula in float32 (every step exact but the rounding); E4M3
and E5M2 use PyTorch's ``float8_e4m3fn`` / ``float8_e5m2`` casts after the clamp, which are the
same round-to-nearest-even (the tests check both against ml_dtypes on every tie).

Example:
    >>> import torch
    >>> cast(torch.tensor([0.25, 0.75, 2.5, 5.0, 100.0]), E2M1)
    tensor([0., 1., 2., 4., 6.])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["ElementType", "E4M3", "E5M2", "E3M2", "E2M3", "E2M1", "ELEMENTS", "cast", "round_to_grid"]


@dataclass(frozen=True)
class ElementType:
    """A small float: ``ebits`` exponent bits, ``mbits`` mantissa bits, largest finite ``max``."""

    name: str
    ebits: int
    mbits: int
    max: float
    torch_dtype: Optional[str] = None  # name of the torch dtype whose cast is RNE, if any

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value, ``1 - bias``."""
        return 2 - 2 ** (self.ebits - 1)

    @property
    def emax(self) -> int:
        """``floor(log2 max)``: the exponent of the largest power of two in the type."""
        return math.frexp(self.max)[1] - 1

    @property
    def label(self) -> str:
        return self.name.upper()


E4M3 = ElementType("e4m3", 4, 3, 448.0, "float8_e4m3fn")
E5M2 = ElementType("e5m2", 5, 2, 57344.0, "float8_e5m2")
E3M2 = ElementType("e3m2", 3, 2, 28.0)
E2M3 = ElementType("e2m3", 2, 3, 7.5)
E2M1 = ElementType("e2m1", 2, 1, 6.0)

ELEMENTS: dict[str, ElementType] = {e.name: e for e in (E4M3, E5M2, E3M2, E2M3, E2M1)}


_F32_EXPONENT = 0x7F800000  # the exponent field of a float32


def round_to_grid(x: Tensor, elem: ElementType) -> Tensor:
    """``x`` (float32) rounded half-to-even onto ``elem``'s grid after clamping to ``+-max``.

    ``step = 2^(max(floor(log2 |y|), emin) - mbits)``; ``2^floor(log2 |y|)`` is ``|y|`` with its
    mantissa bits cleared (the exponent field alone: exact, and 0 for zero and float32 subnormals,
    which the clamp to ``2^emin`` covers). Two tensors of ``x``'s size, every step in place after
    the clamp; ``y / step`` and ``q * step`` are exact (powers of two), ``round`` is half-to-even."""
    y = torch.clamp(x.to(torch.float32), -elem.max, elem.max)
    step = y.abs().view(torch.int32).bitwise_and_(_F32_EXPONENT).view(torch.float32)
    step.clamp_(min=2.0 ** elem.emin).mul_(2.0 ** -elem.mbits)
    return y.div_(step).round_().mul_(step)


def cast(x: Tensor, elem: ElementType) -> Tensor:
    """Saturating round-to-nearest-even cast of float32 ``x`` to ``elem``, returned in float32."""
    dtype = getattr(torch, elem.torch_dtype, None) if elem.torch_dtype else None
    if dtype is None:
        return round_to_grid(x, elem)
    return torch.clamp(x, -elem.max, elem.max).to(dtype).to(torch.float32)
