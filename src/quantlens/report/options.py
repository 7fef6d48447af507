"""Options of a report page, validated once.

``saturate`` is the degradation at which the heatmap's colour saturates, in the metric's stored
units (``0.05`` = 5 points of top-1). ``None`` means 5%: 0.05 for percentage metrics, 5% of
``|baseline|`` for the others (the largest degradation when the baseline is 0). ``bits`` is the bit-width the page focuses on first (the summary,
the default of the bit-width selectors); ``None`` picks 4 when swept, else the lowest.

Example:
    >>> ReportOptions(saturate=0.02).saturation("top1", 0.99)
    0.02
    >>> ReportOptions().saturation("kl", 2.0)
    0.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from quantlens.errors import QuantlensError
from quantlens.report.fmt import PCT_METRICS

__all__ = ["ReportOptions", "DEFAULT_SATURATE"]

DEFAULT_SATURATE = 0.05


@dataclass(frozen=True)
class ReportOptions:
    """How a report is drawn (never what is measured)."""

    saturate: Optional[float] = None
    bits: Optional[int] = None
    title: Optional[str] = None

    def __post_init__(self) -> None:
        if self.saturate is not None and not (math.isfinite(self.saturate) and self.saturate > 0):
            raise QuantlensError(f"--saturate {self.saturate}: expected a positive number such as 0.05 (5%)")
        if self.bits is not None and not 2 <= int(self.bits) <= 16:
            raise QuantlensError(f"--bits {self.bits}: expected a weight bit-width in 2..16")

    def saturation(self, metric: str, baseline: float, degradations: Sequence[float] = ()) -> float:
        """The colour saturation level in stored metric units.

        Percentage metrics: 0.05. Others: 5% of ``|baseline|``; when the baseline is 0 (``kl``,
        ``mse`` against the float model) there is no scale to take 5% of, so the largest
        degradation in ``degradations`` is used.
        """
        if self.saturate is not None:
            return float(self.saturate)
        if metric.lower() in PCT_METRICS:
            return DEFAULT_SATURATE
        if math.isfinite(baseline) and baseline != 0:
            return DEFAULT_SATURATE * abs(baseline)
        worst = max((d for d in degradations if math.isfinite(d) and d > 0), default=0.0)
        return worst if worst > 0 else DEFAULT_SATURATE

    def focus_bits(self, available: Sequence[int]) -> int:
        """The bit-width to show first: the requested one, else 4, else the lowest swept. Format
        names keep the order given (a result's columns ascend by effective bits), so the lowest is the first."""
        bits = sorted(available) if all(isinstance(b, int) for b in available) else list(available)
        if not bits:
            raise QuantlensError("the results hold no cells: rerun `quantlens analyze`")
        if self.bits is not None:
            if self.bits not in bits:
                raise QuantlensError(f"--bits {self.bits}: the results have {bits}; choose one of them")
            return int(self.bits)
        return 4 if 4 in bits else bits[0]
