"""GPTQ (fix ``gptq``) against plain implementations of the published algorithm written here.

References (this file, independent of :mod:`quantlens.fixes.gptq`):

* :func:`_fasterquant`: IST-DASLab/gptq ``gptq.py`` ``fasterquant`` line by line (lazy blocks of
  128, act-order, ``find_params`` on ``W[:, j:j+g]`` when a group starts), with a symmetric
  integer quantizer written here; float32, as published. Equal to ours bit for bit where the
  published group rule is ours (no act-order with groups; act-order per channel).
* :func:`_textbook`: the column-by-column algorithm (every later column updated after each
  column, no lazy blocks), each scope's scale set at its first column in processing order from
  the current values, scales and values computed here from each format's published rule;
  float64. Equal to ours for every format family, with and without act-order.
"""

from __future__ import annotations


import pytest
import torch

from quantlens import QuantlensError
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.fixes import FixContext, make_fix, not_applicable
from quantlens.fixes.gptq import gptq_quantize
from quantlens.fixes.layer_inputs import input_stats
from quantlens.fixes.scoped import ScopedQuantizer
from quantlens.quant.formats.elements import E2M1, E4M3, ELEMENTS, cast
from quantlens.quant.quantizer import quantize_weight
from quantlens.quant.spec import PerChannel, QuantSpec

from support.lm_models import tiny_lm, token_data


def _problem(r=24, k=96, n=400, seed=0, dtype=torch.float64):
    """A weight and the Hessian of correlated inputs (a random mixing of a few latent factors)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(r, k, generator=g) * 0.05
    w.view(-1)[::29] *= 8
    mix = torch.randn(k // 4, k, generator=g)
    x = torch.randn(n, k // 4, generator=g) @ mix + 0.1 * torch.randn(n, k, generator=g)
    x[:, 3] *= 20  # an outlier channel
    h = 2 * x.double().T @ x.double() / n
    return w.to(dtype), h.to(dtype), x


# -- quantizers written from each format's published rule ---------------------------------------

def _int_q(b):
    qmax = 2 ** (b - 1) - 1

    def params(v):  # v [R, m]: per row
        s = v.float().abs().amax(1, keepdim=True) / qmax
        return s

    def quant(x, s):
        return ((torch.clamp(torch.round(x.float() * (1.0 / s)), -qmax - 1, qmax) + 0.0) * s).to(x.dtype)

    return params, quant


def _mx_q(elem):
    e = ELEMENTS[elem]

    def params(v):
        amax = v.float().abs().amax(1, keepdim=True)
        k = torch.floor(torch.log2(amax)) - e.emax
        return torch.exp2(torch.clamp(k, -127, 127))

    def quant(x, X):
        return (cast(x.float() / X, e) * X).to(x.dtype)

    return params, quant


def _nvfp4_q(w0):
    s2 = w0.float().abs().max() / 2688.0

    def params(v):
        return cast(v.float().abs().amax(1, keepdim=True) / (6.0 * s2), E4M3)

    def quant(x, sb):
        return ((cast(x.float() / (sb * s2), E2M1) * sb) * s2).to(x.dtype)

    return params, quant


def _fp8_row_q(elem):
    e = ELEMENTS[elem]

    def params(v):
        return v.float().abs().amax(1, keepdim=True) / e.max

    def quant(x, s):
        return (cast(x.float() / s, e) * s).to(x.dtype)

    return params, quant


FORMATS = {  # name -> (scope width or None for a row scope, quantizer factory)
    "int4-channel": (None, lambda w: _int_q(4)),
    "int3-g32": (32, lambda w: _int_q(3)),
    "int4-g16": (16, lambda w: _int_q(4)),
    "mxfp4": (32, lambda w: _mx_q("e2m1")),
    "mxfp6": (32, lambda w: _mx_q("e2m3")),
    "nvfp4": (16, _nvfp4_q),
    "fp8-e4m3-channel": (None, lambda w: _fp8_row_q("e4m3")),
}


def _prep(h, w, act_order):
    h, w = h.clone(), w.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(h.shape[0])
    w, h = w[:, perm], h[perm][:, perm]
    h[range(len(h)), range(len(h))] += 0.01 * torch.mean(torch.diag(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    return w, hinv, perm


def _textbook(w, h, width, params, quant, act_order):
    """Column by column; scope scales at their first column from the current values."""
    k = w.shape[1]
    width = width or k
    w, hinv, perm = _prep(h, w, act_order)
    pos = torch.argsort(perm)
    q = torch.zeros_like(w)
    scales = {}
    for i in range(k):
        g = int(perm[i]) // width
        if g not in scales:
            cols = pos[g * width:min((g + 1) * width, k)]
            scales[g] = params(w[:, cols])
        q[:, i] = quant(w[:, i:i + 1], scales[g]).flatten()
        e = (w[:, i] - q[:, i]) / hinv[i, i]
        w[:, i:] -= e.unsqueeze(1) * hinv[i, i:].unsqueeze(0)
    return q[:, pos]


def _fasterquant(w, h, groupsize, params, quant, act_order, blocksize=128):
    """IST-DASLab/gptq fasterquant (published), symmetric quantizer; groups as published."""
    k = w.shape[1]
    scale = None if groupsize else params(w)
    w, hinv, perm = _prep(h, w, act_order)
    q = torch.zeros_like(w)
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(count):
            col = w1[:, i]
            d = hinv1[i, i]
            if groupsize and (i1 + i) % groupsize == 0:
                scale = params(w[:, (i1 + i):(i1 + i + groupsize)])
            qc = quant(col.unsqueeze(1), scale).flatten()
            q1[:, i] = qc
            e = (col - qc) / d
            w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = e
        q[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return q[:, torch.argsort(perm)]


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_gptq_equals_the_column_by_column_algorithm(fmt, act_order):
    w, h, _ = _problem(k=160)  # two lazy blocks, the second one short
    width, factory = FORMATS[fmt]
    params, quant = factory(w)
    ref = _textbook(w, h, width, params, quant, act_order)
    ours = gptq_quantize(w, h, ScopedQuantizer.for_weight(w, QuantSpec(bits=4, format=fmt)), act_order=act_order)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("fmt,groupsize,act_order", [("int4-channel", 0, True), ("int4-channel", 0, False), ("int4-g128", 128, False),
                                                     ("int3-g256", 256, False)])
def test_gptq_equals_published_fasterquant_bit_for_bit(fmt, groupsize, act_order):
    """float32, lazy blocks of 128 as published. (A group smaller than the block starting inside
    it: the published code reads its scale from ``W``, without this block's updates so far, ours
    from the current values, as the textbook loop above does; so that case is checked there.)"""
    w, h, _ = _problem(k=384, dtype=torch.float32)
    b = int(fmt[3])
    params, quant = _int_q(b)
    ref = _fasterquant(w, h, groupsize, params, quant, act_order)
    ours = gptq_quantize(w, h, ScopedQuantizer.for_weight(w, QuantSpec(bits=b, format=fmt)), act_order=act_order)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("fmt", ["int4-g32", "mxfp4", "nvfp4", "int4-channel", "fp8-e4m3-channel"])
def test_gptq_output_error_below_round_to_nearest(fmt):
    w, h, x = _problem(r=32, k=128, n=600, seed=1, dtype=torch.float32)
    spec = QuantSpec(bits=4, format=fmt)
    rtn = quantize_weight(w, spec).weight
    q = gptq_quantize(w, h, ScopedQuantizer.for_weight(w, spec))
    err_rtn = ((rtn - w) @ x.T).norm()
    err_gptq = ((q - w) @ x.T).norm()
    assert err_gptq < 0.9 * err_rtn, (float(err_gptq), float(err_rtn))


def test_gptq_on_an_integer_grid_spec_equals_the_format_path():
    """An integer-grid QuantSpec (no format) per channel is int4-channel's grid."""
    w, h, _ = _problem()
    a = gptq_quantize(w, h, ScopedQuantizer.for_weight(w, QuantSpec(bits=4, granularity=PerChannel())))
    b = gptq_quantize(w, h, ScopedQuantizer.for_weight(w, QuantSpec(bits=4, format="int4-channel")))
    assert torch.allclose(a, b, atol=1e-6)


def _lm_cfg(fmt, names):
    return QuantConfig(tuple((n, LayerQuant(weight=QuantSpec(bits=4, format=fmt), act=None)) for n in names))


def _graph():
    from quantlens.network.measure import capture_traceable

    data = token_data(n_batches=3, batch=4, seq=12)
    return capture_traceable(tiny_lm(), data), data


def test_gptq_fix_hessian_quantized_weights_and_marking():
    graph, data = _graph()
    name = "layers.1.down_proj"
    before = {k: v.clone() for k, v in graph.gm.state_dict().items()}
    out = make_fix("gptq", FixContext(_lm_cfg("mxfp4", [name]), data)).apply(graph, [name])
    assert {k: torch.equal(v, graph.gm.state_dict()[k]) for k, v in before.items()} == {k: True for k in before}
    assert out.prequantized == frozenset({name})
    # the Hessian the fix used: 2 X X^T / n from the layer's inputs, computed densely here
    st = input_stats(graph, [name], data, torch.device("cpu"))[name]
    w = graph.module(graph.layer(name)).weight.detach()
    h = (2.0 * st.xx / st.n).float()
    expect = gptq_quantize(w, h, ScopedQuantizer.for_weight(w, QuantSpec(bits=4, format="mxfp4")))
    assert torch.equal(out.module(out.layer(name)).weight.detach(), expect)
    # the quantized network uses that weight as it is (not quantized again)
    from quantlens.engine.build import build_quantized

    qnet = build_quantized(out, _lm_cfg("mxfp4", [name]), data)
    assert torch.equal(qnet.weights[name].weight, expect)


def test_gptq_hessian_is_two_x_xt_over_n():
    graph, data = _graph()
    name = "layers.0.q_proj"
    st = input_stats(graph, [name], data, torch.device("cpu"))[name]
    captured = []
    m = graph.module(graph.layer(name))
    hook = m.register_forward_hook(lambda mod, a, o: captured.append(a[0].reshape(-1, a[0].shape[-1]).double()))
    for ids, _ in data:
        graph.gm(ids)
    hook.remove()
    x = torch.cat(captured)
    assert st.n == x.shape[0]
    assert torch.allclose(2 * st.xx / st.n, 2 * x.T @ x / x.shape[0], rtol=1e-10, atol=1e-12)


def test_gptq_too_little_calibration_data_one_line():
    graph, _ = _graph()
    small = token_data(n_batches=1, batch=1, seq=8)  # 8 tokens, the layer reads 32 values
    with pytest.raises(QuantlensError) as e:
        make_fix("gptq", FixContext(_lm_cfg("nvfp4", ["layers.0.down_proj"]), small)).apply(graph, ["layers.0.down_proj"])
    msg = str(e.value)
    assert "\n" not in msg and "8 input rows" in msg and "at least 32" in msg


def test_gptq_needs_calibration_and_applies_to_every_format():
    graph, _ = _graph()
    with pytest.raises(QuantlensError, match="needs calibration data"):
        make_fix("gptq", FixContext(_lm_cfg("nvfp4", ["layers.0.q_proj"]))).apply(graph, ["layers.0.q_proj"])
    for fmt in ("int4", "int4-g128", "fp8-e4m3", "mxfp4", "nvfp4", "bf16"):
        assert not_applicable("gptq", QuantSpec(bits=4, format=fmt)) is None


def test_a_second_quantizing_fix_on_the_same_layer_is_refused():
    graph, data = _graph()
    name = "layers.0.q_proj"
    ctx = FixContext(_lm_cfg("nvfp4", [name]), data)
    once = make_fix("gptq", ctx).apply(graph, [name])
    with pytest.raises(QuantlensError, match="already quantized by another fix"):
        make_fix("gptq", ctx).apply(once, [name])


@pytest.mark.parametrize("conv", [torch.nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.nn.Conv1d(4, 6, 3, padding=1, dilation=2),
                                  torch.nn.Linear(7, 3)])
def test_input_rows_are_what_the_weight_matrix_multiplies(conv):
    """The rows the Hessian is built from: ``rows @ W^T + b`` is the layer's output."""
    from quantlens.fixes.layer_inputs import input_rows

    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9) if isinstance(conv, torch.nn.Conv2d) else torch.randn(2, 4, 11) if isinstance(conv, torch.nn.Conv1d) else torch.randn(2, 4, 7)
    y = conv(x)
    rows = input_rows(conv, x)
    z = rows @ conv.weight.reshape(conv.weight.shape[0], -1).T + conv.bias
    want = y.reshape(-1, y.shape[-1]) if isinstance(conv, torch.nn.Linear) else y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
    assert torch.allclose(z, want, atol=1e-5)


def test_gptq_on_a_convolution_and_with_bias_correction_after_it():
    """A conv layer's GPTQ weights (Hessian from unfolded inputs); bias correction, which runs
    after it, keeps the GPTQ weights (it does not round them again). It measures the shift
    against the network as fixed, in which this layer's weights are GPTQ's: with float
    activations and no other layer quantized there is no shift left to correct."""
    from support.models import tiny_data, tiny_net

    from quantlens.core.workload import Workload
    from quantlens.network.measure import NetworkMeasurer

    model, data = tiny_net(), tiny_data(3)
    m = NetworkMeasurer(Workload(model, data, data, "kl"))
    conv = next(l.name for l in m.graph.layers if l.op == "Conv2d" and l.kind == "conv" and l.index > 0)
    lq = LayerQuant(weight=QuantSpec(bits=4, format="int4-channel"), act=None)
    cfg = QuantConfig(((conv, lq),)).with_fix("gptq", [conv]).with_fix("bias_correction", [conv])
    fixed = m.fixed_graph(cfg)
    assert fixed.prequantized == frozenset({conv})
    st = input_stats(m.graph, [conv], data, torch.device("cpu"))[conv]
    w = m.graph.module(m.graph.layer(conv)).weight.detach()
    expect = gptq_quantize(w.reshape(w.shape[0], -1), (2 * st.xx / st.n).float(),
                           ScopedQuantizer.for_weight(w, QuantSpec(bits=4, format="int4-channel"))).reshape(w.shape)
    assert torch.equal(fixed.module(fixed.layer(conv)).weight.detach(), expect)
    qnet = m.build(cfg)
    assert torch.equal(qnet.weights[conv].weight, expect)
    assert torch.allclose(fixed.module(fixed.layer(conv)).bias, m.graph.module(m.graph.layer(conv)).bias, atol=1e-6)


def test_calibration_rows_checked_before_any_sweep():
    """``check_calibration_rows``: the shortest layer named in one line; enough rows pass; the model unchanged."""
    from quantlens.core.guard import state_fingerprint
    from quantlens.fixes.gptq import check_calibration_rows

    model = tiny_lm().train()
    before = state_fingerprint(model)
    with pytest.raises(QuantlensError) as e:
        check_calibration_rows(model, token_data(n_batches=1, batch=1, seq=8))  # 8 tokens; widths 16 and 32 (down_proj)
    msg = str(e.value)
    assert "\n" not in msg and "8 input rows" in msg and "input width 32" in msg and "at least 32 tokens" in msg
    check_calibration_rows(model, token_data(n_batches=4, batch=2, seq=8))  # 64 tokens: every layer has enough
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
