"""Every number format against an independent oracle: numpy + ml_dtypes only, bit for bit.

The oracle (``o_*`` below) uses no torch: element casts are ml_dtypes' round-to-nearest-even
casts after clamping to the largest finite value (ml_dtypes' E4M3 turns values past 464 into
NaN and E5M2's into inf; its FP6/FP4 casts saturate), ``floor(log2)``/``ceil(log2)`` come from
float64 ``log2`` corrected by exact comparisons, powers of two from ``np.ldexp``, and the E8M0
scale is checked to round-trip through ``ml_dtypes.float8_e8m0fnu``. Torch only converts the
data in and out.

The data: random normal rows, outliers, zero rows and zero blocks, rows near the bottom of
float32 (MX exponent clamps at -127, NVFP4 block scales in E4M3's subnormals or zero), rows near
the top, exact ties (midpoints of each element grid, and their neighbours, at several scales),
and bf16 inputs.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from quantlens.quant.formats import ELEMENTS, cast_to_element, fake_quantize, fake_quantize_activation, get_format
from quantlens.quant.formats.elements import round_to_grid

F32 = np.float32
ML = {
    "e4m3": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e3m2": ml_dtypes.float6_e3m2fn,
    "e2m3": ml_dtypes.float6_e2m3fn,
    "e2m1": ml_dtypes.float4_e2m1fn,
}
MAX = {"e4m3": 448.0, "e5m2": 57344.0, "e3m2": 28.0, "e2m3": 7.5, "e2m1": 6.0}
EMAX = {"e4m3": 8, "e5m2": 15, "e3m2": 4, "e2m3": 2, "e2m1": 2}
FLOATS = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16}

INTS = ["int2", "int3", "int4", "int8", "int16", "int4-channel", "int8-channel", "int4-g32", "int3-g16", "int8-g128"]
FP8 = [f"fp8-{e}{s}" for e in ("e4m3", "e5m2") for s in ("", "-channel", "-block128")]
MX = [f"{b}{s}" for b in ("mxfp8", "mxfp8-e5m2", "mxfp6", "mxfp6-e3m2", "mxfp4") for s in ("", "-rceil")]
NAMES = INTS + FP8 + MX + ["nvfp4", "bf16", "fp16"]


# ---------------------------------------------------------------- the oracle (numpy, ml_dtypes)


def o_cast(a: np.ndarray, elem: str) -> np.ndarray:
    m = F32(MAX[elem])
    return np.clip(a.astype(F32), -m, m).astype(ML[elem]).astype(F32)


def o_pow2(k: np.ndarray) -> np.ndarray:
    x = np.ldexp(F32(1), k.astype(np.int32)).astype(F32)
    assert np.array_equal(x.astype(ml_dtypes.float8_e8m0fnu).astype(F32), x), "an MX scale is not an E8M0 value"
    return x


def o_floor_log2(a: np.ndarray) -> np.ndarray:
    """floor(log2 a) for a > 0, from float64 log2, corrected so that 2^k <= a < 2^(k+1)."""
    a = a.astype(np.float64)
    k = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    k = np.where(np.ldexp(1.0, k.astype(int)) > a, k - 1, k)
    k = np.where(np.ldexp(1.0, k.astype(int) + 1) <= a, k + 1, k)
    return k.astype(np.int64)


def o_ceil_log2_ratio(a: np.ndarray, top: float) -> np.ndarray:
    """The smallest k with a <= top * 2^k (exact in float64), for a > 0."""
    a = a.astype(np.float64)
    k = np.ceil(np.log2(np.where(a > 0, a, 1.0) / top))
    k = np.where(top * np.ldexp(1.0, k.astype(int)) < a, k + 1, k)
    k = np.where(top * np.ldexp(1.0, k.astype(int) - 1) >= a, k - 1, k)
    return k.astype(np.int64)


def o_tiles(m: np.ndarray, r: int, c: int) -> np.ndarray:
    return m.reshape(m.shape[0] // r, r, m.shape[1] // c, c)


def o_amax(t: np.ndarray) -> np.ndarray:
    return np.abs(t).max(axis=(1, 3), keepdims=True)


def o_int(t: np.ndarray, b: int) -> np.ndarray:
    qmax = 2 ** (b - 1) - 1
    s = (o_amax(t) / F32(qmax)).astype(F32)
    with np.errstate(divide="ignore", over="ignore"):
        inv = (F32(1) / s).astype(F32)
    ok = (s > 0) & np.isfinite(inv)
    s, inv = np.where(ok, s, F32(1)), np.where(ok, inv, F32(1))
    q = np.clip(np.rint(t * inv), -qmax - 1, qmax).astype(F32) + F32(0)
    return q * s


def o_fp8(t: np.ndarray, elem: str) -> np.ndarray:
    s = (o_amax(t) / F32(MAX[elem])).astype(F32)
    s = np.where(s > 0, s, F32(1))
    return o_cast(t / s, elem) * s


def o_mx(t: np.ndarray, elem: str, rceil: bool) -> np.ndarray:
    amax = o_amax(t)
    k = o_ceil_log2_ratio(amax, MAX[elem]) if rceil else o_floor_log2(amax) - EMAX[elem]
    k = np.clip(np.where(amax > 0, k, -127), -127, 127)
    x = o_pow2(k)
    return o_cast(t / x, elem) * x


def o_nvfp4(t: np.ndarray, s2=None) -> np.ndarray:
    if s2 is None:
        s2 = F32(np.abs(t).max()) / F32(2688)
    s2 = F32(s2)
    if s2 == 0:
        return np.zeros_like(t)
    sb = o_cast(o_amax(t) / (F32(6) * s2), "e4m3")
    denom = (sb * s2).astype(F32)
    live = denom > 0
    q = o_cast(t / np.where(live, denom, F32(1)), "e2m1")
    return np.where(live, (q * sb) * s2, F32(0)).astype(F32)


def o_float(t: np.ndarray, name: str) -> np.ndarray:
    top = F32(ml_dtypes.finfo(FLOATS[name]).max)
    return np.clip(t, -top, top).astype(FLOATS[name]).astype(F32)


def oracle(a: np.ndarray, name: str, role: str = "weight", s2=None) -> np.ndarray:
    """The format ``name`` applied to the float32 array ``a`` (a weight, or an activation)."""
    m = a.reshape(a.shape[0], -1) if role == "weight" else a.reshape(-1, a.shape[-1])
    rows, k = m.shape
    if name in FLOATS:
        return o_float(a, name)
    parts = name.split("-")
    if name.startswith("int"):
        b = int(parts[0][3:])
        r, c = (1, k) if parts[1:] == ["channel"] else (1, int(parts[1][1:])) if parts[1:] else (rows, k)
        return o_int(o_tiles(m, r, c), b).reshape(a.shape)
    if name.startswith("fp8"):
        scope = parts[2] if len(parts) > 2 else ""
        r, c = {"": (rows, k), "channel": (1, k), "block128": (128 if role == "weight" else 1, 128)}[scope]
        return o_fp8(o_tiles(m, r, c), parts[1]).reshape(a.shape)
    if name.startswith("mx"):
        elem = {"mxfp8": "e4m3", "mxfp6": "e2m3", "mxfp4": "e2m1"}[parts[0]]
        elem = parts[1] if len(parts) > 1 and parts[1] in ML else elem
        return o_mx(o_tiles(m, 1, 32), elem, parts[-1] == "rceil").reshape(a.shape)
    assert name == "nvfp4"
    return o_nvfp4(o_tiles(m, 1, 16), s2).reshape(a.shape)


# ---------------------------------------------------------------- data


def grid(elem: str) -> np.ndarray:
    """Every non-negative finite value of ``elem``, ascending."""
    n = 2 ** ml_dtypes.finfo(ML[elem]).bits
    v = np.arange(n, dtype=np.uint8).view(ML[elem]).astype(F32)
    return np.unique(np.abs(v[np.isfinite(v)]))


def ties(g: np.ndarray) -> np.ndarray:
    """The midpoints of ``g`` and their float32 neighbours, with both signs."""
    mid = ((g[:-1] + g[1:]) / F32(2)).astype(F32)
    v = np.concatenate([mid, np.nextafter(mid, F32(np.inf)), np.nextafter(mid, F32(0))])
    return np.concatenate([v, -v]).astype(F32)


def torture(rows: int = 128, k: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, k)).astype(F32)
    a[8, ::37] *= 100  # outliers
    a[9, 5] = 1e4
    a[10] = 0  # a zero row
    a[11, :32] = 0  # zero blocks
    a[12] *= F32(2.0**-130)  # float32 subnormals: MX exponent clamps at -127
    a[13] *= F32(2.0**-120)
    a[14] *= F32(2.0**100)  # near the top
    a[15, :] = rng.standard_normal(k).astype(F32) * np.repeat(F32(2.0) ** -(2 * np.arange(k // 16, dtype=F32)), 16)
    for i in range(16, 40):  # rows at many scales
        a[i] *= F32(2.0 ** (6 * (i - 28)))
    a[40, :16] = F32(2.0**-149)  # the smallest subnormal
    a[41, :32] = F32(1.99)  # saturating MX blocks (floor rule)
    return a


def tie_tensor(name: str, j: int, rows: int = 128, k: int = 256) -> np.ndarray:
    """Exact ties of ``name``'s element grid, scaled so that every scale is ``2^j``-exact."""
    f = get_format(name)
    p = F32(2.0**j)
    if f.family == "float":
        rng = np.random.default_rng(j + 1000)
        t = FLOATS[name]
        v = rng.standard_normal(rows * k).astype(F32).astype(t)
        bits = np.uint16
        nxt = (v.view(bits) + 1).view(t)
        mid = ((v.astype(F32) + nxt.astype(F32)) / F32(2)).astype(F32)
        mid[::7] = np.nextafter(mid[::7], F32(np.inf))
        return (mid * p).reshape(rows, k)
    if f.family == "int":
        qmax = 2 ** (f.bits - 1) - 1
        vals = (np.arange(-qmax, qmax, dtype=F32) + F32(0.5)).astype(F32)  # |v| < qmax: amax stays qmax
        vals = np.concatenate([vals, np.nextafter(vals, F32(np.inf)), np.nextafter(vals, F32(-np.inf))])
        top = F32(qmax)
    elif f.family == "nvfp4":
        sb = np.array([448.0, 1.25, 0.875, 2.0**-6, 2.0**-7, 3 * 2.0**-9, 2.0**-9], F32)  # E4M3 values, subnormals too
        base = ties(grid("e2m1"))
        out = np.empty((rows, k), F32)
        for bi in range(rows * k // 16):
            s = sb[bi % len(sb)]
            blk = np.resize(np.roll(base, bi), 16) * s
            blk[0] = F32(6) * s
            out.reshape(-1, 16)[bi] = blk
        out[0, 0] = F32(2688)  # the tensor's amax: s2 = 1 before scaling
        return out * p
    else:
        vals = ties(grid(f.element))
        top = F32(MAX[f.element])
    out = np.resize(vals, rows * k).reshape(rows, k).astype(F32)
    np.random.default_rng(j + 1000).shuffle(out.reshape(-1))
    step = f.block if f.scope in ("block", "tile") else k
    out[:, ::step] = top  # every scale's amax: the grid's top, so s = 2^j exactly
    return out * p


# ---------------------------------------------------------------- comparisons


def assert_bits(ours: torch.Tensor, ref: np.ndarray, what: str) -> None:
    got = ours.detach().float().contiguous()
    want = torch.from_numpy(np.ascontiguousarray(ref, dtype=F32))
    assert not torch.isnan(got).any() and not torch.isinf(got).any(), what
    if not torch.equal(got.view(torch.int32), want.view(torch.int32)):
        bad = (got.view(torch.int32) != want.view(torch.int32)).nonzero()[:5].tolist()
        samples = [(i, got[tuple(i)].item(), want[tuple(i)].item()) for i in bad]
        raise AssertionError(f"{what}: {int((got != want).sum())} values differ, e.g. {samples}")


def run(name: str, a: np.ndarray, role: str = "weight", dtype: torch.dtype = torch.float32, s2=None) -> None:
    t = torch.from_numpy(a).to(dtype)
    a32 = t.float().numpy()  # the exact input values (bf16 inputs are rounded first)
    fn = fake_quantize if role == "weight" else fake_quantize_activation
    ours = fn(t, name, global_scale=s2)
    assert ours.dtype == dtype and ours.shape == t.shape
    ref = oracle(a32, name, role, s2)
    if dtype == torch.bfloat16:
        ref = ref.astype(ml_dtypes.bfloat16).astype(F32)
    assert_bits(ours, ref, f"{name} {role} {dtype}")


@pytest.mark.parametrize("elem", list(ML))
def test_element_casts_match_ml_dtypes_on_every_tie_and_neighbour(elem):
    g = grid(elem)
    top = F32(MAX[elem])
    extra = np.array([0.0, -0.0, 2.0**-149, 2.0**-126, 1e-30, 1e30, 3e38, top, top * 1.03, top * 1.5, top * 9], F32)
    x = np.concatenate([g, -g, ties(g), extra, -extra, np.random.default_rng(1).standard_normal(4096).astype(F32) * top / 4])
    ours = cast_to_element(torch.from_numpy(x), ELEMENTS[elem])
    assert_bits(ours, o_cast(x, elem), elem)
    assert_bits(round_to_grid(torch.from_numpy(x), ELEMENTS[elem]), o_cast(x, elem), f"{elem} grid rounding")


def test_ml_dtypes_does_not_saturate_float8_so_the_oracle_clamps_first():
    x = np.array([464.0, 480.0, 1e5], F32)
    assert np.isnan(x[1:].astype(ml_dtypes.float8_e4m3fn).astype(F32)).all()  # E4M3fn: NaN past 464
    assert x[0].astype(ml_dtypes.float8_e4m3fn).astype(F32) == 448  # 464 is a tie: even (448)
    assert np.isinf(np.array([61440.0], F32).astype(ml_dtypes.float8_e5m2).astype(F32)).all()
    assert (np.array([7.0, 100.0], F32).astype(ml_dtypes.float4_e2m1fn).astype(F32) == 6).all()  # FP4/FP6 saturate
    assert np.isnan(np.array([0.0], F32).astype(ml_dtypes.float8_e8m0fnu).astype(F32)).all()  # E8M0 has no zero


@pytest.mark.parametrize("name", NAMES)
def test_every_format_matches_the_oracle_on_weights_and_activations(name):
    a = torture()
    run(name, a)
    run(name, a, dtype=torch.bfloat16)
    run(name, np.ascontiguousarray(a.reshape(2, 64, 256)), role="activation")
    if name.endswith("block128"):
        return  # 2-D weights only (tests/quant/test_formats.py pins the error)
    run(name, np.ascontiguousarray(a[:48, :128].reshape(48, 8, 4, 4)))  # a conv weight: K = 8*4*4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("j", [-100, -20, 0, 7, 90])
def test_exact_ties_round_half_to_even_at_several_scales(name, j):
    if name == "fp16":
        j = max(-8, min(j, 7))  # fp16's range: ties at 2^-8 .. 2^7
    run(name, tie_tensor(name, j))


def test_ties_are_really_ties():
    # the MX ties tensor puts x / X exactly on midpoints: check one block by hand
    t = tie_tensor("mxfp4", -20)[0, :32]
    x = F32(2.0**-20)
    assert t[0] == 6 * x
    assert set((t[1:] / x).tolist()) & {0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -2.5}


@pytest.mark.parametrize("s2", [2.0**-3, 1e-3, 0.37, 10.0])
def test_nvfp4_with_a_static_global_scale_matches_the_oracle_and_saturates(s2):
    a = torture(seed=3)
    run("nvfp4", a, role="activation", s2=s2)
    run("nvfp4", a, role="activation", dtype=torch.bfloat16, s2=s2)


def test_nvfp4_block_scales_reach_e4m3_subnormals_and_zero():
    a = torture()[15:16]  # block j at 4^-j of the tensor's amax
    m = torch.from_numpy(np.ascontiguousarray(a))
    out = fake_quantize(m, "nvfp4")
    blocks = out.reshape(-1, 16).abs().amax(dim=1)
    s2 = F32(np.abs(a).max()) / F32(2688)
    sb = o_cast(np.abs(a).reshape(-1, 16).max(axis=1) / (F32(6) * s2), "e4m3")
    assert ((sb > 0) & (sb < 2.0**-6)).any(), "no subnormal E4M3 block scale in the data"
    assert (sb == 0).any() and (blocks[torch.from_numpy(sb == 0)] == 0).all()
    run("nvfp4", np.ascontiguousarray(a))


def test_mx_exponent_clamps_at_minus_127_and_keeps_tiny_blocks():
    a = np.zeros((1, 32), F32)
    a[0, 0] = F32(2.0**-120)  # floor(log2) - 8 = -128 -> -127 for E4M3
    a[0, 1] = F32(2.0**-133)
    out = fake_quantize(torch.from_numpy(a), "mxfp8")
    assert out[0, 0].item() == 2.0**-120 and out[0, 1].item() == 2.0**-133
    run("mxfp8", a)
    run("mxfp4", a)


def test_all_zero_blocks_and_tensors_stay_zero():
    for name in NAMES:
        z = torch.zeros(128, 256)
        assert torch.equal(fake_quantize(z, name), z), name


@pytest.mark.parametrize("base", ["mxfp8", "mxfp8-e5m2", "mxfp6", "mxfp6-e3m2", "mxfp4"])
def test_mx_scale_exponents_one_ulp_around_each_power_of_two(base):
    # amax one float32 ulp above / below max_elem * 2^j: where float log2 loses the bit
    elem = get_format(base).element
    js = np.arange(-120, 110, 3)
    top = (F32(MAX[elem]) * np.ldexp(F32(1), js)).astype(F32)
    amax = np.concatenate([np.nextafter(top, F32(np.inf)), np.nextafter(top, F32(0)), top,
                           np.nextafter(np.ldexp(F32(1), js), F32(np.inf))]).astype(F32)
    a = np.repeat(amax[:, None], 32, axis=1) * np.linspace(1, -1, 32, dtype=F32)[None, :]
    for name in (base, base + "-rceil"):
        run(name, a.astype(F32))
    # rceil never saturates: the largest value keeps its size to the element's rounding
    out = fake_quantize(torch.from_numpy(a.astype(F32)), base + "-rceil")[:, 0].double()
    rel = (out - torch.from_numpy(amax).double()).abs() / torch.from_numpy(amax).double()
    assert float(rel.max()) <= 2.0 ** -(ELEMENTS[elem].mbits + 1)
