"""A layer's weight quantizer split in two: the scales of a scope, then the values with those scales.

The format kernels (:mod:`quantlens.quant.formats`) compute each scope's scale and its values
in one call. A fix that quantizes column by column and changes the columns not yet quantized
(GPTQ) needs the two apart: a scope's scale is *set* once, from the values its columns have
then, and every later column of the scope is quantized with it. :class:`ScopedQuantizer` gives,
for the weight's matrix view ``W [R, K]`` (:func:`~quantlens.quant.formats.tiles.weight_matrix`):

* ``scope_of[k]``: the column scope of column ``k`` (the whole row for ``tensor``/``row``
  scopes, ``k // N`` for blocks of ``N`` along ``K``; a last, shorter block where ``N`` does not
  divide ``K``, which is the zero padding of :mod:`quantlens.quant.padded`);
* ``params(V)``: the scale parameters of a column scope from its values ``V [R, m]`` (one set
  per row group: every row, ``N`` rows for a tile, all rows for a tensor scope), each broadcast
  to ``[R, 1]``;
* ``quantize(x, p)``: columns ``x [R, c]`` of that scope quantized with ``p``.

Per family (``amax`` of the scope's values, float32; the kernels' own formulas):

* ``int``: ``s = amax / qmax`` (1 where 0 or where ``1/s`` overflows), ``clamp(round(x/s)) s``;
* ``fp8``: ``s = amax / max_elem`` (1 where 0), ``cast(x / s) s``;
* ``mx``: ``X = 2^k``, ``k`` the E8M0 exponent of the floor or rceil rule, ``cast(x / X) X``;
* ``nvfp4``: ``s2`` of the whole weight (fixed when the quantizer is built),
  ``s_b = e4m3(amax / (6 s2))``, ``(e2m1(x / (s_b s2)) s_b) s2``;
* ``float`` (bf16/fp16): no scale, a cast;
* an integer-grid :class:`~quantlens.quant.spec.QuantSpec` (``format`` None): the spec's range
  estimator on the scope's rows, ``spec.qparams``, :func:`~quantlens.quant.primitives.fake_quantize_formula`.

Setting every scope from ``W`` itself and quantizing gives exactly ``quantize_weight(W, spec)``
(:meth:`ScopedQuantizer.quantize_all`; the tests check it bit for bit for every family).

Example:
    >>> import torch
    >>> from quantlens.quant.spec import QuantSpec
    >>> w = torch.randn(4, 64)
    >>> sq = ScopedQuantizer.for_weight(w, QuantSpec(bits=4, format="mxfp4"))
    >>> from quantlens.quant.formats import fake_quantize
    >>> torch.equal(sq.quantize_all(w), fake_quantize(w, "mxfp4"))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.quant.formats import ELEMENTS, Format, get_format
from quantlens.quant.formats.bits import pow2
from quantlens.quant.formats.cast import FLOAT_DTYPES
from quantlens.quant.formats.elements import E2M1, E4M3, cast
from quantlens.quant.formats.mx import mx_exponent
from quantlens.quant.formats.nvfp4 import nvfp4_global_scale
from quantlens.quant.primitives import fake_quantize_formula
from quantlens.quant.quantizer import group_size
from quantlens.quant.ranges import estimate_weight_rows
from quantlens.quant.spec import PerChannel, PerTensor, QuantSpec
from quantlens.quant.formats.tiles import weight_matrix

__all__ = ["ScopedQuantizer"]

Params = tuple[Tensor, ...]


@dataclass(frozen=True)
class ScopedQuantizer:
    """The scales-then-values quantizer of one weight (module docstring).

    Attributes:
        spec: the layer's weight spec (a named format, or an integer grid).
        rows: ``R`` of the weight's matrix view.
        width: columns per column scope (``K`` for tensor and row scopes).
        row_group: rows that share a scale (1; ``N`` for tiles; ``R`` for a tensor scope).
        global_scale: NVFP4's ``s2`` of the whole weight, else None.
    """

    spec: QuantSpec
    rows: int
    cols: int
    width: int
    row_group: int
    global_scale: Optional[Tensor] = None

    @classmethod
    def for_weight(cls, w: Tensor, spec: QuantSpec) -> "ScopedQuantizer":
        """The quantizer of weight ``w`` (any rank, ``[out, ...]``) under ``spec``."""
        m = weight_matrix(w)
        r, k = m.shape
        if spec.format is not None:
            f = get_format(spec.format)
            if f.scope == "tile" and w.dim() != 2:
                raise QuantlensError(f"{f.name} quantizes 2-D weights in {f.block}x{f.block} tiles, this weight has shape {tuple(w.shape)}")
            width = f.block if f.scope in ("block", "tile") else k
            group = {"tensor": r, "tile": f.block}.get(f.scope, 1)
            s2 = nvfp4_global_scale(m.detach().float().abs().max()) if f.family == "nvfp4" else None
            return cls(spec, r, k, width, group, s2)
        g = spec.granularity
        if isinstance(g, PerTensor):
            return cls(spec, r, k, k, r)
        gs = None if isinstance(g, PerChannel) else group_size(w, spec)
        width = k if gs is None else gs * (k // w.shape[1])
        return cls(spec, r, k, width, 1)

    @property
    def format(self) -> Optional[Format]:
        return None if self.spec.format is None else get_format(self.spec.format)

    @property
    def scopes(self) -> int:
        """Number of column scopes."""
        return math.ceil(self.cols / self.width)

    def scope_of(self, k: int) -> int:
        return k // self.width

    def columns(self, scope: int) -> range:
        """The columns of column scope ``scope``."""
        return range(scope * self.width, min((scope + 1) * self.width, self.cols))

    def _amax(self, v: Tensor) -> Tensor:
        """``amax`` per row group of ``v [R, m]``, broadcast to ``[R, 1]`` (float32)."""
        a = v.detach().float().abs().amax(dim=1, keepdim=True)
        if self.row_group == 1:
            return a
        n = self.row_group
        pad = (-a.shape[0]) % n
        g = torch.cat([a, a.new_zeros(pad, 1)]).reshape(-1, n).amax(dim=1, keepdim=True)
        return g.repeat_interleave(n, dim=0)[: a.shape[0]]

    def params(self, v: Tensor) -> Params:
        """The scale parameters of a column scope whose values are ``v [R, m]``."""
        f = self.format
        if f is None:
            return self._grid_params(v)
        if f.family == "float":
            return ()
        amax = self._amax(v)
        if f.family == "int":
            scale = amax / float(2 ** (f.bits - 1) - 1)
            inv = 1.0 / scale
            ok = (scale > 0) & torch.isfinite(inv)
            return torch.where(ok, scale, torch.ones_like(scale)), torch.where(ok, inv, torch.ones_like(inv))
        elem = ELEMENTS[f.element]
        if f.family == "fp8":
            scale = amax / torch.full((), elem.max, device=amax.device)
            return (torch.where(scale > 0, scale, torch.ones_like(scale)),)
        if f.family == "mx":
            return (pow2(mx_exponent(amax, elem, rceil=f.scale_rule == "pow2-rceil")),)
        assert self.global_scale is not None
        s2 = self.global_scale.to(device=amax.device, dtype=torch.float32).reshape(())
        six_s2 = 6.0 * s2
        s_b = cast(amax / torch.where(six_s2 > 0, six_s2, torch.ones_like(six_s2)), E4M3)
        return s_b, s2

    def quantize(self, x: Tensor, p: Params) -> Tensor:
        """Columns ``x [R, c]`` of one scope quantized with its parameters ``p`` (``x``'s dtype)."""
        f = self.format
        t = x.detach().float()
        if f is None:
            scale, zp = p
            q = fake_quantize_formula(t, scale, zp, self.spec.qmin, self.spec.qmax, axis=0)
        elif f.family == "float":
            top = torch.finfo(FLOAT_DTYPES[f.element]).max
            q = torch.clamp(t, -top, top).to(FLOAT_DTYPES[f.element]).to(torch.float32)
        elif f.family == "int":
            scale, inv = p
            qmax = 2 ** (f.bits - 1) - 1
            q = (torch.clamp(torch.round(t * inv), -qmax - 1, qmax) + 0.0) * scale
        elif f.family in ("fp8", "mx"):
            (scale,) = p
            q = cast(t / scale, ELEMENTS[f.element]) * scale
        else:
            s_b, s2 = p
            denom = s_b * s2
            live = denom > 0
            q = cast(t / torch.where(live, denom, torch.ones_like(denom)), E2M1)
            q = torch.where(live, (q * s_b) * s2, torch.zeros_like(q))
        return q.to(x.dtype)

    def _grid_params(self, v: Tensor) -> Params:
        """An integer grid: the spec's estimator on each row group's values, then ``qparams``."""
        spec = self.spec
        t = v.detach().float()
        if self.row_group == 1:
            lo, hi = estimate_weight_rows(t, spec)
            scale, zp = spec.qparams(lo, hi)
            return scale, zp
        lo, hi = estimate_weight_rows(t.reshape(1, -1), spec)
        scale, zp = spec.qparams(lo, hi)
        return scale.expand(self.rows).contiguous(), zp.expand(self.rows).contiguous()

    def quantize_all(self, w: Tensor) -> Tensor:
        """``w`` quantized with every scope set from ``w`` itself: the format's own quantization."""
        m = weight_matrix(w.detach())
        out = torch.empty_like(m)
        for s in range(self.scopes):
            cols = self.columns(s)
            v = m[:, cols.start:cols.stop]
            out[:, cols.start:cols.stop] = self.quantize(v, self.params(v))
        return out.reshape(w.shape)
