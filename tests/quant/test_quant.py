"""Quantizers against PyTorch's own fake-quantize operators, bit for bit."""

from __future__ import annotations

import pytest
import torch

from quantlens.quant.spec import (
    PerChannel,
    PerGroup,
    PerTensor,
    QuantSpec,
    parse_granularity,
)
from quantlens.core.sweep_config import SweepConfig
from quantlens.errors import QuantlensError
from quantlens.quant import (
    ActQuantizer,
    HistogramObserver,
    MinMaxObserver,
    estimate_activation,
    fake_quantize,
    qparams_from_range,
    quantize_weight,
)
from quantlens.quant.primitives import fake_quantize_formula
from quantlens.quant.ranges import SAWB_COEFFICIENTS, estimate_weight_rows


def _x(n=4096, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * scale
    # exact ties: values on the half-grid exercise round-half-to-even
    x[:64] = (torch.arange(64) - 32).float() * 0.5 * 0.05
    return x


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 12, 16])
def test_symmetric_per_tensor_matches_torch(bits):
    w = _x()
    qw = quantize_weight(w, QuantSpec(bits=bits))
    qmax = 2 ** (bits - 1) - 1
    scale = float(w.abs().max() / qmax)  # the formula
    assert float(qw.scale[0]) == pytest.approx(scale, rel=1e-7)
    ref = torch.fake_quantize_per_tensor_affine(w, float(qw.scale[0]), 0, -(2 ** (bits - 1)), qmax)
    assert torch.equal(qw.weight, ref)


def test_round_half_to_even():
    s, z = torch.tensor(1.0), torch.tensor(0)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5])
    assert fake_quantize(x, s, z, -8, 7).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_asymmetric_per_tensor_matches_torch(bits):
    x = _x(seed=1) + 1.0
    lo, hi = x.min(), x.max()
    s, z = qparams_from_range(lo, hi, 0, 2**bits - 1, symmetric=False)
    assert float(s) == pytest.approx(float((hi - torch.clamp(lo, max=0)) / (2**bits - 1)), rel=1e-6)
    assert int(z) == int(torch.clamp(torch.round(-torch.clamp(lo, max=0) / s), 0, 2**bits - 1))
    ours = fake_quantize(x, s, z, 0, 2**bits - 1)
    ref = torch.fake_quantize_per_tensor_affine(x, float(s), int(z), 0, 2**bits - 1)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_written_out_formula_matches_torch_per_tensor(bits, symmetric):
    """The fused fast path of ``fake_quantize`` is torch's operator: check the formula against it."""
    x = _x(seed=5) + (0.0 if symmetric else 0.7)
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    s, z = qparams_from_range(x.min(), x.max(), qmin, qmax, symmetric=symmetric)
    ref = torch.fake_quantize_per_tensor_affine(x, float(s), int(z), qmin, qmax)
    assert torch.equal(fake_quantize_formula(x, s, z, qmin, qmax), ref)
    assert torch.equal(fake_quantize(x, s, z, qmin, qmax), ref)
    # other dtypes take the formula, in float32 arithmetic
    assert torch.equal(fake_quantize(x.double(), s, z, qmin, qmax), ref.double())


def test_asymmetric_range_includes_zero():
    s, z = qparams_from_range(torch.tensor(2.0), torch.tensor(5.0), 0, 255, symmetric=False)
    assert int(z) == 0 and float(s) == pytest.approx(5.0 / 255)
    s, z = qparams_from_range(torch.tensor(-5.0), torch.tensor(-1.0), 0, 255, symmetric=False)
    assert int(z) == 255


@pytest.mark.parametrize("bits", [3, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_matches_torch(bits, symmetric):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 4, 3, 3, generator=g) * torch.linspace(0.1, 3, 6).reshape(6, 1, 1, 1)
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=PerChannel())
    qw = quantize_weight(w, spec)
    ref = torch.fake_quantize_per_channel_affine(w, qw.scale, qw.zero_point, 0, spec.qmin, spec.qmax)
    assert torch.equal(qw.weight, ref)
    per_ch = w.reshape(6, -1).abs().amax(1) / spec.qmax
    if symmetric:
        assert torch.allclose(qw.scale, per_ch)


def test_per_group_matches_torch_on_groups():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 8, 3, generator=g)
    spec = QuantSpec(bits=4, granularity=PerGroup(4))
    qw = quantize_weight(w, spec)
    assert qw.scale.numel() == 4 * 2
    rows = w.reshape(4, 2, 4, 3).reshape(8, -1)
    ref = torch.fake_quantize_per_channel_affine(rows, qw.scale, qw.zero_point, 0, -8, 7).reshape(w.shape)
    assert torch.equal(qw.weight, ref)
    # a depthwise weight (1 input channel) falls back to one group per output channel
    dw = torch.randn(8, 1, 3, 3, generator=g)
    assert quantize_weight(dw, spec).scale.numel() == 8


def test_act_quantizer_from_observer_matches_torch():
    x = _x(seed=4) + 0.3
    obs = MinMaxObserver()
    for part in x.split(1000):
        obs.update(part)
    q = ActQuantizer.from_spec(QuantSpec(bits=8, symmetric=False), obs)
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255
    assert float(q.scale) == pytest.approx(scale, rel=1e-6)
    ref = torch.fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, 0, 255)
    assert torch.equal(q(x), ref)


def test_observers_merge_like_one_pass():
    x = _x(seed=5)
    a, b, whole = MinMaxObserver(), MinMaxObserver(), MinMaxObserver()
    a.update(x[:2000]); b.update(x[2000:]); whole.update(x)
    assert a.merge(b) == whole
    ha, hb, hw = HistogramObserver(), HistogramObserver(), HistogramObserver()
    ha.update(x[:2000]); hb.update(x[2000:]); hw.update(x)
    m = ha.merge(hb)
    assert (m.min, m.max) == (hw.min, hw.max)
    assert float(m.counts.sum()) == pytest.approx(x.numel())
    spec = QuantSpec(bits=8, symmetric=False, estimator="percentile", percentile=99.0)
    lo_m, hi_m = estimate_activation(m, spec)
    lo_t, hi_t = torch.quantile(x, 0.01).item(), torch.quantile(x, 0.99).item()
    width = (hw.max - hw.min) / hw.bins
    assert abs(lo_m - lo_t) < 3 * width and abs(hi_m - hi_t) < 3 * width
    assert HistogramObserver.from_dict(m.to_dict()).counts.equal(m.counts)


def test_clipping_estimators():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(1, 5000, generator=g)
    w[0, :5] = 30.0  # outliers
    amax = float(w.abs().max())
    for est in ("percentile", "mse", "sawb"):
        lo, hi = estimate_weight_rows(w, QuantSpec(bits=4, estimator=est, percentile=99.0))
        assert 0 < float(hi) < amax and float(lo) == -float(hi), est
    # mse clipping has lower quantization error than min/max on heavy tails
    err = {}
    for est in ("minmax", "mse"):
        qw = quantize_weight(w, QuantSpec(bits=4, estimator=est)).weight
        err[est] = float(((qw - w) ** 2).mean())
    assert err["mse"] < err["minmax"]
    # sawb: clip = c1*sqrt(E w^2) - c2*E|w|
    c1, c2 = SAWB_COEFFICIENTS[4]
    expect = c1 * float(w.pow(2).mean().sqrt()) - c2 * float(w.abs().mean())
    _, hi = estimate_weight_rows(w, QuantSpec(bits=4, estimator="sawb"))
    assert float(hi) == pytest.approx(min(expect, amax), rel=1e-5)


def test_zero_tensor_is_safe():
    qw = quantize_weight(torch.zeros(3, 3), QuantSpec(bits=4))
    assert torch.equal(qw.weight, torch.zeros(3, 3))


@pytest.mark.parametrize("bits", [1, 17, 0, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(QuantlensError, match="2..16"):
        QuantSpec(bits=bits)
    with pytest.raises(QuantlensError, match="2..16"):
        SweepConfig(w_bits=(4, bits))


def test_config_errors():
    with pytest.raises(QuantlensError, match="unknown range estimator"):
        QuantSpec(estimator="nope")
    with pytest.raises(QuantlensError, match="granularity"):
        parse_granularity("per-row")
    assert parse_granularity("per-group-32") == PerGroup(32)
    assert parse_granularity("per-tensor") == PerTensor()
    with pytest.raises(QuantlensError, match="sawb"):
        estimate_activation(_obs(), QuantSpec(bits=8, symmetric=False, estimator="sawb"))
    with pytest.raises(QuantlensError, match="'sawb' is for weights"):  # refused before any calibration
        SweepConfig(act=QuantSpec(bits=8, symmetric=False, estimator="sawb"))
    with pytest.raises(QuantlensError, match="empty"):
        SweepConfig(w_bits=())
    spec = QuantSpec(bits=5, symmetric=False, granularity=PerChannel(), estimator="mse")
    assert QuantSpec.from_dict(spec.to_dict()) == spec


def _obs():
    h = HistogramObserver()
    h.update(torch.randn(100))
    return h


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_per_group_linear_is_exact_against_a_direct_reference(symmetric, group):
    """LLM granularity: one scale per output row and per block of ``group`` input columns."""
    g = torch.Generator().manual_seed(group)
    w = torch.randn(24, 256, generator=g) * torch.linspace(0.1, 3.0, 256)  # columns differ in range
    spec = QuantSpec(bits=4, symmetric=symmetric, granularity=PerGroup(group))
    qw = quantize_weight(w, spec)
    ref = torch.empty_like(w)
    for o in range(w.shape[0]):
        for j in range(0, w.shape[1], group):
            blk = w[o, j : j + group]
            if symmetric:
                s, z = float(blk.abs().max()) / 7, 0
                q = torch.fake_quantize_per_tensor_affine(blk, s, z, -8, 7)
            else:
                lo, hi = blk.min().clamp(max=0), blk.max().clamp(min=0)  # float32, as documented
                s = (hi - lo) / 15
                z = int((-lo / s).round().clamp(0, 15))
                q = torch.fake_quantize_per_tensor_affine(blk, s, z, 0, 15)
            ref[o, j : j + group] = q
    assert qw.scale.numel() == 24 * 256 // group
    assert torch.equal(qw.weight, ref)


def test_half_precision_weight_is_quantized_in_float32_and_cast_back():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(16, 64, generator=g)
    for dtype in (torch.bfloat16, torch.float16):
        wh = w.to(dtype)
        spec = QuantSpec(bits=4, granularity=PerGroup(32))
        qh = quantize_weight(wh, spec)
        q32 = quantize_weight(wh.float(), spec)
        assert qh.weight.dtype == dtype
        assert torch.equal(qh.weight, q32.weight.to(dtype))
        assert torch.equal(qh.scale, q32.scale)
