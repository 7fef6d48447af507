"""The default executor: the batch-outer loop in this process, checkpointed after each batch.

With a :class:`~quantlens.parallel.store.CheckpointStore`, the merged state of every cell is
saved atomically after each batch together with the hash of every batch done so far. A
rerun loads it, checks that the batches it skips are the same data (hash by hash), and goes
on from the first batch not saved: at most the batch in flight is redone, and none is
counted twice.

Example:
    >>> state = SerialExecutor().run(recipe, sweep, data)    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Optional

from quantlens.data.batches import iterate
from quantlens.engine.state_io import state_from_dict
from quantlens.errors import QuantlensError
from quantlens.core.progress import Progress
from quantlens.core.fingerprint import batch_hash
from quantlens.parallel.store import CheckpointStore, resume_notice

__all__ = ["SerialExecutor"]


class SerialExecutor:
    """Run every batch through every layer here, in order (see module docstring)."""

    name = "serial"

    def plan(self, sweep: Any, num_batches: Optional[int]) -> dict:
        """How the work is cut into units (part of a cache's identity)."""
        return {"backend": "serial"}

    def run(
        self,
        recipe: Any,
        sweep: Any,
        data: Any,
        store: Optional[CheckpointStore] = None,
        progress: Optional[Progress] = None,
    ) -> Any:
        """The merged :class:`SweepState` of all batches."""
        bar = progress or Progress()
        state = sweep.new_state()
        done: list[str] = []
        saved = store.load("serial") if store is not None else None
        if saved is not None:
            state = state_from_dict(sweep, saved["state"])
            done = list(saved["batch_hashes"])
            resume_notice(store, f"{len(done)} batch(es) already done")
        per_batch = len(sweep.layer_ids)
        for k, batch in enumerate(iterate(data, "data")):
            h = batch_hash(batch) if store is not None else ""
            if k < len(done):
                if h != done[k]:
                    raise QuantlensError(
                        f"batch {k} of the data differs from the cached run's; rerun with --fresh to start over"
                    )
                bar.advance(per_batch)
                continue
            sweep.process_batch(state, batch, on_layer=bar.advance)
            if store is not None:
                done.append(h)
                store.save("serial", {"batch_hashes": done, "state": state.to_dict()})
        if len(done) > state.batches:  # pragma: no cover - a cache whose state lost batches
            raise QuantlensError("the cache is inconsistent; rerun with --fresh")
        if saved is not None and len(done) > k + 1:
            raise QuantlensError(
                f"the cached run saw {len(done)} batches but the data has {k + 1}; rerun with --fresh to start over"
            )
        return state
