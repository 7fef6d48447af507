"""Quantizers built from a :class:`~quantlens.quant.spec.QuantSpec`.

* :func:`quantize_weight`: fake-quantize a weight tensor (output channels on axis 0) with
  the spec's granularity and range estimator.
* :class:`ActQuantizer`: a module that fake-quantizes activations with fixed parameters
  (computed once from calibration statistics), or passes them through when disabled.

Example:
    >>> import torch
    >>> from quantlens.quant.spec import QuantSpec, PerChannel
    >>> w = torch.randn(4, 3, 3, 3)
    >>> wq = quantize_weight(w, QuantSpec(bits=4, granularity=PerChannel())).weight
    >>> bool((wq[0] / (w[0].abs().max() / 7)).round().abs().max() <= 8)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from quantlens.quant.spec import PerChannel, PerGroup, PerTensor, QuantSpec
from quantlens.quant.observers import HistogramObserver, MinMaxObserver
from quantlens.quant.padded import quantize_padded
from quantlens.quant.primitives import fake_quantize
from quantlens.quant.ranges import estimate_activation, estimate_weight_rows

__all__ = ["QuantizedWeight", "quantize_weight", "as_quantized", "weight_rows", "ActQuantizer", "make_observer", "group_size"]


@dataclass(frozen=True)
class QuantizedWeight:
    """A fake-quantized weight and the parameters that made it.

    ``lo``/``hi`` are per-scale ranges (one per row of :func:`weight_rows`);
    ``clip`` is ``max(|lo|, |hi|)`` over all scales, for reports.
    """

    weight: Tensor
    scale: Tensor
    zero_point: Tensor
    lo: Tensor
    hi: Tensor

    @property
    def clip(self) -> float:
        return float(torch.maximum(self.lo.abs(), self.hi.abs()).max())


def group_size(w: Tensor, spec: QuantSpec) -> Optional[int]:
    g = spec.granularity
    if not isinstance(g, PerGroup) or w.dim() < 2:
        return None
    cin = w.shape[1]
    return g.group_size if cin % g.group_size == 0 else cin


def weight_rows(w: Tensor, spec: QuantSpec) -> Tensor:
    """``w`` viewed as ``[scales, values per scale]`` for the spec's granularity."""
    if isinstance(spec.granularity, PerTensor) or w.dim() < 1:
        return w.reshape(1, -1)
    if isinstance(spec.granularity, PerChannel):
        return w.reshape(w.shape[0], -1)
    gs = group_size(w, spec)
    if gs is None:
        return w.reshape(w.shape[0], -1)
    # [O, I, *k] -> [O, I/gs, gs, *k] -> rows of (o, group)
    o, i = w.shape[0], w.shape[1]
    return w.reshape(o, i // gs, gs, -1).reshape(o * (i // gs), -1)


def quantize_weight(w: Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Fake-quantize ``w`` under ``spec``; returns the weight (in ``w``'s dtype) and its parameters.

    A half-precision weight (bf16, fp16) is quantized in float32 and cast back to its dtype.
    """
    if spec.format is not None:
        return _quantize_format(w, spec.format)
    dtype = w.dtype
    w = w.detach().float()
    rows = weight_rows(w, spec)
    lo, hi = estimate_weight_rows(rows, spec)
    scale, zp = spec.qparams(lo, hi)
    if isinstance(spec.granularity, PerTensor):
        wq = fake_quantize(w, scale[0], zp[0], spec.qmin, spec.qmax)
    else:
        # one scale per row: quantize the row view along axis 0, then restore the shape
        q_rows = fake_quantize(rows.reshape(rows.shape[0], -1), scale, zp, spec.qmin, spec.qmax, axis=0)
        wq = q_rows.reshape(w.shape)
    return QuantizedWeight(wq.to(dtype), scale, zp, lo, hi)


def _quantize_format(w: Tensor, fmt: str) -> QuantizedWeight:
    """``w`` in a named format (:mod:`quantlens.quant.formats`; a block that does not divide the
    reduction axis is padded, :mod:`quantlens.quant.padded`). The format keeps its own scales:
    ``scale`` and ``zero_point`` are NaN and 0, ``lo``/``hi`` the weight's range (for reports)."""
    return _quantize_format_result(w.detach(), quantize_padded(w.detach(), fmt, "weight"))


def as_quantized(w: Tensor) -> QuantizedWeight:
    """A weight that is already quantized (by a fix: GPTQ, four-over-six, ...), as it is: its
    scales are the fix's, so ``scale`` is NaN and ``lo``/``hi`` the weight's range (for reports)."""
    return _quantize_format_result(w.detach(), w.detach())


def _quantize_format_result(w: Tensor, wq: Tensor) -> QuantizedWeight:
    amax = w.abs().max().float() if w.numel() else torch.zeros(())
    nan = torch.full((1,), float("nan"))
    return QuantizedWeight(wq, nan, torch.zeros(1, dtype=torch.int32), -amax.reshape(1), amax.reshape(1))


def make_observer(spec: Optional[QuantSpec]) -> MinMaxObserver | HistogramObserver:
    """The cheapest observer whose statistics the spec's estimator can use."""
    if spec is None or spec.estimator == "minmax":
        return MinMaxObserver()
    return HistogramObserver()


class ActQuantizer(nn.Module):
    """Fake-quantizes activations; identity when disabled.

    On an integer grid, with fixed per-tensor parameters from calibration:
    ``forward(x) = (clamp(round(x / s) + z, qmin, qmax) - z) * s``.

    In a named format (``spec.format``, :mod:`quantlens.quant.formats`), along the consumer's
    reduction axis ``axis`` (the last axis for a Linear's input, the channels for a
    convolution's):

    * ``fp8-e4m3`` / ``fp8-e5m2`` (per tensor): a static scale ``s = amax / fmax`` from the
      calibration ``amax``, ``q = cast(x / s)``, value ``q * s``;
    * ``nvfp4``: its tensor scale ``s2 = amax / (6 * 448)`` static from calibration, block
      scales from each batch's values;
    * every other format (MX, ``-channel``, ``-block128``, ``int{b}``): its scales from each
      batch's values (dynamic), a block that does not divide the axis padded
      (:mod:`quantlens.quant.padded`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.enabled = False
        self.qmin = 0
        self.qmax = 255
        self.format: Optional[str] = None
        self._fmt: Any = None  # the Format of ``format``, resolved on first use
        self.axis = -1
        self.register_buffer("scale", torch.ones(()), persistent=False)
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32), persistent=False)

    @classmethod
    def from_spec(cls, spec: Optional[QuantSpec], obs: Optional[MinMaxObserver | HistogramObserver], axis: int = -1) -> "ActQuantizer":
        q = cls()
        if spec is not None and obs is not None:
            q.set(spec, obs, axis)
        return q

    def set(self, spec: QuantSpec, obs: MinMaxObserver | HistogramObserver, axis: int = -1) -> None:
        if spec.format is not None:
            self.set_format(spec.format, max(abs(obs.min), abs(obs.max)) if not obs.empty else 0.0, axis)
            return
        lo, hi = estimate_activation(obs, spec)
        scale, zp = spec.qparams(torch.tensor(lo), torch.tensor(hi))
        self.scale = scale.to(self.scale.device)
        self.zero_point = zp.to(self.zero_point.device)
        self.qmin, self.qmax = spec.qmin, spec.qmax
        self.format = None
        self.enabled = True

    def set_format(self, fmt: str, amax: float, axis: int = -1) -> None:
        """Quantize in the named format ``fmt``, with the calibration's ``amax`` for its static scale."""
        from quantlens.quant.formats import ELEMENTS, get_format

        f = get_format(fmt)
        self.format, self.axis = f.name, int(axis)
        s = 1.0
        if f.family == "fp8" and f.scope == "tensor":
            s = amax / ELEMENTS[f.element].max if amax > 0 else 1.0
        elif f.family == "nvfp4":
            s = amax / (6 * 448) if amax > 0 else 1.0
        self.scale = torch.tensor(s, dtype=torch.float32, device=self.scale.device)
        self.enabled = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.format is not None:
            return self._format_forward(x)
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def _format_forward(self, x: Tensor) -> Tensor:
        from quantlens.quant.formats import ELEMENTS, cast_to_element, get_format

        if self._fmt is None or self._fmt.name != self.format:  # once per format, not per call (a cone pass's hot path)
            self._fmt = get_format(self.format)
        f = self._fmt
        moved = self.axis not in (-1, x.dim() - 1) and x.dim() > 1
        t = x.movedim(self.axis, -1) if moved else x
        if f.family == "fp8" and f.scope == "tensor":
            s = self.scale.to(torch.float32)
            q = (cast_to_element(t.float() / s, ELEMENTS[f.element]) * s).to(t.dtype)
        else:
            q = quantize_padded(t, f, "activation", global_scale=self.scale if f.family == "nvfp4" else None)
        return q.movedim(-1, self.axis) if moved else q
