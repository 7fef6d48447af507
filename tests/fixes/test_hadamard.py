"""Block Hadamard rotation (fix ``hadamard``) against a dense matrix built here.

Reference: ``D = block_diag(H_b, ..., H_b)`` with the Sylvester-Hadamard entries written from
their closed form, ``H_b[i, j] = (-1)^popcount(i & j) / sqrt(b)`` (not the recursion the module
uses). The fixed layer's weight must be ``W D``, its online op ``x -> x D``, the float network's
output unchanged to float rounding, and every engine's input quantizer must see ``x D``.
"""

from __future__ import annotations

import pytest
import torch
from support.lm_models import tiny_lm, token_data

from quantlens import QuantlensError
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.fixes import FixContext, make_fix, not_applicable
from quantlens.fixes.hadamard import BlockHadamard, hadamard_matrix
from quantlens.network.measure import capture_traceable
from quantlens.quant.quantizer import quantize_weight
from quantlens.quant.spec import QuantSpec


def _dense(k: int, b: int) -> torch.Tensor:
    i = torch.arange(b)
    parity = torch.tensor([[bin(int(a) & int(c)).count("1") % 2 for c in i] for a in i], dtype=torch.float64)
    hb = (1 - 2 * parity) / b ** 0.5
    return torch.block_diag(*[hb] * (k // b))


def _cfg(fmt, names, a_format=None):
    act = None if a_format is None else QuantSpec(bits=8, format=a_format)
    return QuantConfig(tuple((n, LayerQuant(weight=QuantSpec(bits=4, format=fmt), act=act)) for n in names))


def _setup():
    model = tiny_lm()
    data = token_data(n_batches=3, batch=4, seq=12)
    return model, capture_traceable(model, data), data


@pytest.mark.parametrize("b", [1, 2, 16, 32, 128])
def test_hadamard_matrix_is_the_closed_form_and_orthogonal(b):
    h = hadamard_matrix(b)
    assert torch.allclose(h, _dense(b, b), atol=1e-15)
    assert torch.allclose(h @ h.T, torch.eye(b, dtype=torch.float64), atol=1e-12)


def test_block_hadamard_op_is_x_times_the_dense_matrix():
    x = torch.randn(3, 5, 64, dtype=torch.float64)
    op = BlockHadamard(16).double()
    assert torch.allclose(op(x), x @ _dense(64, 16), atol=1e-12)


@pytest.mark.parametrize("fmt,fix,blocks", [("nvfp4", "hadamard", {16: 16, 32: 16}), ("mxfp4", "hadamard", {16: 16, 32: 32}),
                                            ("int4-g16", "hadamard-16", {16: 16, 32: 16})])
def test_hadamard_weights_and_float_output(fmt, fix, blocks):
    model, graph, data = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [l.name for l in graph.layers]
    out = make_fix(fix, FixContext(_cfg(fmt, names))).apply(graph, names)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, graph.gm.state_dict()[k]) for k, v in graph.gm.state_dict().items())
    for n in names:
        w0 = graph.module(graph.layer(n)).weight.detach().double()
        k = w0.shape[1]
        expect = (w0 @ _dense(k, blocks[k])).float()
        assert torch.allclose(out.module(out.layer(n)).weight.detach(), expect, atol=1e-7, rtol=0)
    # q_proj and up_proj read one normed tensor each with their siblings: one op per tensor
    assert len(out.input_ops) == len({out.nodes()[l.node].args[0].name for l in out.layers})
    for ids, _ in data:
        y0, y1 = graph.gm(ids), out.gm(ids)
        assert (y1 - y0).abs().max() <= 1e-5 * y0.abs().max()
    assert out.prequantized == frozenset()


def test_hadamard_in_float64_is_exact_to_float64_rounding():
    model, graph, data = _setup()
    graph.gm.double()
    names = [l.name for l in graph.layers]
    out = make_fix("hadamard", FixContext(_cfg("nvfp4", names))).apply(graph, names)
    out.gm.double()
    for ids, _ in data:
        y0, y1 = graph.gm(ids), out.gm(ids)
        assert (y1 - y0).abs().max() <= 1e-12 * y0.abs().max()


def test_the_quantized_network_quantizes_the_rotated_input_and_weight():
    from quantlens.engine.build import build_quantized

    _, graph, data = _setup()
    name = "layers.1.down_proj"
    cfg = _cfg("nvfp4", [name], a_format="nvfp4")
    out = make_fix("hadamard", FixContext(cfg)).apply(graph, [name])
    qnet = build_quantized(out, cfg, data)
    idx = graph.layer(name).index
    seen, floats = [], []
    h1 = qnet.gm.get_submodule(f"ql_in_{idx}").register_forward_hook(lambda m, a, o: seen.append(a[0]))
    h2 = graph.module(graph.layer(name)).register_forward_hook(lambda m, a, o: floats.append(a[0]))
    ids = data[0][0]
    qnet.gm(ids)
    graph.gm(ids)
    h1.remove(), h2.remove()
    assert torch.allclose(seen[0].double(), floats[0].double() @ _dense(32, 16), atol=1e-5)
    w = graph.module(graph.layer(name)).weight.detach()
    expect = quantize_weight((w.double() @ _dense(32, 16)).float(), QuantSpec(bits=4, format="nvfp4")).weight
    assert torch.equal(qnet.weights[name].weight, expect)


def test_hadamard_one_line_errors():
    _, graph, _ = _setup()
    with pytest.raises(QuantlensError, match="16 input features are not a multiple of the block 128"):
        make_fix("hadamard-128", FixContext(_cfg("nvfp4", ["layers.0.q_proj"]))).apply(graph, ["layers.0.q_proj"])
    assert "plain cast" in not_applicable("hadamard", QuantSpec(bits=16, format="bf16"))
    with pytest.raises(QuantlensError, match="plain cast"):
        make_fix("hadamard", FixContext(_cfg("bf16", ["layers.0.q_proj"]))).apply(graph, ["layers.0.q_proj"])


def test_hadamard_refuses_a_convolution():
    from support.models import tiny_data, tiny_net

    g = capture_traceable(tiny_net(), tiny_data(1))
    conv = next(l.name for l in g.layers if l.op == "Conv2d")
    with pytest.raises(QuantlensError, match="rotates a Linear's input features, this layer is a Conv2d"):
        make_fix("hadamard", FixContext(_cfg("mxfp4", [conv]))).apply(g, [conv])
