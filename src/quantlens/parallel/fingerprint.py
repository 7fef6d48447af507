"""Fingerprints that tie a cache of partial results to the run that made it.

A resumed run must be the same computation: same model weights, same data, same
quantization and metric. :func:`model_hash` hashes every state_dict tensor (name, dtype,
shape, bytes); :func:`batch_hash` hashes one batch's inputs and labels. Both are BLAKE2b
hex digests (16 bytes).

Example:
    >>> import torch.nn as nn
    >>> model_hash(nn.Linear(2, 2)) == model_hash(nn.Linear(2, 2))
    False
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from quantlens.core.inputs import as_inputs

__all__ = ["model_hash", "batch_hash", "tensor_digest"]


def _update(h: Any, t: Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    t = t.cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.float()
    h.update(t.numpy().tobytes() if t.numel() else b"")


def tensor_digest(*tensors: Optional[Tensor]) -> str:
    """Hash of a sequence of tensors (``None`` entries included as such)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is None:
            h.update(b"none")
        else:
            _update(h, t)
    return h.hexdigest()


def model_hash(model: Optional[nn.Module]) -> Optional[str]:
    """Hash of the model's class and every state_dict tensor; ``None`` for no model."""
    if model is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if isinstance(t, Tensor):
            _update(h, t)
    return h.hexdigest()


def batch_hash(batch: tuple[Any, Optional[Tensor]]) -> str:
    """Hash of one normalized batch ``(Inputs, labels)``: its argument structure (keyword names,
    non-tensor values), every tensor, and the labels."""
    inputs, labels = batch
    inputs = as_inputs(inputs)
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(pytree.tree_structure((inputs.args, inputs.kwargs))).encode())
    for v in pytree.tree_leaves((inputs.args, inputs.kwargs)):
        if isinstance(v, Tensor):
            _update(h, v)
        else:
            h.update(repr(v).encode())
    h.update(tensor_digest(labels).encode())
    return h.hexdigest()
