"""Everything needed to build the same :class:`~quantlens.engine.sweep.Sweep` anywhere.

A :class:`SweepRecipe` is picklable (the model and a sample batch travel with it), so a
Ray worker on another machine rebuilds the identical prepared network, then loads the
driver's calibration instead of recalibrating. Its :meth:`~SweepRecipe.header` is the
identity of the run that a resumable cache is checked against.

Example:
    >>> recipe = SweepRecipe(model, sample, config, "kl")    # doctest: +SKIP
    >>> sweep = recipe.build()                               # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from torch import nn

from quantlens.core.sweep_config import SweepConfig
from quantlens._version import __version__
from quantlens.core.fingerprint import batch_hash, model_hash

__all__ = ["SweepRecipe", "data_identity"]


def _metric_id(metric: Any) -> str:
    if isinstance(metric, str):
        return metric
    fn = getattr(metric, "fn", metric)
    return f"{type(metric).__module__}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


@dataclass(frozen=True)
class SweepRecipe:
    """The arguments of :class:`~quantlens.engine.sweep.Sweep`, kept together."""

    model: nn.Module
    sample: Any
    config: SweepConfig
    metric: Any = "top1"
    device: Union[str, torch.device] = "cpu"
    output_key: Union[str, int, None] = None
    reference: Optional[nn.Module] = None
    engine: str = "cone"
    layers: Optional[Sequence[str]] = None
    capture: str = "auto"

    def build(self) -> Any:
        """A new, uncalibrated :class:`Sweep`."""
        from quantlens.engine.sweep import Sweep

        return Sweep(self.model, self.sample, self.config, self.metric, self.device, self.output_key,
                     self.reference, self.engine, self.layers, self.capture)

    def header(self, data_id: dict, calib_id: Optional[dict], plan: Any) -> dict:
        """The identity of a run: what a cache must match to be resumed."""
        return {
            "format": "quantlens/cache-v1",
            "version": __version__,
            "model": model_hash(self.model),
            "reference": model_hash(self.reference),
            "data": data_id,
            "calib": calib_id,
            "config": self.config.to_dict(),
            "metric": _metric_id(self.metric),
            "engine": self.engine,
            "capture": self.capture,
            "layers": None if self.layers is None else list(self.layers),
            "output_key": self.output_key,
            "device": torch.device(self.device).type,
            "plan": plan,
        }


def data_identity(first_batch: Any, num_batches: Optional[int]) -> dict:
    """Fingerprint of a data set known up front: its first batch and its length (if known)."""
    return {"first_batch": batch_hash(first_batch), "batches": num_batches}
