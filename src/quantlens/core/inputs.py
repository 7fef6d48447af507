"""The arguments of one forward call, :class:`Inputs`: ``model(*args, **kwargs)``.

Every batch the engine sees is normalized to ``Inputs`` (see :mod:`quantlens.data.batches`):
positional tensors, keyword arguments from a tokenizer's dict, or both.

Example:
    >>> import torch
    >>> x = Inputs((torch.zeros(3, 2),), {"scale": 2.0})
    >>> x.batch_size, x.call(lambda t, scale: (t + 1) * scale).sum().item()
    (3, 12.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from quantlens.errors import QuantlensError

__all__ = ["Inputs", "as_inputs"]


@dataclass(frozen=True)
class Inputs:
    """The arguments of one forward call: ``model(*args, **kwargs)``."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def call(self, fn: Callable[..., Any]) -> Any:
        """``fn(*args, **kwargs)``."""
        return fn(*self.args, **self.kwargs)

    def tensors(self) -> list[Tensor]:
        """Every tensor among the arguments, in pytree order (positional first)."""
        return [t for t in pytree.tree_leaves((self.args, self.kwargs)) if isinstance(t, Tensor)]

    @property
    def batch_size(self) -> int:
        """Size of the first dimension of the first tensor argument."""
        for t in self.tensors():
            return int(t.shape[0]) if t.dim() else 1
        raise QuantlensError("a batch has no tensor among its inputs: give the model's inputs as tensors")

    def to(self, device: Union[str, torch.device]) -> "Inputs":
        """A copy with every tensor moved to ``device`` (other values unchanged)."""
        move = lambda v: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v  # noqa: E731
        return Inputs(tuple(pytree.tree_map(move, list(self.args))), pytree.tree_map(move, dict(self.kwargs)))


def as_inputs(x: Any) -> Inputs:
    """``x`` as :class:`Inputs`: itself, a tensor, or a tuple/list of positional arguments."""
    if isinstance(x, Inputs):
        return x
    if isinstance(x, Tensor):
        return Inputs((x,))
    if isinstance(x, (tuple, list)):
        return Inputs(tuple(x))
    raise QuantlensError(f"expected model inputs (a tensor, a tuple or Inputs), got {type(x).__name__}")
