"""What one quantized evaluation returns: the network's output and the quantized layer's own output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["Evaluation"]


@dataclass
class Evaluation:
    """Output of one quantized evaluation: the network output and the layer's own output."""

    output: Any
    layer_output: Tensor
