"""Statistics of paired measurements.

* :mod:`quantlens.stats.sums` -- :class:`PairedSums`, the streaming, mergeable sums;
* :mod:`quantlens.stats.intervals` -- the 95% interval on a degradation (one owner for all);
* :mod:`quantlens.stats.resolve` -- significance, separation of two cells, samples to resolve.

The package imports nothing at load time, so :mod:`quantlens.metrics.task` can use the sums.
"""

__all__: list[str] = []
