"""Guarantee that the user's model is left as it was.

quantlens only ever works on copies, but it calls ``deepcopy`` and ``eval`` around the
user's model; :func:`preserve_model` restores every module's ``training`` flag on exit,
even on error. (The tests check that parameters, buffers and hooks are unchanged.)

Example:
    >>> import torch.nn as nn
    >>> m = nn.Linear(2, 2).train()
    >>> with preserve_model(m):
    ...     _ = m.eval()
    >>> m.training
    True
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["preserve_model", "state_fingerprint"]


def state_fingerprint(model: nn.Module) -> dict[str, torch.Tensor]:
    """Clones of every state_dict tensor (for bitwise comparisons)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextmanager
def preserve_model(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the ``training`` flag of every submodule of ``model`` on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t
