"""Each fix: what it changes, what it leaves alone, and that it never touches the user's model."""

from __future__ import annotations


import pytest
from support.helpers import close
import torch
import torch.nn as nn
from support.models import tiny_data, tiny_net
from support.single_thread import one_thread  # noqa: F401  (module fixture: one intra-op thread)

from quantlens.core.workload import Workload
from quantlens import QuantlensError
from quantlens.network.measure import NetworkMeasurer
from quantlens.fixes import FixContext, apply_fixes, fixes, make_fix
from quantlens.fixes.equalize import equalizable_pairs
from quantlens.graph import capture
from quantlens.core.guard import state_fingerprint
from quantlens.core.layer_config import QuantConfig
from quantlens.quant.ranges import SAWB_COEFFICIENTS


def _graph_and_cfg(bits: int = 8):
    net = tiny_net()
    g = capture(net)
    return net, g, QuantConfig.uniform([l.name for l in g.layers], w_bits=bits)


def test_registry_lists_every_fix():
    assert set(fixes()) >= {"sawb", "mse", "mse_output", "percentile", "equalize", "bias_correction"}
    with pytest.raises(QuantlensError, match="unknown fix 'nope'"):
        make_fix("nope", FixContext(QuantConfig()))


@pytest.mark.parametrize("name", ["sawb", "mse", "mse_output", "percentile", "equalize", "bias_correction"])
def test_fix_returns_a_new_graph_and_leaves_model_and_graph_bitwise_equal(name):
    net, g, cfg = _graph_and_cfg(4)
    before_model, before_graph = state_fingerprint(net), state_fingerprint(g.gm)
    # the percentile default (99.99) keeps every weight of layers this small: clip at the 99th
    ctx = FixContext(cfg, tiny_data(1), percentile=99.0) if name == "percentile" else FixContext(cfg, tiny_data(1))
    out = make_fix(name, ctx).apply(g, [l.name for l in g.layers])
    assert out is not g and out.gm is not g.gm
    for fp, mod in ((before_model, net), (before_graph, g.gm)):
        now = state_fingerprint(mod)
        assert all(torch.equal(fp[k], now[k]) for k in fp)
    changed = any(not torch.equal(a, b) for a, b in zip(g.gm.state_dict().values(), out.gm.state_dict().values()))
    assert changed, f"{name} changed nothing on a 4-bit tiny net"


def test_one_percentile_default_and_the_layer_spec_keeps_asymmetric_weights():
    from quantlens.quant.spec import DEFAULT_PERCENTILE, QuantSpec
    from quantlens.core.layer_config import LayerQuant

    assert FixContext(QuantConfig()).percentile == QuantSpec().percentile == DEFAULT_PERCENTILE == 99.99
    spec = LayerQuant(4, symmetric=False).weight_spec("sawb")
    assert (spec.symmetric, spec.estimator, spec.qmin, spec.qmax) == (False, "sawb", 0, 15)
    assert LayerQuant.from_dict(LayerQuant(4, symmetric=False).to_dict()).symmetric is False
    assert LayerQuant.from_dict({"w_bits": 4}).symmetric is True  # configs written before the field


def test_sawb_clip_is_the_formula_and_covers_8_bits():
    assert set(SAWB_COEFFICIENTS) >= set(range(2, 9))
    net, g, cfg = _graph_and_cfg(4)
    out = make_fix("sawb", FixContext(cfg)).apply(g, ["b1"])
    w = g.gm.b1.weight.detach()
    c1, c2 = SAWB_COEFFICIENTS[4]
    clip = min(float(c1 * w.pow(2).mean().sqrt() - c2 * w.abs().mean()), float(w.abs().max()))
    assert float(out.gm.b1.weight.abs().max()) == pytest.approx(clip, rel=1e-5)
    assert torch.equal(out.gm.b2.weight, g.gm.b2.weight)  # other layers untouched


def test_percentile_and_mse_clip_only_the_listed_layer():
    net, g, cfg = _graph_and_cfg(4)
    out = make_fix("percentile", FixContext(cfg, percentile=90.0)).apply(g, ["fc1"])
    w = g.gm.fc1.weight.detach().abs().reshape(-1).sort().values
    assert float(out.gm.fc1.weight.abs().max()) <= float(w[int(0.9 * (w.numel() - 1)) + 1]) + 1e-7
    out2 = make_fix("mse", FixContext(cfg)).apply(g, ["stem"])
    assert float(out2.gm.stem.weight.abs().max()) <= float(g.gm.stem.weight.abs().max())
    assert torch.equal(out2.gm.fc1.weight, g.gm.fc1.weight)


def test_mse_output_clips_outliers_on_a_silent_input():
    lin = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[0.5, -0.3, 0.2, 50.0], [0.1, 0.4, -0.5, 0.0], [0.3, 0.2, 0.1, -50.0]]))
    data = [(torch.cat([torch.randn(16, 3), torch.zeros(16, 1)], 1), None)]
    g = capture(lin)
    cfg = QuantConfig.uniform(["0"], w_bits=8)
    out = make_fix("mse_output", FixContext(cfg, data)).apply(g, ["0"])
    assert float(out.gm.get_submodule("0").weight.abs().max()) < 1.0
    weight_mse = make_fix("mse", FixContext(cfg)).apply(g, ["0"])
    assert float(weight_mse.gm.get_submodule("0").weight.abs().max()) > 40  # weight MSE keeps them


def test_mse_output_and_bias_correction_need_calibration_data():
    net, g, cfg = _graph_and_cfg(4)
    for name in ("mse_output", "bias_correction"):
        with pytest.raises(QuantlensError, match="needs calibration data"):
            make_fix(name, FixContext(cfg)).apply(g, ["stem"])


def test_equalization_keeps_the_float_function_and_balances_ranges():
    net, g, cfg = _graph_and_cfg(8)
    pairs = {(p.l1, p.l2) for p in equalizable_pairs(g)}
    assert ("stem", "b1") not in pairs  # stem's output feeds a residual add too
    assert ("dw", "pw") not in pairs  # ReLU6 is not homogeneous
    assert ("b1", "b2") in pairs
    out = make_fix("equalize", FixContext(cfg)).apply(g, [l.name for l in g.layers])
    x = tiny_data(1)[0][0]
    with torch.no_grad():
        y0, y1 = g.gm(x), out.gm(x)
    assert float((y1 - y0).norm() / y0.norm()) < 1e-5
    r1 = out.gm.b1.weight.detach().reshape(8, -1).abs().amax(1)
    r2 = out.gm.b2.weight.detach().abs().amax(dim=(0, 2, 3))
    assert torch.allclose(r1, r2, rtol=1e-4)


class DepthwiseChain(nn.Module):
    """pointwise -> ReLU -> depthwise -> LeakyReLU -> maxpool -> pointwise -> ReLU -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pw1 = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.pw2 = nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4 * 2 * 2, 5)
        with torch.no_grad():
            self.pw1.weight[2] *= 30.0  # an imbalanced channel
            self.dw.weight[4] *= 0.01

    def forward(self, x):
        x = torch.relu(self.pw1(x))
        x = nn.functional.leaky_relu(self.dw(x), 0.1)
        x = nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.pw2(x))
        return self.fc(torch.flatten(x, 1))


def test_equalization_through_depthwise_pool_and_flatten():
    net = DepthwiseChain().eval()
    g = capture(net)
    pairs = {(p.l1, p.l2, p.block) for p in equalizable_pairs(g)}
    assert pairs == {("pw1", "dw", 1), ("dw", "pw2", 1), ("pw2", "fc", 4)}
    out = make_fix("equalize", FixContext(QuantConfig())).apply(g, ["pw1", "dw", "pw2", "fc"])
    x = torch.randn(4, 3, 4, 4)
    with torch.no_grad():
        y0, y1 = g.gm(x), out.gm(x)
    assert float((y1 - y0).norm() / y0.norm()) < 1e-5
    before = g.gm.pw1.weight.reshape(6, -1).abs().amax(1)
    after = out.gm.pw1.weight.reshape(6, -1).abs().amax(1)
    assert float(after.max() / after.min()) < float(before.max() / before.min())


def _pre_activation_shift(graph, float_graph, cfg, data, names):
    from quantlens.engine.build import build_quantized
    from quantlens.engine.cone import build_cache_module

    nodes = [graph.layer(n).node for n in names]
    q = build_quantized(graph, cfg, data, taps=nodes)
    f, keep = build_cache_module(float_graph, nodes)
    x = torch.cat([b[0] for b in data])
    with torch.no_grad():
        _, qv = q.gm(x)
        _, fv = f(x)
    return {n: float((a - b).mean(dim=(0, 2, 3)).abs().max()) for n, a, b in zip(names, qv, fv)}


def test_bias_correction_removes_the_pre_activation_mean_shift():
    net, data = tiny_net(), tiny_data(3)
    g = capture(net)
    names = ["stem", "b1", "dw", "pw"]
    cfg = QuantConfig.uniform(names, w_bits=3)
    fixed = make_fix("bias_correction", FixContext(cfg, data)).apply(g, names)
    before = _pre_activation_shift(g, g, cfg, data, names)
    after = _pre_activation_shift(fixed, g, cfg, data, names)
    for n in names:
        assert after[n] < 1e-4 + 0.05 * before[n], (n, before[n], after[n])
    m = NetworkMeasurer(Workload(net, data, metric="mse"))
    assert m(cfg.with_fix("bias_correction", names)).noise < m(cfg).noise


def test_apply_fixes_in_fix_order_and_noop_without_fixes():
    net, g, cfg = _graph_and_cfg(4)
    assert apply_fixes(g, cfg, None, torch.device("cpu")) is g
    both = cfg.with_fix("sawb", ["b1"]).with_fix("equalize", ["b1"])
    out = apply_fixes(g, both, None, torch.device("cpu"))
    eq_then_clip = make_fix("sawb", FixContext(both)).apply(make_fix("equalize", FixContext(both)).apply(g, ["b1"]), ["b1"])
    assert torch.equal(out.gm.b1.weight, eq_then_clip.gm.b1.weight)


class _ConvThenLinearOnLength(nn.Module):
    """A Linear after a Conv1d without a flatten acts on the length axis, not on the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(3, 4, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.c(x)))


def test_equalization_skips_a_linear_over_the_length_axis():
    torch.manual_seed(0)
    m = _ConvThenLinearOnLength().eval()
    with torch.no_grad():
        m.c.weight[0] *= 10
    g = capture(m)
    assert equalizable_pairs(g) == []
    g2 = make_fix("equalize", FixContext(QuantConfig.uniform([l.name for l in g.layers]))).apply(g, [l.name for l in g.layers])
    x = torch.randn(2, 3, 8)
    assert torch.equal(g.gm(x), g2.gm(x))


class _CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))


def test_a_module_called_twice_is_quantized_and_fixed_without_changing_its_other_call():
    torch.manual_seed(0)
    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(2)]
    model = _CalledTwice().eval()
    meas = NetworkMeasurer(Workload(model, data, metric="kl"))
    assert meas.names == ["fc", "fc:1", "out"]
    base = QuantConfig.uniform(meas.names, 4)
    assert meas(base).degradation > 0
    for fix in ("sawb", "bias_correction", "equalize"):
        cfg = base.with_fix(fix, meas.names)
        got = meas(cfg)
        # oracle: the fix applied by hand, then the fixed float network quantized without fixes
        fixed = make_fix(fix, FixContext(base, data)).apply(meas.graph, meas.names)
        want = NetworkMeasurer(Workload(fixed.gm, data, metric="kl", reference=model))(base)
        assert close(got.degradation, want.degradation, rel=1e-6) and close(got.noise, want.noise, rel=1e-6), fix
    g = meas.graph
    assert [(p.l1, p.l2) for p in equalizable_pairs(g)] == []  # fc is shared: not rescaled
    g2 = make_fix("bias_correction", FixContext(base, data)).apply(g, meas.names)
    assert torch.equal(g2.module(g.layer("fc")).bias, g.module(g.layer("fc")).bias)  # shared bias left alone
