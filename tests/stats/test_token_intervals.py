"""The token metrics' interval (rule ``ratio``): coverage by simulation on clustered sequences,
the expanded sums against the per-sequence residuals computed directly, shards that merge into
the one-pass interval, and the sign rule on lower- and higher-is-better metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from quantlens.errors import QuantlensError
from quantlens.metrics.task import degradation, make_metric, update_metric
from quantlens.stats.intervals import Z, metric_interval, paired_interval, t_quantile
from quantlens.stats.ratio import RatioSums, ratio_interval
from support.tokens import inputs_of, padded_logits

REPS = 2000
LMIN, LMAX = 4, 64  # sequence lengths, uniform on LMIN..LMAX


def _lengths() -> np.ndarray:
    return np.arange(LMIN, LMAX + 1, dtype=np.float64)


def _effect(L: np.ndarray) -> np.ndarray:
    """Per-token degradation of a sequence of length L: longer sequences suffer more."""
    return 0.02 + 0.06 * (L - LMIN) / (LMAX - LMIN)


def _truth_effect() -> float:
    """The token-weighted mean effect ``E[L delta(L)] / E[L]`` (the ratio estimand), exactly."""
    L = _lengths()
    return float((L * _effect(L)).sum() / L.sum())


def _clustered_nll(rng: np.random.Generator, S: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-sequence sums of token NLLs (float ``a``, quantized ``b``), lengths ``n`` and the token-level
    sum of squared differences. Tokens are correlated: a per-sequence level plus MA(1) noise, and the
    quantization error has a per-sequence component."""
    L = rng.integers(LMIN, LMAX + 1, S)
    T = int(L.max())
    mask = np.arange(T)[None, :] < L[:, None]
    z = rng.standard_normal((S, T + 1))
    f = 2.0 + 0.5 * rng.standard_normal((S, 1)) + 0.4 * (z[:, 1:] + 0.7 * z[:, :-1])
    w = rng.standard_normal((S, T + 1))
    q = f + _effect(L)[:, None] + 0.05 * rng.standard_normal((S, 1)) + 0.03 * (w[:, 1:] + 0.7 * w[:, :-1])
    a, b = (f * mask).sum(1), (q * mask).sum(1)
    return a, b, L.astype(np.float64), (((f - q) ** 2) * mask).sum()


@pytest.mark.slow
@pytest.mark.parametrize("link,S", [("identity", 40), ("identity", 300), ("exp", 100), ("exp", 300)])
def test_ratio_interval_coverage_on_clustered_sequences(link, S):
    """nll (identity) and perplexity (exp): 93-97% coverage of the known token-weighted effect,
    where the naive interval that takes tokens as independent covers far less."""
    rng = np.random.default_rng(2024 + S)
    effect = _truth_effect()
    truth = effect if link == "identity" else math.exp(2.0 + effect) - math.exp(2.0)  # degradation: q - r
    hits, naive_hits = 0, 0
    for _ in range(REPS):
        a, b, n, sq = _clustered_nll(rng, S)
        s = RatioSums(link)
        s.update(a, b, n)
        iv = paired_interval(s, "ratio", higher_is_better=False)
        assert iv is not None and iv.n == S
        hits += iv.low <= truth <= iv.high
        if link == "identity":  # tokens as independent samples: mean +- z sd / sqrt(N)
            N, d = n.sum(), (b.sum() - a.sum()) / n.sum()
            hw = Z * math.sqrt(max(sq / N - d * d, 0.0) / N)
            naive_hits += d - hw <= truth <= d + hw
    cov = hits / REPS
    assert 0.93 <= cov <= 0.97, cov
    if link == "identity":
        assert naive_hits / REPS < 0.6, naive_hits / REPS


def test_ratio_interval_coverage_on_clustered_token_agreement():
    """Binary tokens (token_agreement), agreement probability drawn per sequence and falling with its
    length: 93-97% coverage of ``1 - E[L p_L] / E[L]``. This skew needs sequences: measured with
    20,000 repetitions, the coverage is 0.924 at 60 sequences, 0.939 at 120, 0.945 at 300."""
    rng = np.random.default_rng(7)
    S, L_all = 300, _lengths()
    scale = 0.5 + L_all / LMAX  # E[1 - p | L] = scale(L) / 41  (Beta(1, 40) mean 1/41)
    truth = float((L_all * scale / 41).sum() / L_all.sum())  # degradation: r - q with r = 1
    hits = 0
    for _ in range(REPS):
        L = rng.integers(LMIN, LMAX + 1, S)
        p = 1 - rng.beta(1.0, 40.0, S) * (0.5 + L / LMAX)
        b = rng.binomial(L, p).astype(np.float64)
        s = RatioSums()
        s.update(L.astype(np.float64), b, L)
        iv = paired_interval(s, "ratio", higher_is_better=True)
        hits += iv.low <= truth <= iv.high
    assert 0.93 <= hits / REPS <= 0.97, hits / REPS


def _per_sequence(name, y_ref, y, ids, mask, labels):
    """(a_s, b_s, n_s) token by token in Python: the reference and quantized score sums per sequence."""
    a, b, n = [], [], []
    for s in range(y.shape[0]):
        sa = sb = 0.0
        k = 0
        for t in range(y.shape[1]):
            if name in ("nll", "perplexity"):
                if t + 1 >= y.shape[1]:
                    continue
                lab = (labels if labels is not None else ids)[s, t + 1]
                if lab == -100 or mask[s, t] == 0 or mask[s, t + 1] == 0:
                    continue
                sa -= float(F.log_softmax(y_ref[s, t].double(), 0)[lab])
                sb -= float(F.log_softmax(y[s, t].double(), 0)[lab])
            elif mask[s, t] == 0:
                continue
            elif name == "token_kl":
                p, q = F.log_softmax(y_ref[s, t].double(), 0), F.log_softmax(y[s, t].double(), 0)
                sb += float((p.exp() * (p - q)).sum())
            else:
                sa += 1.0
                sb += float(y[s, t].argmax() == y_ref[s, t].argmax())
            k += 1
        if k:
            a.append(sa), b.append(sb), n.append(k)
    return np.array(a), np.array(b), np.array(n, dtype=np.float64)


def _direct_interval(a, b, n, link):
    """``h(m_r) - h(m_q) +- t sqrt(S/(S-1) sum z_s^2 / N^2)`` with the residuals ``z_s`` computed one by one."""
    N, S = n.sum(), len(n)
    mr, mq = a.sum() / N, b.sum() / N
    h, dh = (math.exp, math.exp) if link == "exp" else ((lambda x: x), (lambda x: 1.0))
    z = dh(mr) * (a - mr * n) - dh(mq) * (b - mq * n)
    hw = t_quantile(0.975, S - 1) * math.sqrt(S / (S - 1) * float((z * z).sum()) / N**2)
    g = h(mr) - h(mq)
    return g - hw, g + hw


@pytest.mark.parametrize("name", ["nll", "perplexity", "token_kl", "token_agreement"])
def test_token_interval_against_per_sequence_residuals(name):
    y_ref, y, ids, mask, labels = padded_logits(seed=4, b=12, t=10)
    m = make_metric(name)
    update_metric(m, y_ref, y, labels, inputs_of(input_ids=ids, attention_mask=mask))
    a, b, n = _per_sequence(name, y_ref, y, ids, mask, labels)
    assert m.paired.n == len(n) == 12 and m.paired.tokens == m.count == int(n.sum())
    lo, hi = _direct_interval(a, b, n, "exp" if name == "perplexity" else "identity")
    iv = metric_interval(m, m.higher_is_better)
    assert iv is not None and iv.rule == "ratio" and iv.n == 12
    # the interval is on r - q; the sign rule maps it to the degradation
    want = sorted((degradation(lo, 0.0, m.higher_is_better), degradation(hi, 0.0, m.higher_is_better)))
    assert iv.low == pytest.approx(want[0], rel=1e-9, abs=1e-12) and iv.high == pytest.approx(want[1], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ["nll", "perplexity", "token_kl", "token_agreement"])
def test_token_interval_of_two_merged_halves_is_the_one_pass_interval(name):
    y_ref, y, ids, mask, labels = padded_logits(seed=5, b=10, t=9)
    whole = make_metric(name)
    update_metric(whole, y_ref, y, labels, inputs_of(input_ids=ids, attention_mask=mask))
    halves = []
    for sl in (slice(0, 4), slice(4, 10)):
        h = make_metric(name)
        update_metric(h, y_ref[sl], y[sl], labels[sl], inputs_of(input_ids=ids[sl], attention_mask=mask[sl]))
        halves.append(h)
    merged = halves[0].merge(halves[1])
    resumed = make_metric(name)
    resumed.load_state(merged.state())  # a checkpoint / a Ray shard's state
    a, hib = metric_interval(whole, whole.higher_is_better), whole.higher_is_better
    for other in (merged, resumed):
        b = metric_interval(other, hib)
        assert b is not None and b.n == a.n
        assert abs(a.low - b.low) < 1e-12 and abs(a.high - b.high) < 1e-12, name
    # sign rule and interval agree: the point degradation (the sweep's, from the baseline) lies inside
    base = make_metric(name)
    update_metric(base, y_ref, y_ref, labels, inputs_of(input_ids=ids, attention_mask=mask))
    deg = degradation(base.compute(), whole.compute(), hib)
    assert a.low < deg < a.high
    assert deg == pytest.approx(whole.paired.degradation(hib), rel=1e-12)


def test_token_interval_sign_follows_the_degradation():
    """Noisier logits: nll, perplexity and token_kl go up and token_agreement down; every interval
    is then above 0 (worse), whatever the metric's direction."""
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 13, (40, 12), generator=g)
    y_ref = 4 * F.one_hot(torch.roll(ids, -1, 1), 13).float() + 0.3 * torch.randn(40, 12, 13, generator=g)
    y = y_ref + 2.0 * torch.randn(40, 12, 13, generator=g)
    for name in ("nll", "perplexity", "token_kl", "token_agreement"):
        m, base = make_metric(name), make_metric(name)
        update_metric(m, y_ref, y, None, inputs_of(input_ids=ids))
        update_metric(base, y_ref, y_ref, None, inputs_of(input_ids=ids))
        deg = degradation(base.compute(), m.compute(), m.higher_is_better)
        iv = metric_interval(m, m.higher_is_better)
        assert deg > 0 and 0 < iv.low < deg < iv.high, (name, deg, iv)


def test_token_interval_bad_and_old_states():
    m = make_metric("perplexity")
    m.load_state({"total": 10.0, "count": 4})  # written before token intervals: no interval, no error
    assert metric_interval(m, False) is None
    m.load_state({"total": 10.0, "count": 4, "paired": {"n": 1, "ref": 0.0, "quant": 0.0, "sq": 0.0}})
    assert metric_interval(m, False) is None
    one = RatioSums("exp")
    one.update([3.0], [3.5], [2])
    with pytest.raises(QuantlensError, match="1 sequence\\(s\\): a confidence interval needs at least 2"):
        paired_interval(one, "ratio", False)
    with pytest.raises(ValueError, match="links"):
        RatioSums("exp").merge(RatioSums("identity"))
    # fully padded rows are not sequences
    s = RatioSums()
    s.update([1.0, 0.0, 2.0], [1.5, 0.0, 2.5], [2, 0, 3])
    assert s.n == 2 and s.tokens == 5
    lo, hi = ratio_interval(s)
    assert lo < -0.2 < hi


def test_reference_scored_once_per_batch_and_never_stale(monkeypatch):
    """Cells of one batch share ``y_ref``: its nll is computed once (by the baseline), reused by every
    cell, and recomputed when ``y_ref`` is another tensor or was changed in place."""
    from quantlens.metrics.tokens import NLL

    calls = []
    real = NLL.token_scores

    def counting(self, y_ref, y, labels, inputs):
        calls.append(y_ref is y or torch.equal(y_ref, y))
        return real(self, y_ref, y, labels, inputs)

    monkeypatch.setattr(NLL, "token_scores", counting)
    y_ref, y, ids, mask, labels = padded_logits(seed=8)
    inp = inputs_of(input_ids=ids, attention_mask=mask)
    base, cells = make_metric("perplexity"), [make_metric("perplexity") for _ in range(3)]
    update_metric(base, y_ref, y_ref, labels, inp)
    for c in cells:
        update_metric(c, y_ref, y + 0.1 * len(calls), labels, inp)
    assert calls == [True, False, False, False]  # the baseline's pass only; no reference pass per cell
    fresh = make_metric("perplexity")
    monkeypatch.setattr(NLL, "token_scores", real)
    update_metric(fresh, y_ref.clone(), y + 0.1 * 2, labels, inp)  # another tensor: scored afresh
    assert metric_interval(fresh, False).low == metric_interval(cells[1], False).low
    y_ref.mul_(2.0)  # changed in place: the remembered scores are stale
    changed = make_metric("perplexity")
    update_metric(changed, y_ref, y, labels, inp)
    direct = make_metric("perplexity")
    update_metric(direct, y_ref.clone(), y, labels, inp)
    assert changed.paired.ref == direct.paired.ref != cells[0].paired.ref


def test_reference_memo_under_inference_mode():
    """The engines score inside ``torch.inference_mode`` (no version counter): an in-place change is
    still seen, and the reused scores equal fresh ones."""
    y_ref, y, ids, mask, labels = padded_logits(seed=9)
    inp = inputs_of(input_ids=ids, attention_mask=mask)
    with torch.inference_mode():
        r, q = y_ref.clone(), y.clone()
        base, cell = make_metric("nll"), make_metric("nll")
        update_metric(base, r, r, labels, inp)
        update_metric(cell, r, q, labels, inp)
        r.add_(1.0).mul_(1.5)
        after = make_metric("nll")
        update_metric(after, r, q, labels, inp)
    fresh, fresh_after = make_metric("nll"), make_metric("nll")
    update_metric(fresh, y_ref, y, labels, inp)
    update_metric(fresh_after, (y_ref + 1.0) * 1.5, y, labels, inp)
    assert cell.paired.state() == fresh.paired.state()
    assert after.paired.ref == pytest.approx(fresh_after.paired.ref, rel=1e-12) and after.paired.ref != cell.paired.ref
