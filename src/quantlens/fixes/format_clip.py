"""Clipping in a named number format: each scope's weights clamped, the clip found through the format's own quantizer.

A format quantizes a weight ``W`` in *scopes*, the values that share one scale (the tensor, an
output row, a block of ``N`` along the reduction axis, a 128x128 tile; :mod:`quantlens.quant.formats.tiles`).
A clipping fix clamps each scope ``s`` to ``[-clip_s, clip_s]`` before the format quantizes it:

* a range estimator (``sawb``, ``percentile``, ``minmax``) picks ``clip_s`` from the scope's
  values (:func:`estimate_scope_clip`; SAWB's coefficients are those of the integer grid of
  the format's element bits, so ``sawb`` applies to integer formats only);
* the MSE search picks ``clip_s = c_s * amax_s`` with ``c_s`` on a grid of 40 values in
  (0, 1] minimising ``sum_{i in s} imp_i (F(W_c)_i - W_i)^2`` (``imp = 1``: the weights' own
  error, ``mse``; ``imp_i = E[x_c^2]`` of the input channel a weight multiplies: the error the
  layer's output sees, ``mse_output``), with ``F`` the format's quantizer
  (:func:`format_mse_clip`).

Every candidate ``c`` is evaluated with all scopes clamped at ``c`` at once; a scope's scale
depends on its own ``amax`` alone, so the scope-wise minimum is the minimum of the assembled
weight. NVFP4 also has one tensor scale ``s2 = amax / 2688``: the search holds ``s2`` at the
float weight's, and the scopes that hold the tensor's ``amax`` keep ``c = 1``, so the assembled
weight, quantized as the network quantizes it (``s2`` from its own ``amax``), is exactly what
was searched. A block that does not divide the reduction axis is padded with zeros
(:mod:`quantlens.quant.padded`), which neither clip nor count.

Example:
    >>> import torch
    >>> w = torch.randn(8, 64)
    >>> wc = format_mse_clip(w, "mxfp4")
    >>> bool((wc.abs() <= w.abs()).all())
    True
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.quant.formats import Format, get_format
from quantlens.quant.formats.nvfp4 import nvfp4_global_scale
from quantlens.quant.padded import quantize_padded
from quantlens.quant.scopes import scope_rows

__all__ = ["FORMAT_GRID", "format_mse_clip", "clip_scopes", "estimate_scope_clip", "clip_applies"]

#: The clip factors ``c`` the MSE search tries (40 values in (0, 1]; 1 keeps the scope as it is).
FORMAT_GRID = torch.linspace(0.025, 1.0, 40)


def clip_applies(fix: str, fmt: Union[str, Format]) -> Optional[str]:
    """Why the clipping fix ``fix`` does not apply to ``fmt`` (None: it does)."""
    f = get_format(fmt)
    if f.family == "float":
        return f"{f.name} is a plain cast with no scale: there is nothing to clip"
    if fix == "sawb" and f.family != "int":
        return f"SAWB's coefficients are fit for integer grids, and {f.name} is not one (try mse)"
    return None


def clip_scopes(w: Tensor, fmt: Union[str, Format], clip: Tensor) -> Tensor:
    """``w`` with each scope of ``fmt`` clamped to ``[-clip_s, clip_s]`` (``clip``: one value per scope)."""
    rows, back = scope_rows(w, fmt)
    c = clip.to(rows).reshape(-1, 1)
    return back(torch.maximum(torch.minimum(rows, c), -c)).to(w.dtype)


def estimate_scope_clip(w: Tensor, fmt: Union[str, Format], estimator: str, percentile: float) -> Tensor:
    """``clip_s`` per scope from a registered range estimator on the scope's values."""
    from quantlens.quant.ranges import estimate_weight_rows
    from quantlens.quant.spec import QuantSpec

    f = get_format(fmt)
    rows, _ = scope_rows(w, f)
    bits = f.bits if f.family == "int" else 8  # SAWB is refused for other families (clip_applies)
    lo, hi = estimate_weight_rows(rows, QuantSpec(bits=bits, estimator=estimator, percentile=percentile))
    return torch.maximum(lo.abs(), hi.abs())


def format_mse_clip(w: Tensor, fmt: Union[str, Format], importance: Optional[Tensor] = None,
                    grid: Tensor = FORMAT_GRID) -> Tensor:
    """``w`` with each scope clamped at the ``c * amax`` (``c`` in ``grid``) of least weighted
    squared error through ``fmt``'s quantizer (see the module docstring); ``w``'s dtype and shape."""
    f = get_format(fmt)
    if f.family == "float":
        raise QuantlensError(f"{f.name} is a plain cast with no scale: there is nothing to clip")
    x = w.detach().float()
    rows, back = scope_rows(x, f)
    imp = None if importance is None else scope_rows(importance.float().to(x.device), f)[0]
    amax = rows.abs().amax(dim=1, keepdim=True)
    s2 = nvfp4_global_scale(x.abs().max()) if f.family == "nvfp4" else None
    best_err = torch.full((rows.shape[0],), float("inf"), dtype=torch.float64, device=x.device)
    best_c = torch.ones(rows.shape[0], device=x.device)
    for c in grid.tolist():
        clipped = torch.maximum(torch.minimum(rows, amax * c), -amax * c)
        q = quantize_padded(back(clipped), f, "weight", global_scale=s2)
        err = (scope_rows(q, f)[0] - rows).double() ** 2
        err = (err * imp).sum(1) if imp is not None else err.sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_c = torch.where(better, torch.full_like(best_c, c), best_c)
    if s2 is not None:  # the scopes that set s2 stay whole, so s2 is the one searched with
        best_c = torch.where(amax.reshape(-1) >= x.abs().max(), torch.ones_like(best_c), best_c)
    return clip_scopes(w, f, amax.reshape(-1) * best_c)
