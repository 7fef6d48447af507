"""Executors of a sweep and the resumable cache they share.

* :class:`SerialExecutor` (default): the batch-outer loop in this process.
* ``RayExecutor`` (``backend="ray"``): Ray tasks over (layer group x data shard); Ray is
  imported only then (``pip install 'quantlens[ray]'``).
* :class:`CheckpointStore`: the resumable cache.

:func:`quantlens.sweep.run.run_sweep` prepares, calibrates and runs a sweep on one of these.

Example:
    >>> from quantlens.sweep.run import run_sweep                                   # doctest: +SKIP
    >>> sweep, state, store = run_sweep(recipe, data, executor=make_executor("serial"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Optional

from quantlens.errors import QuantlensError
from quantlens.parallel.recipe import SweepRecipe, data_identity

from quantlens.parallel.serial import SerialExecutor
from quantlens.parallel.store import CheckpointStore

__all__ = ["SweepRecipe", "SerialExecutor", "CheckpointStore", "make_executor", "data_identity", "BACKENDS"]

BACKENDS = ("serial", "ray")


def make_executor(backend: Any = "serial", address: Optional[str] = None, **options: Any) -> Any:
    """An executor from a name (``serial`` or ``ray``), or ``backend`` itself if it is one."""
    if hasattr(backend, "run") and hasattr(backend, "plan"):
        return backend
    if backend == "serial":
        if address is not None:
            raise QuantlensError("--address is for --backend ray")
        return SerialExecutor()
    if backend == "ray":
        from quantlens.parallel.ray_executor import RayExecutor

        return RayExecutor(address=address, **options)
    raise QuantlensError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
