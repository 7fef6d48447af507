"""Streaming, mergeable statistics of activation tensors.

Observers see one batch at a time and never keep the data; two observers that saw two
shards of the data merge into the observer that saw both. They collect; the range
estimators in :mod:`quantlens.quant.ranges` turn their statistics into a range.

* :class:`MinMaxObserver`: running ``min`` and ``max`` (exactly mergeable).
* :class:`HistogramObserver`: ``min``, ``max`` and a histogram of ``bins`` bins over
  ``[min, max]``; when a batch widens the range the old counts are re-binned in proportion
  to their overlap with the new bins (so merges are order-independent up to that re-binning).

Example:
    >>> import torch
    >>> a, b = HistogramObserver(), HistogramObserver()
    >>> a.update(torch.arange(10.)); b.update(-torch.arange(10.))
    >>> a.merge(b).min, a.merge(b).max
    (-9.0, 9.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

__all__ = ["MinMaxObserver", "HistogramObserver"]


@dataclass
class MinMaxObserver:
    """Running minimum and maximum of everything seen."""

    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0

    def update(self, x: Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        lo, hi = torch.aminmax(x)  # one pass over the tensor
        self.min = min(self.min, float(lo))
        self.max = max(self.max, float(hi))
        self.count += x.numel()

    def merge(self, other: "MinMaxObserver") -> "MinMaxObserver":
        return MinMaxObserver(min(self.min, other.min), max(self.max, other.max), self.count + other.count)

    @property
    def empty(self) -> bool:
        return self.count == 0

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "count": self.count}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMaxObserver":
        return cls(float(d["min"]), float(d["max"]), int(d["count"]))


def _rebin(counts: Tensor, lo: float, hi: float, new_lo: float, new_hi: float, bins: int) -> Tensor:
    """Spread ``counts`` over ``[lo, hi]`` onto ``bins`` bins over ``[new_lo, new_hi]`` by overlap."""
    new_edges = torch.linspace(new_lo, new_hi, bins + 1, dtype=torch.float64)
    if hi <= lo:  # a point mass
        idx = int(torch.clamp(torch.searchsorted(new_edges, torch.tensor([lo], dtype=torch.float64)) - 1, 0, bins - 1))
        out = torch.zeros(bins, dtype=torch.float64)
        out[idx] = counts.sum()
        return out
    # cumulative mass at each new edge, by linear interpolation of the old CDF
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), counts.double().cumsum(0)])
    pos = (new_edges.clamp(lo, hi) - lo) / (hi - lo) * counts.numel()
    left = pos.floor().long().clamp(0, counts.numel() - 1)
    frac = pos - left.double()
    mass = cdf[left] + frac * (cdf[left + 1] - cdf[left])
    return (mass[1:] - mass[:-1]).clamp(min=0)


@dataclass
class HistogramObserver:
    """Min, max and a ``bins``-bin histogram over ``[min, max]`` (float64 counts)."""

    bins: int = 2048
    min: float = float("inf")
    max: float = float("-inf")
    counts: Optional[Tensor] = field(default=None, repr=False)

    @property
    def empty(self) -> bool:
        return self.counts is None

    @property
    def edges(self) -> Tensor:
        return torch.linspace(self.min, self.max, self.bins + 1, dtype=torch.float64)

    def _widen(self, lo: float, hi: float) -> None:
        assert self.counts is not None
        if lo < self.min or hi > self.max:
            new_lo, new_hi = min(lo, self.min), max(hi, self.max)
            self.counts = _rebin(self.counts, self.min, self.max, new_lo, new_hi, self.bins)
            self.min, self.max = new_lo, new_hi

    def update(self, x: Tensor) -> None:
        x = x.detach().reshape(-1).cpu().double()  # to the host first: half the bytes to copy
        if x.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x))
        if self.counts is None:
            self.min, self.max = lo, hi
            self.counts = torch.zeros(self.bins, dtype=torch.float64)
        else:
            self._widen(lo, hi)
        if self.max > self.min:
            self.counts += torch.histc(x, self.bins, self.min, self.max)
        else:
            self.counts[0] += x.numel()

    def merge(self, other: "HistogramObserver") -> "HistogramObserver":
        if other.counts is None:
            return HistogramObserver(self.bins, self.min, self.max, None if self.counts is None else self.counts.clone())
        if self.counts is None:
            return other.merge(self)
        out = HistogramObserver(self.bins, self.min, self.max, self.counts.clone())
        lo, hi = min(self.min, other.min), max(self.max, other.max)
        out._widen(lo, hi)
        out.counts += _rebin(other.counts, other.min, other.max, out.min, out.max, out.bins)
        return out

    def to_dict(self) -> dict:
        return {
            "bins": self.bins,
            "min": self.min,
            "max": self.max,
            "counts": None if self.counts is None else self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "HistogramObserver":
        counts = None if d["counts"] is None else torch.tensor(d["counts"], dtype=torch.float64)
        return cls(int(d["bins"]), float(d["min"]), float(d["max"]), counts)
