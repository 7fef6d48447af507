"""Pure fake-quantization functions.

Uniform affine fake quantization, bit-exact with PyTorch's
``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine``::

    q     = clamp(round_half_even(x * (1 / scale)) + zero_point, qmin, qmax)
    x_hat = (q - zero_point) * scale

(PyTorch multiplies by the float32 reciprocal of the scale rather than dividing; so do we,
so that the two agree to the last bit.)

Parameters from a range ``[lo, hi]``:

* symmetric:  ``scale = max(|lo|, |hi|) / qmax``, ``zero_point = 0``
* asymmetric: ``lo' = min(0, lo)``, ``hi' = max(0, hi)``, ``scale = (hi' - lo') / (qmax - qmin)``,
  ``zero_point = clamp(round(qmin - lo' / scale), qmin, qmax)``

A zero range gives ``scale = 1`` (every value is then exactly 0 anyway).

Example:
    >>> import torch
    >>> x = torch.tensor([-1.0, 0.1, 0.5, 1.0])
    >>> s, z = qparams_from_range(torch.tensor(-1.0), torch.tensor(1.0), -8, 7, symmetric=True)
    >>> fake_quantize(x, s, z, -8, 7)
    tensor([-1.0000,  0.1429,  0.5714,  1.0000])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["fake_quantize", "fake_quantize_formula", "qparams_from_range", "broadcast_shape"]


def broadcast_shape(x: Tensor, axis: Optional[int]) -> tuple[int, ...]:
    """Shape that broadcasts a per-``axis`` vector against ``x`` (``(C, 1, 1, ...)`` for axis 0)."""
    if axis is None:
        return ()
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return tuple(shape)


def fake_quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    axis: Optional[int] = None,
) -> Tensor:
    """Quantize and dequantize ``x`` (the arithmetic of :func:`fake_quantize_formula`).

    A float32 tensor with one scale goes through PyTorch's fused
    ``torch.fake_quantize_per_tensor_affine`` (one kernel instead of five: activations are
    quantized in every cone pass); anything else through :func:`fake_quantize_formula`. The
    tests check that the two agree bit for bit.
    """
    if axis is None and x.dtype == torch.float32 and scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(
            x,
            scale.to(device=x.device, dtype=torch.float32).reshape(()),
            zero_point.to(device=x.device, dtype=torch.int32).reshape(()),
            qmin,
            qmax,
        )
    return fake_quantize_formula(x, scale, zero_point, qmin, qmax, axis)


def fake_quantize_formula(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    axis: Optional[int] = None,
) -> Tensor:
    """``(clamp(round_half_even(x * (1 / scale)) + zp, qmin, qmax) - zp) * scale``, written out.

    Args:
        x: float tensor (computed in float32, returned in ``x``'s dtype).
        scale: scalar (per-tensor) or a vector of ``x.shape[axis]`` scales, float32.
        zero_point: like ``scale``; integer-valued (any dtype).
        qmin, qmax: the integer grid.
        axis: the channel axis for a per-channel scale; ``None`` for per-tensor.
            (Per-group quantization reshapes the tensor so that groups are channels.)
    """
    scale = scale.to(device=x.device, dtype=torch.float32)
    zp = zero_point.to(device=x.device, dtype=torch.float32)
    if axis is not None:
        shape = broadcast_shape(x, axis)
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    inv = 1.0 / scale
    q = torch.clamp(torch.round(x.float() * inv) + zp, qmin, qmax)
    return ((q - zp) * scale).to(x.dtype)


def qparams_from_range(
    lo: Tensor, hi: Tensor, qmin: int, qmax: int, symmetric: bool, half_range: bool = False
) -> tuple[Tensor, Tensor]:
    """Scale and zero point (float32, int32) for the range ``[lo, hi]`` on the grid ``[qmin, qmax]``.

    ``half_range`` (symmetric only): ``scale = max(|lo|, |hi|) / ((qmax - qmin) / 2)``, the rule of
    onnxruntime's and torch.ao's symmetric quantizers (``max|w| / 7.5`` on ``[-8, 7]``), instead
    of ``max(|lo|, |hi|) / qmax``.
    """
    lo = lo.detach().float()
    hi = hi.detach().float()
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = amax / ((qmax - qmin) / 2.0 if half_range else float(qmax))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = (hi - lo) / float(qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return scale, zp
