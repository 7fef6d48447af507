"""An estimated cell in its metric's own units, where the estimate's units allow it.

The first-order estimate (:mod:`quantlens.sweep.estimate`) of a language model scored by a
token metric is ``delta``, the expected change of the mean per-token quantity it scores:

* ``nll``: ``delta`` is the change of the mean next-token negative log-likelihood (nats), the
  metric's own units;
* ``perplexity``: perplexity is ``exp(mean nll)``, so a change ``delta`` of the mean nll moves
  it from ``ppl`` to ``ppl * exp(delta)``: the degradation is exactly ``ppl * (exp(delta) - 1)``
  (the estimate's own approximation is in ``delta``, not in this conversion);
* ``token_kl``: ``delta`` is the expected KL increase per token, the metric itself.

Any other metric (top-1, agreement, a user's callable) is estimated by a KL that is not in its
units: :func:`predicted` returns None there, and the estimate stays a score that ranks layers.

Example:
    >>> predicted_degradation("perplexity", 18.2, 0.229)   # doctest: +ELLIPSIS
    4.68...
"""

from __future__ import annotations

import math
from typing import Optional

from quantlens.sweep.results import Cell, SweepResult

__all__ = ["CONVERTIBLE", "predicted_degradation", "predicted", "in_metric_units"]

CONVERTIBLE = ("nll", "perplexity", "token_kl")


def in_metric_units(metric_name: str) -> bool:
    """Whether an estimate of ``metric_name`` converts to its degradation (module docstring)."""
    return metric_name in CONVERTIBLE


def predicted_degradation(metric_name: str, baseline: float, delta: float) -> Optional[float]:
    """The degradation an estimate ``delta`` stands for, in ``metric_name``'s units, or None."""
    if not in_metric_units(metric_name) or delta is None or not math.isfinite(delta):
        return None
    if metric_name == "perplexity":
        return baseline * math.expm1(delta)
    return float(delta)


def predicted(result: SweepResult, cell: Cell) -> Optional[float]:
    """``cell``'s estimate in ``result``'s metric units (None where it has none or cannot convert)."""
    est = getattr(cell, "estimate", None)
    if est is None:
        return None
    return predicted_degradation(result.metric_name, result.baseline, est)
