"""Why a culprit layer broke: weight outliers, activation outliers, values that underflow its format.

For a layer with weight matrix ``W [R, K]`` (:func:`~quantlens.quant.formats.tiles.weight_matrix`),
its weight quantizer ``Q`` (the format, or the integer grid, of the config) and the absolute
maximum ``a_j`` of each input channel ``j`` over the calibration rows
(:func:`~quantlens.fixes.layer_inputs.input_stats`)::

    weight_peak  = max |W| / rms(W)                        (how many "sigmas" the largest weight is)
    act_peak     = max_j a_j / median_j a_j                 (the largest input channel against a typical one)
    zeroed       = #{W != 0 and Q(W) = 0} / #{W != 0}       (weights below half the smallest step of their scope)
    dead_blocks  = #{scopes with some W != 0 and Q(W) = 0 throughout} / #{scopes with some W != 0}

A scope is the set of weights that share a scale along the reduction axis: a block or group
(``K / width`` per row), a row, or the tensor's row (tile and tensor scopes are counted per row
and block of columns). ``dead_blocks`` is what collapses early layers under FP4: a block whose
scale or values fall below the format's smallest step carries nothing.

``causes`` names each symptom past its threshold (:data:`THRESHOLDS`): they are rules of thumb,
stated with the numbers, not measurements of the cause; the numbers are the evidence. A Gaussian
weight of a million values has ``weight_peak`` about 5; an LLM's massive activations give
``act_peak`` in the hundreds.

Example:
    >>> d = diagnose(graph, ["lm_head"], config, calib)["lm_head"]   # doctest: +SKIP
    >>> d.causes                                                      # doctest: +SKIP
    ('activation outliers',)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import Tensor

from quantlens.core import jsonio
from quantlens.core.layer_config import QuantConfig
from quantlens.fixes.layer_inputs import input_stats
from quantlens.fixes.scoped import ScopedQuantizer
from quantlens.graph.layers import LayerGraph
from quantlens.quant.formats.tiles import weight_matrix
from quantlens.quant.quantizer import quantize_weight

__all__ = ["LayerDiagnosis", "diagnose", "THRESHOLDS"]

#: Past these, ``causes`` names the symptom (rules of thumb; the numbers are reported either way).
THRESHOLDS = {"weight_peak": 12.0, "act_peak": 20.0, "zeroed": 0.25, "dead_blocks": 0.01}


@dataclass(frozen=True)
class LayerDiagnosis:
    """The module docstring's four numbers for one layer, and the symptoms past their thresholds."""

    weight_peak: float
    act_peak: float = jsonio.NAN
    zeroed: float = jsonio.NAN
    dead_blocks: float = jsonio.NAN

    @property
    def causes(self) -> tuple[str, ...]:
        out = []
        if self.weight_peak > THRESHOLDS["weight_peak"]:
            out.append("weight outliers")
        if self.act_peak > THRESHOLDS["act_peak"]:
            out.append("activation outliers")
        if self.zeroed > THRESHOLDS["zeroed"] or self.dead_blocks > THRESHOLDS["dead_blocks"]:
            out.append("underflow")
        return tuple(out)

    def sentence(self) -> str:
        """``weight max 14.2 sigma, input channel max 310x the median, 31% of weights and 2.1% of blocks round to zero``."""
        parts = [f"weight max {self.weight_peak:.1f} sigma"]
        if math.isfinite(self.act_peak):
            parts.append(f"input channel max {self.act_peak:.0f}x the median")
        if math.isfinite(self.zeroed):
            parts.append(f"{self.zeroed:.0%} of weights and {self.dead_blocks:.1%} of blocks round to zero")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return jsonio.clean({**asdict(self), "causes": list(self.causes)})

    @classmethod
    def from_dict(cls, d: dict) -> "LayerDiagnosis":
        return cls(jsonio.num(d.get("weight_peak")), jsonio.num(d.get("act_peak")), jsonio.num(d.get("zeroed")),
                   jsonio.num(d.get("dead_blocks")))


def _underflow(w: Tensor, config: QuantConfig, name: str) -> tuple[float, float]:
    """``(zeroed, dead_blocks)`` of ``w`` under the layer's weight quantizer (NaN when not quantized)."""
    spec = config.layer(name).weight_spec() if name in config.names else None
    if spec is None:
        return jsonio.NAN, jsonio.NAN
    m = weight_matrix(w).detach().float()
    q = weight_matrix(quantize_weight(w.detach().float(), spec).weight)
    nz, zero = m != 0, q == 0
    zeroed = float((nz & zero).sum()) / max(int(nz.sum()), 1)
    width = ScopedQuantizer.for_weight(w, spec).width
    pad = (-m.shape[1]) % width
    nz_b = torch.nn.functional.pad(nz, (0, pad)).reshape(m.shape[0], -1, width).any(-1)
    live_b = torch.nn.functional.pad(~zero & nz, (0, pad)).reshape(m.shape[0], -1, width).any(-1)
    dead = float((nz_b & ~live_b).sum()) / max(int(nz_b.sum()), 1)
    return zeroed, dead


def diagnose(graph: LayerGraph, layers: Sequence[str], config: QuantConfig, calib: Optional[Iterable[Any]] = None,
             device: Optional[torch.device] = None) -> dict[str, LayerDiagnosis]:
    """The :class:`LayerDiagnosis` of each of ``layers`` (module docstring): weights under
    ``config``'s quantizer of the layer; ``act_peak`` from one float pass over ``calib`` (NaN
    without it)."""
    stats = input_stats(graph, list(layers), calib, device or torch.device("cpu"), second_moment=False) if calib is not None and layers else {}
    out = {}
    for name in layers:
        w = graph.module(graph.layer(name)).weight.detach().float()
        rms = float(w.pow(2).mean().sqrt())
        peak = float(w.abs().max()) / rms if rms > 0 else jsonio.NAN
        act = jsonio.NAN
        if name in stats:
            a = stats[name].abs_max.float()
            med = float(a.median())
            act = float(a.max()) / med if med > 0 else math.inf
        zeroed, dead = _underflow(w, config, name)
        out[name] = LayerDiagnosis(peak, act, zeroed, dead)
    return out
