"""A format applied to a layer's tensor whose reduction axis is not a multiple of the block: padded.

quantlens's one policy, the same for weights and activations, in every command: the matrix view
``[R, K]`` (:mod:`quantlens.quant.formats.tiles`) is padded with zeros to ``K' = ceil(K / N) N``
columns (and, for a weight's ``N x N`` tiles, ``R'`` rows), quantized, and cut back to
``[R, K]``. Zeros never change a block's ``amax`` (nor NVFP4's tensor ``amax``) and quantize to
zero, so this is the format with a shorter last block of ``K mod N`` values in each row: what a
kernel that pads its operand with zeros computes. :func:`padding_note` says so in one line.

Example:
    >>> import torch
    >>> w = torch.randn(4, 40)
    >>> quantize_padded(w, "mxfp4", "weight").shape
    torch.Size([4, 40])
    >>> padding_note((4, 40), "mxfp4", "weight")
    'its reduction axis has 40 values, not a multiple of mxfp4 blocks of 32: padded with zeros (a last block of 8 values in each row)'
"""

from __future__ import annotations

from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor

from quantlens.quant.formats import Format, fake_quantize, fake_quantize_activation, get_format
from quantlens.quant.formats.tiles import matrix_shape

__all__ = ["quantize_padded", "padding_note", "padding", "warn_padded"]


def padding(shape: tuple[int, ...], fmt: Union[str, Format], role: str) -> tuple[int, int]:
    """``(rows, columns)`` of zeros the ``[R, K]`` view of ``shape`` needs for ``fmt``'s blocks."""
    f = get_format(fmt)
    if f.scope not in ("block", "tile") or not f.block:
        return 0, 0
    rows, k = matrix_shape(shape, role)  # type: ignore[arg-type]
    n = f.block
    pad_rows = (-rows) % n if (f.scope == "tile" and role == "weight" and len(shape) == 2) else 0
    return pad_rows, (-k) % n


def padding_note(shape: tuple[int, ...], fmt: Union[str, Format], role: str) -> Optional[str]:
    """One line saying how a tensor of ``shape`` is padded for ``fmt`` (None: it is not)."""
    f = get_format(fmt)
    pr, pk = padding(shape, f, role)
    if not (pr or pk):
        return None
    k = matrix_shape(shape, role)[1]  # type: ignore[arg-type]
    parts = []
    if pk:
        parts.append(f"its reduction axis has {k} values, not a multiple of {f.name} blocks of {f.block}")
    if pr:
        parts.append(f"its {shape[0]} rows are not a multiple of {f.name}'s {f.block}x{f.block} tiles")
    last = f" (a last block of {k % f.block} values in each row)" if pk else ""
    return "; ".join(parts) + f": padded with zeros{last}"


def quantize_padded(t: Tensor, fmt: Union[str, Format], role: str, global_scale: Optional[Tensor] = None) -> Tensor:
    """``t`` quantized and dequantized in ``fmt`` (``role``: ``weight`` or ``activation``), padded
    as the module docstring says where a block does not divide its axis."""
    f = get_format(fmt)
    apply = fake_quantize if role == "weight" else fake_quantize_activation
    if f.scope == "tile" and role == "weight" and t.dim() != 2:
        return apply(t, f, global_scale=global_scale)  # the format's one-line error: tiles need a 2-D weight
    pr, pk = padding(tuple(t.shape), f, role)
    if not (pr or pk):
        return apply(t, f, global_scale=global_scale)
    m = t.reshape(t.shape[0], -1) if role == "weight" else t.reshape(-1, t.shape[-1])
    rows, k = m.shape
    q = apply(F.pad(m, (0, pk, 0, pr)), f, global_scale=global_scale)
    return q[:rows, :k].reshape(t.shape)


def warn_padded(padded: "dict[str, list[str]]") -> None:
    """One warning line per format: how many layers it pads, the first of them and why."""
    import warnings

    from quantlens.errors import QuantlensWarning

    for fmt, layers in padded.items():
        more = f" and {len(layers) - 1} more" if len(layers) > 1 else ""
        warnings.warn(f"{fmt}: {len(layers)} layer(s) padded to whole blocks: {layers[0]}{more}", QuantlensWarning, stacklevel=3)
