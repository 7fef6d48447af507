"""Number formatting in the units of the task metric.

Percentage metrics (``top1``, ``top5``, ``agreement``) are stored as fractions and shown in
percent (``0.0156`` -> ``1.56%``); other metrics (``kl``, ``mse``, ...) as plain numbers.

Example:
    >>> u = Units.for_metric("top1")
    >>> u.deg(0.015555), u.value(0.99555)
    ('1.56%', '99.56%')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, TypeGuard

from quantlens.metrics.task import PCT_METRICS, is_fraction  # the metrics own which of them are fractions

__all__ = ["Units", "PCT_METRICS", "finite"]


def finite(x: Any) -> TypeGuard[float]:
    """True for a real, finite number."""
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


@dataclass(frozen=True)
class Units:
    """How a metric's values and degradations are written."""

    pct: bool

    @classmethod
    def for_metric(cls, name: str) -> "Units":
        return cls(pct=is_fraction(name))

    @property
    def scale(self) -> float:
        """Multiplier from stored values to displayed values."""
        return 100.0 if self.pct else 1.0

    def value(self, x: Optional[float]) -> str:
        """A metric value (``99.56%`` or ``0.1234``)."""
        if not finite(x):
            return "-"
        return f"{100 * x:.2f}%" if self.pct else f"{x:.4g}"

    def deg(self, x: Optional[float], signed: bool = False) -> str:
        """A degradation, optionally with its sign."""
        if not finite(x):
            return "-"
        if self.pct:
            return f"{100 * x:+.2f}%" if signed else f"{100 * x:.2f}%"
        return f"{x:+.4g}" if signed else f"{x:.4g}"

    def shown(self, x: Optional[float]) -> Optional[float]:
        """The displayed number (scaled), None when missing."""
        return x * self.scale if finite(x) else None
