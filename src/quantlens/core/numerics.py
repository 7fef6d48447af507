"""Numerics of every evaluation: no autograd, and IEEE float32 on GPUs.

On Ampere and newer GPUs PyTorch lets cuDNN convolutions use TF32 by default (10-bit
mantissa): rounding noise of the size of 10-bit quantization, in the float reference and the
quantized network alike, which would blur what the analysis measures. :func:`analysis_mode`
turns TF32 off for convolutions and matmuls while it runs and restores the user's flags on
exit, even on error.

Example:
    >>> import torch
    >>> with analysis_mode():
    ...     torch.backends.cudnn.allow_tf32
    False
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["analysis_mode", "exact_float32"]


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and cuBLAS matmuls; the previous flags restored on exit."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul


@contextmanager
def analysis_mode() -> Iterator[None]:
    """``torch.inference_mode()`` and :func:`exact_float32` together."""
    with torch.inference_mode(), exact_float32():
        yield
