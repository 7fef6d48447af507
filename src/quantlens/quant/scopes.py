"""A weight as the rows of its format's scopes: ``[scopes, values per scope]``, and back.

A format quantizes a weight in *scopes*, the values that share one scale
(:mod:`quantlens.quant.formats.tiles`): the whole tensor, an output row, a block of ``N``
consecutive values of the reduction axis, a ``N x N`` tile of a 2-D weight. :func:`scope_rows`
lays each scope out as one row (a tile's ``N`` rows of ``N`` values become one row of ``N^2``),
padding the reduction axis (and a tile's rows) with zeros where a block does not divide it,
as the quantizer does (:mod:`quantlens.quant.padded`). What reads or sets one value per scope
(the clipping fixes, an exporter's scale tensor) works on these rows.

Example:
    >>> import torch
    >>> rows, back = scope_rows(torch.arange(8.0).reshape(2, 4), "int4-g2")
    >>> rows.tolist()
    [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]
    >>> back(rows).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

from typing import Callable, Union

import torch.nn.functional as F
from torch import Tensor

from quantlens.quant.formats import Format, get_format
from quantlens.quant.formats.tiles import scope_shape, to_tiles, weight_matrix
from quantlens.quant.padded import padding

__all__ = ["scope_rows"]


def scope_rows(w: Tensor, fmt: Union[str, Format]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``w`` (float32) as ``[scopes, values per scope]`` of ``fmt``, padded with zeros where a
    block does not divide; and the function that puts such rows back into ``w``'s shape."""
    f = get_format(fmt)
    shape = tuple(w.shape)
    m = weight_matrix(w.float())
    rows, k = m.shape
    pr, pk = padding(shape, f, "weight")
    m = F.pad(m, (0, pk, 0, pr))
    view_shape = tuple(m.shape) if len(shape) == 2 or f.scope != "tile" else shape
    r, c = scope_shape(f, view_shape, "weight")
    t = to_tiles(m, r, c)  # [R/r, r, K/c, c]
    grid = t.shape
    out = t.permute(0, 2, 1, 3).reshape(grid[0] * grid[2], r * c)

    def back(x: Tensor) -> Tensor:
        tiles = x.reshape(grid[0], grid[2], r, c).permute(0, 2, 1, 3).reshape(m.shape)
        return tiles[:rows, :k].reshape(shape)

    return out, back
