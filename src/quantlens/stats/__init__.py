"""Statistics of paired measurements.

* :mod:`quantlens.stats.sums` -- :class:`PairedSums`, the streaming, mergeable sums;
* :mod:`quantlens.stats.intervals` -- the 95% interval on a degradation (one owner for all);
* :mod:`quantlens.stats.resolve` -- significance, separation of two cells, samples to resolve.

* :mod:`quantlens.stats.degradation` -- the sign and summing rules of every degradation;
* :mod:`quantlens.stats.distributions` -- the confidence level and the quantiles.

Statistics know nothing of metrics: :mod:`quantlens.metrics` builds on them.
"""

__all__: list[str] = []
