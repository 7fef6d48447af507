"""QuantConfig round-trips and validation; full-network quantization against the cone engine."""

from __future__ import annotations

import pytest
import torch
from support.models import tiny_data, tiny_net
from support.single_thread import one_thread  # noqa: F401  (module fixture: one intra-op thread)

from quantlens.core.workload import Workload
from quantlens import QuantlensError, analyze
from quantlens.network.measure import NetworkMeasurer, NetworkResult, quantize_network
from quantlens.quant.spec import PerChannel
from quantlens.graph import capture
from quantlens.core.guard import state_fingerprint
from quantlens.core.layer_config import LayerQuant, QuantConfig


def test_config_json_round_trip_and_queries():
    cfg = QuantConfig.uniform(["a", "b"], w_bits=8, granularity="per-channel").with_layer("b", w_bits=4, fixes=("sawb", "equalize"))
    back = QuantConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.layer("b").granularity == PerChannel() and back.layer("a").w_bits == 8
    assert cfg.fix_layers() == {"sawb": ["b"], "equalize": ["b"]}
    assert cfg.with_fix("sawb", ["a", "b"]).fix_layers()["sawb"] == ["a", "b"]
    assert LayerQuant(w_bits=None).weight_spec() is None and LayerQuant(a_bits=None).act_spec() is None


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: LayerQuant(w_bits=1), "weight bits must be in 2..16"),
        (lambda: LayerQuant(a_bits=40), "activation bits must be in 2..16"),
        (lambda: LayerQuant(estimator="nope"), "unknown range estimator"),
        (lambda: QuantConfig((("a", LayerQuant()), ("a", LayerQuant()))), "names a layer twice"),
        (lambda: QuantConfig(act_estimator="sawb"), "'sawb' is for weights"),
        (lambda: QuantConfig.from_json('{"schema": "x"}'), "not a quantlens quantization config"),
        (lambda: QuantConfig.from_json("{not json"), "not valid JSON"),
        (lambda: QuantConfig.from_json("/no/such/file.json"), "does not exist"),
        (lambda: QuantConfig().layer("zz"), "has no layer 'zz'"),
    ],
)
def test_config_errors_are_one_line(build, message):
    with pytest.raises(QuantlensError, match=message) as e:
        build()
    assert "\n" not in str(e.value)


def test_unknown_layer_and_fix_are_refused():
    net, data = tiny_net(), tiny_data(1)
    with pytest.raises(QuantlensError, match="unknown layer"):
        quantize_network(net, data, QuantConfig.uniform(["nope"]))
    with pytest.raises(QuantlensError, match="unknown fix 'magic'"):
        quantize_network(net, data, QuantConfig.uniform(["stem"]).with_layer("stem", fixes=("magic",)))


def test_float_config_is_the_float_network_and_model_untouched():
    net, data = tiny_net(), tiny_data(2)
    before = state_fingerprint(net)
    r = quantize_network(net, data, QuantConfig(), metric="agreement")
    assert r.noise == 0.0 and r.degradation == 0.0 and r.metric == 1.0
    after = state_fingerprint(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_layer_config_matches_the_sweep_cell():
    """With a single layer configured, the full-network builder is the cone engine's cell."""
    net, data = tiny_net(), tiny_data(3)
    sweep = analyze(net, data, w_bits=[4], a_bits=8, metric="mse", layers=["dw", "b2"])
    m = NetworkMeasurer(Workload(net, data, metric="mse"))
    for name in ("dw", "b2"):
        r = m(QuantConfig.uniform([name], w_bits=4), mean_shift=True)
        cell = sweep.cell(name, 4)
        assert r.noise == pytest.approx(cell.noise, rel=1e-5)
        assert r.degradation == pytest.approx(cell.degradation, rel=1e-5)
        assert r.mean_shift[name] == pytest.approx(cell.mean_shift, rel=1e-4)


def test_joint_quantization_is_noisier_than_any_single_layer_and_round_trips():
    net, data = tiny_net(), tiny_data(2)
    g = capture(net)
    names = [l.name for l in g.layers]
    m = NetworkMeasurer(Workload(net, data, metric="mse"))
    joint = m(QuantConfig.uniform(names, w_bits=4), mean_shift=True)
    singles = [m(QuantConfig.uniform([n], w_bits=4)).noise for n in names]
    assert joint.noise > max(singles)
    assert set(joint.mean_shift) == set(names)
    assert NetworkResult.from_dict(joint.to_dict()) == joint
    qnet = m.build(QuantConfig.uniform(names, w_bits=4))
    rng = qnet.ranges()["stem"]
    assert rng["w_clip"] > 0 and rng["in_range"][0] <= 0 <= rng["in_range"][1]


def test_reference_model_is_what_noise_is_measured_against():
    """Section 4.3: a fine-tuned model is measured against its float original."""
    original, data = tiny_net(0), tiny_data(2)
    tuned = tiny_net(0)
    with torch.no_grad():
        tuned.fc2.bias.add_(0.05)
    names = [l.name for l in capture(tuned).layers]
    alone = quantize_network(tuned, data, QuantConfig(), metric="mse")
    against = quantize_network(tuned, data, QuantConfig(), metric="mse", reference=original)
    assert alone.noise == 0.0 and against.noise == pytest.approx(0.05**2 * 10, rel=1e-3)
    q = quantize_network(tuned, data, QuantConfig.uniform(names, w_bits=6), metric="mse", reference=original)
    assert q.baseline == 0.0 and q.noise > 0


def test_a_measured_network_is_freed_when_its_measurement_ends():
    """A quantized network's GraphModule sits in reference cycles (fx nodes link to each other and to
    their graph), so only the cycle collector frees it and its QuantLayers' quantized weights (0.54 GB
    on SmolLM2); it runs by object counts, not bytes, and a plan measuring one network after another
    grew by that much per network. With the collector off, no QuantLayer may outlive its measurement."""
    import gc

    from quantlens.engine.cone import QuantLayer

    m = NetworkMeasurer(Workload(tiny_net(), tiny_data(), metric="kl"))
    gc.collect()
    gc.disable()
    try:
        for bits in (4, 8):
            m(QuantConfig.uniform(m.names, w_bits=bits, a_bits=8))
        alive = sum(isinstance(o, QuantLayer) for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive == 0
