"""The model's floating-point dtype, and whether the device can compute in it.

A bf16 or fp16 model is analysed in its own dtype: its float pass and its cones run in that
dtype, the quantizers compute in float32 and cast back, and every accumulator sums in
float64. Some CPU builds of torch cannot multiply bf16 matrices; :func:`check_dtype_support`
says so in one line before the sweep starts instead of failing inside it.

Example:
    >>> import torch
    >>> model_dtype(torch.nn.Linear(2, 2).to(torch.bfloat16))
    torch.bfloat16
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from quantlens.errors import QuantlensError

__all__ = ["model_dtype", "check_dtype_support", "HALF_DTYPES"]

HALF_DTYPES = (torch.bfloat16, torch.float16)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 if it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _probe(dtype: torch.dtype, device: torch.device) -> None:
    a = torch.ones(4, 4, dtype=dtype, device=device)
    torch.nn.functional.linear(a, a)
    (a @ a).sum()


def check_dtype_support(model: nn.Module, device: Union[str, torch.device]) -> torch.dtype:
    """The model's dtype; one line if it is half precision and ``device`` cannot multiply in it."""
    dtype = model_dtype(model)
    if dtype not in HALF_DTYPES:
        return dtype
    d = torch.device(device)
    try:
        _probe(dtype, d)
    except (RuntimeError, NotImplementedError, TypeError) as e:
        name = str(dtype).replace("torch.", "")
        raise QuantlensError(
            f"the model is {name} but this torch ({torch.__version__}) cannot multiply {name} matrices on {d.type} "
            f"({str(e).splitlines()[0][:80]}): convert it with model.float(), or use a device that supports {name}"
        ) from None
    return dtype
