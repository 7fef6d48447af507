"""The first-order estimate: its formula against a direct computation, its check against exact
cones, the summary's trust sentence, and the one-line errors when there is no gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from models import tiny_data, tiny_net
from torch import nn

import quantlens as ql
from quantlens.analysis.sweep.estimate import first_order, spearman
from quantlens.errors import QuantlensError
from quantlens.report.insights import insights


def test_spearman_against_direct_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties: average ranks
    assert math.isnan(spearman([1, 2], [1, 2]))


class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_first_order_equals_direct_fisher_formula():
    """est(fc2, b) = mean 1/2 (g . d)^2 with g = grad of log softmax at a label drawn like the engine's draw."""
    from quantlens.analysis.sweep.api import make_config
    from quantlens.data import iterate
    from quantlens.parallel import SweepRecipe

    m = TwoLinear().eval()
    g0 = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 6, generator=g0), None)]
    sweep = SweepRecipe(m, next(iterate(data)), make_config([4], a_bits=None), "kl", "cpu", None, None, "cone", None).build()
    est = first_order(sweep, data, seed=7)
    x = data[0][0]
    h = torch.relu(m.fc1(x)).detach()
    y = m.fc2(h).double()
    gen = torch.Generator().manual_seed(7)
    c = torch.multinomial(F.softmax(y.detach(), 1), 1, generator=gen).reshape(-1)
    g = torch.eye(5, dtype=torch.float64)[c] - F.softmax(y, 1)  # d log softmax[c] / d y
    w = m.fc2.weight.detach()
    s = w.abs().max() / 7
    wq = torch.fake_quantize_per_tensor_affine(w, float(s), 0, -8, 7)
    d = (h @ wq.T + m.fc2.bias - m.fc2(h)).double()
    want = float((0.5 * ((g * d).sum(1)) ** 2).mean().detach())
    assert est[(1, 4)] == pytest.approx(want, rel=1e-5)


def test_estimate_is_checked_and_reported():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=16)
    r = ql.analyze(m, d, w_bits=[3, 8], metric="kl", estimate=True, estimate_k=2)
    info = r.extra["estimate"]
    assert r.engine == "estimate" and info["checked_cells"] == 8 and 0 <= info["topk_overlap"][3] <= 1
    assert all(c.estimate >= 0 for c in r.cells)
    measured = [c for c in r.cells if not math.isnan(c.degradation)]
    assert len(measured) == 8
    exact = ql.analyze(m, d, w_bits=[3, 8], metric="kl")
    for c in measured:  # the check's cells are the exact sweep's
        assert c.degradation == pytest.approx(exact.cell(c.layer, c.w_bits).degradation, rel=1e-9)
    xs = [c.estimate for c in measured]
    ys = [c.degradation for c in measured]
    assert info["spearman"] == pytest.approx(spearman(xs, ys))
    text = " ".join(i.text for i in insights(r, 3))
    assert "first-order estimate" in text
    import dataclasses

    bad = dataclasses.replace(r, extra={"estimate": {**info, "spearman": 0.2}})
    assert "the estimate cannot be trusted for this model" in " ".join(i.text for i in insights(bad, 3))


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def test_no_gradient_is_one_line_error_naming_the_fallback():
    data = [(torch.randint(0, 10, (4, 5)), None)]
    with pytest.raises(QuantlensError, match="the exact sweep is the fallback") as e:
        ql.analyze(TokenNet().eval(), data, w_bits=[4], metric="kl", estimate=True)
    assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="--estimate runs alone"):
        ql.analyze(tiny_net(), tiny_data(1, 4), w_bits=[4], metric="kl", estimate=True, adaptive=True)
