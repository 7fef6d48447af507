"""The bytes of ggml's block types (``block_q8_0`` ... ``block_q6_K`` in ggml-common.h) from :class:`~.ggml.GgmlCodes`.

Each block is stored as its C struct, little-endian, blocks in row order:

=========  =====  ======================================================================
type       bytes  layout (``q`` the block's stored levels, ``h = n/2``)
=========  =====  ======================================================================
Q8_0       34     ``d`` fp16, ``q`` int8 x32
Q4_0       18     ``d``, ``q[j] | q[j+16] << 4`` (j < 16)
Q4_1       20     ``d``, ``m`` fp16, nibbles as Q4_0
Q5_0       22     ``d``, ``qh`` uint32 (bit i = bit 4 of ``q[i]``), low nibbles as Q4_0
MXFP4      17     ``e`` uint8, index nibbles as Q4_0
Q4_K       144    ``d``, ``dmin``, 12 bytes of 6-bit scales/mins (``get_scale_min_k4``),
                  128 bytes: chunk c of 64 values holds ``q[64c+l] | q[64c+32+l] << 4``
Q6_K       210    ``ql`` 128, ``qh`` 64, int8 scales 16, ``d``: per 128 values,
                  ``ql[l] = q[l] & 15 | (q[l+64] & 15) << 4``, ``ql[l+32]`` likewise for
                  ``q[l+32]``/``q[l+96]``, ``qh[l]`` the four values' bits 4-5
=========  =====  ======================================================================

The result is ``uint8`` of shape ``(rows, bytes per row)``, what ``gguf.GGUFWriter.add_tensor``
takes with ``raw_dtype`` set to the type.

Example:
    >>> import torch
    >>> from quantlens.quant.formats.ggml import ggml_encode
    >>> pack(ggml_encode(torch.ones(2, 64), "gguf-q8_0")).shape
    (2, 68)
"""

from __future__ import annotations

import numpy as np

from quantlens.quant.formats.ggml import GgmlCodes

__all__ = ["pack", "TYPE_SIZE"]

TYPE_SIZE = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "MXFP4": 17, "Q4_K": 144, "Q6_K": 210}


def _np(t) -> np.ndarray:  # noqa: ANN001
    return t.detach().cpu().numpy()


def _f16(t) -> np.ndarray:  # noqa: ANN001
    return _np(t).astype(np.float16).reshape(-1, 1).view(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    h = q.shape[1] // 2
    return (q[:, :h] & 0x0F) | ((q[:, h:] & 0x0F) << 4)


def _q4_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = sc[:, 0:4]
    out[:, 4:8] = mn[:, 0:4]
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    out[:, 0:4] |= (sc[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (mn[:, 4:8] >> 4) << 6
    return out


def _q6_k_bits(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = q.shape[0]
    q = q.reshape(b, 2, 4, 32)  # two halves of 128, four runs of 32
    ql = np.concatenate([(q[:, :, 0] & 0x0F) | ((q[:, :, 2] & 0x0F) << 4), (q[:, :, 1] & 0x0F) | ((q[:, :, 3] & 0x0F) << 4)], axis=2)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    return ql.reshape(b, 128), qh.reshape(b, 64)


def pack(codes: GgmlCodes) -> np.ndarray:
    """``codes`` as the bytes of its ggml type, ``uint8 (rows, row bytes)``."""
    t, f = codes.ggml_type, codes.fields
    q = _np(f["q"]).astype(np.uint8) if t != "Q8_0" else _np(f["q"]).astype(np.int8).view(np.uint8)
    if t == "Q8_0":
        parts = [_f16(f["d"]), q]
    elif t in ("Q4_0", "MXFP4"):
        head = _f16(f["d"]) if t == "Q4_0" else _np(f["e"]).astype(np.uint8).reshape(-1, 1)
        parts = [head, _nibbles(q)]
    elif t == "Q4_1":
        parts = [_f16(f["d"]), _f16(f["m"]), _nibbles(q)]
    elif t == "Q5_0":
        qh = np.packbits((q >> 4) & 1, axis=1, bitorder="little")  # 4 bytes: the uint32, little-endian
        parts = [_f16(f["d"]), qh, _nibbles(q)]
    elif t == "Q4_K":
        qs = _nibbles(q.reshape(-1, 64)).reshape(q.shape[0], 128)
        parts = [_f16(f["d"]), _f16(f["dmin"]), _q4_k_scales(_np(f["sc"]).astype(np.uint8), _np(f["mn"]).astype(np.uint8)), qs]
    elif t == "Q6_K":
        ql, qh = _q6_k_bits(q)
        parts = [ql, qh, _np(f["sc"]).astype(np.int8).view(np.uint8), _f16(f["d"])]
    else:
        raise ValueError(f"no byte layout for ggml type {t}")
    blocks = np.concatenate(parts, axis=1)
    assert blocks.shape[1] == TYPE_SIZE[t]
    rows = codes.shape[0] if codes.shape else 1
    return np.ascontiguousarray(blocks.reshape(rows, -1))
