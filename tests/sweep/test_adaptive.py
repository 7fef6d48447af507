"""Adaptive sample size: the executor equals a replay of the exact sweep's per-batch sums, it
ranks like the exact sweep wherever the exact intervals separate layers, and its bad inputs
are one-line errors."""

from __future__ import annotations


import pytest
import torch
from support.models import tiny_data, tiny_net, user_file

import quantlens as ql
from benchmarks.adaptive import Recording, replay
from quantlens.engine.accumulate import CellAccumulator
from quantlens.sweep.adaptive import StopRule, compare_to_exact, decide, parse_tolerance
from quantlens.cli import main
from quantlens.errors import QuantlensError
from quantlens.metrics.task import make_metric
from quantlens.stats.intervals import Interval, metric_interval
from quantlens.stats.resolve import separated


def _data():
    # 24 batches of 16 (384 samples): enough for cells to be decided at a 5% tolerance
    return tiny_data(n_batches=24, batch=16, seed=3)


def test_decide_rule():
    iv = lambda lo, hi: Interval(lo, hi, "binary", 100)  # noqa: E731
    assert decide(iv(0.02, 0.05), 0.01) == "worse"
    assert decide(iv(-0.004, 0.008), 0.01) == "within" and decide(iv(0.001, 0.008), 0.01) == "within"
    assert decide(iv(-0.05, -0.02), 0.01) == "better"
    assert decide(iv(0.005, 0.02), 0.01) is None and decide(iv(-0.02, 0.005), 0.01) is None and decide(None, 0.01) is None


def test_executor_equals_replay_and_ranks_like_exact():
    m, d = tiny_net(), _data()
    rec = Recording()
    exact = ql.analyze(m, d, w_bits=[2, 3, 8], a_bits=None, metric="agreement", backend=rec)
    replayed, counts = replay(rec, 0.05)
    ad = ql.analyze(m, d, w_bits=[2, 3, 8], a_bits=None, metric="agreement", method=ql.Adaptive(tolerance="5%"))
    info = ad.extra["adaptive"]
    assert info["cone_passes"] == counts["cone_passes"] < counts["exact_cone_passes"] == info["exact_cone_passes"]
    assert [(c.layer, c.w_bits, c.degradation, c.ci_low, c.ci_high, c.samples) for c in ad.cells] == \
           [(c.layer, c.w_bits, c.degradation, c.ci_low, c.ci_high, c.samples) for c in replayed.cells]
    stopped = [c for c in ad.cells if c.early_stop]
    assert stopped and all(c.samples < ad.num_samples for c in stopped)
    assert all(c.samples == ad.num_samples for c in ad.cells if not c.early_stop)
    for b in (2, 3, 8):
        cmp = compare_to_exact(exact, ad, b, 0.05)
        assert cmp["agree"] == cmp["separated_pairs"] and not cmp["missed"]
    assert sum(compare_to_exact(exact, ad, b, 0.05)["separated_pairs"] for b in (2, 3, 8)) > 0
    back = ql.SweepResult.from_json(ad.to_json())
    assert [c.early_stop for c in back.cells] == [c.early_stop for c in ad.cells]


def _kl_batches(means: dict, sd: float = 0.05, batch: int = 64, seed: int = 0) -> list[dict]:
    """Per-batch kl accumulators of cells ``key -> [mean of batch 0, mean of batch 1, ...]``: per-sample
    scores ``q ~ N(mean, sd)`` shifted to that batch mean exactly, paired with the reference's 0."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(len(next(iter(means.values())))):
        cells = {}
        for key, m in means.items():
            q = torch.randn(batch, generator=g, dtype=torch.float64) * sd
            acc = CellAccumulator(make_metric("kl"))
            acc.metric.paired.update(torch.zeros(batch, dtype=torch.float64), q - q.mean() + m[k])
            acc.n = batch
            cells[key] = acc
        out.append(cells)
    return out


def _run(batches: list[dict], stops) -> tuple[dict, int]:
    """The executor's loop on recorded batches: ``stops(cells, active, seen, k)`` -> cells that stop."""
    cells = {key: CellAccumulator(make_metric("kl")) for key in batches[0]}
    active, passes = set(cells), 0
    for k, b in enumerate(batches):
        passes += len(active)
        for key in active:
            cells[key] = cells[key].merge(b[key])
        active -= stops(cells, active, sum(c.n for c in b.values()) // len(b) * (k + 1), k + 1)
    return cells, passes


def test_stop_rule_keeps_the_exact_order_where_the_old_rule_swaps():
    # a (true kl 0.100) and b (0.120) start in the wrong order (0.115 > 0.108) on the first batch; c is far
    # above both. The old rule (decided only) stops all three after one batch: a and b swapped, though the
    # exact sweep (all 16 batches) separates them. The new rule measures a and b on until they are apart.
    n_b = 16
    means = {(0, 4): [0.115] + [0.099] * (n_b - 1), (1, 4): [0.108] + [0.1208] * (n_b - 1),
             (2, 4): [0.5] * n_b}
    batches = _kl_batches(means)
    full = {key: CellAccumulator(make_metric("kl")) for key in means}
    for b in batches:
        full = {key: full[key].merge(b[key]) for key in full}

    def view(acc):  # (degradation, interval): kl is lower-is-better, the degradation is mean(q - r)
        return acc.metric.paired.degradation(False), metric_interval(acc.metric, False)

    exact = {key: view(acc) for key, acc in full.items()}
    (da, ia), (db, ib) = exact[(0, 4)], exact[(1, 4)]
    assert separated(ia, da, ib, db) and da < db  # the oracle: the exact sweep ranks a before b

    def old(cells, active, seen, k):
        return {key for key in active if cells[key].n >= 64 and decide(view(cells[key])[1], 0.005) is not None}

    rule = StopRule(0.005)

    def new(cells, active, seen, k):
        return rule.after_batch(cells, active, False, seen, k, n_b)

    for stops, swapped in ((old, True), (new, False)):
        cells, passes = _run(batches, stops)
        got = {key: view(acc)[0] for key, acc in cells.items()}
        assert (got[(0, 4)] > got[(1, 4)]) is swapped
        for x in means:  # every pair the exact sweep separates keeps its order (new rule)
            for y in means:
                if not swapped and separated(exact[x][1], exact[x][0], exact[y][1], exact[y][0]):
                    assert (got[x] - got[y]) * (exact[x][0] - exact[y][0]) > 0
    assert cells[(2, 4)].n == 64 and cells[(0, 4)].n > 64 and passes < 3 * n_b  # c still stops at once
    assert rule.decisions == {key: "worse" for key in means}
    # data without a length: f = 0, a plain separation at z_s: stricter, never cheaper, same order
    blind = StopRule(0.005)
    cells0, passes0 = _run(batches, lambda c, a, seen, k: blind.after_batch(c, a, False, seen, k, None))
    assert passes0 >= passes and cells0[(0, 4)].n >= cells[(0, 4)].n
    assert cells0[(0, 4)].metric.paired.degradation(False) < cells0[(1, 4)].metric.paired.degradation(False)


def test_mean_metric_adaptive_and_cli(tmp_path, capsys):
    user = user_file(tmp_path, n_batches=6, batch=16)
    out = tmp_path / "out"
    assert main(["analyze", "--model", f"{user}:model", "--data", f"{user}:data", "--metric", "kl", "--w-bits", "3,8",
                 "--adaptive", "--tolerance", "0.01", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "adaptive:" in text and "cone passes" in text
    r = ql.SweepResult.from_json(out)
    assert r.extra["adaptive"]["tolerance"] == 0.01
    assert any(c.early_stop for c in r.cells) and "it covers about 90%, not 95%" in " ".join(text.split())


@pytest.mark.parametrize("tol,msg", [("0", "out of range"), ("150%", "out of range"), ("-1%", "out of range"),
                                     ("abc", "not a number"), ("nan", "out of range")])
def test_tolerance_out_of_range(tol, msg):
    with pytest.raises(QuantlensError, match=msg):
        parse_tolerance(tol, pct_metric=True)
    assert parse_tolerance("2", pct_metric=False) == 2.0


@pytest.mark.parametrize("metric,tol,ok", [("token_agreement", "150%", False), ("token_agreement", "0.5%", True),
                                           ("agreement", "1.5", False), ("nll", "1.5", True), ("perplexity", "150%", True)])
def test_tolerance_range_follows_the_metrics_units(metric, tol, ok):
    """A fraction metric (image or token agreement) takes a tolerance below 100%; others any positive number."""
    from quantlens.sweep.api import _adaptive_executor

    if ok:
        assert _adaptive_executor("serial", None, metric, tol).rule.tolerance == parse_tolerance(tol, pct_metric=False)
    else:
        with pytest.raises(QuantlensError, match="out of range"):
            _adaptive_executor("serial", None, metric, tol)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    m, d = tiny_net(), tiny_data(n_batches=2, batch=4)
    custom = lambda y_ref, y, labels: 0.0  # noqa: E731
    with pytest.raises(QuantlensError, match="--adaptive needs a metric with an interval") as e:
        ql.analyze(m, d, w_bits=[4], metric=custom, method="adaptive")
    assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="unknown sweep method 'approximate': use exact, adaptive, estimate"):
        ql.analyze(m, d, w_bits=[4], metric="kl", method="approximate")
    with pytest.raises(QuantlensError, match="runs serially"):
        ql.analyze(m, d, w_bits=[4], metric="kl", method="adaptive", backend="ray")
    one = [(torch.randn(1, 3, 8, 8), torch.tensor([1]))]
    with pytest.raises(QuantlensError, match="at least 2") as e:
        ql.analyze(m, one, w_bits=[4], metric="top1")
    assert "\n" not in str(e.value)
    user = user_file(tmp_path, n_batches=2, batch=4)
    rc = main(["analyze", "--model", f"{user}:model", "--data", f"{user}:data", "--metric", "kl", "--w-bits", "4",
               "--adaptive", "--tolerance", "-3", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "--tolerance -3 is out of range" in capsys.readouterr().err
