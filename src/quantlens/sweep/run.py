"""Prepare, calibrate and execute a sweep, with an optional resumable cache.

:func:`run_sweep` is the body of :func:`quantlens.analyze`: it builds the sweep from its
recipe, opens the cache (refusing one made by a different run), restores the calibration
from it or calibrates and saves it, then lets the executor run the batches.

Example:
    >>> sweep, state = run_sweep(recipe, data, cache="out/.quantlens-cache")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Optional, Union

from quantlens.data.batches import count_batches, iterate
from quantlens.engine.state_io import calibration_to_dict, load_calibration
from quantlens.core.progress import Progress
from quantlens.parallel.recipe import SweepRecipe, data_identity
from quantlens.parallel.serial import SerialExecutor
from quantlens.parallel.store import CheckpointStore

__all__ = ["run_sweep"]


def run_sweep(
    recipe: SweepRecipe,
    data: Iterable[Any],
    calib: Optional[Iterable[Any]] = None,
    executor: Any = None,
    cache: Union[str, os.PathLike, None] = None,
    fresh: bool = False,
    bar_factory: Optional[Callable[[Optional[int]], Progress]] = None,
) -> tuple[Any, Any, Optional[CheckpointStore]]:
    """``(sweep, merged state, store)``; the store is ``None`` without a cache."""
    executor = executor or SerialExecutor()
    sweep = recipe.build()
    nb = count_batches(data)
    store = None
    if cache is not None:
        first_calib = None if calib is None else data_identity(next(iter(iterate(calib, "calibration data"))), count_batches(calib))
        header = recipe.header(data_identity(recipe.sample, nb), first_calib, executor.plan(sweep, nb))
        store = CheckpointStore.open(cache, header, fresh=fresh)
    try:
        saved = store.load("calibration") if store is not None else None
        if saved is not None:
            load_calibration(sweep, saved)
        else:
            sweep.calibrate(calib if calib is not None else data)
            if store is not None:
                store.save("calibration", calibration_to_dict(sweep))
        total = None if nb is None else nb * len(sweep.layer_ids)
        bar = bar_factory(total) if bar_factory is not None else Progress()
        try:
            state = executor.run(recipe, sweep, data, store, bar)
        finally:
            bar.close()
    finally:
        if store is not None:
            store.close()  # the checkpoints stay (for a rerun, or until the caller clears them); the lock goes
    return sweep, state, store
