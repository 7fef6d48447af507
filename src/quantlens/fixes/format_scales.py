"""Format-native scale choices, each producing the layer's quantized weight: ``four-over-six`` and ``mx-scale``.

* ``four-over-six`` (NVFP4; Cook et al. 2025, arXiv 2512.02010, "4/6"): E2M1 has no value
  between 4 and 6, so a block whose maximum maps to 6 rounds its values in ``(4, 6) s`` coarsely.
  For each block of 16 (``s2 = amax / 2688``, the format's tensor scale)::

      s_6 = e4m3(amax_b / (6 s2)),   s_4 = e4m3(amax_b / (4 s2))
      Q_c(x) = (e2m1(x / (s_c s2)) s_c) s2                       (c = 6, 4)
      keep Q_4 where sum_b (Q_4 - x)^2 < sum_b (Q_6 - x)^2, else Q_6

  ``s2`` stays the format's (the paper's recipe also rescales ``s2`` so that every block can
  map to 4; with the format's ``s2`` a block near the tensor's maximum may find ``s_4``
  saturated at 448, and then simply keeps ``Q_6`` when that is better). The result is a valid
  NVFP4 tensor: E2M1 values, one E4M3 scale per block, the tensor's ``s2``.
* ``mx-scale`` (MX formats): the E8M0 block scale by the OCP floor rule
  ``2^(floor(log2 amax) - emax)`` (whose largest values may clip) or by the rceil rule
  ``2^ceil(log2(amax / max))`` (never clips), per layer: the one with the lower squared error
  of the layer's weights, ``sum (Q(W) - W)^2`` (ties: the format's own rule). Either is a valid
  MX encoding.

Both mark the layer prequantized: the engines use these weights as they are (quantizing them
again with the format's own rule would undo the choice).

Example:
    >>> from quantlens.fixes import FixContext, make_fix                          # doctest: +SKIP
    >>> g2 = make_fix("four-over-six", FixContext(cfg)).apply(g, ["layers.0.mlp.down_proj"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from quantlens.fixes.base import QuantizingFix, register_fix
from quantlens.fixes.format_clip import scope_rows
from quantlens.fixes.scoped import ScopedQuantizer
from quantlens.quant.formats import get_format
from quantlens.quant.formats.elements import E4M3, cast
from quantlens.quant.formats.nvfp4 import nvfp4_global_scale
from quantlens.quant.padded import quantize_padded
from quantlens.quant.spec import QuantSpec

__all__ = ["four_over_six", "mx_best_scale_rule", "FourOverSix", "MXScale"]


def _describe(spec: QuantSpec) -> str:
    return spec.format if spec.format is not None else f"int{spec.bits} ({spec.granularity})"


def four_over_six(w: Tensor) -> Tensor:
    """``w`` in NVFP4 with each block's maximum mapped to 4 or to 6, the lower error kept (module docstring)."""
    x = w.detach().float()
    rows, back = scope_rows(x, "nvfp4")  # [blocks, 16], zero-padded
    s2 = nvfp4_global_scale(x.abs().max())
    sq = ScopedQuantizer.for_weight(x, QuantSpec(bits=4, format="nvfp4"))
    amax = rows.abs().amax(dim=1, keepdim=True)
    best, best_err = None, None
    for top in (6.0, 4.0):
        div = top * s2
        s_b = cast(amax / torch.where(div > 0, div, torch.ones_like(div)), E4M3)
        q = sq.quantize(rows, (s_b, s2))
        err = ((q - rows).double() ** 2).sum(dim=1, keepdim=True)
        if best is None:
            best, best_err = q, err
        else:
            better = err < best_err
            best = torch.where(better, q, best)
    return back(best).to(w.dtype)


def mx_best_scale_rule(w: Tensor, fmt: str) -> tuple[Tensor, str]:
    """``(W quantized, the rule's format name)`` for the MX format ``fmt``: floor or rceil, the
    lower ``sum (Q(W) - W)^2`` (ties: ``fmt``'s own rule)."""
    f = get_format(fmt)
    base = f.name[: -len("-rceil")] if f.name.endswith("-rceil") else f.name
    own = f.name
    other = base if own != base else base + "-rceil"
    x = w.detach()
    q_own, q_other = quantize_padded(x, own, "weight"), quantize_padded(x, other, "weight")
    e_own = ((q_own.double() - x.double()) ** 2).sum()
    e_other = ((q_other.double() - x.double()) ** 2).sum()
    return (q_other, other) if e_other < e_own else (q_own, own)


@register_fix("four-over-six", order=25)
class FourOverSix(QuantizingFix):
    @classmethod
    def not_applicable(cls, spec: QuantSpec) -> Optional[str]:
        if spec.format is not None and get_format(spec.format).family == "nvfp4":
            return None
        return f"four-over-six is NVFP4's block-scale choice (each 16-value block's max mapped to 4 or 6); {_describe(spec)} is not NVFP4"

    def quantized(self, w: Tensor, spec: QuantSpec) -> Tensor:
        return four_over_six(w)


@register_fix("mx-scale", order=25)
class MXScale(QuantizingFix):
    @classmethod
    def not_applicable(cls, spec: QuantSpec) -> Optional[str]:
        if spec.format is not None and get_format(spec.format).family == "mx":
            return None
        return f"mx-scale chooses an MX format's E8M0 scale rule (floor or rceil); {_describe(spec)} is not an MX format"

    def quantized(self, w: Tensor, spec: QuantSpec) -> Tensor:
        assert spec.format is not None
        return mx_best_scale_rule(w, spec.format)[0]
