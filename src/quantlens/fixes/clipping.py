"""Weight clipping fixes: clamp a layer's float weights to the range an estimator picks.

For each layer, at the bits and granularity the config gives it, each scale's row of weights
``w`` is clamped to ``[lo, hi]``; quantizing the clamped weights with min/max then uses exactly
that range. The fixes:

* ``sawb``: ``clip = c1*sqrt(E[w^2]) - c2*E[|w|]`` (Choi et al. 2018; coefficients in
  :data:`quantlens.quant.ranges.SAWB_COEFFICIENTS`), capped at ``max|w|``.
* ``mse``: the clip ``c*max|w|`` (``c`` on a grid of 100 in (0, 1]) minimising the weights'
  own quantization error ``sum (Q(w) - w)^2``.
* ``mse_output``: the clip minimising the error the layer's *output* sees,
  ``E||(Q(W) - W) x||^2 ~ sum_{o,c,k} (Q(W) - W)_{o,c,k}^2 E[x_c^2]`` (the diagonal of the
  input's second moment over the calibration data, per input channel). Weights on inputs that
  are (almost) never active cost (almost) nothing, so their outliers get clipped.
* ``percentile``: ``|w|``'s ``FixContext.percentile``-th percentile (default
  :data:`~quantlens.quant.spec.DEFAULT_PERCENTILE`, 99.99).

A layer quantized in a named format (``nvfp4``, ``mxfp4``, ``fp8-e4m3``, ``int4-g128``, ...) is
clipped per scope of that format, the MSE searches running through the format's own quantizer
(:mod:`.format_clip`); ``sawb`` applies to integer formats only, and no clip to a plain cast
(``bf16``, ``fp16``).

Example:
    >>> from quantlens.fixes import FixContext, make_fix              # doctest: +SKIP
    >>> g2 = make_fix("sawb", FixContext(cfg)).apply(g, ["conv2"])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

from quantlens.engine.accumulate import channel_sums, channel_axis
from quantlens.data.batches import iterate
from quantlens.quant.spec import QuantSpec
from quantlens.errors import QuantlensError
from quantlens.graph.layers import LayerGraph
from quantlens.engine.cone import build_cache_module, input_node
from quantlens.graph.lockstep import LockstepTooLarge, Pause, run_lockstep
from quantlens.core.numerics import analysis_mode
from quantlens.quant.quantizer import weight_rows
from quantlens.quant.ranges import estimate_weight_rows, mse_best_scale
from quantlens.fixes.base import FixContext, copy_graph, register_fix, weight_of
from quantlens.fixes.format_clip import clip_applies, clip_scopes, estimate_scope_clip, format_mse_clip

__all__ = ["ClipFix", "SAWBClip", "MSEClip", "PercentileClip", "OutputMSEClip"]


class ClipFix:
    """Clamp each scale's weights to ``[lo, hi]`` from ``self.range(rows, spec, layer)``."""

    name = "clip"
    order = 20
    estimator = "minmax"

    def __init__(self, ctx: FixContext) -> None:
        self.ctx = ctx

    def spec(self, name: str) -> Optional[QuantSpec]:
        lq = self.ctx.config.get(name)
        spec = None if lq is None else lq.weight_spec(self.estimator)
        if spec is None:
            return None
        return replace(spec, percentile=self.ctx.percentile)

    def range(self, graph: LayerGraph, name: str, rows: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
        return estimate_weight_rows(rows, spec)

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        out = copy_graph(graph, [n for n in layers if self.spec(n) is not None])
        for name in layers:
            self.clip(out, name)
        return out

    @classmethod
    def not_applicable(cls, spec: QuantSpec) -> Optional[str]:
        """Why this fix does not apply to weights quantized as ``spec`` (None: it does)."""
        return None if spec.format is None else clip_applies(cls.name, spec.format)

    def clip(self, out: LayerGraph, name: str) -> None:
        """Clamp layer ``name``'s weights in ``out`` (its module already private to ``out``)."""
        spec = self.spec(name)
        if spec is None:
            return
        w = weight_of(out, name)
        if spec.format is not None:  # the format's own scopes (formats.tiles)
            reason = self.not_applicable(spec)
            if reason is not None:
                raise QuantlensError(f"fix {self.name!r} on layer {name}: {reason}")
            clamped = self.format_clip(out, name, w.detach(), spec.format)
        else:
            rows = weight_rows(w.detach(), spec)
            lo, hi = self.range(out, name, rows, spec)
            clamped = torch.maximum(torch.minimum(rows, hi.unsqueeze(1).to(rows)), lo.unsqueeze(1).to(rows)).reshape(w.shape)
        with torch.no_grad():
            w.copy_(clamped)

    def format_clip(self, graph: LayerGraph, name: str, w: Tensor, fmt: str) -> Tensor:
        """``w`` clamped per scope of the format ``fmt`` (:mod:`.format_clip`)."""
        return clip_scopes(w, fmt, estimate_scope_clip(w, fmt, self.estimator, self.ctx.percentile))


@register_fix("sawb", order=20)
class SAWBClip(ClipFix):
    estimator = "sawb"


@register_fix("mse", order=20)
class MSEClip(ClipFix):
    estimator = "mse"

    def format_clip(self, graph: LayerGraph, name: str, w: Tensor, fmt: str) -> Tensor:
        return format_mse_clip(w, fmt)


@register_fix("percentile", order=20)
class PercentileClip(ClipFix):
    estimator = "percentile"


def input_second_moment(graph: LayerGraph, name: str, calib, device: torch.device) -> Tensor:
    """``E[x_c^2]`` per input channel ``c`` of layer ``name`` over ``calib`` (float graph)."""
    _need_calib(calib)
    layer = graph.layer(name)
    gm, _ = build_cache_module(graph, [input_node(graph, layer)])
    gm.to(device)
    xs = (gm(*graph.flat(inputs.to(device)))[1][0] for inputs, _ in iterate(calib, "calibration data"))
    with analysis_mode():
        return _second_moment(xs, channel_axis(layer.op))


def _need_calib(calib: object) -> None:
    if calib is None:
        raise QuantlensError("fix 'mse_output' needs calibration data")


def _second_moment(xs: Iterable[Tensor], axis: int) -> Tensor:
    """``sum_b sum x^2 / count`` per channel along ``axis`` (float64 sums), over the batches ``xs``."""
    total: Optional[Tensor] = None
    count = 0
    for x in xs:
        s, c = channel_sums(x.double() ** 2, axis)
        total = s if total is None else total + s
        count += c
    assert total is not None
    return (total / max(count, 1)).float()


def _importance(w: Tensor, groups: int, ex2: Tensor) -> Tensor:
    """``E[x_c^2]`` broadcast to each weight element ``W[o, j, ...]`` (``c`` = its input channel)."""
    o, ipg = w.shape[0], w.shape[1]
    opg = o // groups
    chan = (torch.arange(o) // opg).unsqueeze(1) * ipg + torch.arange(ipg).unsqueeze(0)  # [O, ipg]
    imp = ex2.to(w.device)[chan]
    return imp.reshape(o, ipg, *([1] * (w.dim() - 2))).expand_as(w)


@register_fix("mse_output", order=20)
class OutputMSEClip(ClipFix):
    """Layers are clipped in graph order, each with ``E[x^2]`` measured on the network whose
    earlier layers are already clipped. One lockstep pass of that float network over the
    calibration batches (:mod:`quantlens.graph.lockstep`) pauses at each layer's input, clips the
    layer, and goes on; when the batches' activations do not fit in memory at once, one pass per
    layer gives the same numbers."""

    estimator = "minmax"

    def __init__(self, ctx: FixContext) -> None:
        super().__init__(ctx)
        self._ex2: dict[str, Tensor] = {}  # E[x^2] per layer, measured by the lockstep pass of apply()

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        _need_calib(self.ctx.calib)
        wanted = {n for n in layers if self.spec(n) is not None}
        names = [l.name for l in graph.layers if l.name in wanted]  # graph order
        out = copy_graph(graph, names)
        self._ex2 = {}
        by_input: dict[str, list[str]] = {}
        for n in names:
            by_input.setdefault(input_node(out, out.layer(n)), []).append(n)

        def clip(node_layers: list[str], xs: list[Tensor]) -> None:
            for n in node_layers:
                self._ex2[n] = _second_moment(xs, channel_axis(out.layer(n).op))
                self.clip(out, n)

        pauses = [Pause(node, lambda xs, ls=ls: clip(ls, xs)) for node, ls in by_input.items()]
        batches = [out.flat(inputs.to(self.ctx.device)) for inputs, _ in iterate(self.ctx.calib, "calibration data")]
        out.gm.to(self.ctx.device)
        try:
            with analysis_mode():
                run_lockstep(out.gm, batches, pauses)
        except LockstepTooLarge:  # one pass per layer on a fresh copy
            self._ex2 = {}
            return super().apply(graph, names)
        return out

    def _layer_importance(self, graph: LayerGraph, name: str) -> Tensor:
        """``E[x_c^2]`` of each weight's input channel, in the weight's shape."""
        module = graph.module(graph.layer(name))
        ex2 = self._ex2.get(name)
        if ex2 is None:
            ex2 = input_second_moment(graph, name, self.ctx.calib, self.ctx.device)
        return _importance(module.weight.detach(), int(getattr(module, "groups", 1)), ex2)

    def format_clip(self, graph: LayerGraph, name: str, w: Tensor, fmt: str) -> Tensor:
        return format_mse_clip(w, fmt, self._layer_importance(graph, name))

    def range(self, graph: LayerGraph, name: str, rows: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
        imp = self._layer_importance(graph, name)
        imp_rows = weight_rows(imp, spec).float().to(rows.device) + 1e-12
        amax = rows.abs().amax(dim=1)
        lo, hi = -amax, amax
        c = mse_best_scale(rows.float(), imp_rows, lo, hi, spec)
        return lo * c, hi * c
