"""Mergeable accumulators of one sweep cell and of one layer's float output.

A :class:`CellAccumulator` keeps sums only (float64), so cells computed on different data
shards, processes or machines merge into exactly the serial result::

    noise   = sum_n ||y_n - y_i,n||^2 / N
    sqnr_db = 10 log10( sum_n ||y_n||^2 / sum_n ||y_n - y_i,n||^2 )
    shift_c = sum (o_i - o)_c / count_c          (per output channel c of the layer)

:class:`ChannelStats` keeps per-channel ``sum`` and ``sum of squares`` of the layer's float
output, for ``std_c``; the relative mean shift is ``mean_c |shift_c| / std_c``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from quantlens.metrics.task import Metric, update_metric

__all__ = ["SQ_CHUNK", "CellAccumulator", "ShiftAccumulator", "ChannelStats", "channel_axis", "per_sample_sq", "widen", "channel_sums"]


def channel_axis(op: str) -> int:
    """Axis of output channels: last for Linear, 1 for convolutions."""
    return -1 if op == "Linear" else 1


SQ_CHUNK = 1 << 21
"""Elements per chunk of :func:`per_sample_sq` (16 MB of float64)."""


def per_sample_sq(t: Tensor, minus: Optional[Tensor] = None, chunk: Optional[int] = None) -> Tensor:
    """``||t_n||^2`` (or ``||t_n - minus_n||^2``) for each sample ``n``, in float64.

    ``sum_j (t_nj - m_nj)^2`` is summed in float64 over chunks of at most ``chunk`` elements
    (whole rows of ``t`` reshaped to ``[N, -1]`` when a row fits in a chunk, else pieces of a
    row; default :data:`SQ_CHUNK`): no float64 copy (nor float32 difference) of the whole tensor
    is made, only one chunk's.
    The difference is taken in ``t``'s dtype, elementwise as the unchunked formula; a row split
    into pieces sums its pieces' sums, which changes the rounding by ~1e-16 relative.

    Example:
        >>> per_sample_sq(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
        tensor([25.,  1.], dtype=torch.float64)
    """
    t = t.detach()
    n = t.shape[0]
    flat = t.reshape(n, -1)
    other = None if minus is None else minus.detach().reshape(n, -1)
    m = flat.shape[1]
    chunk = max(1, int(SQ_CHUNK if chunk is None else chunk))

    def sq(a: Tensor, b: Optional[Tensor]) -> Tensor:
        d = a if b is None else a - b
        if d.dtype == torch.float64 and b is None:  # .double() would be ``a`` itself: square a copy, not the caller's tensor
            return d.square().sum(1)
        return d.double().square_().sum(1)

    if n * m <= chunk:
        return sq(flat, other)
    out = torch.zeros(n, dtype=torch.float64, device=t.device)
    if m <= chunk:
        rows = chunk // m
        for s in range(0, n, rows):
            out[s : s + rows] = sq(flat[s : s + rows], None if other is None else other[s : s + rows])
        return out
    cols = max(1, chunk // n)
    for s in range(0, m, cols):
        out += sq(flat[:, s : s + cols], None if other is None else other[:, s : s + cols])
    return out


def widen(t: Tensor) -> Tensor:
    """A half-precision (bf16, fp16) tensor in float32; any other tensor as it is."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def channel_sums(t: Tensor, axis: int) -> tuple[Tensor, int]:
    """Per-channel sums of ``t`` along ``axis`` (float64, on the CPU) and the count per channel.

    Sums over the batch axis are taken in float64 after float32 partial sums over the other
    axes (pairwise, accurate to ~1e-7 relative): no float64 copy of the whole tensor.
    """
    t = widen(t.detach())
    axis = axis % t.dim()
    c = t.shape[axis]
    count = t.numel() // c if c else 0
    if t.dim() == 1:
        return t.double().cpu(), 1
    inner = [d for d in range(1, t.dim()) if d != axis]
    partial = t.sum(dim=inner) if inner else t
    partial = partial.double()
    if axis == 0:
        return partial.reshape(c).cpu(), count
    return partial.reshape(-1, c).sum(0).cpu(), count


class ChannelStats:
    """Per-channel mean and standard deviation of a layer's float output, streamed."""

    def __init__(self) -> None:
        self.sum: Optional[Tensor] = None
        self.sumsq: Optional[Tensor] = None
        self.count = 0

    def update(self, o: Tensor, axis: int) -> None:
        o = widen(o)
        s, n = channel_sums(o, axis)
        sq, _ = channel_sums(o * o, axis)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.count += n

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        out = ChannelStats()
        if self.sum is None:
            out.sum, out.sumsq, out.count = other.sum, other.sumsq, other.count
            return out
        if other.sum is None:
            out.sum, out.sumsq, out.count = self.sum, self.sumsq, self.count
            return out
        out.sum = self.sum + other.sum
        out.sumsq = self.sumsq + other.sumsq  # type: ignore[operator]
        out.count = self.count + other.count
        return out

    def std(self) -> Optional[Tensor]:
        if self.sum is None or self.count == 0:
            return None
        mean = self.sum / self.count
        var = (self.sumsq / self.count - mean**2).clamp(min=0)  # type: ignore[operator]
        return var.sqrt()

    def state(self) -> dict:
        return {
            "sum": None if self.sum is None else self.sum.tolist(),
            "sumsq": None if self.sumsq is None else self.sumsq.tolist(),
            "count": self.count,
        }

    def load_state(self, d: dict) -> None:
        self.sum = None if d["sum"] is None else torch.tensor(d["sum"], dtype=torch.float64)
        self.sumsq = None if d["sumsq"] is None else torch.tensor(d["sumsq"], dtype=torch.float64)
        self.count = int(d["count"])


class ShiftAccumulator:
    """Per-channel sums of ``o_q - o`` of one layer's output: its mean shift under quantization."""

    def __init__(self) -> None:
        self.sum: Optional[Tensor] = None
        self.count = 0

    def update(self, layer_out: Tensor, layer_ref: Tensor, axis: int) -> None:
        s, c = channel_sums(widen(layer_out) - widen(layer_ref), axis)
        self.sum = s if self.sum is None else self.sum + s
        self.count += c

    def merge(self, other: "ShiftAccumulator") -> "ShiftAccumulator":
        out = ShiftAccumulator()
        if self.sum is None:
            out.sum, out.count = other.sum, other.count
        elif other.sum is None:
            out.sum, out.count = self.sum, self.count
        else:
            out.sum, out.count = self.sum + other.sum, self.count + other.count
        return out

    def mean_shift(self, std: Optional[Tensor]) -> float:
        """``mean_c |E[o_i - o]_c| / std_c`` over channels with ``std_c > 0``."""
        if self.sum is None or std is None or self.count == 0:
            return float("nan")
        shift = (self.sum / self.count).abs()
        ok = std > 1e-12
        if not bool(ok.any()):
            return float("nan")
        return float((shift[ok] / std[ok]).mean())


class CellAccumulator:
    """Sums for one (layer, bits) cell: output noise, signal, task metric, mean shift."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.noise = 0.0
        self.signal = 0.0
        self.n = 0
        self.shift = ShiftAccumulator()

    def update(
        self,
        y_ref: Tensor,
        y: Tensor,
        labels: Optional[Tensor],
        signal: Optional[Tensor] = None,
        layer_out: Optional[Tensor] = None,
        layer_ref: Optional[Tensor] = None,
        axis: int = 1,
        inputs: Any = None,
    ) -> None:
        sig = per_sample_sq(y_ref) if signal is None else signal
        ref = widen(y_ref)
        self.noise += float(per_sample_sq(widen(y).to(ref.dtype), ref).sum())
        self.signal += float(sig.sum())
        self.n += int(y_ref.shape[0])
        update_metric(self.metric, y_ref, y, labels, inputs)
        if layer_out is not None and layer_ref is not None:
            self.shift.update(layer_out, layer_ref, axis)

    def merge(self, other: "CellAccumulator") -> "CellAccumulator":
        out = CellAccumulator(self.metric.merge(other.metric))
        out.noise = self.noise + other.noise
        out.signal = self.signal + other.signal
        out.n = self.n + other.n
        out.shift = self.shift.merge(other.shift)
        return out

    @property
    def noise_mean(self) -> float:
        return self.noise / self.n if self.n else float("nan")

    @property
    def sqnr_db(self) -> float:
        if self.noise <= 0:
            return float("inf")
        if self.signal <= 0:
            return float("-inf")
        return 10.0 * math.log10(self.signal / self.noise)

    def mean_shift(self, std: Optional[Tensor]) -> float:
        return self.shift.mean_shift(std)

    def state(self) -> dict[str, Any]:
        return {
            "metric": self.metric.state(),
            "noise": self.noise,
            "signal": self.signal,
            "n": self.n,
            "shift": None if self.shift.sum is None else self.shift.sum.tolist(),
            "shift_count": self.shift.count,
        }

    def load_state(self, d: dict[str, Any]) -> None:
        self.metric.load_state(d["metric"])
        self.noise, self.signal, self.n = float(d["noise"]), float(d["signal"]), int(d["n"])
        self.shift.sum = None if d["shift"] is None else torch.tensor(d["shift"], dtype=torch.float64)
        self.shift.count = int(d["shift_count"])
