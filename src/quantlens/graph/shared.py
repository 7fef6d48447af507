"""Copies of a module that share its weights.

:func:`weights_memo` is a :func:`copy.deepcopy` memo under which the copy of a module has its own
module objects but the same weight storage: what the export capture copies the user's model
with, and what a sweep's copy of a cached capture shares (:mod:`quantlens.graph.capture_cache`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["weights_memo"]


def weights_memo(module: nn.Module) -> dict[int, Any]:
    """A :func:`copy.deepcopy` memo under which the copy of ``module`` shares its weights: each
    parameter ``p`` becomes ``nn.Parameter(p.detach(), p.requires_grad)``, each buffer ``b``
    ``b.detach()`` (the same storage and version counter, another tensor object)."""
    memo: dict[int, Any] = {}
    for m in module.modules():
        for p in m._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        for b in m._buffers.values():
            if b is not None and id(b) not in memo:
                memo[id(b)] = b.detach()
    return memo
