"""GGUF's block types as formats, exact to ggml's reference quantizers (``quantize_row_*_ref``).

Blocks run along the reduction axis (a Linear weight's rows, as ggml quantizes rows); every
step is one float32 operation in ggml's order, ``fp16(v)`` is a round-half-to-even cast to
fp16 (``GGML_FP32_TO_FP16``) and ``trunc`` a C cast to an integer. For a block ``x``:

``gguf-q8_0`` (32 values, 8.5 bits/value)::

    d = amax / 127;  id = 1/d (0 where d = 0);  q = roundf(x * id)   (halves away from zero)
    value = q * fp16(d)

``gguf-q4_0`` (32, 4.5) and ``gguf-q5_0`` (32, 5.5), with ``m`` the first value of largest
magnitude, *signed* (so ``m`` itself maps to the level -8, resp. -16)::

    d = m / -8;  id = 1/d (0 where d = 0);  q = min(15, trunc(x * id + 8.5))        (q4_0)
    d = m / -16;                            q = min(31, trunc(x * id + 16.5))       (q5_0)
    value = (q - 8) * fp16(d)   resp.  (q - 16) * fp16(d)

  ``trunc(y + 8.5)`` of a positive sum is ``floor``: halves of ``x * id`` round *up* (towards
  +inf), after the float32 sum itself rounds half to even.

``gguf-q4_1`` (32, 5)::

    d = (max - min) / 15;  id = 1/d (0 where d = 0);  q = min(15, trunc((x - min) * id + 0.5))
    value = q * fp16(d) + fp16(min)                  (the stored min is fp16, the levels were not)

``gguf-mxfp4`` (32, 4.25): ``e = floor(log2f(amax)) - 2 + 127`` (0 where amax = 0), the E8M0
scale ``2^(e-127)`` applied to E2M1 levels ``k/2``, ``k`` in ``{0, 1, 2, 3, 4, 6, 8, 12}``
(ggml stores ``d = 2^(e-128)`` and the doubled levels ``k``): ``q`` is the first ``k``, in that
order, with the smallest ``|k d - |x||`` (float32), signed as ``x``: ties round *towards zero*
(e.g. 1.75 -> 1.5, 2.5 -> 2, 5 -> 4 in units of the scale; OCP's RNE gives 2, 2, 4), and
values above ``6 * 2^(e-127)`` clip to it. ``log2f`` is taken as the correctly rounded float32
of the exact ``log2`` (glibc's), which makes ``floor`` jump one up just below a power of two
where the float32 ``log2`` rounds up to the integer. ``value = k d``.

``gguf-q4_k`` and ``gguf-q6_k`` (super-blocks of 256): :mod:`.ggml_k` states their search.

``amax = 0`` gives ``d = 0`` and zeros. F16 and BF16 tensors are the ``fp16``/``bf16`` casts
(:mod:`.cast`): round half to even, as ggml's own conversions. :func:`ggml_encode` returns the
codes (what the file stores) from which both the simulated values and the GGUF bytes come.

Example:
    >>> import torch
    >>> from quantlens.quant.formats import fake_quantize
    >>> x = torch.tensor([[-4.0, 1.25, 0.75, 2.5] * 8])      # q4_0: d = -4/-8 = 0.5
    >>> fake_quantize(x, "gguf-q4_0")[0, :4].tolist()
    [-4.0, 1.5, 1.0, 2.5]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
from torch import Tensor

from quantlens.quant.formats import ggml_k
from quantlens.quant.formats.bits import pow2
from quantlens.quant.formats.format import Format
from quantlens.quant.formats.ggml_common import fp16
from quantlens.quant.formats.registry import get_format, register_format, register_kernel
from quantlens.quant.formats.tiles import scope_shape, weight_matrix

__all__ = ["GGML_TYPES", "GgmlCodes", "ggml_encode", "ggml_decode", "MXFP4_LEVELS"]

# name -> (ggml type name, element, block, scale rule, effective bits)
GGML_TYPES: dict[str, tuple[str, str, int, str, float]] = {
    "gguf-q8_0": ("Q8_0", "q8_0", 32, "absmax/127", 8.5),
    "gguf-q6_k": ("Q6_K", "q6_k", 256, "qx-search", 6.5625),
    "gguf-q5_0": ("Q5_0", "q5_0", 32, "signed-max/-16", 5.5),
    "gguf-q4_1": ("Q4_1", "q4_1", 32, "min-max/15", 5.0),
    "gguf-q4_0": ("Q4_0", "q4_0", 32, "signed-max/-8", 4.5),
    "gguf-q4_k": ("Q4_K", "q4_k", 256, "qkx2-search", 4.5),
    "gguf-mxfp4": ("MXFP4", "mxfp4", 32, "e8m0-floor", 4.25),
}
MXFP4_LEVELS = (0, 1, 2, 3, 4, 6, 8, 12)  # ggml's kvalues_mxfp4 (E2M1 doubled), non-negative half

for _name, (_t, _element, _block, _rule, _bits) in GGML_TYPES.items():
    _f = Format(_name, "ggml", _element, "block", _block, _rule, _bits)
    register_format(_name)(lambda _f=_f: _f)


@dataclass(frozen=True)
class GgmlCodes:
    """A tensor's blocks as a ggml type stores them: ``fields`` by name, one row per block.

    Fields (``B`` blocks): ``d`` (fp16 ``[B]``; MXFP4: ``e``, uint8 exponents), ``m`` (Q4_1's
    fp16 min), ``dmin``/``sc``/``mn`` (Q4_K's fp16 super-scale of the mins and its 6-bit
    sub-block scales and mins, ``[B, 8]``), ``sc`` (Q6_K's int8 sub-block scales ``[B, 16]``)
    and ``q`` (``[B, block]`` stored levels: unsigned, as in the file; MXFP4: ``kvalues`` indices).
    """

    ggml_type: str
    shape: tuple[int, ...]
    fields: Mapping[str, Tensor]


def _inv(d: Tensor) -> Tensor:
    """``d ? 1.0f/d : 0.0f``."""
    ok = d != 0
    return torch.where(ok, torch.ones_like(d) / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(d))


def _div(x: Tensor, c: float) -> Tensor:
    """``x / c`` as a float32 division (a tensor divisor: no reciprocal shortcut)."""
    return x / torch.full_like(x, c)


def _signed_max(x: Tensor) -> Tensor:
    """The first value of largest magnitude in each row, with its sign (``[B, 1]``)."""
    return torch.gather(x, 1, x.abs().argmax(dim=1, keepdim=True))


def _roundf(y: Tensor) -> Tensor:
    """C ``roundf``: halves away from zero, exactly (``trunc(y) + trunc(2 (y - trunc(y)))``)."""
    t = torch.trunc(y)
    return t + torch.trunc(2.0 * (y - t))


def _enc_q8_0(x: Tensor) -> dict[str, Tensor]:
    d = _div(x.abs().amax(dim=1, keepdim=True), 127.0)
    q = _roundf(x * _inv(d))
    return {"d": fp16(d[:, 0]), "q": q.to(torch.int8)}


def _enc_q_0(levels: int) -> Callable[[Tensor], dict[str, Tensor]]:
    half = levels // 2

    def enc(x: Tensor) -> dict[str, Tensor]:
        d = _div(_signed_max(x), float(-half))
        q = torch.clamp(torch.trunc(x * _inv(d) + (half + 0.5)), max=levels - 1)
        return {"d": fp16(d[:, 0]), "q": q.to(torch.uint8)}

    return enc


def _enc_q4_1(x: Tensor) -> dict[str, Tensor]:
    lo = x.amin(dim=1, keepdim=True)
    d = _div(x.amax(dim=1, keepdim=True) - lo, 15.0)
    q = torch.clamp(torch.trunc((x - lo) * _inv(d) + 0.5), max=15)
    return {"d": fp16(d[:, 0]), "m": fp16(lo[:, 0]), "q": q.to(torch.uint8)}


def mxfp4_exponent(amax: Tensor) -> Tensor:
    """``floor(log2f(amax)) - 2 + 127`` (0 where ``amax = 0``; kept in ``[0, 254]``) as int32."""
    lg = torch.log2(amax.to(torch.float64)).to(torch.float32)  # correctly rounded log2f
    e = torch.floor(lg).to(torch.int32) + 125
    return torch.where(amax > 0, torch.clamp(e, 0, 254), torch.zeros_like(e))


def _mxfp4_scale(e: Tensor) -> Tensor:
    """``GGML_E8M0_TO_FP32_HALF(e) = 2^(e - 128)``."""
    return pow2(e.to(torch.int32) - 128)


def _enc_mxfp4(x: Tensor) -> dict[str, Tensor]:
    e = mxfp4_exponent(x.abs().amax(dim=1))
    d = _mxfp4_scale(e)[:, None]
    a = x.abs()
    best = a.clone()  # |0 * d - |x||
    idx = torch.zeros_like(x, dtype=torch.uint8)
    for j, k in enumerate(MXFP4_LEVELS[1:], start=1):
        err = (d * float(k) - a).abs()
        better = err < best
        best = torch.where(better, err, best)
        idx = torch.where(better, torch.full_like(idx, j), idx)
    idx = torch.where((x < 0) & (idx > 0), idx + 8, idx)
    return {"e": e.to(torch.uint8), "q": idx}


_KV = torch.tensor(MXFP4_LEVELS + tuple(-k for k in MXFP4_LEVELS), dtype=torch.float32)


def _dec_simple(t: str, f: Mapping[str, Tensor]) -> Tensor:
    q = f["q"]
    if t == "MXFP4":
        return _mxfp4_scale(f["e"])[:, None] * _KV.to(q.device)[q.long()]
    d = f["d"].to(torch.float32)[:, None]
    if t == "Q8_0":
        return q.to(torch.float32) * d
    if t == "Q4_1":
        return d * q.to(torch.float32) + f["m"].to(torch.float32)[:, None]
    offset = {"Q4_0": 8, "Q5_0": 16}[t]
    return d * (q.to(torch.float32) - offset)


_ENCODERS: dict[str, Callable[[Tensor], dict[str, Tensor]]] = {
    "Q8_0": _enc_q8_0, "Q4_0": _enc_q_0(16), "Q5_0": _enc_q_0(32), "Q4_1": _enc_q4_1,
    "MXFP4": _enc_mxfp4, "Q4_K": ggml_k.encode_q4_k, "Q6_K": ggml_k.encode_q6_k,
}


def _decode(t: str, f: Mapping[str, Tensor]) -> Tensor:
    return ggml_k.decode_k(t, f) if t in ("Q4_K", "Q6_K") else _dec_simple(t, f)


def ggml_decode(codes: GgmlCodes) -> Tensor:
    """The values ggml dequantizes ``codes`` to (float32, the encoded tensor's ``[R, K]`` view)."""
    out = _decode(codes.ggml_type, codes.fields)
    rows = codes.shape[0] if codes.shape else 1
    return out.reshape(rows, -1)


def _encode_blocks(fmt: Format, blocks: Tensor, shape: tuple[int, ...]) -> GgmlCodes:
    t = GGML_TYPES[fmt.name][0]
    return GgmlCodes(t, shape, _ENCODERS[t](blocks))


def ggml_encode(weight: Tensor, fmt: "str | Format") -> GgmlCodes:
    """A weight (``[out, ...]``, blocks along its flattened reduction axis) encoded in ``fmt``.

    Raises the format's one-line error when the block does not divide the reduction axis.
    """
    f = get_format(fmt)
    scope_shape(f, tuple(weight.shape), "weight")
    m = weight_matrix(weight.detach().to(torch.float32))
    return _encode_blocks(f, m.reshape(-1, f.block), tuple(weight.shape))


@register_kernel("ggml")
def ggml_kernel(tiles: Tensor, fmt: Format, global_scale: Optional[Tensor]) -> Tensor:
    """Encode then decode each block of ``fmt.block`` values (the module docstring's rules)."""
    codes = _encode_blocks(fmt, tiles.reshape(-1, fmt.block), ())
    return _decode(codes.ggml_type, codes.fields).reshape(tiles.shape)

