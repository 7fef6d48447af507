"""Streaming task metrics: accumulators with ``update`` / ``merge`` / ``compute``.

A metric scores a network output ``y`` (the quantized one) against the float output
``y_ref`` and, where it needs them, the labels. Every metric keeps only sums, so shards
computed anywhere merge into the result of one serial run.

=============  ======================================================  ================
name           per-sample score, averaged over samples                 better
=============  ======================================================  ================
``top1``       ``argmax y == label``                                   higher
``top5``       ``label in top-5 of y``                                 higher
``agreement``  ``argmax y == argmax y_ref`` (label-free)               higher
``kl``         ``KL(softmax y_ref || softmax y)``                      lower
``mse``        ``mean_j (y_j - y_ref_j)^2``                            lower
``cosine``     ``<y, y_ref> / (|y| |y_ref|)``                          higher
callable       ``fn(y_ref, y, labels) -> float`` per batch, weighted by batch size
=============  ======================================================  ================

Token-level metrics of language models (``nll``, ``perplexity``, ``token_kl``,
``token_agreement``) live in :mod:`quantlens.metrics.tokens` and are registered here too.

A metric that needs to see the batch's inputs (its attention mask, its input ids) sets
``needs_inputs = True``; the engine then calls ``update(y_ref, y, labels, inputs=inputs)``
(through :func:`update_metric`). ``mse`` and ``cosine`` use it to leave padded tokens out of
a per-token output ``[batch, seq, ...]`` when the inputs carry an ``attention_mask``.

The degradation of a quantized network is ``H(y_ref) - H(y)`` for higher-is-better metrics
and ``H(y) - H(y_ref)`` otherwise, so that a positive degradation is always worse
(:func:`degradation`, the one sign rule).

Each per-sample metric also keeps the paired sums of its reference and quantized scores
(:class:`~quantlens.stats.sums.PairedSums`), from which :mod:`quantlens.stats.intervals` makes a
95% interval; ``interval_rule`` names the rule (``binary`` or ``mean``; ``None`` for a callable).

Example:
    >>> import torch
    >>> m = make_metric("top1")
    >>> m.update(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 0]))
    >>> round(m.compute(), 4)
    0.6667
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Protocol, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.stats.sums import PairedSums

__all__ = [
    "degradation",
    "Metric",
    "SumMetric",
    "register_metric",
    "metrics",
    "make_metric",
    "CallableMetric",
    "update_metric",
    "token_mask",
]


from quantlens.stats.degradation import degradation  # noqa: E402  (the one sign rule, re-exported)


class Metric(Protocol):
    name: str
    higher_is_better: bool
    needs_labels: bool

    def update(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor]) -> None: ...
    # a metric with ``needs_inputs = True`` also takes ``inputs=`` (the batch's inputs)

    def merge(self, other: "Metric") -> "Metric": ...

    def compute(self) -> float: ...

    def state(self) -> dict: ...

    def load_state(self, state: dict) -> None: ...


class SumMetric:
    """A metric that is the mean of a per-sample score: keeps ``sum`` (float64) and ``count``."""

    name = "sum"
    higher_is_better = True
    needs_labels = False
    interval_rule: Optional[str] = "mean"
    needs_inputs = False
    per_token = False  # True: the output is ``[batch, seq, vocab]`` logits, one distribution per position

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.paired = PairedSums()

    def scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], mask: Optional[Tensor] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def update(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], inputs: Any = None) -> None:
        if self.needs_labels and labels is None:
            raise QuantlensError(
                f"metric {self.name!r} needs labels but the data has none: use a label-free metric "
                "(agreement, kl, mse, cosine)"
            )
        yr, yq = y_ref.detach().float(), y.detach().float()
        mask = token_mask(yq, inputs) if self.needs_inputs else None
        kw: dict = {}
        if mask is not None:  # padded tokens are zero in both outputs and not counted
            keep = mask.reshape(*mask.shape, *([1] * (yq.dim() - 2)))
            zero = torch.zeros((), dtype=yq.dtype, device=yq.device)
            yr, yq, kw = torch.where(keep, yr, zero), torch.where(keep, yq, zero), {"mask": mask}
        s = self.scores(yr, yq, labels, **kw)
        self.total += float(s.double().sum())
        self.count += int(s.numel())
        self.paired.update(self.scores(yr, yr, labels, **kw), s)

    def merge(self, other: "Metric") -> "SumMetric":
        assert isinstance(other, SumMetric)
        out = copy.copy(self)
        out.total = self.total + other.total
        out.count = self.count + other.count
        out.paired = self.paired.merge(other.paired)
        return out

    def compute(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def state(self) -> dict:
        return {"total": self.total, "count": self.count, "paired": self.paired.state()}

    def load_state(self, state: dict) -> None:
        self.total = float(state["total"])
        self.count = int(state["count"])
        self.paired = PairedSums.from_state(state.get("paired"))  # older states: no interval


_REGISTRY: dict[str, Callable[[], Metric]] = {}


def register_metric(name: str) -> Callable[[type], type]:
    """Class decorator: register a metric class under ``name``."""

    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def metrics() -> list[str]:
    """Names of the registered metrics."""
    return sorted(_registry())


# Metrics whose values are fractions (accuracies, agreement rates): shown and given as percentages.
PCT_METRICS = frozenset({"top1", "top5", "agreement", "token_agreement", "accuracy", "acc"})


def is_fraction(name: object) -> bool:
    """Whether metric ``name``'s values are fractions, written as percentages (``0.5%``)."""
    return str(name).lower() in PCT_METRICS


def metrics_with_intervals() -> list[str]:
    """Names of the registered metrics that carry a 95% interval (an ``interval_rule``)."""
    return [n for n in metrics() if getattr(_registry()[n], "interval_rule", None) is not None]


def update_metric(metric: Metric, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], inputs: Any = None) -> None:
    """``metric.update``, with ``inputs=`` for the metrics that declare ``needs_inputs``."""
    if getattr(metric, "needs_inputs", False):
        metric.update(y_ref, y, labels, inputs=inputs)  # type: ignore[call-arg]
    else:
        metric.update(y_ref, y, labels)


def token_mask(y: Tensor, inputs: Any) -> Optional[Tensor]:
    """The inputs' attention mask as a bool ``[batch, seq]`` tensor on ``y``'s device, if ``y`` is
    ``[batch, seq, ...]`` and the inputs carry one of that shape; else ``None``."""
    from quantlens.data.batches import attention_mask  # (analysis imports this module)

    mask = attention_mask(inputs)
    if mask is None or y.dim() < 3 or tuple(mask.shape) != tuple(y.shape[:2]):
        return None
    return (mask != 0).to(y.device)


def _flat(y: Tensor) -> Tensor:
    return y.reshape(y.shape[0], -1)


def _labels(labels: Optional[Tensor], y: Tensor) -> Tensor:
    assert labels is not None
    lab = labels.to(y.device).long().reshape(-1)
    if lab.numel() != y.shape[0]:
        raise QuantlensError(f"labels have {lab.numel()} entries for a batch of {y.shape[0]} outputs")
    return lab


@register_metric("top1")
class Top1(SumMetric):
    interval_rule = "binary"
    needs_labels = True

    def scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor]) -> Tensor:
        return (_flat(y).argmax(1) == _labels(labels, y)).double()


@register_metric("top5")
class Top5(SumMetric):
    interval_rule = "binary"
    needs_labels = True

    def scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor]) -> Tensor:
        f = _flat(y)
        k = min(5, f.shape[1])
        top = f.topk(k, dim=1).indices
        return (top == _labels(labels, y).unsqueeze(1)).any(1).double()


@register_metric("agreement")
class Agreement(SumMetric):
    interval_rule = "binary"
    def scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor]) -> Tensor:
        return (_flat(y).argmax(1) == _flat(y_ref).argmax(1)).double()


@register_metric("kl")
class KL(SumMetric):
    higher_is_better = False

    def scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor]) -> Tensor:
        lp_ref = F.log_softmax(_flat(y_ref).double(), dim=1)
        lp = F.log_softmax(_flat(y).double(), dim=1)
        return (lp_ref.exp() * (lp_ref - lp)).sum(1)


@register_metric("mse")
class MSE(SumMetric):
    """Mean squared error per sample; padded tokens (attention mask 0) are not counted."""

    higher_is_better = False
    needs_inputs = True

    def scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], mask: Optional[Tensor] = None) -> Tensor:
        sq = ((_flat(y).double() - _flat(y_ref).double()) ** 2).sum(1)
        if mask is None:
            return sq / _flat(y).shape[1]
        per_token = _flat(y).shape[1] // y.shape[1]
        return sq / (mask.sum(1).double() * per_token).clamp(min=1)


@register_metric("cosine")
class Cosine(SumMetric):
    """Cosine similarity per sample; padded tokens (attention mask 0) are left out."""

    needs_inputs = True

    def scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], mask: Optional[Tensor] = None) -> Tensor:
        return F.cosine_similarity(_flat(y).double(), _flat(y_ref).double(), dim=1, eps=1e-12)


class CallableMetric(SumMetric):
    """A user function ``fn(y_ref, y, labels) -> float`` scored per batch, weighted by batch size."""

    interval_rule = None  # scored per batch: no per-sample differences, no interval

    def __init__(self, fn: Callable[..., Any], higher_is_better: bool = True, name: Optional[str] = None) -> None:
        super().__init__()
        self.paired = PairedSums(valid=False)
        self.fn = fn
        self.higher_is_better = higher_is_better
        self.name = name or getattr(fn, "__name__", "custom")

    def update(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor]) -> None:
        v = self.fn(y_ref, y, labels)
        v = float(v.item() if isinstance(v, Tensor) else v)
        n = int(y.shape[0])
        self.total += v * n
        self.count += n


def _registry() -> dict[str, Callable[[], Metric]]:
    """The registered metrics (:mod:`quantlens.metrics` loads :mod:`~quantlens.metrics.tokens`,
    which registers the token metrics, before any caller can get here)."""
    return _REGISTRY


def make_metric(spec: Union[str, Callable[..., Any], Metric]) -> Metric:
    """A fresh accumulator from a registered name, a user callable, or a metric to copy."""
    if isinstance(spec, str):
        registry = _registry()
        if spec not in registry:
            raise QuantlensError(f"unknown metric {spec!r}: choose one of {', '.join(metrics())} or pass a callable")
        return registry[spec]()
    if hasattr(spec, "update") and hasattr(spec, "compute") and hasattr(spec, "merge"):
        return copy.deepcopy(spec)  # type: ignore[return-value]
    if callable(spec):
        return CallableMetric(spec)
    raise QuantlensError(f"metric must be a name, a callable or a Metric, got {type(spec).__name__}")
