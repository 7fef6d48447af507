"""The two rules every degradation number follows, in one place.

* Sign: ``degradation = H(y) - H(y_q)`` for a metric where higher is better (top-1), and
  ``H(y_q) - H(y)`` where lower is better (KL, MSE), so that a positive degradation is always
  worse.
* Summing: the *summed degradation* of a set of cells adds each cell's positive part,
  ``sum_l max(0, d_l)``. A NaN cell (not measured, or undefined) adds nothing; a ``+Inf`` cell
  makes the sum ``+Inf`` (its damage is unbounded; the report says so rather than hiding it);
  a ``-Inf`` cell adds nothing, like any negative one.

Example:
    >>> degradation(0.9, 0.8, higher_is_better=True), degradation(0.0, 0.25, higher_is_better=False)
    (0.09999999999999998, 0.25)
    >>> summed_degradation([0.5, -0.25, float("nan"), 0.25])
    0.75
    >>> shares({"a": 3.0, "b": 1.0, "c": -1.0})
    {'a': 0.75, 'b': 0.25, 'c': 0.0}
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

__all__ = ["degradation", "positive_part", "summed_degradation", "shares"]


def degradation(baseline: float, value: float, higher_is_better: bool) -> float:
    """``baseline - value`` if higher is better, else ``value - baseline`` (positive = worse)."""
    return (baseline - value) if higher_is_better else (value - baseline)


def positive_part(d: float) -> float:
    """``max(0, d)``; NaN counts as 0 (see module docstring)."""
    return 0.0 if math.isnan(d) else max(0.0, d)


def summed_degradation(ds: Iterable[float]) -> float:
    """``sum max(0, d)`` over ``ds`` with the module's rule for non-finite values."""
    return sum(positive_part(d) for d in ds)


def shares(named: Mapping[str, float]) -> dict[str, float]:
    """Each name's share of the summed degradation (0 for all when the sum is 0; with ``+Inf``
    cells, the infinite ones share it equally)."""
    parts = {k: positive_part(v) for k, v in named.items()}
    inf = [k for k, v in parts.items() if math.isinf(v)]
    if inf:
        return {k: (1.0 / len(inf) if k in inf else 0.0) for k in parts}
    total = sum(parts.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in parts.items()}
