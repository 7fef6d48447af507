"""What every measurement reports, one type: :class:`Measurement`, and the :class:`Measured` base
that every result with those fields (a sweep cell, a whole-network result, a fix trial) shares.

A measurement of a quantized network against its float reference over ``samples`` samples:

* ``noise = mean_n ||y_n - y_q,n||^2`` and ``sqnr_db = 10 log10(sum ||y||^2 / sum ||y - y_q||^2)``
* ``metric = H(y_q)`` and ``degradation = H(y) - H(y_q)`` (sign flipped where lower is better)
* ``ci_low`` / ``ci_high``: the paired 95% interval on ``degradation`` (NaN without a rule)

The result types keep these fields flat (their JSON schemas name them so); :class:`Measured`
gives each the one ``interval`` and ``measurement`` reading them.

Example:
    >>> m = Measurement(noise=0.1, sqnr_db=20.0, metric=0.9, degradation=0.02, ci_low=0.01, ci_high=0.03, samples=500)
    >>> m.interval.contains(0.02), m.interval.excludes_zero
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from quantlens.stats.intervals import Interval

__all__ = ["Measurement", "Measured"]

_NAN = float("nan")


class Measured:
    """Base of the results that carry a measurement's fields (``noise``, ``sqnr_db``, ``metric``,
    ``degradation``, ``ci_low``, ``ci_high``); ``_samples_field`` names the field that counts
    the samples (``samples`` or ``num_samples``)."""

    _samples_field = "samples"

    @property
    def interval(self) -> Optional[Interval]:
        """The paired 95% interval on ``degradation`` (None for a metric without a rule)."""
        return Interval.stored(getattr(self, "ci_low"), getattr(self, "ci_high"), getattr(self, self._samples_field))

    @property
    def measurement(self) -> "Measurement":
        """The measurement's fields alone."""
        return Measurement(
            noise=getattr(self, "noise"), sqnr_db=getattr(self, "sqnr_db"), metric=getattr(self, "metric"),
            degradation=getattr(self, "degradation"), ci_low=getattr(self, "ci_low"), ci_high=getattr(self, "ci_high"),
            samples=int(getattr(self, self._samples_field)),
        )


@dataclass(frozen=True)
class Measurement(Measured):
    """One measurement (module docstring)."""

    noise: float = _NAN
    sqnr_db: float = _NAN
    metric: float = _NAN
    degradation: float = _NAN
    ci_low: float = _NAN
    ci_high: float = _NAN
    samples: int = 0
