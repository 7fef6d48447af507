"""The number-format registry: names, errors, effective bits, tensor views, and int formats = today's quantizer.

(The bit-for-bit comparison of every format with an independent numpy/ml_dtypes oracle is in
test_formats_oracle.py; torchao in test_formats_torchao.py.)
"""

from __future__ import annotations

import pytest
import torch

from quantlens.quant.spec import PerChannel, PerGroup, PerTensor, QuantSpec
from quantlens.errors import QuantlensError
from quantlens.quant.formats import (
    Format,
    fake_quantize,
    fake_quantize_activation,
    formats,
    get_format,
    nvfp4_global_scale,
    register_format,
)
from quantlens.quant.formats import registry
from quantlens.quant.quantizer import quantize_weight

EFFECTIVE_BITS = {
    "int2": 2, "int4": 4, "int8": 8, "int16": 16,
    "int4-channel": 4, "int8-channel": 8,
    "int4-g32": 4.5, "int4-g128": 4.125, "int8-g64": 8.25, "int3-g16": 4.0,
    "fp8-e4m3": 8, "fp8-e4m3-channel": 8, "fp8-e4m3-block128": 8,
    "fp8-e5m2": 8, "fp8-e5m2-channel": 8, "fp8-e5m2-block128": 8,
    "mxfp8": 8.25, "mxfp8-e5m2": 8.25, "mxfp6": 6.25, "mxfp6-e3m2": 6.25, "mxfp4": 4.25,
    "mxfp8-rceil": 8.25, "mxfp8-e5m2-rceil": 8.25, "mxfp6-rceil": 6.25, "mxfp6-e3m2-rceil": 6.25, "mxfp4-rceil": 4.25,
    "nvfp4": 4.5, "bf16": 16, "fp16": 16,
}  # fmt: skip


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.float().view(torch.int32), b.float().view(torch.int32))


def weight(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    w.view(-1)[:: max(1, w.numel() // 7)] *= 20  # outliers
    if shape[0] > 2:
        w[1] = 0  # a zero row
    return w.to(dtype)


# ---------------------------------------------------------------- registry


def test_formats_lists_every_family_in_order():
    names = formats()
    assert names[:3] == ["int{b}", "int{b}-channel", "int{b}-g{N}"]
    for n in ("fp8-e4m3", "fp8-e5m2-block128", "mxfp8", "mxfp6-e3m2-rceil", "mxfp4", "nvfp4", "bf16", "fp16"):
        assert n in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name,bits", sorted(EFFECTIVE_BITS.items()))
def test_effective_bits(name, bits):
    assert get_format(name).effective_bits == pytest.approx(bits, abs=0)


def test_names_are_case_and_underscore_insensitive_and_canonical():
    assert get_format("MXFP4").name == "mxfp4"
    assert get_format(" fp8_e4m3_channel ").name == "fp8-e4m3-channel"
    assert get_format("int08-g032").name == "int8-g32"
    f = get_format("nvfp4")
    assert get_format(f) is f


def test_formats_are_frozen_and_validated():
    f = get_format("mxfp6")
    assert (f.family, f.element, f.scope, f.block, f.scale_rule, f.bits) == ("mx", "e2m3", "block", 32, "pow2-floor", 6)
    with pytest.raises(Exception):
        f.block = 16  # type: ignore[misc]
    with pytest.raises(QuantlensError, match="family"):
        Format("x", "posit", "e4m3", "tensor", 0, "none", 8.0)  # type: ignore[arg-type]
    with pytest.raises(QuantlensError, match="scale rule"):
        Format("x", "mx", "e2m1", "block", 32, "amax/max", 4.25)
    with pytest.raises(QuantlensError, match="block"):
        Format("x", "mx", "e2m1", "block", 0, "pow2-floor", 4.25)
    with pytest.raises(QuantlensError, match="element"):
        Format("x", "fp8", "e9m9", "tensor", 0, "amax/max", 8.0)
    with pytest.raises(QuantlensError, match="e2m1"):
        Format("x", "nvfp4", "e4m3", "block", 16, "e4m3*fp32", 4.5)


def test_describe_is_one_line_with_the_rule_and_bits():
    for name in [n for n in formats() if "{" not in n] + ["int4", "int8-channel", "int4-g128"]:
        text = get_format(name).describe()
        assert "\n" not in text and text.startswith(name + ":"), text
        assert f"{get_format(name).effective_bits:g} bits/value" in text
    assert "floor(log2 amax) - 2" in get_format("mxfp4").describe()
    assert "ceil(log2(amax / 6))" in get_format("mxfp4-rceil").describe()
    assert "amax / 7" in get_format("int4-g128").describe()


def test_a_custom_format_object_and_a_registered_template(monkeypatch):
    monkeypatch.setattr(registry, "_FORMATS", list(registry._FORMATS))
    mx16 = Format("mxfp4-b16", "mx", "e2m1", "block", 16, "pow2-floor", 4.5)
    register_format("mxfp4-b16")(lambda: mx16)
    assert "mxfp4-b16" in formats() and get_format("mxfp4-b16") is mx16
    with pytest.raises(ValueError, match="already registered"):
        register_format("mxfp4-b16")(lambda: mx16)
    # blocks of 16 = blocks of 32 whose second half is zero (zeros keep every amax)
    x = weight(8, 16)
    padded = torch.cat([x, torch.zeros(8, 16)], dim=1)
    assert bits_equal(fake_quantize(x, mx16), fake_quantize(padded, "mxfp4")[:, :16])


# ---------------------------------------------------------------- errors


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(QuantlensError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("name", ["mxfp5", "int4-foo", "fp8", "nvfp8", "int4-g", ""])
def test_unknown_format_lists_the_known_ones(name):
    msg = one_line_error(get_format, name)
    assert "unknown number format" in msg
    for known in ("int{b}-g{N}", "fp8-e4m3-block128", "mxfp4-rceil", "nvfp4", "bf16"):
        assert known in msg


@pytest.mark.parametrize("name", ["int0", "int1", "int17", "int32-channel", "int1-g32"])
def test_bad_int_bits(name):
    assert "2..16 bits" in one_line_error(get_format, name)


def test_bad_group_size():
    assert "group size" in one_line_error(get_format, "int4-g0")


def test_not_a_format():
    one_line_error(get_format, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("name,block", [("mxfp4", 32), ("nvfp4", 16), ("int4-g128", 128), ("fp8-e4m3-block128", 128)])
def test_a_block_that_does_not_divide_the_reduction_axis_names_both(name, block):
    k = 200 if block == 128 else 40
    msg = one_line_error(fake_quantize, torch.randn(128, k), name)
    assert f"reduction axis has {k} values" in msg and f"block size {block}" in msg and "per-row format" in msg
    act = one_line_error(fake_quantize_activation, torch.randn(2, 3, 40), name)
    assert "40" in act and str(block) in act


def test_conv_weights_block_along_in_times_kernel():
    w = weight(8, 3, 3, 3)  # K = 27
    assert "27" in one_line_error(fake_quantize, w, "mxfp8")
    w = weight(8, 4, 2, 4)  # K = 32
    assert bits_equal(fake_quantize(w, "mxfp8"), fake_quantize(w.reshape(8, 32), "mxfp8").reshape(w.shape))


def test_block128_needs_a_2d_weight_with_128_row_tiles():
    msg = one_line_error(fake_quantize, torch.randn(128, 8, 4, 4), "fp8-e4m3-block128")
    assert "2-D" in msg and "(128, 8, 4, 4)" in msg and "fp8-e4m3-channel" in msg
    assert "100 rows" in one_line_error(fake_quantize, torch.randn(100, 128), "fp8-e4m3-block128")
    # activations: 1x128 blocks, any number of rows
    x = weight(3, 7, 256)
    out = fake_quantize_activation(x, "fp8-e4m3-block128")
    assert bits_equal(out, fake_quantize(x.reshape(-1, 128), "fp8-e4m3-channel").reshape(x.shape))
    # weights: one scale per 128x128 tile
    w = weight(256, 128, seed=7)
    tiles = torch.cat([fake_quantize(w[:128], "fp8-e4m3"), fake_quantize(w[128:], "fp8-e4m3")])
    assert bits_equal(fake_quantize(w, "fp8-e4m3-block128"), tiles)


def test_global_scale_is_nvfp4_only_and_positive():
    assert "s2" in one_line_error(fake_quantize_activation, torch.randn(2, 16), "mxfp4", global_scale=1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf"), torch.ones(2)):
        one_line_error(fake_quantize_activation, torch.randn(2, 16), "nvfp4", global_scale=bad)


def test_integer_tensors_are_refused():
    assert "floating-point" in one_line_error(fake_quantize, torch.ones(4, 32, dtype=torch.int32), "mxfp4")


# ---------------------------------------------------------------- views, dtypes, shapes


@pytest.mark.parametrize("name", ["int4-channel", "int4-g16", "fp8-e5m2-channel", "mxfp6", "nvfp4", "bf16"])
def test_activations_are_rows_of_the_last_axis(name):
    x = weight(2, 5, 64, seed=4)
    out = fake_quantize_activation(x, name)
    assert out.shape == x.shape
    assert bits_equal(out, fake_quantize(x.reshape(10, 64), name).reshape(x.shape))


def test_weights_of_any_rank():
    w = weight(6, 2, 4, 4)
    assert bits_equal(fake_quantize(w, "int4-channel"), fake_quantize(w.reshape(6, 32), "int4-channel").reshape(w.shape))
    v = weight(12)
    assert bits_equal(fake_quantize(v, "int8"), fake_quantize(v.reshape(1, 12), "int8").reshape(12))
    assert fake_quantize(torch.tensor(3.0), "fp8-e4m3").item() == 3.0
    assert fake_quantize(torch.zeros(0, 32), "mxfp4").shape == (0, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_output_dtype_is_the_input_dtype_and_no_gradient_flows(dtype):
    w = weight(4, 64, dtype=dtype).requires_grad_(True)
    for name in ("int4-g32", "fp8-e4m3", "mxfp4", "nvfp4", "bf16"):
        out = fake_quantize(w, name)
        assert out.dtype == dtype and not out.requires_grad


def test_nvfp4_static_scale_equals_the_dynamic_one_when_it_is_the_same():
    x = weight(4, 3, 64, seed=2)
    s2 = nvfp4_global_scale(x.abs().amax())
    assert bits_equal(fake_quantize_activation(x, "nvfp4"), fake_quantize_activation(x, "nvfp4", global_scale=s2))
    assert bits_equal(fake_quantize_activation(x, "nvfp4", global_scale=float(s2)), fake_quantize_activation(x, "nvfp4"))
    # a smaller calibrated s2 saturates the largest blocks at 6 * 448 * s2
    small = fake_quantize_activation(x, "nvfp4", global_scale=s2 / 4)
    assert float(small.abs().max()) <= 6 * 448 * float(s2 / 4) * (1 + 2**-23)


def test_mx_floor_clips_and_rceil_does_not():
    x = torch.full((1, 32), 1.99)
    assert fake_quantize(x, "mxfp8")[0, 0].item() == 1.75  # 1.99 / 2^-8 = 509 -> 448
    assert fake_quantize(x, "mxfp8-rceil")[0, 0].item() == 2.0  # X = 2^-7: 254.7 -> 256
    assert fake_quantize(x, "mxfp4")[0, 0].item() == 1.5 and fake_quantize(x, "mxfp4-rceil")[0, 0].item() == 2.0


def test_fp8_and_float_casts_never_make_inf_or_nan():
    x = torch.tensor([[3e38, -3e38, 1e5, 65520.0, 7e4]])
    for name in ("fp8-e5m2", "fp8-e4m3", "bf16", "fp16", "mxfp8-e5m2"):
        out = fake_quantize(torch.cat([x, torch.zeros(1, 27)], 1), name)
        assert torch.isfinite(out).all(), name
    assert fake_quantize(torch.tensor([7e4, 65520.0]), "fp16").tolist() == [65504.0, 65504.0]


# ---------------------------------------------------------------- int formats = today's quantizer


@pytest.mark.parametrize("bits", list(range(2, 17)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int_formats_are_bit_identical_to_quantize_weight(bits, dtype):
    for w in (weight(16, 64, dtype=dtype), weight(8, 4, 3, 3, seed=1, dtype=dtype)):
        for name, gran in ((f"int{bits}", PerTensor()), (f"int{bits}-channel", PerChannel())):
            ref = quantize_weight(w, QuantSpec(bits=bits, granularity=gran)).weight
            assert bits_equal(fake_quantize(w, name), ref), (name, tuple(w.shape))
    w = weight(16, 64, seed=3, dtype=dtype)
    for n in (8, 16, 32):
        ref = quantize_weight(w, QuantSpec(bits=bits, granularity=PerGroup(n))).weight
        assert bits_equal(fake_quantize(w, f"int{bits}-g{n}"), ref), n


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_int_formats_are_bit_identical_to_torch_fake_quantize(bits):
    w = weight(32, 96, seed=5)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=1) / qmax).clamp_min(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.zeros(32, dtype=torch.int32)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
    assert bits_equal(fake_quantize(w, f"int{bits}-channel"), ref)
    s = w.abs().amax() / qmax
    assert bits_equal(fake_quantize(w, f"int{bits}"), torch.fake_quantize_per_tensor_affine(w, s, torch.tensor(0, dtype=torch.int32), qmin, qmax))
    # groups are channels of the [rows * groups, N] view
    g = w.reshape(32 * 3, 32)
    sg = torch.where(g.abs().amax(dim=1) > 0, g.abs().amax(dim=1) / qmax, torch.ones(96))
    ref = torch.fake_quantize_per_channel_affine(g, sg, torch.zeros(96, dtype=torch.int32), 0, qmin, qmax).reshape(w.shape)
    assert bits_equal(fake_quantize(w, f"int{bits}-g32"), ref)


def test_int_groups_on_conv_weights_span_the_flattened_axis_not_input_channels():
    w = weight(8, 16, 3, 3, seed=6)
    per_group = quantize_weight(w, QuantSpec(bits=4, granularity=PerGroup(4))).weight  # 4 channels x 9 taps
    assert bits_equal(fake_quantize(w, "int4-g36"), per_group)
    assert "not a multiple" in one_line_error(fake_quantize, w, "int4-g32")  # 144 = 16*9; PerGroup(32) falls back to per-channel


def test_int_where_one_over_the_scale_overflows_gives_zeros_not_nan():
    # amax / qmax below 2^-128: quantize_weight computes 1/s = inf, and 0 * inf = NaN
    w = torch.zeros(2, 32, dtype=torch.bfloat16)
    w[0, 0] = 2.0**-130
    ref = quantize_weight(w, QuantSpec(bits=8, granularity=PerChannel())).weight
    assert torch.isnan(ref.float()).any()  # today's quantizer (pinned: if it is fixed, drop this line)
    out = fake_quantize(w, "int8-channel")
    assert torch.equal(out, torch.zeros_like(w))
