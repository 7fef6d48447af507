"""Adaptive sample size: the executor equals a replay of the exact sweep's per-batch sums, it
ranks like the exact sweep wherever the exact intervals separate layers, and its bad inputs
are one-line errors."""

from __future__ import annotations


import pytest
import torch
from models import tiny_data, tiny_net, user_file

import quantlens as ql
from benchmarks.adaptive import Recording, replay
from quantlens.analysis.sweep.adaptive import compare_to_exact, decide, parse_tolerance
from quantlens.cli import main
from quantlens.errors import QuantlensError
from quantlens.stats.intervals import Interval


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
    ad = ql.analyze(m, d, w_bits=[2, 3, 8], a_bits=None, metric="agreement", adaptive=True, tolerance="5%")
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


def test_mean_metric_adaptive_and_cli(tmp_path, capsys):
    user = user_file(tmp_path, n_batches=6, batch=16)
    out = tmp_path / "out"
    assert main(["analyze", "--model", f"{user}:model", "--data", f"{user}:data", "--metric", "kl", "--w-bits", "3,8",
                 "--adaptive", "--tolerance", "0.01", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "adaptive:" in text and "cone passes" in text
    r = ql.SweepResult.from_json(out)
    assert r.extra["adaptive"]["tolerance"] == 0.01


@pytest.mark.parametrize("tol,msg", [("0", "out of range"), ("150%", "out of range"), ("-1%", "out of range"),
                                     ("abc", "not a number"), ("nan", "out of range")])
def test_tolerance_out_of_range(tol, msg):
    with pytest.raises(QuantlensError, match=msg):
        parse_tolerance(tol, pct_metric=True)
    assert parse_tolerance("2", pct_metric=False) == 2.0


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    m, d = tiny_net(), tiny_data(n_batches=2, batch=4)
    custom = lambda y_ref, y, labels: 0.0  # noqa: E731
    with pytest.raises(QuantlensError, match="--adaptive needs a metric with an interval") as e:
        ql.analyze(m, d, w_bits=[4], metric=custom, adaptive=True)
    assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="--tolerance is for --adaptive"):
        ql.analyze(m, d, w_bits=[4], metric="kl", tolerance="1%")
    with pytest.raises(QuantlensError, match="runs serially"):
        ql.analyze(m, d, w_bits=[4], metric="kl", adaptive=True, backend="ray")
    one = [(torch.randn(1, 3, 8, 8), torch.tensor([1]))]
    with pytest.raises(QuantlensError, match="at least 2") as e:
        ql.analyze(m, one, w_bits=[4], metric="top1")
    assert "\n" not in str(e.value)
    user = user_file(tmp_path, n_batches=2, batch=4)
    rc = main(["analyze", "--model", f"{user}:model", "--data", f"{user}:data", "--metric", "kl", "--w-bits", "4",
               "--adaptive", "--tolerance", "-3", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "--tolerance -3 is out of range" in capsys.readouterr().err
