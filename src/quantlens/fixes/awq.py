"""Activation-aware scaling: fixes ``awq`` and ``smoothquant``, a per-input-channel scale per group of siblings.

Both pick ``s`` per input channel ``j`` of a group of Linear layers that read one tensor ``x``
(the chosen layers among q/k/v, gate/up; or one layer) from its calibration rows
(:mod:`.layer_inputs`: ``n`` rows), then move it into the weights (:mod:`.smoothing`: folded
into the preceding norm when every consumer of ``x`` takes it, else, for a lone layer, an explicit
input multiply). A group whose siblings (other layers reading ``x``) do not all take the fix is
refused in one line (:class:`~.base.FixRefused`): its scale could be folded nowhere.

* ``awq`` (Lin et al. 2023, arXiv 2306.00978; mit-han-lab/llm-awq ``auto_scale``)::

      m_j   = mean_n |x_nj|
      s(a)  = m^a (clamped >= 1e-4),   s(a) <- s(a) / sqrt(max s(a) min s(a))
      L(a)  = sum_layers sum_o dW_o S dW_o^T / n,   dW = Q(W diag s) diag(1/s) - W,  S = X^T X
      a     = argmin L over a in {0, 1/20, ..., 19/20}   (20 values; ties: the smaller a)

  ``L`` is the group's output error ``sum_n ||x_n (W_q - W)^T||^2 / n`` on the calibration
  rows, ``Q`` each layer's weight quantizer (its format or grid). ``a = 0`` is ``s = 1``: AWQ
  never does worse than plain rounding on the calibration data. Weight-only: it applies to
  every format but a plain cast.
* ``smoothquant`` (Xiao et al. 2022, arXiv 2211.10438; mit-han-lab/smoothquant ``smooth``)::

      s_j = max_n |x_nj|^a / max_o |W_oj|^(1 - a),   a = 0.5

  (``max_o`` over the group's weights; ``s_j = 1`` where either maximum is 0; clamped >= 1e-5).
  It moves activation outliers into the weights, so it needs quantized activations: a layer
  whose activations stay float is refused in one line.

Example:
    >>> from quantlens.fixes import FixContext, make_fix                          # doctest: +SKIP
    >>> g2 = make_fix("awq", FixContext(cfg, calib)).apply(g, ["layers.0.q_proj", "layers.0.k_proj"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from quantlens.errors import QuantlensError
from quantlens.fixes.base import FixContext, FixRefused, layer_weight_spec, register_fix
from quantlens.fixes.layer_inputs import InputStats, input_stats
from quantlens.fixes.online import group_by_input
from quantlens.fixes.smoothing import apply_scale
from quantlens.graph.layers import LayerGraph, sibling_groups
from quantlens.quant.formats import get_format
from quantlens.quant.quantizer import quantize_weight
from quantlens.quant.spec import QuantSpec

__all__ = ["AWQ", "SmoothQuant", "awq_scale", "smoothquant_scale", "AWQ_GRID", "SMOOTHQUANT_ALPHA"]

#: The exponents ``a`` AWQ tries (20 values).
AWQ_GRID = tuple(i / 20 for i in range(20))
SMOOTHQUANT_ALPHA = 0.5


def awq_scale(weights: Sequence[Tensor], specs: Sequence[QuantSpec], stats: InputStats,
              grid: Sequence[float] = AWQ_GRID) -> tuple[Tensor, float]:
    """``(s, a)`` of the module docstring for the layers' weights ``[R_i, K]`` under their specs."""
    m = (stats.abs_sum / max(stats.n, 1)).double()
    big_s = stats.xx.double()
    best: Optional[tuple[float, float, Tensor]] = None
    for a in grid:
        s = m.pow(a).clamp(min=1e-4)
        s = s / torch.sqrt(s.max() * s.min())
        loss = 0.0
        for w, spec in zip(weights, specs):
            wd = w.detach().double()
            sw = s.to(wd.device)
            wq = quantize_weight((wd * sw).to(w.dtype), spec).weight.double() / sw
            dw = wq - wd
            loss += float(((dw @ big_s.to(wd.device)) * dw).sum()) / max(stats.n, 1)
        if best is None or loss < best[0]:
            best = (loss, a, s)
    assert best is not None
    return best[2], best[1]


def smoothquant_scale(weights: Sequence[Tensor], stats: InputStats, alpha: float = SMOOTHQUANT_ALPHA) -> Tensor:
    """``s`` of the module docstring (float64)."""
    x_max = stats.abs_max.double()
    w_max = torch.stack([w.detach().double().abs().amax(0).to(x_max.device) for w in weights]).amax(0)
    ok = (x_max > 0) & (w_max > 0)
    s = x_max.pow(alpha) / torch.where(ok, w_max, torch.ones_like(w_max)).pow(1 - alpha)
    return torch.where(ok, s.clamp(min=1e-5), torch.ones_like(s))


class _ChannelScaleFix:
    """Group the chosen Linear layers by the tensor they read, find ``s`` per group, move it."""

    def __init__(self, ctx: FixContext) -> None:
        self.ctx = ctx
        self.folded: dict[str, bool] = {}  # per group (its first layer): folded into a norm, or an input multiply
        self.alpha: dict[str, float] = {}  # per group: the exponent used

    @classmethod
    def not_applicable(cls, spec: QuantSpec) -> Optional[str]:
        if spec.format is not None and get_format(spec.format).family == "float":
            return f"{spec.format} is a plain cast with no scale: there is no rounding for a channel scale to ease"
        return None

    def _check(self, graph: LayerGraph, name: str) -> QuantSpec:
        spec = layer_weight_spec(self.ctx, self.name, name)  # type: ignore[attr-defined]
        if spec is None:
            raise QuantlensError(f"fix {self.name!r} on layer {name}: its weights are not quantized in the config")  # type: ignore[attr-defined]
        layer = graph.layer(name)
        m = graph.module(layer)
        if not isinstance(m, nn.Linear):
            raise QuantlensError(f"fix {self.name!r} on layer {name}: it scales a Linear's input features, this layer is a {type(m).__name__}")  # type: ignore[attr-defined]
        if graph.shared(layer):
            raise QuantlensError(f"fix {self.name!r} on layer {name}: its module is called more than once; scaling its weight would change every call")  # type: ignore[attr-defined]
        return spec

    def scale(self, weights: list[Tensor], specs: list[QuantSpec], stats: InputStats) -> tuple[Tensor, float]:  # pragma: no cover
        raise NotImplementedError

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        if self.ctx.calib is None:
            raise QuantlensError(f"fix {self.name!r} needs calibration data (its scale comes from the layer's inputs)")  # type: ignore[attr-defined]
        specs = {n: self._check(graph, n) for n in layers}
        if not specs:
            return graph
        groups = group_by_input(graph, list(specs))
        self._check_siblings(graph, groups.values())
        stats = input_stats(graph, [g[0] for g in groups.values()], self.ctx.calib, self.ctx.device)
        out = graph
        for group in groups.values():
            ws = [graph.module(graph.layer(n)).weight for n in group]
            s, a = self.scale(ws, [specs[n] for n in group], stats[group[0]])
            out, folded = apply_scale(out, group, s.to(ws[0].device), self.name)  # type: ignore[attr-defined]
            self.folded[group[0]], self.alpha[group[0]] = folded, a
        return out

    def _check_siblings(self, graph: LayerGraph, groups: Iterable[list[str]]) -> None:
        """One line (:class:`FixRefused`) for a group whose input is also read by sibling layers that
        do not take the fix: the scale could then be folded into no norm, and an input multiply on
        one branch of q/k/v or gate/up is an op a fused runtime kernel does not have."""
        of = {n: g for g in sibling_groups(graph) for n in g}
        for group in groups:
            others = [n for n in of[group[0]] if n not in group]
            if others:
                raise FixRefused(f"fix {self.name!r} on {', '.join(group)}: its input is also read by {', '.join(others)}, which do not "  # type: ignore[attr-defined]
                                 "take the fix, so its scale folds into no norm; apply it to the whole sibling group or to none")

    def restore(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        """Saved weights hold ``W diag(s)`` but not the norm or input op ``s`` went to: refused in one line."""
        raise QuantlensError(f"a saved config with fix {self.name!r} cannot be rebuilt from weights.safetensors (the scale folded "  # type: ignore[attr-defined]
                             "into the norm is not saved): without weights.safetensors beside the config, --calib applies the fixes again")


@register_fix("awq", order=14)
class AWQ(_ChannelScaleFix):
    def scale(self, weights: list[Tensor], specs: list[QuantSpec], stats: InputStats) -> tuple[Tensor, float]:
        return awq_scale(weights, specs, stats)


@register_fix("smoothquant", order=14)
class SmoothQuant(_ChannelScaleFix):
    def _check(self, graph: LayerGraph, name: str) -> QuantSpec:
        spec = super()._check(graph, name)
        lq = self.ctx.config.get(name)
        if lq is None or lq.act_spec() is None:
            raise QuantlensError(f"fix 'smoothquant' on layer {name}: it moves activation outliers into the weights, and this layer's "
                                 "activations stay float in the config (for weight-only quantization use awq)")
        return spec

    def scale(self, weights: list[Tensor], specs: list[QuantSpec], stats: InputStats) -> tuple[Tensor, float]:
        return smoothquant_scale(weights, stats), SMOOTHQUANT_ALPHA
