"""Empirical bias correction, fix ``bias_correction`` (Nagel et al. 2019; Finkelstein et al. 2019).

Quantization shifts the mean of a layer's output (most in small-kernel layers, section 4.4 of
the paper). For each layer ``l`` of ``layers`` in topological order, with every layer of the
context's config quantized as it says (the network being built) and the layers before ``l``
already corrected, measure over the calibration data the per-channel mean shift of ``l``'s
pre-activation output against the float network, and remove it from the bias::

    b_l[c] <- b_l[c] - (E[z_q,l[c]] - E[z_l[c]])

(a layer without a bias gets one). Because upstream layers are already quantized and
corrected, the correction also absorbs the shift they pass on.

Example:
    >>> from quantlens.fixes import FixContext, make_fix                          # doctest: +SKIP
    >>> g2 = make_fix("bias_correction", FixContext(cfg, calib)).apply(g, ["conv1"])
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..analysis.accumulate import _channel_sums, channel_axis
from ..analysis.data import iterate
from ..errors import QuantlensError
from ..graph.capture import LayerGraph
from ..graph.cone import build_cache_module
from ..numerics import analysis_mode
from ..qconfig import QuantConfig
from .base import FixContext, copy_graph, register_fix

__all__ = ["BiasCorrection"]


@register_fix("bias_correction", order=30)
class BiasCorrection:
    """Remove the quantization-induced mean shift of each layer's output (module docstring)."""

    def __init__(self, ctx: FixContext) -> None:
        self.ctx = ctx

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        from ..analysis.network import build_quantized

        if self.ctx.calib is None:
            raise QuantlensError("fix 'bias_correction' needs calibration data")
        cfg = self.ctx.config
        # a module called twice is skipped: its one bias cannot correct two different shifts
        chosen = [l for l in graph.layers if l.name in set(layers) and cfg.get(l.name) is not None and not graph.shared(l)]
        if not chosen:
            return graph
        out = copy_graph(graph, [l.name for l in chosen])
        for l in chosen:
            m = out.module(l)
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], device=m.weight.device), requires_grad=False)
        quantized = QuantConfig(tuple((n, lq) for n, lq in cfg.layers if n in {l.name for l in graph.layers}), cfg.act_estimator)
        dev = self.ctx.device
        qnet = build_quantized(out, quantized, self.ctx.calib, dev, taps=[l.node for l in chosen])
        float_gm, keep = build_cache_module(graph, [l.node for l in chosen])
        float_gm.to(dev)
        for i, l in enumerate(chosen):
            shift = self._shift(graph, qnet.gm, float_gm, i, keep.index(l.node), channel_axis(l.op))
            if shift is None:
                continue
            m = out.module(l)
            with torch.no_grad():
                m.bias.sub_(shift.to(m.bias))
        return out

    def _shift(self, graph: LayerGraph, qgm: nn.Module, fgm: nn.Module, tap: int, ftap: int, axis: int) -> Optional[Tensor]:
        total: Optional[Tensor] = None
        count = 0
        with analysis_mode():
            for inputs, _ in iterate(self.ctx.calib, "calibration data"):
                flat = graph.flat(inputs.to(self.ctx.device))
                _, q = qgm(*flat)
                _, f = fgm(*flat)
                s, c = _channel_sums(q[tap].double() - f[ftap].double(), axis)
                total = s if total is None else total + s
                count += c
        return None if total is None or count == 0 else (total / count).float()
