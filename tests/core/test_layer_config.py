"""One description of a layer's quantization: LayerQuant holds QuantSpecs; the plain fields read them."""

from __future__ import annotations

import pytest

from quantlens import ExperimentSpec, LayerQuant, PerChannel, PerGroup, QuantConfig, QuantlensError, QuantSpec


def test_layer_quant_holds_its_specs():
    a = LayerQuant(w_bits=4, a_bits=8, granularity=PerGroup(32), estimator="mse")
    b = LayerQuant(weight=QuantSpec(bits=4, granularity=PerGroup(32), estimator="mse"), act=QuantSpec(bits=8, symmetric=False))
    assert a == b and a.weight == b.weight and a.weight_spec() is a.weight
    assert (a.w_bits, a.a_bits, str(a.granularity), a.estimator) == (4, 8, "per-group-32", "mse")
    assert a.act_spec("percentile").estimator == "percentile" and a.act_spec().estimator == "minmax"
    f = LayerQuant(w_bits=None, a_bits=None)
    assert f.weight is None and f.act is None and f.weight_spec() is None and f.act_spec() is None
    assert a.replace(w_bits=3).weight == QuantSpec(bits=3, granularity=PerGroup(32), estimator="mse")


def test_quant_config_json_is_unchanged():
    cfg = QuantConfig.uniform(["a", "b"], w_bits=4, granularity="per-channel").with_layer("b", w_bits=None, fixes=("sawb",))
    d = cfg.to_dict()["layers"]
    assert d["a"] == {"w_bits": 4, "a_bits": 8, "granularity": "per-channel", "estimator": "minmax", "fixes": [], "symmetric": True}
    assert d["b"]["w_bits"] is None and d["b"]["fixes"] == ["sawb"]
    assert QuantConfig.from_json(cfg.to_json()) == cfg


def test_bad_layer_quant_is_one_line():
    with pytest.raises(QuantlensError, match="LayerQuant has no field wbits"):
        LayerQuant().replace(wbits=4)
    with pytest.raises(QuantlensError, match="takes a QuantSpec"):
        LayerQuant(weight=4)
    with pytest.raises(QuantlensError, match="per-tensor"):
        LayerQuant(act=QuantSpec(bits=8, granularity=PerChannel()))


def test_experiment_spec_builds_layers_and_sweeps_from_one_description():
    spec = ExperimentSpec(a_bits=None, granularity="per-group-16")
    assert spec.layer(4) == LayerQuant(4, None, PerGroup(16))
    cfg = spec.sweep_config([3, 4])
    assert cfg.w_bits == (3, 4) and cfg.a_bits is None and cfg.weight_spec(4) == spec.layer(4).weight
    with pytest.raises(QuantlensError):
        ExperimentSpec(a_bits=1)
