"""Task metrics: streaming accumulators with ``update`` / ``merge`` / ``compute``.

* :mod:`quantlens.metrics.task` -- the registry and the task metrics (``top1``, ``top5``,
  ``agreement``, ``kl``, ``mse``, ``cosine``, a user callable);
* :mod:`quantlens.metrics.tokens` -- the token metrics of language models (``nll``,
  ``perplexity``, ``token_kl``, ``token_agreement``), registered when this package loads.
"""

from quantlens.metrics import tokens  # noqa: F401  (registers the token metrics)
from quantlens.metrics.task import (
    CallableMetric,
    Metric,
    SumMetric,
    is_fraction,
    make_metric,
    metrics,
    metrics_with_intervals,
    register_metric,
    update_metric,
)

__all__ = [
    "Metric", "SumMetric", "CallableMetric", "register_metric", "metrics", "make_metric", "update_metric",
    "is_fraction", "metrics_with_intervals",
]
