"""The public API: one namespace of verbs and types, analyze's three descriptions, its method,
and the one-line errors of a call that mixes them."""

from __future__ import annotations

import pytest
import torch
from support.models import tiny_data, tiny_net

import quantlens as ql
from quantlens import QuantlensError


def test_the_namespace_is_verbs_types_and_hooks():
    for verb in ("analyze", "measure", "additivity", "fix", "plan", "export_onnx", "verify_export"):
        assert callable(getattr(ql, verb)), verb
    for gone in ("Sweep", "SweepState", "LayerGraph", "capture", "quantize_network"):
        assert not hasattr(ql, gone), gone
        assert gone not in ql.__all__
    from quantlens.engine.sweep import Sweep  # noqa: F401  (still importable from its module)
    from quantlens.graph.layers import LayerGraph  # noqa: F401
    assert set(ql.__all__) >= {"Workload", "RunOptions", "ExperimentSpec", "Exact", "Adaptive", "Estimate", "register_metric",
                               "register_estimator", "register_fix"}


def test_a_workload_and_options_give_the_keyword_calls_cells():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=4)
    plain = ql.analyze(m, d, w_bits=[4], metric="kl", device="cpu")
    whole = ql.analyze(ql.Workload(m, d, metric="kl"), config=ql.SweepConfig(w_bits=(4,)), options=ql.RunOptions(device="cpu"),
                       method=ql.Exact())
    assert [(c.layer, c.noise, c.metric) for c in plain.cells] == [(c.layer, c.noise, c.metric) for c in whole.cells]


def test_mixing_descriptions_is_one_line_naming_the_conflict():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=4)
    cases = [
        (dict(config=ql.SweepConfig(w_bits=(4,)), w_bits=[3]), "config= and also w_bits"),
        (dict(config=ql.SweepConfig(w_bits=(4,)), granularity="per-channel", a_bits=None), "config= and also a_bits, granularity"),
        (dict(options=ql.RunOptions(), device="cpu"), "options= and also device"),
        (dict(method="fastest"), "unknown sweep method 'fastest'"),
        (dict(config={"w_bits": [4]}), "config= takes a quantlens.SweepConfig"),
    ]
    for kw, msg in cases:
        with pytest.raises(QuantlensError, match=msg) as e:
            ql.analyze(m, d, metric="kl", **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="a Workload and also data, metric"):
        ql.analyze(ql.Workload(m, d), d, metric="kl")
    with pytest.raises(QuantlensError, match="analyze needs data"):
        ql.analyze(m)
    with pytest.raises(QuantlensError, match="at least 1"):
        ql.Estimate(k=0)


def test_measure_is_one_whole_network_configuration():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=4)
    names = ql.analyze(m, d, w_bits=[8], metric="kl").layer_names
    r = ql.measure(ql.Workload(m, d, metric="kl"), ql.QuantConfig.uniform(names, w_bits=4))
    assert r.degradation > 0 and r.num_samples == 8 and r.measurement.samples == 8
    with pytest.raises(QuantlensError, match="unknown layer"):
        ql.measure(ql.Workload(m, d, metric="kl"), ql.QuantConfig.uniform(["nope"], w_bits=4))
    with pytest.raises(QuantlensError, match="measure takes a Workload first"):
        ql.measure(m, ql.QuantConfig.uniform(names, w_bits=4))


def test_a_reused_sweep_must_match_the_experiment_from_python():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=4)
    w = ql.Workload(m, d, metric="kl")
    sweep = ql.analyze(w, config=ql.ExperimentSpec(a_bits=8).sweep_config([4, 8]))
    with pytest.raises(QuantlensError, match="the sweep used 8-bit activations, not float"):
        ql.additivity(w, sweep=sweep, spec=ql.ExperimentSpec(a_bits=None), configs=2)
    with pytest.raises(QuantlensError, match="the sweep used per-tensor weights, not per-channel"):
        ql.fix(w, sweep, w_bits=4, spec=ql.ExperimentSpec(granularity="per-channel"))
    with pytest.raises(QuantlensError, match="the sweep measured kl, not top1"):
        ql.plan(ql.Workload(m, d, metric="top1"), budget=6.0, w_bits=(4, 8), sweep=sweep)
    with pytest.raises(QuantlensError, match=r"no cells at 6 bits \(it has 4, 8 bits\)"):
        ql.fix(w, sweep, w_bits=6)
    r = ql.additivity(w, sweep=sweep, configs=2)  # the matching sweep is reused
    assert len(r.points) == 2
