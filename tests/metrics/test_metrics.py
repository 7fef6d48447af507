"""Every metric against a direct computation; merging shards equals one pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantlens.errors import QuantlensError
from quantlens.metrics.task import make_metric, metrics


def _data(seed=0, n=37, k=10):
    g = torch.Generator().manual_seed(seed)
    y_ref = torch.randn(n, k, generator=g)
    y = y_ref + 0.7 * torch.randn(n, k, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    return y_ref, y, labels


def _direct(name, y_ref, y, labels):
    if name == "top1":
        return (y.argmax(1) == labels).double().mean()
    if name == "top5":
        return (y.topk(5, 1).indices == labels[:, None]).any(1).double().mean()
    if name == "agreement":
        return (y.argmax(1) == y_ref.argmax(1)).double().mean()
    if name == "kl":
        p = F.softmax(y_ref.double(), 1)
        return (p * (p.log() - F.log_softmax(y.double(), 1))).sum(1).mean()
    if name == "mse":
        return ((y.double() - y_ref.double()) ** 2).mean()
    if name == "cosine":
        return F.cosine_similarity(y.double(), y_ref.double(), 1).mean()
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["top1", "top5", "agreement", "kl", "mse", "cosine"])
def test_metric_matches_direct_and_merges(name):
    y_ref, y, labels = _data()
    whole = make_metric(name)
    whole.update(y_ref, y, labels)
    assert whole.compute() == pytest.approx(float(_direct(name, y_ref, y, labels)), rel=1e-9)
    a, b = make_metric(name), make_metric(name)
    a.update(y_ref[:10], y[:10], labels[:10])
    b.update(y_ref[10:], y[10:], labels[10:])
    assert a.merge(b).compute() == pytest.approx(whole.compute(), rel=1e-12)
    c = make_metric(name)
    c.load_state(a.merge(b).state())
    assert c.compute() == pytest.approx(whole.compute(), rel=1e-12)


def test_registry_lists_all():
    assert set(metrics()) >= {"top1", "top5", "agreement", "kl", "mse", "cosine"}
    assert not make_metric("kl").higher_is_better and make_metric("top1").higher_is_better


def test_callable_metric_weighted_by_batch():
    m = make_metric(lambda y_ref, y, labels: float(y.shape[0]))
    m.update(torch.zeros(2, 3), torch.zeros(2, 3), None)
    m.update(torch.zeros(4, 3), torch.zeros(4, 3), None)
    assert m.compute() == pytest.approx((2 * 2 + 4 * 4) / 6)


def test_metric_errors():
    with pytest.raises(QuantlensError, match="unknown metric"):
        make_metric("accuracy")
    m = make_metric("top1")
    with pytest.raises(QuantlensError, match="needs labels"):
        m.update(torch.zeros(2, 3), torch.zeros(2, 3), None)
    with pytest.raises(QuantlensError, match="labels have"):
        m.update(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(QuantlensError, match="metric must be"):
        make_metric(3)  # type: ignore[arg-type]
