"""A config with the LLM-era fixes, exported (quant_config.json + weights.safetensors) and rebuilt
by ``load_quantized`` without data: the rebuilt network is the measured one (online rotations
re-inserted, the weights a fix quantized used as saved, not rounded again)."""

from __future__ import annotations

import torch
from support.lm_models import tiny_lm, token_data

from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.core.workload import Workload
from quantlens.export.rebuild import load_quantized
from quantlens.export.weights import export
from quantlens.network.measure import NetworkMeasurer
from quantlens.quant.spec import QuantSpec


def test_exported_llm_fixes_rebuild_to_the_measured_network(tmp_path):
    model, data = tiny_lm(), token_data(3, batch=4)
    m = NetworkMeasurer(Workload(model, data, data, "nll"))
    lq = LayerQuant(weight=QuantSpec(bits=4, format="nvfp4"), act=QuantSpec(bits=8, format="nvfp4"))
    cfg = QuantConfig(tuple((n, lq) for n in m.names))
    cfg = cfg.with_fix("hadamard", ["layers.0.q_proj", "layers.1.down_proj"]).with_fix("gptq", ["layers.1.down_proj", "layers.2.up_proj"])
    cfg = cfg.with_fix("four-over-six", ["layers.0.up_proj"]).with_fix("keep-outliers", ["lm_head"])
    qnet = m.build(cfg)
    export(qnet, tmp_path)
    back, _ = load_quantized(tiny_lm(), tmp_path / "quant_config.json", data=data)
    assert back.graph.prequantized == frozenset({"layers.1.down_proj", "layers.2.up_proj", "layers.0.up_proj", "lm_head"})
    assert len(back.graph.input_ops) == 2
    for ids, _ in data:
        assert torch.equal(back.gm(ids)[0], qnet.gm(ids)[0])


def test_a_saved_awq_config_is_refused_in_one_line_with_its_weights(tmp_path):
    import pytest

    from quantlens import QuantlensError

    model, data = tiny_lm(), token_data(2, batch=4)
    m = NetworkMeasurer(Workload(model, data, data, "nll"))
    lq = LayerQuant(weight=QuantSpec(bits=4, format="mxfp4"), act=None)
    cfg = QuantConfig(tuple((n, lq) for n in m.names)).with_fix("awq", ["layers.0.q_proj"])
    export(m.build(cfg), tmp_path)
    with pytest.raises(QuantlensError) as e:
        load_quantized(tiny_lm(), tmp_path / "quant_config.json", data=data)
    assert "cannot be rebuilt from weights.safetensors" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "weights.safetensors").unlink()
    back, _ = load_quantized(tiny_lm(), tmp_path / "quant_config.json", calib=data, data=data)
    qnet = m.build(cfg)
    for ids, _ in data:
        assert torch.equal(back.gm(ids)[0], qnet.gm(ids)[0])
