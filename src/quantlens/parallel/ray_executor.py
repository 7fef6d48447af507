"""The sweep as Ray tasks over (layer group x data shard), merged into the serial result.

The driver calibrates once, then submits one task per (group of layers, shard of batches).
A task rebuilds the prepared network from the :class:`~quantlens.parallel.recipe.SweepRecipe`
(once per worker process), loads the driver's calibration, runs its batches through its
layers and returns the plain-data state. States are merged in a fixed order (shards in data
order within a group, then groups united), so the result does not depend on which task
finished first. Each task uses as many torch threads (and asks Ray for as many CPUs) as the
driver has, by default: float rounding depends on the thread count and activation
quantization can amplify it (~1e-4 on a cell's noise), so only then do the cells equal the
serial run's on the same hardware. Ray retries a task whose worker dies (``max_retries``); with a checkpoint
store every finished task is saved atomically and skipped by a rerun.

Ray is imported only when this executor runs: ``pip install 'quantlens[ray]'``.

Example:
    >>> state = RayExecutor(address="auto").run(recipe, sweep, data)    # doctest: +SKIP
"""

from __future__ import annotations

import sys
import uuid
from typing import Any, Optional

from quantlens.data.batches import iterate
from quantlens.engine.state_io import (
    calibration_to_dict,
    load_calibration,
    state_from_dict,
    union_states,
)
from quantlens.errors import QuantlensError
from quantlens.core.progress import Progress
from quantlens.core.fingerprint import batch_hash
from quantlens.parallel.store import CheckpointStore, resume_notice

__all__ = ["RayExecutor", "group_layers", "run_task"]

_SWEEPS: dict[str, Any] = {}  # per worker process: prepared sweeps by run key


def group_layers(layer_ids: list[int], costs: list[float], groups: int) -> list[list[int]]:
    """Split layers into ``groups`` sets of similar total cost (largest first, to the lightest set)."""
    n = max(1, min(groups, len(layer_ids)))
    bins: list[list[int]] = [[] for _ in range(n)]
    load = [0.0] * n
    for i, c in sorted(zip(layer_ids, costs), key=lambda t: (-t[1], t[0])):
        k = min(range(n), key=lambda j: (load[j], j))
        bins[k].append(i)
        load[k] += c
    return [sorted(b) for b in bins if b]


def run_task(run_key: str, recipe: Any, calibration: dict, layer_ids: list[int], batches: list, threads: int) -> dict:
    """One unit of work (runs in a Ray worker): ``layer_ids`` over ``batches``, on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    sweep = _SWEEPS.get(run_key)
    if sweep is None:
        _SWEEPS.clear()
        sweep = recipe.build()
        load_calibration(sweep, calibration)
        _SWEEPS[run_key] = sweep
    state = sweep.new_state(layer_ids)
    for batch in batches:
        sweep.process_batch(state, batch)
    return {"state": state.to_dict(), "batch_hashes": [batch_hash(b) for b in batches]}


def _pickle_user_code_by_value(objs: list[Any]) -> None:
    """Classes defined outside installed packages (a user's file, a test) travel by value."""
    import ray.cloudpickle as cp

    seen = set()
    for obj in objs:
        if obj is None:
            continue
        types = [type(m) for m in obj.modules()] if hasattr(obj, "modules") else [type(obj), obj]
        for t in types:
            name = getattr(t, "__module__", None)
            if not name or name in seen or name.split(".")[0] in ("torch", "quantlens", "builtins"):
                continue
            seen.add(name)
            mod = sys.modules.get(name)
            path = str(getattr(mod, "__file__", "") or "")
            if mod is not None and (name == "__main__" or ("site-packages" not in path and "dist-packages" not in path)):
                try:
                    cp.register_pickle_by_value(mod)
                except (ValueError, TypeError):  # pragma: no cover - builtin modules
                    pass


class RayExecutor:
    """Ray tasks over (layer group x data shard) (see module docstring)."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, groups: int = 4, shard_batches: int = 1, max_retries: int = 3,
                 threads: Optional[int] = None) -> None:
        if groups < 1 or shard_batches < 1 or (threads is not None and threads < 1):
            raise QuantlensError("--ray-groups, --shard-batches and --ray-threads must be >= 1")
        self.threads = threads
        self.address = address
        self.groups = groups
        self.shard_batches = shard_batches
        self.max_retries = max_retries

    def _layer_groups(self, sweep: Any) -> list[list[int]]:
        sizes = getattr(sweep.runner, "cone_sizes", None)
        costs = [float(sizes[i]) if sizes else 1.0 for i in sweep.layer_ids]
        return group_layers(list(sweep.layer_ids), costs, self.groups)

    def plan(self, sweep: Any, num_batches: Optional[int]) -> dict:
        """Layer groups and batches per shard (part of a cache's identity)."""
        return {"backend": "ray", "groups": self._layer_groups(sweep), "shard_batches": self.shard_batches}

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError:
            raise QuantlensError("--backend ray needs Ray: pip install 'quantlens[ray]'") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = self.address or "a new local instance"
                raise QuantlensError(f"cannot start or reach Ray at {where}: {str(e).splitlines()[0]}") from None
        return ray

    def run(self, recipe: Any, sweep: Any, data: Any, store: Optional[CheckpointStore] = None,
            progress: Optional[Progress] = None) -> Any:
        """The merged :class:`SweepState` of all tasks."""
        ray = self._connect()
        bar = progress or Progress()
        _pickle_user_code_by_value([recipe.model, recipe.reference, recipe.metric])
        groups = self._layer_groups(sweep)
        batches = list(iterate(data, "data"))
        shards = [batches[a : a + self.shard_batches] for a in range(0, len(batches), self.shard_batches)]
        calibration = calibration_to_dict(sweep)
        run_key = uuid.uuid4().hex  # workers prepare the network once per run
        import torch

        threads = self.threads or torch.get_num_threads()
        task = ray.remote(run_task).options(max_retries=self.max_retries, num_cpus=threads,
                                           num_gpus=1 if sweep.device.type == "cuda" else 0)
        recipe_ref, calibration_ref = ray.put(recipe), ray.put(calibration)  # once, not per task
        shard_refs: dict[int, Any] = {}
        results: dict[tuple[int, int], dict] = {}
        pending: dict[Any, tuple[int, int]] = {}
        for g, ids in enumerate(groups):
            for s, shard in enumerate(shards):
                saved = store.load_task(f"g{g}-s{s}") if store is not None else None
                if saved is not None:
                    if saved["batch_hashes"] != [batch_hash(b) for b in shard]:
                        raise QuantlensError(f"shard {s} of the data differs from the cached run's; rerun with --fresh")
                    results[(g, s)] = saved
                    bar.advance(len(ids) * len(shard))
                    continue
                if s not in shard_refs:
                    shard_refs[s] = ray.put(shard)
                pending[task.remote(run_key, recipe_ref, calibration_ref, ids, shard_refs[s], threads)] = (g, s)
        if results:
            resume_notice(store, f"{len(results)} of {len(results) + len(pending)} task(s) already done")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            g, s = pending.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except Exception as e:
                cause = getattr(e, "cause", None) or e
                if isinstance(cause, QuantlensError):
                    raise cause from None
                raise
            if store is not None:
                store.save_task(f"g{g}-s{s}", out)
            results[(g, s)] = out
            bar.advance(len(groups[g]) * len(shards[s]))
        per_group = []
        for g in range(len(groups)):
            states = [state_from_dict(sweep, results[(g, s)]["state"]) for s in range(len(shards))]
            merged = states[0]
            for st in states[1:]:
                merged = merged.merge(st)
            per_group.append(merged)
        return union_states(per_group)
