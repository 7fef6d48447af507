"""Group cells on the cone engine equal the whole-network pass (the oracle), cell for cell, bitwise."""

from __future__ import annotations

import math

import pytest
import torch

from support.lm_models import llama_ids, tiny_llama
from support.models import tiny_data, tiny_net
from quantlens.core.layer_config import QuantConfig
from quantlens.core.sweep_config import SweepConfig
from quantlens.core.workload import Workload
from quantlens.engine.group_cone import build_group_cone
from quantlens.errors import QuantlensError
from quantlens.experiments.group_sweep import analyze_siblings, sweep_groups
from quantlens.experiments.role_sweep import analyze_roles
from quantlens.network.group_cells import measure_groups
from quantlens.network.measure import NetworkMeasurer
from quantlens.sweep.api import make_config

FIELDS = ("metric", "degradation", "noise", "sqnr_db", "ci_low", "ci_high", "num_samples")


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def _assert_same_cells(cone, network) -> None:
    assert cone.engine == "cone" and network.engine == "network"
    assert cone.layer_names == network.layer_names and cone.baseline == network.baseline
    for a, b in zip(cone.cells, network.cells):
        assert (a.layer, a.w_bits, a.format) == (b.layer, b.w_bits, b.format)
        for f in ("metric", "degradation", "noise", "sqnr_db", "ci_low", "ci_high"):
            assert _same(getattr(a, f), getattr(b, f)), (a.layer, f, getattr(a, f), getattr(b, f))


@pytest.mark.parametrize("config", [SweepConfig(w_bits=(), a_bits=None, formats=("fp8-e4m3", "int4")), make_config([4, 6], 8)],
                         ids=["weights", "weights+activations"])
def test_llama_sibling_cells_on_cones_equal_the_whole_network_pass(config):
    model, data = tiny_llama(), llama_ids(n=2)
    work = Workload(model, data, metric="token_kl", output_key="logits")
    cone = analyze_siblings(work, config=config)
    network = analyze_siblings(work, config=config, engine="network")
    groups = cone.extra["groups"]
    assert groups["model.layers.0.self_attn.q_proj+k_proj+v_proj"] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert groups["model.layers.1.mlp.gate_proj+up_proj"] == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    assert len(cone.cells) == len(groups) * len(config.columns)
    assert any(c.degradation != 0 for c in cone.cells)
    _assert_same_cells(cone, network)


def test_llama_role_cells_on_cones_equal_the_whole_network_pass():
    model, data = tiny_llama(), llama_ids(n=2)
    work = Workload(model, data, metric="perplexity", output_key="logits")
    cone = analyze_roles(work, config=make_config([4], 8))
    network = analyze_roles(work, config=make_config([4], 8), engine="network")
    assert cone.extra["roles"]["mlp.down_proj"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    _assert_same_cells(cone, network)


@pytest.mark.parametrize("a_bits", [None, 8])
def test_cnn_groups_on_cones_equal_the_whole_network_pass(a_bits):
    model, data = tiny_net(), tiny_data(2)
    work = Workload(model, data, metric="kl")
    config = make_config([3, 4], a_bits)
    names = NetworkMeasurer(work).names

    def groups(_m):  # siblings, and a group whose members' cones nest (the first and the last layer)
        return {"ends": [names[0], names[-1]], "middle": names[1:3], "one": [names[2]]}

    cone = sweep_groups(work, config=config, group_by="siblings", groups_of=groups)
    network = sweep_groups(work, config=config, group_by="siblings", groups_of=groups, engine="network")
    _assert_same_cells(cone, network)
    _assert_same_cells(analyze_siblings(work, config=config), analyze_siblings(work, config=config, engine="network"))


def test_measure_groups_matches_the_measurer_and_keeps_the_graph_float():
    model, data = tiny_net(), tiny_data(2)
    m = NetworkMeasurer(Workload(model, data, metric="top1"))
    configs = [QuantConfig.uniform(m.names[:2], w_bits=3, a_bits=4), QuantConfig.uniform(m.names[-1:], w_bits=2)]
    before = {k: v.clone() for k, v in m.graph.gm.state_dict().items()}
    for r, c in zip(measure_groups(m, configs), configs):
        direct = m(c)
        assert all(_same(getattr(r, f), getattr(direct, f)) for f in FIELDS)
    after = m.graph.gm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_group_cone_starts_at_the_earliest_member():
    m = NetworkMeasurer(Workload(tiny_net(), tiny_data(1), metric="kl"))
    g = m.graph
    first, last = g.layers[0], g.layers[-1]
    both = build_group_cone(g, [last, first])
    assert both.size == build_group_cone(g, [first]).size > build_group_cone(g, [last]).size


def test_a_bad_engine_is_one_line():
    with pytest.raises(QuantlensError, match="engine 'fast'"):
        analyze_siblings(Workload(tiny_net(), tiny_data(1), metric="kl"), config=make_config([4]), engine="fast")


def test_export_that_skips_run_decompositions_gives_the_same_layers_and_cells(monkeypatch):
    from quantlens.graph import export as E
    from quantlens.graph.capture_cache import capture_cache

    work = Workload(tiny_llama(), llama_ids(n=1), metric="token_kl", output_key="logits")
    real, seen = E._already_functional, []
    monkeypatch.setattr(E, "_already_functional", lambda ep: seen.append(real(ep)) or seen[-1])
    capture_cache().clear()
    skipped = analyze_siblings(work, config=make_config([4], 8))
    assert seen == [True]  # a Llama's training IR is functional: no decomposition pass
    monkeypatch.setattr(E, "_already_functional", lambda ep: False)
    capture_cache().clear()
    decomposed = analyze_siblings(work, config=make_config([4], 8))
    capture_cache().clear()
    assert [(l.name, l.op, l.activation) for l in skipped.layers] == [(l.name, l.op, l.activation) for l in decomposed.layers]
    for a, b in zip(skipped.cells, decomposed.cells):
        assert all(_same(getattr(a, f), getattr(b, f)) for f in ("metric", "noise", "sqnr_db", "ci_low", "ci_high"))
