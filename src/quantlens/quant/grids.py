"""Does a float weight already sit on a quantization grid? (a dequantized checkpoint, e.g. from GGUF)

A model loaded from a quantized file (GGUF's Q4_1, Q8_0, a GPTQ or AWQ checkpoint dequantized to
float) has weights that are already grid values: re-quantizing them to that grid, or a finer one,
is (nearly) lossless, so a sweep makes those formats look free. :func:`detect_grid` tells.

For the weight as a matrix ``[R, K]`` (:func:`~quantlens.quant.formats.tiles.weight_matrix`) in
groups of ``g`` consecutive values of a row (``g`` in 16, 32, 64, 128, 256, or the whole row), a
group ``x`` sits on a ``b``-bit grid when every value is within ``tol`` of a level:

* symmetric: levels ``q * s``, ``s = amax / (2^(b-1) - 1)``, ``|x / s - round(x / s)| <= tol``;
* asymmetric (a float minimum, as GGUF's Q4_1): levels ``min + q * d``, ``d = (max - min) / (2^b - 1)``,
  ``|(x - min) / d - round((x - min) / d)| <= tol``.

(The group's extreme values define the grid: a quantizer maps them to the end levels.) A layer is
on the grid ``(b, g, symmetric)`` when at least ``share`` (0.9) of its sampled groups are; the
smallest ``b``, then the widest ``g`` (the sub-groups of a grid's group that hold its extreme
level pass too, so the widest group that passes is the grid's), then symmetric first, is reported. Groups of random float
values pass with probability about ``(2 tol)^(g-2)``: never, in practice. Up to ``rows`` (64) rows,
evenly spaced, are examined; a layer whose rows are shorter than 16 values is not examined.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> q = torch.randint(0, 16, (8, 64), generator=g).float()
    >>> q[:, [0, 32]], q[:, [1, 33]] = 0.0, 15.0                       # each group spans the grid
    >>> d = torch.rand(8, 2, 1, generator=g) + 0.1
    >>> w = ((q.reshape(8, 2, 32) * d) - 0.5 * d * 15).reshape(8, 64)   # 4 bits, groups of 32, a float minimum
    >>> detect_grid(w).name
    'int4-g32-asym'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from quantlens.quant.formats.tiles import weight_matrix

__all__ = ["Grid", "detect_grid", "GROUPS", "BITS", "GRID_PATTERN"]

GROUPS = (16, 32, 64, 128, 256)
#: Parses :attr:`Grid.name` (``int4-g32-asym``, ``int8-channel``).
GRID_PATTERN = re.compile(r"int(?P<bits>\d+)-(?:g(?P<group>\d+)|channel)(?P<asym>-asym)?")
BITS = (2, 3, 4, 5, 6, 8)


@dataclass(frozen=True)
class Grid:
    """A grid a weight sits on: ``bits``, ``group`` (0: the whole row), symmetric or with a float minimum."""

    bits: int
    group: int
    symmetric: bool
    share: float  # of the sampled groups on the grid

    @property
    def name(self) -> str:
        """``int4-g32`` (symmetric), ``int4-g32-asym`` (a float minimum), ``int8-channel`` (per row)."""
        where = f"-g{self.group}" if self.group else "-channel"
        return f"int{self.bits}{where}" + ("" if self.symmetric else "-asym")

    @classmethod
    def from_name(cls, name: str) -> Optional["Grid"]:
        """The grid a :attr:`name` names (``share`` NaN), or None for another text."""
        m = GRID_PATTERN.fullmatch(name)
        if m is None:
            return None
        return cls(int(m["bits"]), int(m["group"] or 0), not m["asym"], float("nan"))

    def describe(self) -> str:
        """In words: ``4-bit groups of 32 with a float minimum``."""
        where = f"groups of {self.group}" if self.group else "one scale per row"
        return f"{self.bits}-bit {where}" + ("" if self.symmetric else " with a float minimum")


def _on_grid(groups: Tensor, bits: int, symmetric: bool, tol: float) -> Tensor:
    """Per group (rows of ``groups``): whether every value is within ``tol`` steps of a level."""
    if symmetric:
        step = groups.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
        r = groups / torch.where(step > 0, step, torch.ones_like(step))
    else:
        lo = groups.amin(dim=1, keepdim=True)
        step = (groups.amax(dim=1, keepdim=True) - lo) / (2**bits - 1)
        r = (groups - lo) / torch.where(step > 0, step, torch.ones_like(step))
    return (r - r.round()).abs().amax(dim=1) <= tol


def detect_grid(w: Tensor, *, rows: int = 64, share: float = 0.9, tol: float = 1e-3) -> Optional[Grid]:
    """The coarsest grid ``w`` sits on (see the module docstring), or None."""
    m = weight_matrix(w.detach())
    r, k = m.shape
    if k < GROUPS[0] or m.numel() == 0:
        return None
    if r > rows:  # the rows first, then float64: no float64 copy of the whole weight
        m = m[torch.linspace(0, r - 1, rows).round().long()]
    m = m.double()
    live = m.abs().amax(dim=1) > 0
    m = m[live]
    if m.shape[0] == 0:
        return None
    sizes = [0] + [g for g in reversed(GROUPS) if g < k and k % g == 0]  # the widest first: a grid's sub-groups pass too
    for bits in BITS:
        for g in sizes:
            groups = m.reshape(-1, g or k)
            for symmetric in (True, False):
                frac = float(_on_grid(groups, bits, symmetric, tol).double().mean())
                if frac >= share:
                    return Grid(bits, g, symmetric, frac)
    return None
