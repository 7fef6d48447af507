"""Fingerprints that tie a cache of partial results to the run that made it.

A resumed run must be the same computation: same model weights, same data, same
quantization and metric. :func:`model_hash` hashes every state_dict tensor (name, dtype,
shape, bytes); :func:`batch_hash` hashes one batch's inputs and labels. Both are BLAKE2b
hex digests (16 bytes).

A capture depends on more than the weights: :func:`structure_hash` hashes what a forward pass
is made of (each submodule's name, class, ``extra_repr``, plain attributes, a Hugging Face
``config``, and the source files defining those classes), and :func:`sample_signature` the
structure of a sample (argument tree, each tensor's dtype, shape and device, other values),
not its values.

Example:
    >>> import torch.nn as nn
    >>> model_hash(nn.Linear(2, 2)) == model_hash(nn.Linear(2, 2))
    False
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from quantlens.core.inputs import as_inputs

__all__ = ["model_hash", "batch_hash", "tensor_digest", "structure_hash", "sample_signature"]


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


_PLAIN = (bool, int, float, str, type(None))


def _plain(v: Any) -> bool:
    return isinstance(v, _PLAIN) or (isinstance(v, (tuple, list)) and all(isinstance(x, _PLAIN) for x in v))


def _source_digest(cls: type, seen: dict[str, str]) -> str:
    """Digest of the file that defines ``cls`` (its name when there is none: a built-in, ``exec``)."""
    try:
        path = inspect.getsourcefile(cls) or ""
    except TypeError:
        path = ""
    if not path:
        return f"{cls.__module__}.{cls.__qualname__}"
    if path not in seen:
        try:
            with open(path, "rb") as f:
                seen[path] = hashlib.blake2b(f.read(), digest_size=16).hexdigest()
        except OSError:
            seen[path] = path
    return seen[path]


def structure_hash(model: nn.Module) -> str:
    """Hash of what ``model``'s forward pass is made of, beyond its weights: for every submodule
    its qualified name, class (module and qualname), ``extra_repr()`` and plain public attributes
    (``inplace``, ``eps``, ...), a ``config`` with ``to_dict`` (Hugging Face), and the digest of the
    source file of each class in its MRO below ``nn.Module`` (an edited ``forward`` changes it)."""
    h = hashlib.blake2b(digest_size=16)
    files: dict[str, str] = {}
    for name, m in model.named_modules():
        cls = type(m)
        attrs = {k: v for k, v in sorted(vars(m).items()) if not k.startswith("_") and k != "training" and _plain(v)}
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{m.extra_repr()}|{attrs!r}".encode())
        config = getattr(m, "config", None)
        if callable(getattr(config, "to_dict", None)):
            h.update(json.dumps(config.to_dict(), sort_keys=True, default=repr).encode())
        for base in cls.__mro__:
            if base is nn.Module:
                break
            h.update(_source_digest(base, files).encode())
    return h.hexdigest()


def sample_signature(inputs: Any) -> str:
    """The structure of a sample's :class:`~quantlens.core.inputs.Inputs`, not its values: the
    argument tree (keyword names), each tensor's dtype, shape and device, and every other value."""
    inputs = as_inputs(inputs)
    parts = [repr(pytree.tree_structure((inputs.args, inputs.kwargs)))]
    for v in pytree.tree_leaves((inputs.args, inputs.kwargs)):
        parts.append(f"{v.dtype}{tuple(v.shape)}@{v.device}" if isinstance(v, Tensor) else repr(v))
    return " ".join(parts)
