"""Paired 95% confidence intervals on a degradation, from streaming sums.

Every cell and every whole-network measurement scores the *same* samples twice: with the float
reference (score ``r_n``) and quantized (score ``q_n``). The degradation is a mean of paired
differences ``d_n = r_n - q_n`` (its sign set by :func:`quantlens.metrics.task.degradation`), so its
interval comes from four mergeable sums, :class:`PairedSums`::

    n,   R = sum_n r_n,   Q = sum_n q_n,   S = sum_n (r_n - q_n)^2

Two rules, chosen by the metric (``Metric.interval_rule``):

``binary`` (top1, top5, agreement: ``r_n, q_n in {0, 1}``)
    Tango's score interval for a difference of paired proportions (Tango 1998, Stat. Med.
    17:891). With ``b`` = #(r=1, q=0) and ``c`` = #(r=0, q=1), both read off the sums as
    ``b = (S + R - Q) / 2`` and ``c = (S - R + Q) / 2``, the interval is every ``delta`` with
    ``|Z(delta)| <= z`` where::

        Z(delta) = (b - c - n delta) / sqrt(n (2 p(delta) + delta (1 - delta)))
        p(delta) = (sqrt(W^2 + 8 n c delta (1 - delta)) - W) / (4 n)     (restricted MLE of c / n)
        W        = -b - c + (2n - b + c) delta

    It needs only the discordant counts, stays inside [-1, 1] and is not degenerate when
    ``b = c = 0`` (then it is ``[-z^2/(n+z^2), z^2/(n+z^2)]``).

``mean`` (kl, mse, cosine: any per-sample score)
    The normal (Student t) interval of the mean paired difference::

        mean = (R - Q) / n,   s^2 = (S - n mean^2) / (n - 1),   mean +- t_{n-1} s / sqrt(n)

``ratio`` (nll, perplexity, token_kl, token_agreement: token means over correlated sequences)
    The delta-method interval of a paired difference of ratio estimators, with the sequence as
    the independent unit, on ``h(m_r) - h(m_q)`` (``h`` = exp for perplexity), from the
    per-sequence sums :class:`~quantlens.stats.ratio.RatioSums` (formula in
    :mod:`quantlens.stats.ratio`).

A metric without a rule (a user callable scored per batch) has no interval: ``None``.
Coverage of the rules is checked by simulation in ``tests/stats/test_intervals.py`` (binary, mean) and
``tests/stats/test_token_intervals.py`` (ratio).

Example:
    >>> s = PairedSums(n=450, ref=400.0, quant=396.0, sq=6.0)   # 5 worse, 1 better
    >>> iv = paired_interval(s, "binary", higher_is_better=True)
    >>> round(iv.low, 4), round(iv.high, 4)
    (-0.0025, 0.0238)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from quantlens.errors import QuantlensError
from quantlens.stats.degradation import degradation
from quantlens.stats.distributions import CONFIDENCE, Z, t_quantile
from quantlens.stats.ratio import RatioSums, ratio_interval
from quantlens.stats.sums import PairedSums

__all__ = [
    "CONFIDENCE",
    "Z",
    "Interval",
    "PairedSums",
    "interval_rule",
    "interval_rules",
    "paired_interval",
    "tango_interval",
    "mean_interval",
    "t_quantile",
    "metric_interval",
]



@dataclass(frozen=True)
class Interval:
    """A confidence interval on a degradation (positive = worse), with the rule that made it."""

    low: float
    high: float
    rule: str
    n: int

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @classmethod
    def stored(cls, low: float, high: float, n: int) -> "Optional[Interval]":
        """An interval read back from a result's ``ci_low``/``ci_high`` (None when absent: NaN)."""
        if math.isnan(low) or math.isnan(high):
            return None
        return cls(low, high, "stored", n)


# ---- the two rules, vectorised over arrays (the coverage test calls them on 2,000 at once) ----------------


def _tango_z(b: np.ndarray, c: np.ndarray, n: np.ndarray, delta: np.ndarray) -> np.ndarray:
    w = -b - c + (2 * n - b + c) * delta
    p = (np.sqrt(np.maximum(w * w + 8 * n * c * delta * (1 - delta), 0.0)) - w) / (4 * n)
    var = n * (2 * p + delta * (1 - delta))
    num = b - c - n * delta
    with np.errstate(divide="ignore", invalid="ignore"):
        z = num / np.sqrt(np.maximum(var, 0.0))
    z = np.where(num == 0, 0.0, z)
    return np.where(np.isnan(z), np.sign(num) * np.inf, z)


def tango_interval(b: "np.ndarray | float", c: "np.ndarray | float", n: "np.ndarray | float", z: float = Z,
                   iterations: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Tango's score interval on ``(b - c) / n`` (see module docstring), by bisection on ``Z(delta)``.

    >>> lo, hi = tango_interval(5, 1, 450)
    >>> round(float(lo), 4), round(float(hi), 4)
    (-0.0025, 0.0238)
    """
    b, c, n = (np.asarray(x, dtype=np.float64) for x in (b, c, n))
    b, c, n = np.broadcast_arrays(b, c, n)
    est = (b - c) / n
    eps = 1e-12

    def root(lo: np.ndarray, hi: np.ndarray, target: float) -> np.ndarray:
        # Z decreases in delta: find Z(delta) = target between lo (Z >= target) and hi (Z <= target)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            above = _tango_z(b, c, n, mid) >= target
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return (lo + hi) / 2

    low = root(np.full_like(est, -1 + eps), est.copy(), z)
    high = root(est.copy(), np.full_like(est, 1 - eps), -z)
    return low, high


def mean_interval(mean: "np.ndarray | float", sq: "np.ndarray | float", n: int) -> tuple[np.ndarray, np.ndarray]:
    """``mean +- t_{n-1} s / sqrt(n)`` with ``s^2 = (S - n mean^2) / (n - 1)`` (see module docstring).

    >>> lo, hi = mean_interval(0.5, 50.0, 100)   # mean 0.5, sd 0.5: S = n (sd^2 + mean^2)
    >>> round(float(lo), 3), round(float(hi), 3)
    (0.4, 0.6)
    """
    mean = np.asarray(mean, dtype=np.float64)
    var = np.maximum(np.asarray(sq, dtype=np.float64) - n * mean * mean, 0.0) / (n - 1)
    hw = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * np.sqrt(var / n)
    return mean - hw, mean + hw


def _binary(s: PairedSums) -> tuple[float, float]:
    b = (s.sq + s.ref - s.quant) / 2
    c = (s.sq - s.ref + s.quant) / 2
    lo, hi = tango_interval(round(b), round(c), s.n)
    return float(lo), float(hi)


def _mean(s: PairedSums) -> tuple[float, float]:
    lo, hi = mean_interval((s.ref - s.quant) / s.n, s.sq, s.n)
    return float(lo), float(hi)


def _ratio(s: "RatioSums") -> tuple[float, float]:
    if not isinstance(s, RatioSums):
        raise TypeError(f"the ratio rule needs RatioSums, got {type(s).__name__}")
    return ratio_interval(s)


_RULES: dict[str, Callable[[Any], tuple[float, float]]] = {"binary": _binary, "mean": _mean, "ratio": _ratio}


def interval_rules() -> list[str]:
    """Names of the interval rules."""
    return sorted(_RULES)


def interval_rule(metric: object) -> Optional[str]:
    """The interval rule of a metric (``None``: it has none, e.g. a user callable)."""
    rule = getattr(metric, "interval_rule", None)
    return rule if rule in _RULES else None


def paired_interval(sums: Union[PairedSums, RatioSums], rule: Optional[str], higher_is_better: bool) -> Optional[Interval]:
    """The 95% interval on the degradation (positive = worse), or None without a rule or valid sums.

    Raises :class:`QuantlensError` when fewer than 2 samples (for the ratio rule: sequences) were scored.
    """
    if rule is None or not sums.valid:
        return None
    if sums.n < 2:
        raise QuantlensError(
            f"the data has {sums.n} {'sequence' if rule == 'ratio' else 'sample'}(s): a confidence interval needs at "
            "least 2; pass more data"
        )
    lo, hi = _RULES[rule](sums)
    # the interval is on r - q; the sign rule maps it to the degradation
    a, b = degradation(lo, 0.0, higher_is_better), degradation(hi, 0.0, higher_is_better)
    return Interval(min(a, b), max(a, b), rule, sums.n)


def metric_interval(metric: object, higher_is_better: bool) -> Optional[Interval]:
    """The interval of a metric accumulator's paired sums (None: no rule or no sums)."""
    sums = getattr(metric, "paired", None)
    if sums is None:
        return None
    return paired_interval(sums, interval_rule(metric), higher_is_better)
