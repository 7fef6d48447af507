"""Our formats against torchao's (``torchao.prototype.mx_formats``, ``torchao.float8``), difference by difference.

Where torchao agrees, the test says so bit for bit; where its rule differs, a test pins the
difference: torchao's output equals our reading of its rule (a numpy + ml_dtypes model below),
and flipping that one point of the rule changes its output on the data shown. docs/formats.md
has the table.
"""

from __future__ import annotations

import inspect
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch

from quantlens.quant.formats import fake_quantize

try:  # torchao is in the dev extra; without it (or with one that does not import on this torch), skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.float8.float8_training_tensor import hp_tensor_and_scale_to_float8
        from torchao.float8.float8_utils import amax_to_scale
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
        from torchao.prototype.mx_formats.mx_tensor import MXTensor
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
except ImportError as e:
    pytest.skip(f"torchao.prototype.mx_formats does not import: {e}", allow_module_level=True)

F32 = np.float32
AO_ELEM = {
    "mxfp8": torch.float8_e4m3fn,
    "mxfp8-e5m2": torch.float8_e5m2,
    "mxfp6": DTYPE_FP6_E2M3,
    "mxfp6-e3m2": DTYPE_FP6_E3M2,
    "mxfp4": torch.float4_e2m1fn_x2,
}
MAX = {"mxfp8": 448.0, "mxfp8-e5m2": 57344.0, "mxfp6": 7.5, "mxfp6-e3m2": 28.0, "mxfp4": 6.0}
MIDS = {  # midpoints of each element's grid in [1, 2) and at its top
    "mxfp8": [1.0625, 1.1875, 416.0, 240.0],
    "mxfp8-e5m2": [1.125, 1.375, 53248.0, 20480.0],
    "mxfp6": [1.0625, 1.1875, 7.25, 0.0625],
    "mxfp6-e3m2": [1.125, 1.375, 26.0, 0.09375],
    "mxfp4": [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0],
}


def ao_mx(x: torch.Tensor, name: str, mode: "ScaleCalculationMode" = ScaleCalculationMode.FLOOR) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MXTensor.to_mx(x, AO_ELEM[name], 32, scaling_mode=mode).dequantize(x.dtype)


def ao_mx_exponent(x: torch.Tensor, name: str, mode: "ScaleCalculationMode") -> torch.Tensor:
    return MXTensor.to_mx(x, AO_ELEM[name], 32, scaling_mode=mode).scale.view(torch.uint8).to(torch.int32) - 127


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.float().contiguous().view(torch.int32)


def mx_data(name: str, seed: int = 0) -> torch.Tensor:
    """Random rows over 12 decades, rows of exact ties (x / X on grid midpoints), zero blocks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 256, generator=g) * torch.logspace(-6, 6, 256)
    mids = torch.tensor(MIDS[name])
    for r, j in zip(range(32, 48), range(-60, 60, 8)):
        x[r] = mids[torch.arange(256) % len(mids)] * 2.0**j * torch.where(torch.arange(256) % 3 == 0, -1.0, 1.0)
        x[r, ::32] = MAX[name] * 2.0**j  # each block's amax: X = 2^j (floor and rceil)
    x[5, :64] = 0
    x[6] = 0
    return x


# ---------------------------------------------------------------- MX


def test_torchao_mx_default_scale_rule_is_floor_like_ours():
    assert inspect.signature(MXTensor.to_mx).parameters["scaling_mode"].default == ScaleCalculationMode.FLOOR


@pytest.mark.parametrize("name", list(AO_ELEM))
@pytest.mark.parametrize("rceil", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torchao_mx_agrees_on_ordinary_data_ties_and_zero_blocks(name, rceil, dtype):
    x = mx_data(name).to(dtype)
    mode = ScaleCalculationMode.RCEIL if rceil else ScaleCalculationMode.FLOOR
    ours = fake_quantize(x, name + ("-rceil" if rceil else ""))
    assert torch.equal(bits(ours), bits(ao_mx(x, name, mode)))


@pytest.mark.parametrize("name", ["mxfp8", "mxfp4"])
def test_torchao_mx_floor_halves_blocks_whose_scale_is_2_to_the_minus_127(name):
    # to_mx divides by max(X, 2^-126) but dequantize multiplies by X = 2^-127
    top = -121 if name == "mxfp8" else -126  # floor(log2 amax) - emax_elem < -127
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 2.0**top, -(2.0 ** (top - 1))
    ours = fake_quantize(x, name)
    assert ours[0, 0].item() == 2.0**top and ours[0, 1].item() == -(2.0 ** (top - 1))
    assert torch.equal(ao_mx(x, name), ours / 2)


def test_torchao_mx_rceil_zeroes_blocks_whose_scale_is_2_to_the_minus_127():
    # _to_mx_rceil uses the reciprocal 1.0 (not 2^127) for the biased exponent 0
    x = torch.zeros(1, 32)
    x[0, 0] = 2.0**-121
    assert fake_quantize(x, "mxfp8-rceil")[0, 0].item() == 2.0**-121
    assert ao_mx(x, "mxfp8", ScaleCalculationMode.RCEIL)[0, 0].item() == 0.0


@pytest.mark.parametrize("name", ["mxfp8", "mxfp4"])
def test_torchao_mx_rceil_loses_the_scale_bit_one_ulp_above_a_power_of_two(name):
    # torchao: ceil(float32 log2(amax / max)); log2(2^j (1 + 2^-23)) rounds to j for |j| >= 8
    js = np.array([-100, -20, -8, 8, 20, 100])
    amax = np.nextafter((F32(MAX[name]) * np.ldexp(F32(1), js)).astype(F32), F32(np.inf))
    x = torch.zeros(len(js), 32)
    x[:, 0] = torch.from_numpy(amax)
    tiny = {"mxfp8": 2.0**-9, "mxfp4": 0.5}[name] * 1.25  # 1.25 x the smallest subnormal
    x[:, 1] = torch.from_numpy((np.ldexp(F32(1), js) * F32(tiny)).astype(F32))
    ours_k = torch.from_numpy(js + 1)  # exact: amax > max * 2^j
    assert torch.equal(ao_mx_exponent(x, name, ScaleCalculationMode.RCEIL).flatten(), (ours_k - 1).int())
    ours, ao = fake_quantize(x, name + "-rceil"), ao_mx(x, name, ScaleCalculationMode.RCEIL)
    assert torch.equal(ours[:, 0], ao[:, 0])  # the clipped max is still max * 2^j: no visible clip there
    assert not torch.equal(ours[:, 1], ao[:, 1])  # but the block's small values sit on a different grid
    assert (x[:, 0].double() / 2.0 ** ours_k.double()).max() <= MAX[name]  # ours never clips


# ---------------------------------------------------------------- NVFP4


def e4m3(a: np.ndarray) -> np.ndarray:
    return np.clip(a, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(F32)


def e2m1(a: np.ndarray) -> np.ndarray:
    return np.clip(a, -6, 6).astype(ml_dtypes.float4_e2m1fn).astype(F32)


def nvfp4_rule(x: np.ndarray, s2, *, block="ao", recip="ao", eps="ao", order="ao") -> np.ndarray:
    """NVFP4 as torchao computes it (``nvfp4_quantize`` + ``dequantize``); each point can be flipped to ours.

    block: torchao ``(amax / 6) / s2``, ours ``amax / (6 * s2)``.
    recip: torchao ``x * ((1 / s2) / s_b)``, ours ``x / (s_b * s2)``.
    eps:   torchao raises the block scale to E4M3's smallest normal 2^-6; ours keeps subnormals and 0.
    order: torchao ``q * (s2 * s_b)``, ours ``(q * s_b) * s2``.
    ``s2=None``: torchao's single-level NVFP4 (no tensor scale).
    """
    b = x.reshape(x.shape[0], -1, 16).astype(F32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    one = F32(1)
    if s2 is None:
        raw = amax / F32(6)
        s2v = one
    else:
        s2v = F32(s2)
        raw = (amax / F32(6)) / s2v if block == "ao" else amax / (F32(6) * s2v)
    if eps == "ao":
        raw = np.maximum(raw, F32(2.0**-6))
    sb = e4m3(raw)
    live = sb * s2v > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        if s2 is None:
            y = b * (one / sb) if recip == "ao" else b / sb
        else:
            y = b * ((one / s2v) / sb) if recip == "ao" else b / (sb * s2v)
    q = e2m1(np.where(live, y, F32(0)))
    if s2 is None:
        out = q * sb
    else:
        out = q * (s2v * sb) if order == "ao" else (q * sb) * s2v
    return np.where(live, out, F32(0)).astype(F32).reshape(x.shape)


def ao_nvfp4(x: torch.Tensor, s2) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NVFP4Tensor.to_nvfp4(x, per_tensor_scale=s2).dequantize(x.dtype)


def nv_data(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 256, generator=g) * torch.logspace(-3, 3, 256)


@pytest.mark.parametrize("two_level", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torchao_nvfp4_is_our_reading_of_its_rule(two_level, dtype):
    x = nv_data().to(dtype)
    s2 = per_tensor_amax_to_scale(x.float().abs().amax()) if two_level else None
    model = nvfp4_rule(x.float().numpy(), None if s2 is None else float(s2))
    if dtype == torch.bfloat16:
        model = model.astype(ml_dtypes.bfloat16).astype(F32)
    assert torch.equal(bits(ao_nvfp4(x, s2)), bits(torch.from_numpy(model)))
    if two_level:  # same s2 rule: amax / (6 * 448)
        assert float(s2) == float(torch.tensor(float(x.float().abs().amax())) / torch.tensor(2688.0))


def test_with_all_four_points_flipped_the_rule_is_ours():
    x = nv_data(1)
    s2 = float(per_tensor_amax_to_scale(x.abs().amax()))
    ours = nvfp4_rule(x.numpy(), s2, block="ours", recip="ours", eps="ours", order="ours")
    assert torch.equal(bits(fake_quantize(x, "nvfp4")), bits(torch.from_numpy(ours)))
    assert not torch.equal(bits(ao_nvfp4(x, torch.tensor(s2))), bits(torch.from_numpy(ours)))


def flipped(x: np.ndarray, s2, point: str) -> tuple[np.ndarray, np.ndarray]:
    return nvfp4_rule(x, s2), nvfp4_rule(x, s2, **{point: "ours"})


def test_nvfp4_point_block_scale_division_order():
    # block amax at E4M3 midpoints times 6 s2: (amax / 6) / s2 and amax / (6 s2) round apart
    s2 = F32(float.fromhex("0x1.8a9d34p-10"))
    g = np.unique(np.abs(np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(F32)))
    g = g[np.isfinite(g)]
    mids = ((g[:-1] + g[1:]) / F32(2)).astype(F32)
    x = np.zeros((len(mids), 16), F32)
    x[:, 0] = (mids * F32(6) * s2).astype(F32)
    ao, ours_point = flipped(x, s2, "block")
    assert torch.equal(bits(ao_nvfp4(torch.from_numpy(x), torch.tensor(float(s2)))), bits(torch.from_numpy(ao)))
    assert (ao != ours_point).any()


def test_nvfp4_point_reciprocal_multiplication():
    # x at E2M1 ties times s_b s2: x * ((1/s2)/s_b) lands an ulp off the tie, x / (s_b s2) on it
    s2 = F32(float.fromhex("0x1.d579380p+1"))
    rng = np.random.default_rng(0)
    sb = np.array([3.0, 1.125, 0.8125, 13.0, 0.3125, 104.0], F32)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], F32)
    x = np.zeros((len(sb) * 8, 16), F32)
    for i in range(x.shape[0]):
        s = sb[i % len(sb)]
        x[i, 0] = F32(6) * s * s2  # the block amax: s_b = s by both rules
        x[i, 1:8] = (ties * s * s2).astype(F32)
        x[i, 8:15] = np.nextafter(x[i, 1:8], F32(np.inf))
        x[i, 15] = rng.standard_normal()
    ao, ours_point = flipped(x, s2, "recip")
    assert torch.equal(bits(ao_nvfp4(torch.from_numpy(x), torch.tensor(float(s2)))), bits(torch.from_numpy(ao)))
    assert (ao != ours_point).any()


def test_nvfp4_point_no_subnormal_or_zero_block_scales():
    # s2 = 1/2688, 6 s2 = 1/448: a block with amax a gets s_b = e4m3(448 a)
    rng = np.random.default_rng(5)
    x = np.zeros((4, 16), F32)
    x[0, :] = 1.0  # the tensor's amax
    x[1, :] = rng.standard_normal(16).astype(F32) * F32(2.0**-10)  # s_b normal: both agree
    x[2, :] = rng.standard_normal(16).astype(F32) * F32(2.0**-16)  # s_b ~ 2^-8: ours subnormal, torchao 2^-6
    x[3, :] = F32(2.0**-19)  # 448 a < 2^-10: ours s_b = 0 (zero block), torchao 2^-6 (0.5 s_b s2)
    s2 = float(F32(1) / F32(2688))
    ao, ours_point = flipped(x, s2, "eps")
    assert torch.equal(bits(ao_nvfp4(torch.from_numpy(x), torch.tensor(s2))), bits(torch.from_numpy(ao)))
    assert (ao[3] != 0).all() and (ours_point[3] == 0).all() and (ao[2] != ours_point[2]).any()
    assert torch.equal(bits(fake_quantize(torch.from_numpy(x), "nvfp4")), bits(torch.from_numpy(
        nvfp4_rule(x, s2, block="ours", recip="ours", eps="ours", order="ours"))))


def test_nvfp4_point_dequantization_order():
    x = nv_data(2).numpy()
    s2 = float(F32(np.abs(x).max()) / F32(2688))
    ao, ours_point = flipped(x, s2, "order")
    assert torch.equal(bits(ao_nvfp4(torch.from_numpy(x), torch.tensor(s2))), bits(torch.from_numpy(ao)))
    assert (ao != ours_point).mean() > 0.01  # one-ulp differences for q in {1.5, 3, 6}


def test_torchao_nvfp4_default_is_single_level():
    assert inspect.signature(NVFP4Tensor.to_nvfp4).parameters["per_tensor_scale"].default is None
    x = nv_data(3)
    ours = fake_quantize(x, "nvfp4")
    ao = ao_nvfp4(x, None)
    assert torch.equal(bits(ao), bits(torch.from_numpy(nvfp4_rule(x.numpy(), None))))
    assert (ao != ours).float().mean() > 0.5


# ---------------------------------------------------------------- FP8 (torchao.float8)


def test_torchao_float8_multiplies_by_max_over_amax_and_divides_back():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 256, generator=g) * 3.7
    amax = x.abs().amax()
    scale = amax_to_scale(amax, torch.float8_e4m3fn)  # float32(448 / float64(amax))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = hp_tensor_and_scale_to_float8(x, scale, torch.float8_e4m3fn).to_original_precision()
    a = x.numpy()
    sc = F32(448.0 / np.float64(F32(np.abs(a).max())))
    model = np.clip(a * sc, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(F32) / sc
    assert torch.equal(bits(ao), bits(torch.from_numpy(model)))
    ours = fake_quantize(x, "fp8-e4m3")
    assert (ours != ao).any()  # q * (amax/448) vs q / (448/amax): last-bit differences
    assert ((ours - ao).abs() <= 2 * torch.finfo(torch.float32).eps * ours.abs()).all()
