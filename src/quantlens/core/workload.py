"""Two small frozen objects that travel together instead of seven keywords through every signature.

* :class:`Workload`: *what* is measured: the model, its data, the calibration data, the task
  metric, the float reference the noise is measured against, and which output to read.
* :class:`RunOptions`: *how* it runs: device, executor backend, resumable cache, progress bars.

:func:`quantlens.analyze`, the whole-network measurers and the experiments take a workload and
options (``analyze`` also takes their fields as keyword shorthands).

Example:
    >>> import torch
    >>> w = Workload(torch.nn.Linear(4, 2), [(torch.randn(3, 4), None)], metric="kl")
    >>> w.calib_data is w.data, RunOptions().device
    (True, 'cpu')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import nn

__all__ = ["Workload", "RunOptions", "check_workload"]


@dataclass(frozen=True, eq=False)
class Workload:
    """The model and data of a measurement (see module docstring).

    Attributes:
        model: any ``nn.Module``; never modified.
        data: re-iterable batches (``(inputs, labels)``, a tensor, or a mapping with ``labels``).
        calib: calibration data for activation ranges; ``None``: ``data``.
        metric: a registered metric name, a callable ``fn(y_ref, y, labels)`` or a Metric.
        reference: the float model ``y`` comes from (a fine-tuned model's original); ``None``:
            the model itself.
        output_key: which part of a tuple/dict/``ModelOutput`` output is ``y``.
    """

    model: nn.Module
    data: Iterable[Any]
    calib: Optional[Iterable[Any]] = None
    metric: Union[str, Callable[..., Any], Any] = "top1"
    reference: Optional[nn.Module] = None
    output_key: Union[str, int, None] = None

    @property
    def calib_data(self) -> Iterable[Any]:
        return self.data if self.calib is None else self.calib


@dataclass(frozen=True)
class RunOptions:
    """How a measurement runs: ``device``, ``backend`` (``serial`` or ``ray``), ``cache`` (a
    directory for resumable checkpoints), ``progress`` (bars with an ETA on stderr), ``address``
    (the Ray cluster) and ``fresh`` (start the cache anew)."""

    device: Union[str, torch.device] = "cpu"
    backend: Any = "serial"
    cache: Union[str, "os.PathLike[str]", None] = None
    progress: bool = False
    address: Optional[str] = None  # the Ray cluster to join (``auto``, ``HOST:PORT``), for ``backend="ray"``
    fresh: bool = False  # discard an existing cache first

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def check_workload(workload: Any, where: str) -> None:
    """One line when ``where`` is given something else than a :class:`Workload` (the old
    ``where(model, data, metric=..., ...)`` call)."""
    if not isinstance(workload, Workload):
        from quantlens.errors import QuantlensError

        raise QuantlensError(f"{where} takes a Workload first: {where}(quantlens.Workload(model, data, calib, metric=...), ...)")
