"""four-over-six, mx-scale and keep-outliers against block-by-block references written here.

* four-over-six: each block of 16 quantized alone through ``quantlens.fake_quantize`` (a
  ``[1, 16]`` weight, the whole weight's ``s2``: the map-to-6 candidate, the format itself) and
  with the map-to-4 scale written from the paper's rule; the lower squared error kept.
* mx-scale: the whole weight in ``mxfp4`` and in ``mxfp4-rceil``; the lower squared error kept.
* keep-outliers: the k largest |w| found by sorting in Python, zeroed, the rest quantized by the
  format, the k put back rounded to BF16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support.lm_models import tiny_lm, token_data

from quantlens import QuantlensError
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.fixes import FixContext, make_fix, not_applicable
from quantlens.fixes.format_scales import four_over_six, mx_best_scale_rule
from quantlens.fixes.outliers import keep_outliers
from quantlens.network.measure import capture_traceable
from quantlens.quant.formats import fake_quantize
from quantlens.quant.formats.elements import E2M1, E4M3, cast
from quantlens.quant.padded import quantize_padded
from quantlens.quant.spec import PerChannel, QuantSpec


def _w(shape=(12, 80), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.05
    w.view(-1)[::41] *= 15
    return w


def _four_over_six_oracle(w):
    s2 = w.abs().max() / 2688.0
    out = torch.zeros_like(w)
    choices = []
    for r in range(w.shape[0]):
        for k0 in range(0, w.shape[1], 16):
            x = w[r:r + 1, k0:k0 + 16]
            pad = F.pad(x, (0, 16 - x.shape[1]))
            q6 = fake_quantize(pad, "nvfp4", global_scale=s2)[:, : x.shape[1]]
            amax = x.abs().max()
            s4 = cast(amax / (4.0 * s2), E4M3)
            q4 = (cast(x / (s4 * s2), E2M1) * s4) * s2 if s4 > 0 else torch.zeros_like(x)
            e6, e4 = ((q6 - x).double() ** 2).sum(), ((q4 - x).double() ** 2).sum()
            out[r:r + 1, k0:k0 + 16] = q4 if e4 < e6 else q6
            choices.append(bool(e4 < e6))
    return out, choices


@pytest.mark.parametrize("shape", [(12, 80), (6, 40), (4, 2, 3, 3)])
def test_four_over_six_equals_block_by_block_oracle(shape):
    w = _w(shape)
    expect, choices = _four_over_six_oracle(w.reshape(w.shape[0], -1))
    got = four_over_six(w)
    assert torch.equal(got.reshape(w.shape[0], -1), expect)
    assert any(choices) and not all(choices)  # both candidates win somewhere
    assert ((got - w) ** 2).sum() < ((quantize_padded(w, "nvfp4", "weight") - w) ** 2).sum()


@pytest.mark.parametrize("fmt", ["mxfp4", "mxfp4-rceil", "mxfp6", "mxfp8"])
def test_mx_scale_keeps_the_lower_error_rule(fmt):
    for seed in range(4):
        w = _w((8, 64), seed)
        base = fmt.replace("-rceil", "")
        qf, qr = fake_quantize(w, base), fake_quantize(w, base + "-rceil")
        ef, er = ((qf - w).double() ** 2).sum(), ((qr - w).double() ** 2).sum()
        q, rule = mx_best_scale_rule(w, fmt)
        own_first = (qf, qr, ef, er, base) if fmt == base else (qr, qf, er, ef, base + "-rceil")
        q_own, q_other, e_own, e_other, own = own_first
        expect = q_other if e_other < e_own else q_own
        assert torch.equal(q, expect) and (rule == own) == (e_other >= e_own)


def test_keep_outliers_equals_sorted_reference():
    w = _w((10, 64))
    k = 5
    flat = w.reshape(-1)
    order = sorted(range(flat.numel()), key=lambda i: -abs(float(flat[i])))[:k]
    rest = flat.clone()
    rest[order] = 0
    expect = fake_quantize(rest.reshape(w.shape), "nvfp4").reshape(-1)
    expect[order] = flat[order].to(torch.bfloat16).float()
    assert torch.equal(keep_outliers(w, QuantSpec(bits=4, format="nvfp4"), k), expect.reshape(w.shape))
    # on an integer grid (no format) too, and its error is below plain rounding's
    spec = QuantSpec(bits=4, granularity=PerChannel())
    from quantlens.quant.quantizer import quantize_weight

    assert ((keep_outliers(w, spec, k) - w) ** 2).sum() < ((quantize_weight(w, spec).weight - w) ** 2).sum()


def _cfg(fmt, names):
    return QuantConfig(tuple((n, LayerQuant(weight=QuantSpec(bits=4, format=fmt), act=None)) for n in names))


@pytest.mark.parametrize("fix,fmt,outliers", [("four-over-six", "nvfp4", False), ("mx-scale", "mxfp4", False),
                                              ("keep-outliers", "int4-g16", True), ("keep-outliers-1", "mxfp4", True)])
def test_quantizing_fixes_on_a_network_mark_and_build(fix, fmt, outliers):
    from quantlens.engine.build import build_quantized

    data = token_data(2)
    graph = capture_traceable(tiny_lm(), data)
    names = ["layers.0.up_proj", "layers.2.down_proj"]
    out = make_fix(fix, FixContext(_cfg(fmt, names))).apply(graph, names)
    assert out.prequantized == frozenset(names)
    qnet = build_quantized(out, _cfg(fmt, names), data)
    for n in names:
        w = graph.module(graph.layer(n)).weight.detach()
        assert torch.equal(qnet.weights[n].weight, out.module(out.layer(n)).weight.detach())
        if outliers:  # the largest weight kept in BF16
            i = int(w.abs().argmax())
            assert float(qnet.weights[n].weight.reshape(-1)[i]) == float(w.reshape(-1)[i].to(torch.bfloat16))


def test_format_fixes_say_which_formats_they_apply_to():
    assert not_applicable("four-over-six", QuantSpec(bits=4, format="nvfp4")) is None
    why = not_applicable("four-over-six", QuantSpec(bits=4, format="mxfp4"))
    assert why.startswith("four-over-six is NVFP4's block-scale choice") and "mxfp4 is not NVFP4" in why
    assert "int4" in not_applicable("four-over-six", QuantSpec(bits=4))
    assert not_applicable("mx-scale", QuantSpec(bits=4, format="mxfp6-rceil")) is None
    assert "nvfp4 is not an MX format" in not_applicable("mx-scale", QuantSpec(bits=4, format="nvfp4"))
    assert not_applicable("keep-outliers", QuantSpec(bits=4, format="int4-g128")) is None
    assert "plain cast" in not_applicable("keep-outliers", QuantSpec(bits=16, format="bf16"))
    graph = capture_traceable(tiny_lm(), token_data(1))
    with pytest.raises(QuantlensError) as e:
        make_fix("four-over-six", FixContext(_cfg("mxfp4", ["layers.0.q_proj"]))).apply(graph, ["layers.0.q_proj"])
    assert str(e.value).startswith("fix 'four-over-six' on layer layers.0.q_proj: four-over-six is NVFP4's") and "\n" not in str(e.value)
