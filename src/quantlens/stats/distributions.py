"""The quantiles every interval uses: the confidence level, the normal ``z`` and Student's ``t``.

Example:
    >>> round(t_quantile(0.975, 1e9), 4) == round(Z, 4)
    True
"""

from __future__ import annotations

import math

__all__ = ["CONFIDENCE", "Z", "t_quantile"]

CONFIDENCE = 0.95
Z = 1.959963984540054  # two-sided 95% normal quantile


def t_quantile(p: float, df: float) -> float:
    """Student t quantile: exact for ``df`` 1 and 2, Cornish-Fisher (error < 1e-3 at 95%) above."""
    if df <= 0:
        return float("nan")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    from statistics import NormalDist

    x = NormalDist().inv_cdf(p)
    v = float(df)
    return (x + (x**3 + x) / (4 * v) + (5 * x**5 + 16 * x**3 + 3 * x) / (96 * v**2)
            + (3 * x**7 + 19 * x**5 + 17 * x**3 - 15 * x) / (384 * v**3)
            + (79 * x**9 + 776 * x**7 + 1482 * x**5 - 1920 * x**3 - 945 * x) / (92160 * v**4))
