"""The FLOP bound of the cone engine: ``sum_i flops(cone_i) / (layers x flops(full pass))``.

The speed-up of recomputing only each layer's downstream cone, at identical numbers, is at
most the inverse of this fraction (ignoring the one float pass per batch that both engines do).

Example:
    >>> from benchmarks.models import resnet18
    >>> round(cone_fraction(resnet18(), (1, 3, 224, 224))["fraction"], 2)   # doctest: +SKIP
    0.47
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from quantlens.engine.runner import ConeRunner
from quantlens.graph.capture import capture
from quantlens.core.inputs import Inputs

__all__ = ["cone_fraction"]


def _flops(fn) -> int:  # noqa: ANN001
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def cone_fraction(model: nn.Module, sample: Union[tuple[int, ...], Inputs], layers: Optional[Sequence[str]] = None) -> dict:
    """FLOPs of the full pass and of each layer's cone on ``sample`` (inputs, or one random
    input of that shape); ``layers``: only these layers' cones (default: every layer's)."""
    inputs = sample if isinstance(sample, Inputs) else Inputs((torch.randn(*sample),))
    runner = ConeRunner(capture(model, inputs))
    chosen = [c for c in runner.cones if layers is None or c.layer.name in set(layers)]
    with torch.inference_mode():
        full = _flops(lambda: runner.graph.gm(*runner.graph.flat(inputs)))
        _, cache = runner.float_pass(inputs)
        cones = [_flops(lambda c=c: c(cache)) for c in chosen]
    frac = sum(cones) / (len(cones) * full)
    return {"full_flops": full, "cone_flops": cones, "fraction": frac, "bound": 1.0 / frac}
