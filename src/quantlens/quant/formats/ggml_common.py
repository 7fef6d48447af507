"""Two float32 steps ggml's quantizers share: the fp16 cast of a stored scale, and a C loop's sum.

* :func:`fp16` is ``GGML_FP32_TO_FP16``: round half to even (overflow to inf, as the C cast).
* :func:`seq_sum` is ``for (i = 0; i < n; ++i) s += t[i];`` in float32: one rounding per step,
  in order (``torch.sum`` adds pairwise, which rounds differently).

Example:
    >>> import torch
    >>> seq_sum(torch.tensor([[1e8, 1.0, -1e8]]))
    tensor([0.])
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["fp16", "seq_sum"]


def fp16(v: Tensor) -> Tensor:
    """``GGML_FP32_TO_FP16``: float32 -> fp16, round half to even (returned as fp16)."""
    return v.to(torch.float16)


def seq_sum(t: Tensor, start: Optional[Tensor] = None) -> Tensor:
    """``sum += t[:, i]`` for ``i = 0, 1, ...`` in float32 from ``start`` (default 0), one rounding per step."""
    acc = torch.zeros(t.shape[0], dtype=t.dtype, device=t.device) if start is None else start
    for i in range(t.shape[1]):
        acc = acc + t[:, i]
    return acc
