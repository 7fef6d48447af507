"""The hooks fallback for models torch.fx cannot trace: the traced path's quantization, found eagerly.

Oracle: each untraceable model has a traceable twin (the same modules, the data-dependent
branch removed); the hooks engine on the model must give the cone engine's cells on the twin.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from support.models import tiny_data, tiny_net

import quantlens as ql
from quantlens.core.workload import Workload
from support.helpers import assert_cells_close, assert_close
from quantlens.core.inputs import Inputs
from quantlens.graph.eager import capture_eager


def _same(a, b, rel=1e-6):
    assert [l.name for l in a.layers] == [l.name for l in b.layers]
    assert [l.activation for l in a.layers] == [l.activation for l in b.layers]
    assert_cells_close(a.cells, b.cells, ("noise", "metric", "mean_shift"), rel=rel, abs_=1e-12)


class Branchy(nn.Module):
    """BN after convs, a ReLU module shared by two layers, a conv feeding two consumers, a BN'd linear."""

    def __init__(self, traceable: bool = False) -> None:
        super().__init__()
        self.traceable = traceable
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()  # shared by c1 and c2
        self.act = nn.Hardswish()
        self.fc1, self.bnf = nn.Linear(8, 16), nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10)
        g = torch.Generator().manual_seed(1)
        for bn in (self.bn1, self.bn2, self.bnf):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(n, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.c1(x)))
        if self.traceable or bool(x.mean() > -1):  # data-dependent: fx cannot trace it
            x = self.relu(self.bn2(self.c2(x)))
        y = self.c3(x)
        z = self.act(y) + 0.5 * y  # c3 feeds two consumers: no activation fused
        v = z.mean((2, 3))
        return self.fc2(F.silu(self.bnf(self.fc1(v))))


def _pair():
    torch.manual_seed(0)
    m = Branchy().eval()
    twin = Branchy(traceable=True).eval()
    twin.load_state_dict(m.state_dict())
    return m, twin


@pytest.mark.parametrize("a_bits", [8, None])
def test_hooks_equal_cone_on_a_traceable_twin(a_bits):
    m, twin = _pair()
    data = tiny_data(n_batches=2)
    with pytest.warns(ql.QuantlensWarning, match="BatchNorm folded, activations fused"):
        r = ql.analyze(m, data, w_bits=(4, 8), a_bits=a_bits, metric="kl")
    assert r.engine == "hooks"
    t = ql.analyze(twin, data, w_bits=(4, 8), a_bits=a_bits, metric="kl")
    assert t.engine == "cone"
    assert [l.activation for l in r.layers] == ["ReLU", "ReLU", None, "SiLU", None]
    _same(r, t)


def test_hooks_engine_equals_cone_on_the_test_net():
    m, data = tiny_net(), tiny_data(n_batches=2)
    _same(ql.analyze(m, data, w_bits=(4,), metric="kl", engine="hooks"), ql.analyze(m, data, w_bits=(4,), metric="kl"))


def test_eager_capture_folds_and_leaves_the_model_alone():
    m, _ = _pair()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = tiny_data(n_batches=1)[0][0]
    eg = capture_eager(copy.deepcopy(m), (x,))
    assert [(l.name, l.bn, l.act) for l in eg.layers] == [
        ("c1", "bn1", "ReLU"), ("c2", "bn2", "ReLU"), ("c3", None, None), ("fc1", "bnf", "SiLU"), ("fc2", None, None)]
    assert isinstance(eg.model.bn1, nn.Identity) and not eg.notes
    with torch.no_grad():
        assert torch.allclose(eg.model(x), m(x), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert isinstance(m.bn1, nn.BatchNorm2d)


class HiddenUse(nn.Module):
    """The conv's output is also read through ``.data``, which the forward pass cannot show as a use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.bn.running_mean.fill_(0.5)
        self.bn.running_var.fill_(2.0)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        h = torch.relu(self.bn(y)) + y.data
        if h.mean() > -1e9:
            h = h * 1.0
        return self.fc(h.mean((2, 3)))


def test_folding_that_changes_the_output_is_undone():
    m, data = HiddenUse().eval(), tiny_data(n_batches=2)
    with pytest.warns(ql.QuantlensWarning, match="no BatchNorm is folded"):
        r = ql.analyze(m, data, w_bits=(4,), metric="kl")
    assert r.engine == "hooks" and [l.activation for l in r.layers] == [None, None]
    # oracle: torch's fake-quantize ops on a copy of the model, one layer at a time
    from support.oracle import _act_qparams

    def ranges(mod):
        lo, hi = [math.inf, math.inf], [-math.inf, -math.inf]
        seen = []
        h = mod.register_forward_hook(lambda _m, a, o: seen.append((a[0], o)))
        with torch.no_grad():
            for x, _ in data:
                m(x)
        h.remove()
        for k in (0, 1):
            lo[k] = min(float(s[k].min()) for s in seen)
            hi[k] = max(float(s[k].max()) for s in seen)
        return _act_qparams(lo[0], hi[0], 8), _act_qparams(lo[1], hi[1], 8)

    for name in ("conv", "fc"):
        q = copy.deepcopy(m)
        mod, (qi, qo) = getattr(q, name), ranges(getattr(m, name))
        w = mod.weight.detach()
        s = float(torch.tensor(float(w.abs().max()) / 7, dtype=torch.float32))
        mod.weight.data = torch.fake_quantize_per_tensor_affine(w, s, 0, -8, 7)
        mod.register_forward_pre_hook(lambda _m, a, qi=qi: (torch.fake_quantize_per_tensor_affine(a[0], qi[0], qi[1], 0, 255),))
        mod.register_forward_hook(lambda _m, a, o, qo=qo: torch.fake_quantize_per_tensor_affine(o, qo[0], qo[1], 0, 255))
        noise, n = 0.0, 0
        with torch.no_grad():
            for x, _ in data:
                noise += float(((m(x).double() - q(x).double()) ** 2).sum())
                n += len(x)
        assert_close(r.cell(name, 4).noise, noise / n, rel=1e-5, what=name)
        assert noise > 0


def test_hooks_engine_leaves_the_model_unchanged():
    m, _ = _pair()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.warns(ql.QuantlensWarning):
        ql.analyze(m, tiny_data(n_batches=1), w_bits=(4,), metric="kl")
    assert m.training and all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not m._forward_hooks and not m.c1._forward_hooks and not m.c1._forward_pre_hooks


def test_whole_network_through_hooks_equals_the_traced_twin():
    from quantlens.network.measure import NetworkMeasurer
    from quantlens.network.measure import EagerNetworkMeasurer, make_measurer
    from quantlens.core.layer_config import LayerQuant, QuantConfig

    m, twin = _pair()
    data = tiny_data(n_batches=2)
    with pytest.warns(ql.QuantlensWarning, match="quantizing the whole network through forward hooks"):
        eager = make_measurer(Workload(m, data, metric="kl"))
    assert isinstance(eager, EagerNetworkMeasurer)
    traced = NetworkMeasurer(Workload(twin, data, metric="kl"))
    assert eager.names == traced.names
    configs = [
        QuantConfig.uniform(traced.names, w_bits=4),
        QuantConfig(tuple((n, LayerQuant(4 if i % 2 else 8, 8)) for i, n in enumerate(traced.names))),
        QuantConfig.uniform(traced.names, w_bits=3, a_bits=None),
        QuantConfig(),
    ]
    for cfg in configs:
        a, b = eager(cfg, mean_shift=True), traced(cfg, mean_shift=True)
        assert a.degradation == pytest.approx(b.degradation, rel=1e-6, abs=1e-12)
        assert a.noise == pytest.approx(b.noise, rel=1e-6, abs=1e-15)
        assert a.mean_shift.keys() == b.mean_shift.keys()
        for k in a.mean_shift:
            assert a.mean_shift[k] == pytest.approx(b.mean_shift[k], rel=1e-6, abs=1e-12)
    with pytest.raises(ql.QuantlensError, match="fixes .* need a model torch.fx or torch.export can capture"):
        eager(QuantConfig(((traced.names[0], LayerQuant(8, 8, fixes=("sawb",))),)))


@pytest.mark.slow
def test_additivity_and_plan_run_on_an_untraceable_model():
    from quantlens.experiments.additivity import run_additivity
    from quantlens.experiments.plan import run_plan

    m, _ = _pair()
    data = tiny_data(n_batches=2)
    with pytest.warns(ql.QuantlensWarning):
        a = run_additivity(Workload(m, data, metric="kl"), configs=4)
        p = run_plan(Workload(m, data, metric="kl"), budget=6.0, w_bits=(4, 8))
    # oracle: the same experiments on the traceable twin (same weights) through the cone engine
    _, twin = _pair()
    a2 = run_additivity(Workload(twin, data, metric="kl"), configs=4)
    p2 = run_plan(Workload(twin, data, metric="kl"), budget=6.0, w_bits=(4, 8))
    assert len(a.points) == 4
    for x, y in zip(a.points, a2.points):
        assert x.low_bit_layers == y.low_bit_layers
        for k in ("predicted", "measured", "predicted_noise", "measured_noise"):
            assert_close(getattr(x, k), getattr(y, k), rel=1e-5, abs_=1e-12, what=k)
    assert_close(a.pearson_r, a2.pearson_r, rel=1e-5)
    assert [(l.layer, l.w_bits) for l in p.layers] == [(l.layer, l.w_bits) for l in p2.layers]
    assert_close(p.measured, p2.measured, rel=1e-5, abs_=1e-12) and p.uniform_bits == p2.uniform_bits


class Looped(nn.Module):
    """One Linear applied a data-dependent number of times (fx cannot trace the loop)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.inp = nn.Linear(12, 8)
        self.step = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x.mean((2, 3)).repeat(1, 4)))
        for _ in range(int(x.abs().sum() >= 0) + 1):  # two steps; neither fx nor export follows a loop over a value
            h = self.step(h * 4.0)
        return self.head(h)


def test_a_module_called_twice_is_calibrated_on_both_calls():
    from quantlens.sweep.api import make_config
    from quantlens.data.batches import iterate
    from quantlens.engine.sweep import Sweep

    data = tiny_data(n_batches=2)
    with pytest.warns(ql.QuantlensWarning, match="cannot trace"):
        sw = Sweep(Looped().eval(), next(iter(iterate(data))), make_config((8,), 8), "kl", "cpu")
    sw.calibrate(data)
    i = [l.name for l in sw.runner.layers].index("step")
    # the oracle: every input and output the module sees, over both calls and both batches
    seen_in, seen_out = [], []
    net = Looped().eval()

    def grab(m, a, o):
        seen_in.append(a[0])
        seen_out.append(o)

    hook = net.step.register_forward_hook(grab)
    with torch.no_grad():
        for x, _ in data:
            net(x)
    hook.remove()
    assert len(seen_in) == 4
    for q, seen in ((sw.runner.in_q[i], seen_in), (sw.runner.out_q[i], seen_out)):
        lo = min(0.0, min(float(t.min()) for t in seen))
        hi = max(0.0, max(float(t.max()) for t in seen))
        assert float(q.scale) == pytest.approx((hi - lo) / 255, rel=1e-6)


class InPlaceAfter(nn.Module):
    """A conv's output is changed in place later in the pass (``y += x``); fx cannot trace the branch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.mean() > -1e9:
            y += x
        return self.fc(torch.relu(y).mean((2, 3)))


def test_hooks_keep_layer_outputs_as_the_layer_produced_them():
    from quantlens.engine.runner import HookRunner

    m, (x, _) = InPlaceAfter().eval(), tiny_data(n_batches=1)[0]
    runner = HookRunner(m, (x,))
    with torch.no_grad():
        _, cache = runner.float_pass(Inputs((x,)))
        expect = m.conv(x)
    seen_in, seen_out = runner.layer_io(cache, 0)
    assert torch.equal(seen_in, x) and torch.allclose(seen_out, expect, atol=1e-6)
