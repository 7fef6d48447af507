"""ggml's K-quants ``Q4_K`` and ``Q6_K``: super-blocks of 256 with 6- and 8-bit sub-block scales.

Exact to ``quantize_row_q4_K_ref`` / ``quantize_row_q6_K_ref`` (ggml-quants.c) built with strict
float32 arithmetic: every sum runs over the values in order, one rounding per step (as the C
loops; a build that contracts ``s += a*b`` into an FMA may differ in a sum's last bit, and
rarely in a choice). ``rne`` is ggml's ``nearest_int`` (``fval + 1.5 * 2^23``): round half to
even; ``fp16`` rounds half to even.

``gguf-q6_k`` (6.5625 bits/value: 16 sub-blocks of 16, levels ``l`` in ``[-32, 31]``):

* each sub-block: ``make_qx_quants(nmax=32, weights x^2)``: ``m`` the first value of largest
  magnitude (signed); all zero below ``1e-15``; ``l = clamp(rne(-32/m * x), -32, 31)``,
  ``s = sum(w x l) / sum(w l l)``; then for ``t`` in ``-9..9`` (not 0) the levels of
  ``-(32 + 0.1 t)/m`` replace them when ``sum(w x l)^2 > best * sum(w l l)`` (``best = s sum(w x l)``);
* the super-block: ``S`` the sub-block scale of largest magnitude (signed; all zero below
  ``1e-15``), ``iscale = -128/S``, ``d = fp16(1/iscale)``, ``sc_j = min(127, rne(iscale s_j))``
  (int8), then every value again: ``l = clamp(rne(x / (d sc_j)), -32, 31)`` (a sub-block with
  ``d sc_j = 0`` keeps its levels, which multiply 0);
* value ``= (d sc_j) (l)``.

``gguf-q4_k`` (4.5 bits/value: 8 sub-blocks of 32, levels ``0..15`` and a min):

* each sub-block: weights ``w = sqrt(sum(x^2)/32) + |x|``; ``make_qkx2_quants(nmax=15,
  rmin=-1, rdelta=0.1, nstep=20)``: ``min = min(x, 0)``; ``l = clamp(rne(15/(max-min) (x-min)),
  0, 15)``, error ``sum w (s l + min - x)^2``; for ``t = 0..20`` the levels of
  ``(-1 + 0.1 t + 15)/(max - min)`` (``min`` the best so far) give the weighted least-squares
  ``s, min`` (``min`` capped at 0, then ``s = sum(w l x)/sum(w l^2)``), kept when the error drops;
* the super-block: ``d = fp16(max_j s_j / 63)``, ``dmin = fp16(max_j m_j / 63)`` (``m_j = -min_j``),
  ``sc_j = min(63, rne(63 s_j / max s))``, ``mn_j = min(63, rne(63 m_j / max m))`` (6 bits
  each; a negative ``rne`` wraps as C's ``uint8_t``), then ``l = clamp(rne((x + dmin mn_j) /
  (d sc_j)), 0, 15)`` (``d sc_j = 0``: the search's levels);
* value ``= (d sc_j) l - (dmin mn_j)``.

Example:
    >>> import torch
    >>> from quantlens.quant.formats import fake_quantize
    >>> w = torch.linspace(-1, 1, 512).reshape(2, 256)
    >>> (fake_quantize(w, "gguf-q6_k") - w).abs().max() < 0.02
    tensor(True)
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from quantlens.quant.formats.ggml_common import fp16, seq_sum

__all__ = ["encode_q4_k", "encode_q6_k", "decode_k", "QK_K"]

QK_K = 256
_EPS = float(np.float32(1e-15))  # GROUP_MAX_EPS


def _f32(v: float) -> float:
    return float(np.float32(v))


def _safe(d: Tensor, bad: Tensor) -> Tensor:
    return torch.where(bad, torch.ones_like(d), d)


def _first_absmax(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(amax, m)``: the first value of largest magnitude per row, unsigned and signed."""
    i = x.abs().argmax(dim=1, keepdim=True)
    m = torch.gather(x, 1, i)[:, 0]
    return m.abs(), m


def _qx_levels(x: Tensor, iscale: Tensor, nmax: int) -> Tensor:
    return torch.clamp(torch.round(iscale[:, None] * x), -nmax, nmax - 1)


def _make_qx_quants(x: Tensor, nmax: int) -> tuple[Tensor, Tensor]:
    """``make_qx_quants(n, nmax, x, L, rmse_type=1, NULL)`` per row: ``(scale, L)`` (``L = l + nmax``)."""
    amax, m = _first_absmax(x)
    zero = amax < _EPS
    m = _safe(m, zero)
    w = x * x

    def sums(lv: Tensor) -> tuple[Tensor, Tensor]:
        return seq_sum((w * x) * lv), seq_sum((w * lv) * lv)

    lv = _qx_levels(x, torch.full_like(m, float(-nmax)) / m, nmax)
    sumlx, suml2 = sums(lv)
    scale = torch.where(suml2 != 0, sumlx / _safe(suml2, suml2 == 0), torch.zeros_like(sumlx))
    best = scale * sumlx
    levels = lv + nmax
    for t in range(-9, 10):
        if t == 0:
            continue
        c = -_f32(np.float32(nmax) + np.float32(0.1) * np.float32(t))
        lv = _qx_levels(x, torch.full_like(m, c) / m, nmax)
        sumlx, suml2 = sums(lv)
        take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale = torch.where(take, sumlx / _safe(suml2, ~take), scale)
        best = torch.where(take, scale * sumlx, best)
        levels = torch.where(take[:, None], lv + nmax, levels)
    return torch.where(zero, torch.zeros_like(scale), scale), torch.where(zero[:, None], torch.zeros_like(levels), levels)


def encode_q6_k(x: Tensor) -> dict[str, Tensor]:
    """``quantize_row_q6_K_ref`` on rows of 256 (module docstring): ``d``, ``sc`` (int8 ``[B, 16]``), ``q``."""
    b = x.shape[0]
    scales, levels = _make_qx_quants(x.reshape(b * 16, 16), 32)
    scales, levels = scales.reshape(b, 16), levels.reshape(b, 16, 16)
    max_abs, max_scale = _first_absmax(scales)
    zero = max_abs < _EPS
    iscale = torch.full_like(max_scale, -128.0) / _safe(max_scale, zero)
    d = fp16(torch.ones_like(iscale) / iscale)
    sc = torch.clamp(torch.round(iscale[:, None] * scales), max=127)
    dd = d.to(torch.float32)[:, None] * sc
    live = dd != 0
    requant = torch.clamp(torch.round(x.reshape(b, 16, 16) / _safe(dd, ~live)[..., None]), -32, 31) + 32
    q = torch.where(live[..., None], requant, levels)
    d = torch.where(zero, torch.zeros_like(d), d)
    sc = torch.where(zero[:, None], torch.zeros_like(sc), sc)
    q = torch.where(zero[:, None, None], torch.zeros_like(q), q)
    return {"d": d, "sc": sc.to(torch.int8), "q": q.reshape(b, QK_K).to(torch.uint8)}


def _make_qkx2_quants(x: Tensor, w: Tensor, nmax: int, rmin: float, rdelta: float, nstep: int) -> tuple[Tensor, Tensor, Tensor]:
    """``make_qkx2_quants(..., use_mad=false)`` per row: ``(scale, the_min, L)``."""
    lo, hi = x.amin(dim=1), x.amax(dim=1)
    sum_w = seq_sum(w[:, 1:], start=w[:, 0])
    sum_x = seq_sum(w[:, 1:] * x[:, 1:], start=w[:, 0] * x[:, 0])
    lo = torch.clamp(lo, max=0.0)
    flat = hi == lo

    def levels(iscale: Tensor, lo: Tensor) -> Tensor:
        return torch.clamp(torch.round(iscale[:, None] * (x - lo[:, None])), 0, nmax)

    def error(scale: Tensor, lo: Tensor, lv: Tensor) -> Tensor:
        diff = (scale[:, None] * lv + lo[:, None]) - x
        return seq_sum(w * (diff * diff))

    iscale = torch.full_like(lo, float(nmax)) / _safe(hi - lo, flat)
    scale = torch.ones_like(iscale) / iscale
    lv = levels(iscale, lo)
    best = error(scale, lo, lv)
    for t in range(nstep + 1):
        c = _f32(np.float32(np.float32(rmin) + np.float32(rdelta) * np.float32(t)) + np.float32(nmax))
        rng = hi - lo
        aux = levels(torch.full_like(lo, c) / _safe(rng, flat), lo)
        wl = w * aux
        sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * aux), seq_sum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / _safe(det, ~ok)
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / _safe(det, ~ok)
        pos = this_min > 0
        this_scale = torch.where(pos, sum_xl / _safe(sum_l2, sum_l2 == 0), this_scale)
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        cur = error(this_scale, this_min, aux)
        take = ok & (cur < best) & ~flat
        lv = torch.where(take[:, None], aux, lv)
        best = torch.where(take, cur, best)
        scale = torch.where(take, this_scale, scale)
        lo = torch.where(take, this_min, lo)
    scale = torch.where(flat, torch.zeros_like(scale), scale)
    lv = torch.where(flat[:, None], torch.zeros_like(lv), lv)
    return scale, -lo, lv


def _six_bits(v: Tensor, inv: Tensor) -> Tensor:
    """``MIN(63, (uint8_t) nearest_int(inv * v))``."""
    return torch.clamp(torch.remainder(torch.round(inv[:, None] * v), 256), max=63)


def encode_q4_k(x: Tensor) -> dict[str, Tensor]:
    """``quantize_row_q4_K_ref`` on rows of 256: ``d``, ``dmin``, ``sc``/``mn`` (6-bit ``[B, 8]``), ``q``."""
    b = x.shape[0]
    sub = x.reshape(b * 8, 32)
    av_x = torch.sqrt(seq_sum(sub * sub) / torch.full((b * 8,), 32.0, device=x.device))
    scales, mins, levels = _make_qkx2_quants(sub, av_x[:, None] + sub.abs(), 15, -1.0, 0.1, 20)
    scales, mins = scales.reshape(b, 8), mins.reshape(b, 8)
    zero = torch.zeros(b, dtype=x.dtype, device=x.device)
    max_scale, max_min = scales.amax(dim=1), mins.amax(dim=1)
    max_scale = torch.where(max_scale > 0, max_scale, zero)  # C: +0 unless one is > 0
    max_min = torch.where(max_min > 0, max_min, zero)
    inv_scale = torch.where(max_scale > 0, torch.full_like(max_scale, 63.0) / _safe(max_scale, max_scale <= 0), zero)
    inv_min = torch.where(max_min > 0, torch.full_like(max_min, 63.0) / _safe(max_min, max_min <= 0), zero)
    sc, mn = _six_bits(scales, inv_scale), _six_bits(mins, inv_min)
    d = fp16(max_scale / torch.full_like(max_scale, 63.0))
    dmin = fp16(max_min / torch.full_like(max_min, 63.0))
    dd = d.to(torch.float32)[:, None] * sc
    dm = dmin.to(torch.float32)[:, None] * mn
    live = dd != 0
    xs = x.reshape(b, 8, 32)
    requant = torch.clamp(torch.round((xs + dm[..., None]) / _safe(dd, ~live)[..., None]), 0, 15)
    q = torch.where(live[..., None], requant, levels.reshape(b, 8, 32))
    return {"d": d, "dmin": dmin, "sc": sc.to(torch.uint8), "mn": mn.to(torch.uint8), "q": q.reshape(b, QK_K).to(torch.uint8)}


def decode_k(ggml_type: str, f: Mapping[str, Tensor]) -> Tensor:
    """``dequantize_row_q4_K`` / ``_q6_K``: ``(d sc) q - dmin mn`` resp. ``(d sc)(q - 32)``, float32 ``[B, 256]``."""
    q = f["q"].to(torch.float32)
    b = q.shape[0]
    d = f["d"].to(torch.float32)[:, None]
    if ggml_type == "Q6_K":
        scale = d * f["sc"].to(torch.float32)
        return (scale[..., None] * (q.reshape(b, 16, 16) - 32.0)).reshape(b, QK_K)
    scale = d * f["sc"].to(torch.float32)
    mins = f["dmin"].to(torch.float32)[:, None] * f["mn"].to(torch.float32)
    return (scale[..., None] * q.reshape(b, 8, 32) - mins[..., None]).reshape(b, QK_K)
