"""How a tensor is cut into the scopes that share a scale.

Every format sees a 2-D matrix ``[R, K]`` whose last axis ``K`` is the reduction axis:

* a weight ``[out, in, *k]`` is ``w.reshape(out, -1)`` (a conv's reduction axis is
  ``in * kh * kw``, in PyTorch's memory order, the order of ``unfold``/im2col); a 1-D weight is
  ``[out, 1]``, a scalar ``[1, 1]``;
* an activation ``[..., K]`` is ``x.reshape(-1, K)`` (rows are tokens / positions).

A scope of ``r x c`` values (``r`` rows, ``c`` consecutive values along ``K``) makes the view
``[R/r, r, K/c, c]``; its scale is the ``amax`` over dims 1 and 3:

=========  =========================  =========================
scope      weight                     activation
=========  =========================  =========================
tensor     ``R x K``                  ``R x K``
row        ``1 x K``                  ``1 x K`` (per token)
block      ``1 x N``                  ``1 x N``
tile       ``N x N`` (2-D only)       ``1 x N`` (DeepSeek-V3's)
=========  =========================  =========================

Policy: a block that does not divide its axis is an error, not padding (zero padding would
keep every ``amax`` but change the format's storage; say what you want instead).

Example:
    >>> import torch
    >>> to_tiles(torch.zeros(4, 64), 1, 32).shape
    torch.Size([4, 1, 2, 32])
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.quant.formats.format import Format

__all__ = ["Role", "weight_matrix", "activation_matrix", "matrix_shape", "scope_shape", "to_tiles"]

Role = Literal["weight", "activation"]

_INSTEAD = "quantize it with a per-row format (e.g. fp8-e4m3-channel, int8-channel) or leave it in float"


def weight_matrix(w: Tensor) -> Tensor:
    """``w`` as ``[out, in * prod(kernel)]`` (``[out, 1]`` for 1-D, ``[1, 1]`` for a scalar)."""
    if w.dim() == 0:
        return w.reshape(1, 1)
    return w.reshape(w.shape[0], -1)


def activation_matrix(x: Tensor) -> Tensor:
    """``x`` as ``[prod(leading dims), last dim]`` (``[1, 1]`` for a scalar)."""
    if x.dim() == 0:
        return x.reshape(1, 1)
    return x.reshape(-1, x.shape[-1])


def matrix_shape(shape: tuple[int, ...], role: Role) -> tuple[int, int]:
    """``(R, K)`` of the matrix view of a tensor of ``shape`` (:func:`weight_matrix`, :func:`activation_matrix`)."""
    if role == "weight":
        rows = shape[0] if len(shape) else 1
        k = 1
        for d in shape[1:]:
            k *= d
        return rows, k
    k = shape[-1] if len(shape) else 1
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows, k


def scope_shape(fmt: Format, shape: tuple[int, ...], role: Role) -> tuple[int, int]:
    """``(r, c)``: the rows and reduction-axis values that share one scale of ``fmt``.

    ``shape`` is the original tensor's shape (a ``tile`` format needs a 2-D weight). Raises a
    one-line :class:`~quantlens.errors.QuantlensError` when a block does not divide its axis.
    """
    rows, k = matrix_shape(shape, role)
    if fmt.scope in ("tensor", "none"):
        return rows, k
    if fmt.scope == "row":
        return 1, k
    n = fmt.block
    if fmt.scope == "tile" and role == "weight":
        if len(shape) != 2:
            raise QuantlensError(
                f"{fmt.name} quantizes 2-D weights in {n}x{n} tiles, this weight has shape {tuple(shape)}: {_INSTEAD}"
            )
        if rows % n:
            raise QuantlensError(f"{fmt.name}: the weight has {rows} rows, not a multiple of the {n}x{n} tile; {_INSTEAD}")
    if k % n:
        raise QuantlensError(f"{fmt.name}: the reduction axis has {k} values, not a multiple of the block size {n}; {_INSTEAD}")
    return (n if fmt.scope == "tile" and role == "weight" else 1), n


def to_tiles(m: Tensor, r: int, c: int) -> Tensor:
    """The ``[R, K]`` matrix ``m`` as ``[R/r, r, K/c, c]`` (``r`` divides ``R``, ``c`` divides ``K``)."""
    rows, k = m.shape
    return m.reshape(rows // r, r, k // c, c)
