"""Apply a number format: :func:`fake_quantize` (weights) and :func:`fake_quantize_activation`.

Both return the tensor quantized and dequantized, in the input's dtype and shape, computed in
float32 and detached (no gradient flows; wrap it in a straight-through estimator to train).
A bf16/fp16 input is quantized from its exact float32 value and the result is rounded back to
the input's dtype (round half to even), as quantlens' integer weight quantizer does.

* weights: axis 0 is the output axis, the flattened axes ``1..`` the reduction axis;
* activations: the last axis is the reduction axis, every other axis a row.

``global_scale`` is NVFP4's per-tensor ``s2`` (e.g. an activation's calibrated
``amax / 2688``, :func:`~.nvfp4.nvfp4_global_scale`); without it ``s2`` comes from the tensor.

Example:
    >>> import torch
    >>> w = torch.randn(8, 64)
    >>> wq = fake_quantize(w, "mxfp4")
    >>> wq.shape, wq.dtype
    (torch.Size([8, 64]), torch.float32)
    >>> x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    >>> fake_quantize_activation(x, "nvfp4").dtype
    torch.bfloat16
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.quant.formats.format import Format
from quantlens.quant.formats.registry import FormatLike, get_format, kernel_for
from quantlens.quant.formats.tiles import Role, activation_matrix, scope_shape, to_tiles, weight_matrix

__all__ = ["fake_quantize", "fake_quantize_activation"]

ScaleLike = Union[float, Tensor, None]


def fake_quantize(tensor: Tensor, fmt: FormatLike, *, global_scale: ScaleLike = None) -> Tensor:
    """Quantize-dequantize a weight ``tensor`` (any rank; ``[out, ...]``) in the format ``fmt``.

    ``fmt`` is a name (``"mxfp4"``, ``"int4-g128"``) or a :class:`~.format.Format`. Raises a
    one-line :class:`~quantlens.errors.QuantlensError` for an unknown name or a block that does
    not divide the reduction axis.
    """
    return _apply(tensor, get_format(fmt), "weight", global_scale)


def fake_quantize_activation(x: Tensor, fmt: FormatLike, *, global_scale: ScaleLike = None) -> Tensor:
    """Quantize-dequantize an activation ``x`` (blocks along its last axis) in the format ``fmt``.

    ``-channel`` formats have one scale per row (token), ``fp8-*-block128`` one per 1x128 block.
    """
    return _apply(x, get_format(fmt), "activation", global_scale)


def _global_scale(fmt: Format, value: ScaleLike) -> Optional[Tensor]:
    if value is None:
        return None
    if fmt.family != "nvfp4":
        raise QuantlensError(f"{fmt.name} has no per-tensor scale to give; global_scale is NVFP4's s2")
    s2 = torch.as_tensor(value, dtype=torch.float32).detach()
    if s2.numel() != 1 or not math.isfinite(float(s2)) or float(s2) <= 0:
        raise QuantlensError(f"nvfp4: global_scale (s2) must be one finite number > 0, got {value!r}")
    return s2.reshape(())


def _apply(tensor: Tensor, fmt: Format, role: Role, global_scale: ScaleLike) -> Tensor:
    if not tensor.is_floating_point():
        raise QuantlensError(f"{fmt.name}: can only quantize a floating-point tensor, got {tensor.dtype}")
    s2 = _global_scale(fmt, global_scale)
    r, c = scope_shape(fmt, tuple(tensor.shape), role)  # checks the blocks before any work
    if tensor.numel() == 0:
        return tensor.detach().clone()
    x = tensor.detach().to(torch.float32)
    m = weight_matrix(x) if role == "weight" else activation_matrix(x)
    out = kernel_for(fmt)(to_tiles(m, r, c), fmt, s2)
    return out.reshape(tensor.shape).to(tensor.dtype)
