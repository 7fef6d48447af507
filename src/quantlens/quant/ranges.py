"""Range estimators: statistics -> the range ``[lo, hi]`` that a quantizer covers.

Estimators register themselves by name (``@register_estimator("name")``); the CLI lists
the registry. Each works on weights (``rows``: a 2-D tensor, one row per scale, all the
values that share it) and, where it makes sense, on activation statistics (a
:class:`~quantlens.quant.observers.HistogramObserver` or ``MinMaxObserver``).

* ``minmax``: ``[min, max]`` (symmetric grids use ``max |x|``).
* ``percentile``: ``[P_(100-p), P_p]`` of the values (``P_p`` of ``|x|`` when symmetric).
* ``mse``: the clip ``c * minmax`` (``c`` on a grid of 100 values in (0, 1]) with the least
  quantization mean squared error on the values themselves.
* ``sawb``: statistics-aware weight binning (Choi et al. 2018), symmetric weights only:
  ``clip = c1 * sqrt(E[w^2]) - c2 * E[|w|]`` with per-bit-width coefficients ``(c1, c2)``,
  capped at ``max |w|``.

Example:
    >>> import torch
    >>> lo, hi = estimate_weight_rows(torch.tensor([[-2.0, 1.0, 0.5]]), QuantSpec(bits=8))
    >>> float(lo), float(hi)
    (-2.0, 2.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

import torch
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.quant.observers import HistogramObserver
from quantlens.quant.primitives import fake_quantize
from quantlens.quant.registry import Observer, check_estimator, estimators, get_estimator, register_estimator

if TYPE_CHECKING:
    from quantlens.quant.spec import QuantSpec

__all__ = [
    "RangeEstimator",
    "register_estimator",
    "estimators",
    "check_estimator",
    "estimate_weight_rows",
    "estimate_activation",
    "SAWB_COEFFICIENTS",
    "mse_best_scale",
]

class RangeEstimator(Protocol):
    """Turns statistics into per-row ranges ``(lo, hi)``, each of shape ``[rows]``."""

    def weights(self, rows: Tensor, spec: "QuantSpec") -> tuple[Tensor, Tensor]: ...

    def activations(self, obs: Observer, spec: "QuantSpec") -> tuple[float, float]: ...


def _symmetric(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    amax = torch.maximum(lo.abs(), hi.abs())
    return -amax, amax


def estimate_weight_rows(rows: Tensor, spec: "QuantSpec") -> tuple[Tensor, Tensor]:
    """Per-row range of ``rows`` (``[R, N]``) under ``spec``; symmetric specs get ``[-a, a]``."""
    check_estimator(spec.estimator)
    lo, hi = get_estimator(spec.estimator).weights(rows.detach().float(), spec)
    return _symmetric(lo, hi) if spec.symmetric else (lo, hi)


def estimate_activation(obs: Observer, spec: "QuantSpec") -> tuple[float, float]:
    """Range of an activation from its observer's statistics."""
    check_estimator(spec.estimator)
    if obs.empty:
        raise QuantlensError("an activation was never observed: the calibration data is empty")
    lo, hi = get_estimator(spec.estimator).activations(obs, spec)
    if spec.symmetric:
        a = max(abs(lo), abs(hi))
        return -a, a
    return lo, hi


@register_estimator("minmax")
class MinMax:
    """``[min, max]`` of the values."""

    def weights(self, rows: Tensor, spec: "QuantSpec") -> tuple[Tensor, Tensor]:
        return rows.amin(dim=1), rows.amax(dim=1)

    def activations(self, obs: Observer, spec: "QuantSpec") -> tuple[float, float]:
        return obs.min, obs.max


def _hist_quantile(obs: HistogramObserver, q: float) -> float:
    """Value below which a fraction ``q`` of the histogram's mass lies (linear within a bin)."""
    assert obs.counts is not None
    cdf = obs.counts.cumsum(0)
    total = float(cdf[-1])
    if total <= 0 or obs.max <= obs.min:
        return obs.min
    target = q * total
    i = int(torch.searchsorted(cdf, torch.tensor([target], dtype=cdf.dtype)).clamp(max=obs.bins - 1))
    prev = float(cdf[i - 1]) if i > 0 else 0.0
    inbin = float(obs.counts[i])
    frac = 0.0 if inbin <= 0 else (target - prev) / inbin
    width = (obs.max - obs.min) / obs.bins
    return obs.min + (i + min(max(frac, 0.0), 1.0)) * width


def _need_histogram(obs: Observer, name: str) -> HistogramObserver:
    if not isinstance(obs, HistogramObserver):
        raise QuantlensError(f"range estimator {name!r} needs histogram statistics of activations")
    return obs


@register_estimator("percentile")
class Percentile:
    """``[P_(100-p), P_p]``; for symmetric weights ``P_p`` of ``|w|``."""

    def weights(self, rows: Tensor, spec: "QuantSpec") -> tuple[Tensor, Tensor]:
        p = spec.percentile / 100.0
        n = rows.shape[1]

        def rank(q: float) -> int:
            return min(n - 1, max(0, int(round(q * (n - 1)))))

        if spec.symmetric:
            amax = rows.abs().sort(dim=1).values[:, rank(p)]
            return -amax, amax
        s = rows.sort(dim=1).values
        return s[:, rank(1 - p)], s[:, rank(p)]

    def activations(self, obs: Observer, spec: "QuantSpec") -> tuple[float, float]:
        h = _need_histogram(obs, "percentile")
        p = spec.percentile / 100.0
        return _hist_quantile(h, 1.0 - p), _hist_quantile(h, p)


_MSE_GRID = torch.linspace(0.01, 1.0, 100)


def mse_best_scale(values: Tensor, weights: Optional[Tensor], lo: Tensor, hi: Tensor, spec: "QuantSpec") -> Tensor:
    """For each row, the factor ``c`` in the grid whose range ``c*[lo, hi]`` has least weighted MSE."""
    best_err = torch.full((values.shape[0],), float("inf"), dtype=torch.float64, device=values.device)
    best_c = torch.ones(values.shape[0], device=values.device)
    for c in _MSE_GRID.tolist():
        clo, chi = lo * c, hi * c
        scale, zp = spec.qparams(clo, chi)  # symmetric: max(|lo|, |hi|)
        xq = fake_quantize(values, scale, zp, spec.qmin, spec.qmax, axis=0)
        err = (xq - values).double() ** 2
        err = (err * weights).sum(1) if weights is not None else err.sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_c = torch.where(better, torch.full_like(best_c, c), best_c)
    return best_c


@register_estimator("mse")
class MSE:
    """Clip ``c * [min, max]`` with the least quantization MSE, ``c`` on a grid of 100 in (0, 1]."""

    def weights(self, rows: Tensor, spec: "QuantSpec") -> tuple[Tensor, Tensor]:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        c = mse_best_scale(rows, None, lo, hi, spec)
        return lo * c, hi * c

    def activations(self, obs: Observer, spec: "QuantSpec") -> tuple[float, float]:
        h = _need_histogram(obs, "mse")
        assert h.counts is not None
        edges = h.edges
        centers = ((edges[1:] + edges[:-1]) / 2).float().unsqueeze(0)
        lo, hi = torch.tensor([h.min]), torch.tensor([h.max])
        c = float(mse_best_scale(centers, h.counts.unsqueeze(0), lo, hi, spec)[0])
        return h.min * c, h.max * c


# (c1, c2) of clip = c1 * sqrt(E[w^2]) - c2 * E[|w|]. Bits 2..5: published by Choi et al.
# (2018); 6..8: fitted with the same procedure (least-squares over the MSE-optimal clips of
# Gaussian, Laplace, uniform and logistic samples on quantlens' symmetric grid) by
# scripts/fit_sawb.py. Above 8 bits the 8-bit pair is used. Note: the clip grows with
# sqrt(E[w^2]), so SAWB never clips outliers that are ~0.5% or more of a tensor at >= 4 bits.
SAWB_COEFFICIENTS: dict[int, tuple[float, float]] = {
    2: (3.212, 2.178),
    3: (7.509, 6.892),
    4: (12.68, 12.80),
    5: (17.74, 18.64),
    6: (20.137, 20.909),
    7: (25.708, 27.326),
    8: (31.575, 34.117),
}


@register_estimator("sawb")
class SAWB:
    """Statistics-aware weight binning: ``clip = c1*sqrt(E[w^2]) - c2*E[|w|]``, capped at ``max|w|``."""

    def weights(self, rows: Tensor, spec: "QuantSpec") -> tuple[Tensor, Tensor]:
        c1, c2 = SAWB_COEFFICIENTS[min(spec.bits, max(SAWB_COEFFICIENTS))]  # bits >= 2; above 8 the 8-bit pair
        amax = rows.abs().amax(dim=1)
        clip = c1 * rows.pow(2).mean(dim=1).sqrt() - c2 * rows.abs().mean(dim=1)
        clip = torch.where(clip > 0, torch.minimum(clip, amax), amax)
        return -clip, clip

    for_activations = False

    def activations(self, obs: Observer, spec: "QuantSpec") -> tuple[float, float]:
        check_estimator("sawb", activations=True)  # raises: weights only
        raise AssertionError("unreachable")
