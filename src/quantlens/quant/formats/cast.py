"""Plain casts: ``bf16`` and ``fp16``, round half to even, saturating.

    value = float32(dtype(clamp(x, -max, max)))    (max: 3.3895e38 for bf16, 65504 for fp16)

No scale. Values beyond the largest finite value saturate instead of becoming inf (a fake
quantizer should not make inf out of a finite weight); fp16's subnormals (down to ``2^-24``)
are kept, as PyTorch's cast keeps them. Effective bits: 16.

Example:
    >>> import torch
    >>> from quantlens.quant.formats import fake_quantize
    >>> fake_quantize(torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, 1e6]), "bf16")
    tensor([1.0000e+00, 1.0156e+00, 9.9942e+05])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from quantlens.quant.formats.format import Format
from quantlens.quant.formats.registry import register_format, register_kernel

__all__ = ["cast_kernel", "FLOAT_DTYPES"]

FLOAT_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

for _name in FLOAT_DTYPES:
    _f = Format(_name, "float", _name, "none", 0, "none", 16.0)
    register_format(_name)(lambda _f=_f: _f)


@register_kernel("float")
def cast_kernel(tiles: Tensor, fmt: Format, global_scale: Optional[Tensor]) -> Tensor:
    """``float32(dtype(clamp(x, -max, max)))``."""
    dtype = FLOAT_DTYPES[fmt.element]
    top = torch.finfo(dtype).max
    return torch.clamp(tiles, -top, top).to(dtype).to(torch.float32)
