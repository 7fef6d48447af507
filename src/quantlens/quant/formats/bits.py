"""Exact float32 powers of two and binary exponents, from the bits (no ``log2``, no ``exp2``).

* :func:`pow2` ``(k) = 2^k`` for integer ``k`` in ``[-149, 127]``, built from the float32 bit
  pattern (``2^-127`` .. ``2^-149`` are float32 subnormals, built exactly too).
* :func:`frexp_exponent` ``(x) = floor(log2 |x|)`` and the significand ``|x| / 2^floor(log2 |x|)``
  in ``[1, 2)``, from :func:`torch.frexp` (exact, subnormals included).

Float ``log2``/``exp2`` kernels are not guaranteed to be exact at powers of two; these are.

Example:
    >>> import torch
    >>> pow2(torch.tensor([-127, 0, 3]))
    tensor([5.8775e-39, 1.0000e+00, 8.0000e+00])
    >>> frexp_exponent(torch.tensor([0.75, 6.0]))
    (tensor([-1,  2], dtype=torch.int32), tensor([1.5000, 1.5000]))
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pow2", "frexp_exponent"]

_MBITS_F32 = 23
_BIAS_F32 = 127


def pow2(k: Tensor) -> Tensor:
    """``2^k`` in float32, exactly, for an integer tensor ``k`` with values in ``[-149, 127]``."""
    k = k.to(torch.int32)
    normal = torch.bitwise_left_shift(torch.clamp(k + _BIAS_F32, min=1), _MBITS_F32)
    subnormal = torch.bitwise_left_shift(torch.ones_like(k), torch.clamp(k + 149, min=0, max=22))
    return torch.where(k >= -126, normal, subnormal).view(torch.float32)


def frexp_exponent(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(e, m)`` with ``|x| = m * 2^e``, ``e = floor(log2 |x|)`` (int32) and ``m`` in ``[1, 2)``.

    For ``x = 0``: ``e = -1``, ``m = 0`` (callers treat zero themselves).
    """
    mant, exp = torch.frexp(x.abs())  # |x| = mant * 2^exp, mant in [0.5, 1)
    return exp - 1, mant * 2.0
