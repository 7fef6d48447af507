"""The lockstep pass (graph/lockstep.py) against per-batch forwards and per-layer passes."""

from __future__ import annotations

import pytest
import torch

import quantlens.graph.lockstep as lockstep
from quantlens.data.batches import iterate
from quantlens.engine.build import build_quantized, calibrate_ranges
from quantlens.fixes import FixContext, make_fix
from quantlens.fixes.base import copy_graph
from quantlens.graph.capture import capture
from quantlens.engine.cone import build_cache_module
from quantlens.graph.lockstep import LockstepTooLarge, Pause, run_lockstep
from quantlens.core.layer_config import QuantConfig

from support.models import tiny_data, tiny_net

LAYERS = ["stem", "b1", "b2", "dw", "pw", "side", "fc1", "fc2"]


def _flat(g, data):
    return [g.flat(inputs) for inputs, _ in iterate(data)]


def _graph():
    net, data = tiny_net(), tiny_data(3)
    return capture(net), data


def test_pauses_see_each_batch_value_and_recompute_after_a_change():
    g, data = _graph()
    batches = _flat(g, data)
    node = g.layer("b1").node
    cache, _ = build_cache_module(g, [node, g.layer("fc2").node])
    seen = []
    with torch.no_grad():
        run_lockstep(g.gm, batches, [Pause(node, seen.extend)])
        want = [cache(*b)[1][0] for b in batches]
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(seen, want))

    # a pause that changes b1's bias and re-runs b1: downstream values are the changed network's
    g2 = copy_graph(g)
    m = g2.module(g2.layer("b1"))
    tail = []

    def shift(_values: list) -> None:
        with torch.no_grad():
            m.bias.add_(0.5)

    fc2 = g2.layer("fc2").node
    with torch.no_grad():
        run_lockstep(g2.gm, _flat(g2, data), [Pause(node, shift, (node,)), Pause(fc2, tail.extend)])
        cache2, _ = build_cache_module(g2, [fc2])
        want2 = [cache2(*b)[0] for b in batches]
    assert all(torch.equal(a, b) for a, b in zip(tail, want2))
    assert not torch.equal(tail[0], cache(*batches[0])[0])


def test_over_budget_raises():
    g, data = _graph()
    with pytest.raises(LockstepTooLarge, match="MiB"), torch.no_grad():
        run_lockstep(g.gm, _flat(g, data), [Pause(g.layer("fc2").node, lambda v: None)], budget=1)


def _naive_bias_correction(g, cfg, data, names):
    """One full quantized forward per layer, in order, each after the earlier layers' corrections."""
    cur = copy_graph(g)
    for n in names:
        m = cur.module(cur.layer(n))
        if m.bias is None:
            m.bias = torch.nn.Parameter(torch.zeros(m.weight.shape[0]), requires_grad=False)
    obs = calibrate_ranges(g, cfg, data, torch.device("cpu"))
    for n in names:
        layer = cur.layer(n)
        fgm, _ = build_cache_module(g, [layer.node])
        q = build_quantized(cur, cfg, data, taps=[layer.node], observers=obs)
        axis = 1
        total, count = None, 0
        with torch.no_grad():
            for b in _flat(g, data):
                zq = q.gm(*b)[1][0].double()
                z = fgm(*b)[1][0].double()
                dims = [d for d in range(zq.dim()) if d != axis]
                s = zq.sum(dim=dims) - z.sum(dim=dims)
                total = s if total is None else total + s
                count += zq.numel() // zq.shape[axis]
            cur.module(layer).bias.sub_((total / count).float())
    return cur


@pytest.mark.parametrize("w_bits", [3, 6])
def test_bias_correction_equals_one_pass_per_layer(w_bits, monkeypatch):
    g, data = _graph()
    cfg = QuantConfig.uniform(LAYERS, w_bits=w_bits)
    fast = make_fix("bias_correction", FixContext(cfg, data)).apply(g, LAYERS)
    naive = _naive_bias_correction(g, cfg, data, LAYERS)
    monkeypatch.setattr(lockstep, "default_budget", lambda: 0)  # forces the per-layer fallback
    slow = make_fix("bias_correction", FixContext(cfg, data)).apply(g, LAYERS)
    for n in LAYERS:
        b_fast, b_slow, b_naive = (x.module(x.layer(n)).bias for x in (fast, slow, naive))
        assert torch.equal(b_fast, b_slow), n
        torch.testing.assert_close(b_fast, b_naive, rtol=1e-5, atol=1e-7)
        assert not torch.equal(b_fast, g.module(g.layer(n)).bias if g.module(g.layer(n)).bias is not None else torch.zeros_like(b_fast))


def test_mse_output_lockstep_equals_per_layer_passes(monkeypatch):
    g, data = _graph()
    cfg = QuantConfig.uniform(LAYERS, w_bits=3)
    fast = make_fix("mse_output", FixContext(cfg, data)).apply(g, LAYERS)
    monkeypatch.setattr(lockstep, "default_budget", lambda: 0)
    slow = make_fix("mse_output", FixContext(cfg, data)).apply(g, LAYERS)
    changed = 0
    for n in LAYERS:
        w_fast, w_slow = (x.module(x.layer(n)).weight for x in (fast, slow))
        assert torch.equal(w_fast, w_slow), n
        changed += not torch.equal(w_fast, g.module(g.layer(n)).weight)
    assert changed >= 4
