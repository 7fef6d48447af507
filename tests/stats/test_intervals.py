"""Paired 95% intervals: coverage by simulation, Tango's interval against a direct restricted-MLE
oracle, streaming/merging invariance, and the intervals a sweep and a network measurement carry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support.models import tiny_data, tiny_net

import quantlens as ql
from quantlens.network.measure import quantize_network
from quantlens.errors import QuantlensError
from quantlens.metrics.task import degradation, make_metric
from quantlens.stats.intervals import mean_interval, metric_interval, paired_interval, t_quantile, tango_interval
from quantlens.stats.sums import PairedSums
from quantlens.stats.resolve import round_up, samples_to_resolve, separated, significance

REPS = 2000


def _coverage(lo: np.ndarray, hi: np.ndarray, truth: float) -> float:
    return float(np.mean((lo <= truth) & (truth <= hi)))


@pytest.mark.parametrize("p10,p01,n", [(0.04, 0.015, 450), (0.03, 0.0, 450), (0.10, 0.06, 200), (0.01, 0.01, 1000)])
def test_binary_interval_coverage(p10, p01, n):
    """Paired 0/1 scores (reference right / quantized wrong = b, the reverse = c): 93-97% coverage."""
    rng = np.random.default_rng(1234)
    counts = rng.multinomial(n, [p10, p01, 1 - p10 - p01], size=REPS)
    lo, hi = tango_interval(counts[:, 0], counts[:, 1], n)
    cov = _coverage(lo, hi, p10 - p01)
    assert 0.93 <= cov <= 0.97, cov


@pytest.mark.parametrize("dist,n", [("normal", 30), ("gamma", 450), ("normal", 450)])
def test_mean_interval_coverage(dist, n):
    """Per-sample paired differences with a known mean (a KL-like skewed one too): 93-97% coverage."""
    rng = np.random.default_rng(99)
    if dist == "normal":
        d, truth = 0.002 + 0.01 * rng.standard_normal((REPS, n)), 0.002
    else:
        d, truth = rng.gamma(2.0, 0.005, (REPS, n)), 0.01
    lo, hi = mean_interval(d.mean(1), (d * d).sum(1), n)
    cov = _coverage(lo, hi, truth)
    assert 0.93 <= cov <= 0.97, cov


def _tango_oracle(b: int, c: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Score interval from the likelihood directly: the restricted MLE of p01 by a dense grid search."""

    def zstat(delta: float) -> float:
        lo, hi = max(0.0, -delta) + 1e-12, (1 - delta) / 2 - 1e-12
        p = np.linspace(lo, hi, 200001)
        ll = b * np.log(p + delta) + (c * np.log(p) if c else 0.0) + (n - b - c) * np.log(1 - 2 * p - delta)
        p21 = p[np.argmax(ll)]
        return (b - c - n * delta) / math.sqrt(n * (2 * p21 + delta * (1 - delta)))

    def root(a: float, b_: float, target: float) -> float:
        for _ in range(50):
            m = (a + b_) / 2
            a, b_ = (m, b_) if zstat(m) >= target else (a, m)
        return (a + b_) / 2

    est = (b - c) / n
    return root(-0.999, est - 1e-9 if b != c else est, z) if b or c else -root(est, 0.999, -z), root(est + 1e-9, 0.999, -z)


@pytest.mark.parametrize("b,c,n", [(5, 1, 450), (10, 3, 100), (7, 0, 200), (0, 0, 50)])
def test_tango_matches_likelihood_oracle(b, c, n):
    lo, hi = tango_interval(b, c, n)
    olo, ohi = _tango_oracle(b, c, n)
    assert abs(float(lo) - olo) < 2e-5 and abs(float(hi) - ohi) < 2e-5


def test_t_quantile():
    for df, t in [(1, 12.7062), (2, 4.3027), (5, 2.5706), (29, 2.0452), (449, 1.9653)]:
        assert abs(t_quantile(0.975, df) - t) < 2e-3


def test_paired_sums_stream_and_merge_equal_one_pass():
    """Sums over shards merge to the one-pass sums: the binary interval is identical, the mean one equal to 1e-12."""
    g = torch.Generator().manual_seed(0)
    y_ref, y = torch.randn(300, 10, generator=g), torch.randn(300, 10, generator=g)
    labels = torch.randint(0, 10, (300,), generator=g)
    for name in ("top1", "agreement", "kl", "cosine"):
        whole, parts = make_metric(name), [make_metric(name) for _ in range(3)]
        whole.update(y_ref, y, labels)
        for k, m in enumerate(parts):
            m.update(y_ref[k * 100:(k + 1) * 100], y[k * 100:(k + 1) * 100], labels[k * 100:(k + 1) * 100])
        merged = parts[0].merge(parts[1]).merge(parts[2])
        restored = make_metric(name)
        restored.load_state(merged.state())
        a, b = metric_interval(whole, whole.higher_is_better), metric_interval(restored, whole.higher_is_better)
        assert a is not None and b is not None
        assert abs(a.low - b.low) < 1e-12 and abs(a.high - b.high) < 1e-12, name
        # the interval is on the degradation: it contains the point estimate
        deg = degradation(whole.paired.ref / 300, whole.compute(), whole.higher_is_better)
        assert a.low <= deg <= a.high


def test_mean_interval_against_direct_computation():
    g = torch.Generator().manual_seed(1)
    y_ref, y = torch.randn(50, 5, generator=g), torch.randn(50, 5, generator=g)
    m = make_metric("mse")
    m.update(y_ref, y, None)
    d = ((y.double() - y_ref.double()) ** 2).mean(1)  # per-sample degradation (lower is better: q - r)
    se = float(d.std(unbiased=True)) / math.sqrt(50)
    iv = metric_interval(m, False)
    assert iv is not None
    assert abs(iv.low - (float(d.mean()) - t_quantile(0.975, 49) * se)) < 1e-9
    assert abs(iv.high - (float(d.mean()) + t_quantile(0.975, 49) * se)) < 1e-9


def test_callable_metric_has_no_interval_and_old_states_give_none():
    m = make_metric(lambda y_ref, y, labels: 0.5)
    m.update(torch.zeros(4, 3), torch.zeros(4, 3), None)
    assert metric_interval(m, True) is None
    old = make_metric("top1")
    old.load_state({"total": 3.0, "count": 4})  # a state written before intervals existed
    assert metric_interval(old, True) is None


def test_fewer_than_two_samples_is_one_line_error():
    with pytest.raises(QuantlensError, match="at least 2"):
        paired_interval(PairedSums(1, 1.0, 0.0, 1.0), "binary", True)


def test_resolve_helpers():
    from quantlens.stats.intervals import Interval

    a, b = Interval(0.004, 0.02, "binary", 450), Interval(-0.002, 0.01, "binary", 450)
    assert significance(a) == "worse" and significance(b) == "zero" and significance(None) == "unknown"
    assert significance(Interval(-0.02, -0.01, "mean", 10)) == "better"
    assert not separated(a, 0.012, b, 0.004)
    need = samples_to_resolve(0.008, a, b)
    # at `need` samples the standard errors shrink by sqrt(450 / need): the difference is then just separated
    k = math.sqrt(450 / need)
    shrink = lambda iv, d: Interval(d - (d - iv.low) * k, d + (iv.high - d) * k, "binary", need)  # noqa: E731
    assert separated(shrink(a, 0.012), 0.012, shrink(b, 0.004), 0.004)
    assert round_up(3412) == 3500 and round_up(0.0) == 0


def test_sweep_cells_and_network_carry_intervals(tmp_path):
    model, data = tiny_net(), tiny_data(n_batches=3, batch=8)
    r = ql.analyze(model, data, w_bits=[3, 8], metric="agreement", progress=False)
    for c in r.cells:
        assert c.ci_low <= c.degradation <= c.ci_high and c.samples == r.num_samples and not c.early_stop
    back = ql.SweepResult.from_json(r.to_json())
    assert [(c.ci_low, c.ci_high) for c in back.cells] == [(c.ci_low, c.ci_high) for c in r.cells]
    df = r.to_dataframe()
    assert {"ci_low", "ci_high", "samples", "early_stop"} <= set(df.columns)
    cfg = ql.QuantConfig.uniform(r.layer_names, w_bits=3)
    net = quantize_network(model, data, cfg, metric="kl")
    assert net.interval is not None and net.ci_low <= net.degradation <= net.ci_high
    from quantlens.network.measure import NetworkResult

    assert NetworkResult.from_dict(net.to_dict()).ci_high == net.ci_high
    custom = ql.analyze(model, data, w_bits=[4], metric=lambda y_ref, y, labels: float((y - y_ref).abs().mean()),
                        progress=False)
    assert all(math.isnan(c.ci_low) for c in custom.cells)
    assert '"ci_low": null' in custom.to_json()
