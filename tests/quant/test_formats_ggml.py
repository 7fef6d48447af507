"""GGUF types as formats: bit for bit against the ``gguf`` package, and against ggml's C reference.

``gguf.quants.quantize`` covers Q8_0, Q4_0, Q4_1, Q5_0 and MXFP4: our bytes equal its bytes and
our simulated values equal ``gguf.quants.dequantize`` of them. Q4_K and Q6_K it can only
dequantize: the reference for those is ``quantize_row_q4_K_ref`` / ``quantize_row_q6_K_ref``
(ggml-quants.c) transcribed below line by line in numpy float32 scalars (strict IEEE, no FMA).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from quantlens.errors import QuantlensError  # noqa: E402
from quantlens.quant.formats import fake_quantize, formats, get_format  # noqa: E402
from quantlens.quant.formats.ggml import GGML_TYPES, ggml_decode, ggml_encode  # noqa: E402
from quantlens.quant.formats.ggml_pack import pack  # noqa: E402

F = np.float32
QUANTIZABLE = ["gguf-q8_0", "gguf-q4_0", "gguf-q4_1", "gguf-q5_0", "gguf-mxfp4"]
K_QUANTS = ["gguf-q4_k", "gguf-q6_k"]
ALL = QUANTIZABLE + K_QUANTS


def qtype(name: str) -> T:
    return T[GGML_TYPES[name][0]]


def weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Gaussian rows with outliers, a zero row, a zero block, a constant block and a positive block."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w.view(-1)[:: max(1, w.numel() // 11)] *= 40  # outliers
    w[1] = 0
    w[2, :32] = 0
    w[3, :64] = 0.0123
    w[4, :256] = w[4, :256].abs() + 0.01  # min > 0 (K-quants cap the min at 0)
    w[5, 32:64] = -w[5, 32:64].abs()
    return w


def values_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


# ---------------------------------------------------------------- registry


def test_names_bits_and_family():
    bits = {"gguf-q8_0": 8.5, "gguf-q6_k": 6.5625, "gguf-q5_0": 5.5, "gguf-q4_1": 5.0, "gguf-q4_0": 4.5, "gguf-q4_k": 4.5,
            "gguf-mxfp4": 4.25}
    for name, b in bits.items():
        f = get_format(name)
        assert (f.name, f.family, f.scope, f.effective_bits) == (name, "ggml", "block", b)
        assert name in formats()
        assert get_format(name.upper().replace("_", "-")) is f or get_format(name.upper().replace("_", "-")) == f
        assert f.describe().startswith(name + ":") and "\n" not in f.describe()
    assert get_format("gguf-q6_k").block == 256 and get_format("gguf-q4_0").block == 32
    # the file's bytes per value are the effective bits
    for name, b in bits.items():
        size = gguf.GGML_QUANT_SIZES[qtype(name)]
        assert size[1] * 8 / size[0] == b


def test_a_k_quant_needs_rows_of_256():
    with pytest.raises(QuantlensError, match="multiple of the block size 256"):
        fake_quantize(torch.randn(4, 576), "gguf-q4_k")


# ---------------------------------------------------------------- against gguf's quantizer


@pytest.mark.parametrize("name", QUANTIZABLE)
@pytest.mark.parametrize("seed", [0, 1])
def test_bytes_and_values_equal_gguf(name, seed):
    w = weight(16, 512, seed)
    ours = pack(ggml_encode(w, name))
    theirs = quantize(w.numpy(), qtype(name))
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    sim = fake_quantize(w, name).numpy()
    assert values_equal(sim, dequantize(theirs, qtype(name)))
    assert values_equal(ggml_decode(ggml_encode(w, name)).numpy(), sim)


def test_ties_round_as_ggml_does():
    # q8_0, d = 1: roundf, halves away from zero
    x = torch.tensor([[127.0, 2.5, -2.5, 0.5, -0.5, 1.5] + [0.0] * 26])
    assert fake_quantize(x, "gguf-q8_0")[0, :6].tolist() == [127, 3, -3, 1, -1, 2]
    # q4_0, m = -8 so d = 1: trunc(x + 8.5), halves up
    x = torch.tensor([[-8.0, 2.5, -2.5, 0.5, -0.5, 7.5] + [0.0] * 26])
    assert fake_quantize(x, "gguf-q4_0")[0, :6].tolist() == [-8, 3, -2, 1, 0, 7]
    # a positive largest magnitude flips the grid: m = 8, d = -1, 8 is the level -8
    x = torch.tensor([[8.0, 2.5, -7.5] + [0.0] * 29])
    assert fake_quantize(x, "gguf-q4_0")[0, :3].tolist() == [8, 2, -7]
    # mxfp4, scale 1 (amax in [4, 8)): ties towards zero, 7 clips to 6
    x = torch.tensor([[7.0, 1.75, 2.5, 5.0, 0.25, -0.75, -3.5, 0.0] + [0.0] * 24])
    assert fake_quantize(x, "gguf-mxfp4")[0, :8].tolist() == [6, 1.5, 2, 4, 0, -0.5, -3, 0]
    for name in ("gguf-q8_0", "gguf-q4_0", "gguf-q4_1", "gguf-q5_0", "gguf-mxfp4"):
        for row in (torch.tensor([[127.0, 2.5, -2.5, 0.5] * 8]), torch.tensor([[-8.0, 2.5, -2.5, 7.5] * 8]),
                    torch.tensor([[7.0, 1.75, 2.5, 5.0, 0.25, -0.75, -3.5, 0.0] * 4])):
            assert np.array_equal(pack(ggml_encode(row, name)), quantize(row.numpy(), qtype(name))), name


def test_mxfp4_exponent_just_below_powers_of_two():
    vals = []
    for k in range(-20, 20):
        p = 2.0**k
        vals += [p, np.nextafter(F(p), F(0)), np.nextafter(np.nextafter(F(p), F(0)), F(0)), p * 1.5]
    x = torch.tensor(np.array(vals, dtype=np.float32)).reshape(-1, 1) * torch.ones(1, 32)
    x[:, 1:] *= 0.3
    theirs = quantize(x.numpy(), T.MXFP4)
    assert np.array_equal(pack(ggml_encode(x, "gguf-mxfp4")), theirs)
    assert values_equal(fake_quantize(x, "gguf-mxfp4").numpy(), dequantize(theirs, T.MXFP4))


def test_zeros_stay_zero():
    z = torch.zeros(2, 256)
    for name in ALL:
        out = fake_quantize(z, name)
        assert torch.equal(out, z), name
        assert values_equal(dequantize(pack(ggml_encode(z, name)), qtype(name)), z.numpy())


@pytest.mark.parametrize("name", ALL)
def test_bf16_inputs_quantize_their_float32_values(name):
    w = weight(8, 512, 3).to(torch.bfloat16)
    out = fake_quantize(w, name)
    assert out.dtype == torch.bfloat16
    ref = dequantize(pack(ggml_encode(w, name)), qtype(name))
    assert torch.equal(out, torch.from_numpy(ref).to(torch.bfloat16))
    if name in QUANTIZABLE:
        assert np.array_equal(pack(ggml_encode(w, name)), quantize(w.float().numpy(), qtype(name)))


# ---------------------------------------------------------------- ggml's C reference for the K-quants


def nearest_int(v) -> int:  # noqa: ANN001
    return int(F(F(v) + F(12582912.0))) - 12582912


def ref_make_qx_quants(x: np.ndarray, nmax: int) -> tuple:
    mx, amax = F(0), F(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < F(1e-15):
        return F(0), [0] * len(x)

    def run(iscale):  # noqa: ANN001
        levels, sumlx, suml2 = [], F(0), F(0)
        for v in x:
            q = max(-nmax, min(nmax - 1, nearest_int(iscale * v)))
            levels.append(q + nmax)
            w = v * v
            sumlx = sumlx + w * v * F(q)
            suml2 = suml2 + w * F(q) * F(q)
        return levels, sumlx, suml2

    L, sumlx, suml2 = run(F(-nmax) / mx)
    scale = sumlx / suml2 if suml2 else F(0)
    best = scale * sumlx
    for t in range(-9, 10):
        if t == 0:
            continue
        levels, sumlx, suml2 = run(-(F(nmax) + F(0.1) * F(t)) / mx)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            L, scale = levels, sumlx / suml2
            best = scale * sumlx
    return scale, L


def ref_q6_k(x: np.ndarray) -> tuple:
    """quantize_row_q6_K_ref on one block of 256: (d fp16, scales, L), and the dequantized values."""
    scales, L = [], []
    max_scale, max_abs = F(0), F(0)
    for ib in range(16):
        s, levels = ref_make_qx_quants(x[16 * ib:16 * ib + 16], 32)
        scales.append(s)
        L += levels
        if abs(s) > max_abs:
            max_abs, max_scale = abs(s), s
    if max_abs < F(1e-15):
        return np.float16(0), [0] * 16, [0] * 256
    iscale = F(-128) / max_scale
    d = np.float16(F(1) / iscale)
    sc = [min(127, nearest_int(iscale * s)) for s in scales]
    for j in range(16):
        dd = F(d) * F(sc[j])
        if not dd:
            continue
        for i in range(16 * j, 16 * j + 16):
            L[i] = max(-32, min(31, nearest_int(x[i] / dd))) + 32
    return d, sc, L


def ref_make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep) -> tuple:  # noqa: ANN001
    mn, mx, sum_w = x[0], x[0], w[0]
    sum_x = sum_w * x[0]
    for i in range(1, len(x)):
        mn = x[i] if x[i] < mn else mn
        mx = x[i] if x[i] > mx else mx
        sum_w = sum_w + w[i]
        sum_x = sum_x + w[i] * x[i]
    if mn > 0:
        mn = F(0)
    if mx == mn:
        return F(0), -mn, [0] * len(x)
    iscale = F(nmax) / (mx - mn)
    scale = F(1) / iscale
    L, best = [], F(0)
    for i in range(len(x)):
        L.append(max(0, min(nmax, nearest_int(iscale * (x[i] - mn)))))
        diff = scale * F(L[i]) + mn - x[i]
        best = best + w[i] * (diff * diff)
    for t in range(nstep + 1):
        iscale = (rmin + rdelta * F(t) + F(nmax)) / (mx - mn)
        aux, sum_l, sum_l2, sum_xl = [], F(0), F(0), F(0)
        for i in range(len(x)):
            q = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
            aux.append(q)
            sum_l = sum_l + w[i] * F(q)
            sum_l2 = sum_l2 + w[i] * F(q) * F(q)
            sum_xl = sum_xl + w[i] * F(q) * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min, this_scale = F(0), sum_xl / sum_l2
            cur = F(0)
            for i in range(len(x)):
                diff = this_scale * F(aux[i]) + this_min - x[i]
                cur = cur + w[i] * (diff * diff)
            if cur < best:
                L, best, scale, mn = aux, cur, this_scale, this_min
    return scale, -mn, L


def ref_q4_k(x: np.ndarray) -> tuple:
    """quantize_row_q4_K_ref on one block of 256: (d, dmin, sc, mn, L)."""
    scales, mins, L = [], [], []
    max_scale, max_min = F(0), F(0)
    for j in range(8):
        sub = x[32 * j:32 * j + 32]
        sum_x2 = F(0)
        for v in sub:
            sum_x2 = sum_x2 + v * v
        av_x = np.sqrt(sum_x2 / F(32))
        s, m, levels = ref_make_qkx2_quants(sub, [av_x + abs(v) for v in sub], 15, F(-1), F(0.1), 20)
        scales.append(s)
        mins.append(m)
        L += levels
        max_scale = s if s > max_scale else max_scale
        max_min = m if m > max_min else max_min
    inv_scale = F(63) / max_scale if max_scale > 0 else F(0)
    inv_min = F(63) / max_min if max_min > 0 else F(0)
    sc = [min(63, nearest_int(inv_scale * s) & 0xFF) for s in scales]
    mn = [min(63, nearest_int(inv_min * m) & 0xFF) for m in mins]
    d, dmin = np.float16(max_scale / F(63)), np.float16(max_min / F(63))
    for j in range(8):
        dd = F(d) * F(sc[j])
        if not dd:
            continue
        dm = F(dmin) * F(mn[j])
        for i in range(32 * j, 32 * j + 32):
            L[i] = max(0, min(15, nearest_int((x[i] + dm) / dd)))
    return d, dmin, sc, mn, L


def k_blocks(seed: int) -> torch.Tensor:
    w = weight(6, 512, seed)[:, :]  # 12 super-blocks: zeros, constants, positive, outliers
    g = torch.Generator().manual_seed(seed + 10)
    ties = torch.randint(-16, 16, (1, 512), generator=g).float() * 0.125  # many exact halves
    return torch.cat([w, ties], dim=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_q6_k_equals_ggml_reference(seed):
    w = k_blocks(seed)
    codes = ggml_encode(w, "gguf-q6_k")
    blocks = w.reshape(-1, 256).numpy()
    for b, x in enumerate(blocks):
        d, sc, L = ref_q6_k(x)
        assert codes.fields["d"][b].numpy().tobytes() == np.float16(d).tobytes(), b
        assert codes.fields["sc"][b].tolist() == sc, b
        assert codes.fields["q"][b].tolist() == L, b
    raw = pack(codes)
    assert values_equal(fake_quantize(w, "gguf-q6_k").numpy(), dequantize(raw, T.Q6_K))


@pytest.mark.parametrize("seed", [0, 1])
def test_q4_k_equals_ggml_reference(seed):
    w = k_blocks(seed)
    codes = ggml_encode(w, "gguf-q4_k")
    blocks = w.reshape(-1, 256).numpy()
    for b, x in enumerate(blocks):
        d, dmin, sc, mn, L = ref_q4_k(x)
        assert codes.fields["d"][b].numpy().tobytes() == np.float16(d).tobytes(), b
        assert codes.fields["dmin"][b].numpy().tobytes() == np.float16(dmin).tobytes(), b
        assert codes.fields["sc"][b].tolist() == sc, b
        assert codes.fields["mn"][b].tolist() == mn, b
        assert codes.fields["q"][b].tolist() == L, b
    raw = pack(codes)
    assert values_equal(fake_quantize(w, "gguf-q4_k").numpy(), dequantize(raw, T.Q4_K))


@pytest.mark.parametrize("name", K_QUANTS)
def test_k_quants_round_trip_through_gguf_on_a_larger_weight(name):
    w = weight(64, 1536, 7)
    raw = pack(ggml_encode(w, name))
    assert raw.shape == (64, 1536 // 256 * gguf.GGML_QUANT_SIZES[qtype(name)][1])
    assert values_equal(fake_quantize(w, name).numpy(), dequantize(raw, qtype(name)))
    err = (fake_quantize(w, name) - w).norm() / w.norm()
    assert err < (0.03 if name == "gguf-q6_k" else 0.12)
