"""What an interval lets a user conclude: significant, indistinguishable from zero, or unresolved.

* :func:`significance` -- ``worse`` when the whole interval is above 0, ``better`` when below,
  ``zero`` when it contains 0, ``unknown`` without an interval.
* :func:`separated` -- whether two cells' degradations differ. The two cells share their
  samples but not a per-sample record, so the test treats them as independent::

      se_x = half_width_x / z,    |d_a - d_b| > z sqrt(se_a^2 + se_b^2)

  Cells measured on the same samples are positively correlated, so this overstates the noise
  of the difference: it may call a pair unresolved that a paired test would separate, never the
  reverse in expectation.
* :func:`samples_to_resolve` -- standard errors shrink as ``1 / sqrt(n)``, so a difference ``D``
  measured with standard error ``se`` on ``n`` samples needs about::

      n' = n (z se / D)^2

  samples to reach significance (rounded up to two significant figures).

Example:
    >>> from quantlens.stats.intervals import Interval
    >>> a, b = Interval(0.001, 0.017, "binary", 450), Interval(-0.001, 0.014, "binary", 450)
    >>> significance(a), significance(b), separated(a, 0.009, b, 0.0067)
    ('worse', 'zero', False)
    >>> samples_to_resolve(0.0023, a, b)
    11000
"""

from __future__ import annotations

import math
from typing import Literal, Optional

from quantlens.stats.intervals import Z, Interval

__all__ = ["Verdict", "significance", "separated", "samples_to_resolve", "half_width", "round_up"]

Verdict = Literal["worse", "better", "zero", "unknown"]


def significance(iv: Optional[Interval]) -> Verdict:
    """``worse`` / ``better`` when the interval excludes 0 on that side, ``zero`` if it contains 0."""
    if iv is None or not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return "unknown"
    if iv.low > 0:
        return "worse"
    if iv.high < 0:
        return "better"
    return "zero"


def half_width(iv: Interval) -> float:
    return (iv.high - iv.low) / 2


def _se(iv: Interval) -> float:
    return half_width(iv) / Z


def separated(a: Interval, da: float, b: Interval, db: float) -> bool:
    """Whether the degradations ``da`` and ``db`` (with intervals ``a``, ``b``) differ (see module docstring)."""
    se = math.hypot(_se(a), _se(b))
    return abs(da - db) > Z * se


def round_up(n: float) -> int:
    """``n`` rounded up to two significant figures (3,412 -> 3,500)."""
    if not math.isfinite(n) or n <= 0:
        return 0
    mag = 10 ** max(0, int(math.floor(math.log10(n))) - 1)
    return int(math.ceil(n / mag) * mag)


def samples_to_resolve(diff: float, a: Interval, b: Optional[Interval] = None) -> int:
    """Samples that would make ``diff`` significant: ``n (z se / diff)^2`` (0 if ``diff`` is 0)."""
    se = _se(a) if b is None else math.hypot(_se(a), _se(b))
    if diff == 0 or not math.isfinite(diff) or se <= 0:
        return 0
    return round_up(a.n * (Z * se / abs(diff)) ** 2)
