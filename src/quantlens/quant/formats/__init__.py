"""Number formats, exact to the rounding rule: integers, FP8, OCP MX, NVFP4, bf16/fp16, GGUF types.

A format is a frozen :class:`Format` (the description) registered by name; a per-family kernel
quantizes. Names (``formats()`` lists them): ``int{b}``, ``int{b}-channel``, ``int{b}-g{N}``;
``fp8-e4m3``/``fp8-e5m2`` with ``-channel`` or ``-block128``; ``mxfp8``, ``mxfp8-e5m2``,
``mxfp6``, ``mxfp6-e3m2``, ``mxfp4`` (each also ``-rceil``); ``nvfp4``; ``bf16``, ``fp16``; GGUF's ``gguf-q8_0``, ``gguf-q6_k``, ``gguf-q5_0``,
``gguf-q4_1``, ``gguf-q4_0``, ``gguf-q4_k``, ``gguf-mxfp4`` (ggml's own rounding, :mod:`.ggml`).
Every element cast rounds half to even after saturating; docs/formats.md states each rule.

Example:
    >>> import torch
    >>> fmt = get_format("mxfp4")
    >>> fmt.effective_bits, fmt.block
    (4.25, 32)
    >>> fake_quantize(torch.ones(4, 32), fmt).unique()
    tensor([1.])
"""

from __future__ import annotations

# the family modules register their formats on import, in the order formats() lists them
from quantlens.quant.formats import integer as _integer  # noqa: F401,I001
from quantlens.quant.formats import fp8 as _fp8  # noqa: F401
from quantlens.quant.formats import mx as _mx  # noqa: F401
from quantlens.quant.formats import nvfp4 as _nvfp4  # noqa: F401
from quantlens.quant.formats import cast as _cast  # noqa: F401
from quantlens.quant.formats import ggml as _ggml  # noqa: F401
from quantlens.quant.formats.api import fake_quantize, fake_quantize_activation
from quantlens.quant.formats.elements import E2M1, E2M3, E3M2, E4M3, E5M2, ELEMENTS, ElementType
from quantlens.quant.formats.elements import cast as cast_to_element
from quantlens.quant.formats.format import Format
from quantlens.quant.formats.nvfp4 import nvfp4_global_scale
from quantlens.quant.formats.registry import formats, get_format, register_format, register_kernel

__all__ = [
    "Format",
    "ElementType",
    "ELEMENTS",
    "E4M3",
    "E5M2",
    "E3M2",
    "E2M3",
    "E2M1",
    "cast_to_element",
    "fake_quantize",
    "fake_quantize_activation",
    "formats",
    "get_format",
    "register_format",
    "register_kernel",
    "nvfp4_global_scale",
]
