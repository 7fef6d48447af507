"""Acceptance (issue 5): the paper's culprit story on the demo, and additivity on the clean demo.

The planted model (:mod:`quantlens.demo.culprit`) is the trained digits CNN with outliers in
0.5% of conv2's weights (on an input channel that is off); it is the float reference.
"""

from __future__ import annotations

import pytest
import torch
from support.single_thread import one_thread_demo  # noqa: F401  (module fixture: one intra-op thread)

from quantlens import analyze
from quantlens.demo import culprit as demo_culprit
from quantlens.demo import digits as demo
from quantlens.experiments.additivity import AdditivityResult, run_additivity
from quantlens.experiments.fixloop import FixResult, fix_loop
from quantlens.core.guard import state_fingerprint
from quantlens.core.layer_config import QuantConfig
from quantlens.core.workload import Workload

pytestmark = pytest.mark.slow  # end to end: `pytest -m 'not slow'` skips it


@pytest.fixture(scope="module")
def culprit():
    model, data, calib = demo_culprit.model(), demo.data(), demo.calib()
    sweep = analyze(model, data, w_bits=[8], a_bits=8, calib=calib)
    return model, data, calib, sweep


def test_sweep_ranks_the_planted_layer_first(culprit):
    _, _, _, sweep = culprit
    assert sweep.worst(8, k=1)[0].layer == "conv2"
    assert sweep.share(8)["conv2"] >= 0.8  # most of the summed degradation
    assert sweep.cell("conv2", 8).degradation >= 3 / 450


def test_local_clipping_recovers_what_global_sawb_does_not(culprit):
    model, data, calib, sweep = culprit
    before = state_fingerprint(model)
    result, measurer = fix_loop(
        Workload(model, data, calib), sweep, w_bits=8, candidates=("sawb", "mse", "mse_output"), top=1, global_rows=[("sawb",)]
    )
    naive = result.row("naive").degradation
    assert naive >= 3 / 450

    def recovered(deg: float) -> float:
        return (naive - deg) / naive

    assert recovered(result.row("global:sawb").degradation) < 0.5
    assert result.culprits == ("conv2",)
    assert result.row("local").fixes == {"conv2": ["mse_output"]}
    assert recovered(result.row("local").degradation) >= 0.8
    # the same fix, on that layer alone, measured directly with the whole network quantized
    cfg = QuantConfig.uniform(measurer.names, 8).with_fix("mse_output", ["conv2"])
    assert recovered(measurer(cfg).degradation) >= 0.8
    # local plus the best global row: every layer its global fix, conv2 its local fix instead (built by hand)
    best = result.best_global()
    both = result.row("local+" + best.method)
    glob = best.method.split(":", 1)[1]
    by_hand = QuantConfig.uniform(measurer.names, 8).with_fix(glob, measurer.names).with_layer("conv2", fixes=("mse_output",))
    assert measurer(by_hand).metric == both.metric
    assert both.fixes == {"conv2": ["mse_output"]}
    if by_hand == QuantConfig.uniform(measurer.names, 8).with_fix(glob, measurer.names):  # the global row's own network
        assert both.seconds == 0.0 and (both.metric, both.degradation) == (best.metric, best.degradation)
    # SAWB on conv2 alone cannot clip 0.5% outliers (its clip grows with sqrt(E[w^2])): no gain
    sawb_local = [t for t in result.trials if t.fix == "sawb"][0]
    assert sawb_local.degradation >= sawb_local.naive_degradation - 1e-9
    assert FixResult.from_json(result.to_json()) == result
    after = state_fingerprint(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_additivity_on_the_clean_demo(demo_model, demo_data):
    r = run_additivity(Workload(demo_model, demo_data, demo.calib()), low=4, high=8, configs=20, seed=0)
    assert len(r.points) == 20
    assert r.pearson_r >= 0.9, r.to_json()
    assert r.noise_pearson_r >= 0.9
    assert 0.5 < r.slope < 1.5
    d = r.to_dict()
    assert d["schema"] == "quantlens/additivity-v1" and {"pearson_r", "slope", "points"} <= set(d)
    assert set(d["points"][0]) >= {"low_bit_layers", "predicted", "measured"}
    assert AdditivityResult.from_json(r.to_json()) == r
