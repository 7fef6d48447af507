"""Block Hadamard rotation of a layer's input, fix ``hadamard`` (``hadamard-16``, ``-32``, ``-128``).

A Linear ``y = x W^T + b`` with ``K`` input features is computed as::

    y = (x D)(W D)^T + b,      D = diag(H_b, ..., H_b)   (K/b blocks)

with ``H_b`` the Sylvester-Hadamard matrix of order ``b`` (16, 32 or 128), normalised:
``H_1 = [1]``, ``H_2n = [[H_n, H_n], [H_n, -H_n]] / sqrt(2)``; ``H_b`` is symmetric and
orthogonal, so ``D D^T = I`` and the float function is unchanged (up to float rounding). The
weight becomes ``W D`` (computed in float64, stored in the weight's dtype); the input rotation
``x D`` is an online op on the layer's own input edge (:mod:`.online`: siblings that read one
tensor share it), so the layer's input quantizer sees the rotated tensor. Each block of ``b``
features is spread over the ``b`` rotated features, which flattens outliers inside the format's
blocks (QuaRot, arXiv 2404.00456; a block rotation of the group size stays local to the layer).

``hadamard`` picks ``b``: the format's block when it is 16, 32 or 128 (NVFP4 16, MX 32,
``int{b}-g128``), else the largest of 128, 32, 16 that divides ``K``. Linear layers only; a
plain cast (``bf16``, ``fp16``) has nothing a rotation could help.

Example:
    >>> from quantlens.fixes import FixContext, make_fix                          # doctest: +SKIP
    >>> g2 = make_fix("hadamard", FixContext(cfg)).apply(g, ["layers.3.mlp.down_proj"])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from quantlens.errors import QuantlensError
from quantlens.fixes.base import FixContext, layer_weight_spec, register_fix
from quantlens.fixes.online import insert_input_op
from quantlens.graph.layers import LayerGraph
from quantlens.quant.formats import get_format
from quantlens.quant.spec import QuantSpec

__all__ = ["hadamard_matrix", "BlockHadamard", "HadamardFix", "HADAMARD_BLOCKS"]

HADAMARD_BLOCKS = (16, 32, 128)


def hadamard_matrix(b: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """The normalised Sylvester-Hadamard matrix of order ``b`` (a power of two)."""
    if b < 1 or b & (b - 1):
        raise QuantlensError(f"a Hadamard block is a power of two, got {b}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(b)).to(dtype)


class BlockHadamard(nn.Module):
    """``x -> x D`` along the last axis: ``D`` block diagonal with ``H_b`` blocks."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block
        self.register_buffer("h", hadamard_matrix(block, torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        k = x.shape[-1]
        y = x.reshape(*x.shape[:-1], k // self.block, self.block) @ self.h.to(x.dtype)
        return y.reshape(x.shape)


def rotate_weight(w: Tensor, block: int) -> Tensor:
    """``W D`` (float64 arithmetic, ``w``'s dtype)."""
    r, k = w.shape
    wd = w.detach().double().reshape(r, k // block, block) @ hadamard_matrix(block).to(w.device)
    return wd.reshape(r, k).to(w.dtype)


class HadamardFix:
    """Rotate each chosen Linear's input by a block Hadamard (module docstring)."""

    block: Optional[int] = None  # None: from the format

    def __init__(self, ctx: FixContext) -> None:
        self.ctx = ctx

    @classmethod
    def not_applicable(cls, spec: QuantSpec) -> Optional[str]:
        if spec.format is not None and get_format(spec.format).family == "float":
            return f"{spec.format} is a plain cast with no scale: a rotation has nothing to spread"
        return None

    def block_for(self, name: str, k: int, spec: Optional[QuantSpec]) -> int:
        if self.block is not None:
            if k % self.block:
                raise QuantlensError(f"fix {self.name!r} on layer {name}: its {k} input features are not a multiple of the block {self.block}")
            return self.block
        f = None if spec is None or spec.format is None else get_format(spec.format)
        if f is not None and f.block in HADAMARD_BLOCKS and k % f.block == 0:
            return f.block
        for b in sorted(HADAMARD_BLOCKS, reverse=True):
            if k % b == 0:
                return b
        raise QuantlensError(f"fix {self.name!r} on layer {name}: its {k} input features are not a multiple of 16, 32 or 128")

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        return self._rotate(graph, layers, weights=True)

    def restore(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        """The online rotations alone, for saved weights that are already ``W D`` (export's rebuild)."""
        return self._rotate(graph, layers, weights=False)

    def _rotate(self, graph: LayerGraph, layers: Sequence[str], weights: bool) -> LayerGraph:
        blocks: dict[str, int] = {}
        for name in layers:
            spec = layer_weight_spec(self.ctx, self.name, name)
            m = graph.module(graph.layer(name))
            if not isinstance(m, nn.Linear):
                raise QuantlensError(f"fix {self.name!r} on layer {name}: it rotates a Linear's input features, this layer is a {type(m).__name__}")
            if graph.shared(graph.layer(name)):
                raise QuantlensError(f"fix {self.name!r} on layer {name}: its module is called more than once; rotating its weight would change every call")
            blocks[name] = self.block_for(name, m.in_features, spec)
        out = graph
        for b in sorted(set(blocks.values())):  # one op per (input tensor, block)
            names = [n for n in layers if blocks[n] == b]
            dev = graph.module(graph.layer(names[0])).weight.device
            out = insert_input_op(out, names, lambda _names, b=b, dev=dev: BlockHadamard(b).to(dev), "hadamard")
            for n in names if weights else ():
                w = out.module(out.layer(n)).weight
                with torch.no_grad():
                    w.copy_(rotate_weight(w, b))
        return out


@register_fix("hadamard", order=12)
class Hadamard(HadamardFix):
    block = None


@register_fix("hadamard-16", order=12)
class Hadamard16(HadamardFix):
    block = 16


@register_fix("hadamard-32", order=12)
class Hadamard32(HadamardFix):
    block = 32


@register_fix("hadamard-128", order=12)
class Hadamard128(HadamardFix):
    block = 128
