"""awq and smoothquant against their formulas computed here from the layer's dense calibration inputs.

Reference: the inputs ``X`` of a group of siblings captured with a forward hook on the float
model; AWQ's loss for each exponent ``a`` is the group's output error
``sum_layers ||(X / s) Q(W diag s)^T - X W^T||^2 / n`` computed from those outputs (not from
``X^T X``), SmoothQuant's ``s_j = max|X_j|^0.5 / max|W_:,j|^0.5`` from ``X`` and the
concatenated weights. The fixed network must compute the float function (the scale folded
into the LayerNorm module, into a traced RMSNorm's weight, or multiplied online).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantlens import QuantlensError
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.fixes import FixContext, make_fix, not_applicable
from quantlens.fixes.awq import AWQ_GRID
from quantlens.network.measure import capture_traceable
from quantlens.quant.quantizer import quantize_weight
from quantlens.quant.spec import QuantSpec


class RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Blocks(nn.Module):
    """A LayerNorm -> q/k/v junction, an RMSNorm -> gate/up junction, a lone down and out."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.rms = RMSNorm(d)
        self.gate, self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.out = nn.Linear(d, 8)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.normal_(0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        x = x + self.q(h) * torch.sigmoid(self.k(h)) + self.v(h)
        h2 = self.rms(x)
        x = x + self.down(F.silu(self.gate(h2)) * self.up(h2))
        return self.out(x)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = Blocks().eval()
    g = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(3):
        x = torch.randn(4, 10, 32, generator=g)
        x[..., 3] *= 12  # an outlier channel
        data.append((x, None))
    return model, capture_traceable(model, data), data


def _cfg(names, fmt="int4-g16", a_format=None):
    act = None if a_format is None else QuantSpec(bits=8, format=a_format)
    return QuantConfig(tuple((n, LayerQuant(weight=QuantSpec(bits=4, format=fmt), act=act)) for n in names))


def _inputs(model, name, data):
    xs = []
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: xs.append(a[0].reshape(-1, a[0].shape[-1]).double()))
    for x, _ in data:
        model(x)
    h.remove()
    return torch.cat(xs)


def _awq_reference(model, group, data, fmt):
    x = _inputs(model, group[0], data)
    m = x.abs().mean(0)
    best = None
    for a in AWQ_GRID:
        s = m.pow(a).clamp(min=1e-4)
        s = s / torch.sqrt(s.max() * s.min())
        loss = 0.0
        for n in group:
            w = model.get_submodule(n).weight.detach().double()
            wq = quantize_weight((w * s).float(), QuantSpec(bits=4, format=fmt)).weight.double()
            loss += float(((x / s) @ wq.T - x @ w.T).pow(2).sum()) / x.shape[0]
        if best is None or loss < best[0]:
            best = (loss, a, s)
    return best[1], best[2]


def _same_function(graph, out, data):
    for x, _ in data:
        y0, y1 = graph.gm(x), out.gm(x)
        assert (y1 - y0).abs().max() <= 2e-5 * y0.abs().max()


@pytest.mark.parametrize("group,norm", [(["q", "k", "v"], "ln"), (["gate", "up"], "rms")])
def test_awq_on_all_siblings_folds_into_the_norm(group, norm):
    model, graph, data = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fix = make_fix("awq", FixContext(_cfg(group), data))
    out = fix.apply(graph, group)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, graph.gm.state_dict()[k]) for k, v in graph.gm.state_dict().items())
    a, s = _awq_reference(model, group, data, "int4-g16")
    assert fix.alpha[group[0]] == a and a > 0 and fix.folded[group[0]] and not out.input_ops
    for n in group:
        w = model.get_submodule(n).weight.detach().double()
        assert torch.allclose(out.module(out.layer(n)).weight.double(), w * s, rtol=1e-5, atol=1e-7)
    w_norm = model.get_submodule(norm).weight.detach().double()
    assert torch.allclose(out.gm.get_submodule(norm).weight.double(), w_norm / s, rtol=1e-5)
    if norm == "ln":
        assert torch.allclose(out.gm.ln.bias.double(), model.ln.bias.detach().double() / s, rtol=1e-5)
    _same_function(graph, out, data)


@pytest.mark.parametrize("group,others", [(["q"], "k, v"), (["gate"], "up"), (["q", "k"], "v")])
def test_awq_on_part_of_a_junction_is_refused_in_one_line(group, others):
    """Siblings that do not take the scale: it folds into no norm, and a multiply on one branch of a fused kernel is no runtime's op."""
    from quantlens.fixes.base import FixRefused

    _, graph, data = _setup()
    with pytest.raises(FixRefused) as e:
        make_fix("awq", FixContext(_cfg(group), data)).apply(graph, group)
    msg = str(e.value)
    assert "\n" not in msg and f"also read by {others}, which do not take the fix" in msg


@pytest.mark.parametrize("group", [["down"]])
def test_awq_on_a_lone_layer_multiplies_the_input(group):
    model, graph, data = _setup()
    fix = make_fix("awq", FixContext(_cfg(group), data))
    out = fix.apply(graph, group)
    a, s = _awq_reference(model, group, data, "int4-g16")
    assert fix.alpha[group[0]] == a and not fix.folded[group[0]] and len(out.input_ops) == 1
    op = out.gm.get_submodule(str(out.nodes()[next(iter(out.input_ops))].target))
    assert torch.allclose(op.s.double(), s, rtol=1e-6)
    assert torch.equal(out.gm.get_submodule("ln").weight, graph.gm.get_submodule("ln").weight)
    _same_function(graph, out, data)


def test_smoothquant_equals_its_formula_and_folds():
    model, graph, data = _setup()
    group = ["q", "k", "v"]
    out = make_fix("smoothquant", FixContext(_cfg(group, "nvfp4", a_format="nvfp4"), data)).apply(graph, group)
    x = _inputs(model, "q", data)
    w_max = torch.stack([model.get_submodule(n).weight.detach().double().abs().amax(0) for n in group]).amax(0)
    s = x.abs().amax(0).pow(0.5) / w_max.pow(0.5)
    for n in group:
        assert torch.allclose(out.module(out.layer(n)).weight.double(), model.get_submodule(n).weight.detach().double() * s, rtol=1e-5)
    assert torch.allclose(out.gm.ln.weight.double(), model.ln.weight.detach().double() / s, rtol=1e-5)
    _same_function(graph, out, data)


def test_channel_scale_one_line_errors():
    _, graph, data = _setup()
    with pytest.raises(QuantlensError) as e:
        make_fix("smoothquant", FixContext(_cfg(["q"]), data)).apply(graph, ["q"])
    assert "activations stay float" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="needs calibration data"):
        make_fix("awq", FixContext(_cfg(["q"]))).apply(graph, ["q"])
    assert "plain cast" in not_applicable("awq", QuantSpec(bits=16, format="bf16"))
    assert not_applicable("awq", QuantSpec(bits=4, format="mxfp4")) is None
    from support.models import tiny_data, tiny_net

    g = capture_traceable(tiny_net(), tiny_data(1))
    conv = next(l.name for l in g.layers if l.op == "Conv2d")
    with pytest.raises(QuantlensError, match="scales a Linear's input features, this layer is a Conv2d"):
        make_fix("awq", FixContext(_cfg([conv]), tiny_data(1))).apply(g, [conv])


@pytest.mark.parametrize("group,layer", [(["q", "k", "v"], "q"), (["gate", "up"], "up")])
def test_a_trial_on_a_folded_norm_recomputes_the_norm(group, layer):
    """The fix loop's single-layer cell of a layer whose scale went into the norm before it
    (TrialRunner: the norm is recomputed, not read from the unfixed float pass) equals one
    ``analyze`` of the fixed graph."""
    from support.helpers import assert_close

    from quantlens import analyze
    from quantlens.core.experiment import ExperimentSpec
    from quantlens.core.workload import Workload
    from quantlens.network.measure import NetworkMeasurer
    from quantlens.network.trials import TrialRunner

    model, _, data = _setup()
    calib = data[:2]
    m = NetworkMeasurer(Workload(model, data, calib, "kl"))
    fixed = make_fix("awq", FixContext(_cfg(group), calib)).apply(m.graph, group)
    ref = m.cached_reference
    spec = ExperimentSpec(a_bits=None)
    runner = TrialRunner(m.graph, lambda b, inputs: ref.get(b, inputs, m.output_key), QuantSpec(bits=4, format="int4-g16"), None)
    cell = runner.run([(layer, fixed)], data, calib, "kl")[0]
    want = analyze(fixed.gm, data, config=spec.sweep_config(["int4-g16"]), metric="kl", calib=calib, reference=m.float_gm,
                   layers=[layer]).cell(layer, "int4-g16")
    assert_close(cell.noise, want.noise, rel=1e-6, abs_=1e-12, what="noise")
    assert_close(cell.degradation, want.degradation, rel=1e-6, abs_=1e-12, what="degradation")


def test_fix_loop_names_an_awq_trial_on_one_sibling_and_goes_on():
    """In the fix loop, awq on a culprit with siblings is skipped and named (``fix.json`` "skipped");
    a lone culprit gets its trial; applied to every layer (global) the siblings agree and it runs."""
    import quantlens as ql
    from quantlens.core.experiment import ExperimentSpec
    from quantlens.core.workload import Workload
    from quantlens.experiments.fixloop import FixResult, fix_loop

    model, _, data = _setup()
    spec = ExperimentSpec(a_bits=None)
    sweep = ql.analyze(model, data, config=spec.sweep_config(["int4-g16"]), metric="mse")
    result, _ = fix_loop(Workload(model, data, data, "mse"), sweep, w_bits="int4-g16", spec=spec, candidates=("awq",), top=100,
                         global_rows=[("awq",)])
    groups = {"q": "k, v", "k": "q, v", "v": "q, k", "gate": "up", "up": "gate"}
    skipped = dict(result.skipped)
    assert set(result.culprits) == {"q", "k", "v", "gate", "up", "down", "out"}
    for c in result.culprits:
        if c in groups:
            assert f"also read by {groups[c]}, which do not take the fix" in skipped[f"awq on {c}"]
        else:
            assert [t.fix for t in result.trials if t.layer == c] == ["awq"]
    assert "global:awq" in [r.method for r in result.rows]
    assert FixResult.from_dict(result.to_dict()).skipped == result.skipped
