"""Keep a layer's largest weights in BF16 beside the format, fix ``keep-outliers`` (and ``keep-outliers-1``).

A few weights of very large magnitude ("super weights", Yu et al. 2024, arXiv 2411.07191) set
their blocks' scales and, rounded, can break a whole model. For a layer's weight ``W``::

    O    = the k positions of largest |W|         (torch.topk; k >= 1)
    W_q  = Q(W with W_O = 0)                     (the layer's format or grid; the outliers no
                                                  longer set their blocks' scales)
    W_q[O] = bf16(W[O])                           (kept beside the format, in BF16)

``keep-outliers``: ``k = ceil(0.1% of the layer's weights)``; ``keep-outliers-1``: ``k = 1``,
the single largest weight. The storage is the format's plus ``k`` BF16 values and their
positions. The layer is marked prequantized (the engines use ``W_q`` as it is). A plain cast
(``bf16``, ``fp16``) has no scale for an outlier to spoil.

Example:
    >>> from quantlens.fixes import FixContext, make_fix                          # doctest: +SKIP
    >>> g2 = make_fix("keep-outliers", FixContext(cfg)).apply(g, ["layers.2.mlp.down_proj"])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from quantlens.fixes.base import QuantizingFix, register_fix
from quantlens.quant.formats import get_format
from quantlens.quant.quantizer import quantize_weight
from quantlens.quant.spec import QuantSpec

__all__ = ["keep_outliers", "KeepOutliers", "KeepOneOutlier", "OUTLIER_FRACTION"]

#: The share of a layer's weights ``keep-outliers`` keeps in BF16.
OUTLIER_FRACTION = 0.001


def keep_outliers(w: Tensor, spec: QuantSpec, k: int) -> Tensor:
    """``w`` quantized under ``spec`` with its ``k`` largest-magnitude values kept in BF16 (module docstring)."""
    flat = w.detach().reshape(-1)
    k = max(1, min(int(k), flat.numel()))
    idx = torch.topk(flat.abs().float(), k).indices
    rest = flat.clone()
    rest[idx] = 0
    q = quantize_weight(rest.reshape(w.shape), spec).weight.reshape(-1).clone()
    q[idx] = flat[idx].to(torch.bfloat16).to(q.dtype)
    return q.reshape(w.shape)


class _KeepOutliers(QuantizingFix):
    @classmethod
    def not_applicable(cls, spec: QuantSpec) -> Optional[str]:
        if spec.format is not None and get_format(spec.format).family == "float":
            return f"{spec.format} is a plain cast with no scale: there are no outliers to keep out of it"
        return None

    def count(self, numel: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def quantized(self, w: Tensor, spec: QuantSpec) -> Tensor:
        return keep_outliers(w, spec, self.count(w.numel()))


@register_fix("keep-outliers", order=25)
class KeepOutliers(_KeepOutliers):
    def count(self, numel: int) -> int:
        return max(1, math.ceil(OUTLIER_FRACTION * numel))


@register_fix("keep-outliers-1", order=25)
class KeepOneOutlier(_KeepOutliers):
    def count(self, numel: int) -> int:
        return 1
