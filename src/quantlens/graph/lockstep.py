"""Run a GraphModule over every batch at once, node by node, pausing where the network must
change from statistics of all batches before the pass may go on.

Some fixes are sequential by definition. Bias correction of layer ``l`` measures
``E[z_q,l - z_l]`` over the calibration data with every layer before ``l`` already corrected;
output-MSE clipping of ``l`` measures ``E[x_l^2]`` with every layer before ``l`` already
clipped. Done one layer at a time, that is a pass up to each layer: ``sum_l depth(l)`` node
evaluations per batch, ``O(L^2)``. Here every node runs once per batch, in graph order, for all
batches together (``O(L)``)::

    for node n in graph order:
        v_b[n] = n(v_b[inputs of n])            for every batch b
        if n is a pause p:
            p.fn([v_1[n], ..., v_B[n]])        # may change modules (a bias, a weight)
            v_b[r] = r(v_b[inputs of r])        for r in p.recompute, for every batch b

so the numbers are those of the per-layer passes: the same operations on the same values.
Each value is freed after its last use (a pause's ``recompute`` keeps its inputs alive until
the pause), and nothing after the last pause runs.

Memory is the live values of every batch at once. :class:`LockstepTooLarge` is raised as soon
as they exceed ``budget`` bytes, before the next node runs: the caller then falls back to
per-layer passes (on a fresh copy, since pauses may have changed modules).

Example:
    >>> seen = []
    >>> run_lockstep(gm, [(x1,), (x2,)], [Pause("relu", seen.extend)])   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from torch import fx

__all__ = ["Pause", "LockstepTooLarge", "run_lockstep", "default_budget"]


@dataclass(frozen=True)
class Pause:
    """After ``node`` has run on every batch: ``fn(its value on each batch)``, then the nodes of
    ``recompute`` (at or before ``node``, in graph order) run again on every batch."""

    node: str
    fn: Callable[[list[Any]], None]
    recompute: tuple[str, ...] = ()


class LockstepTooLarge(RuntimeError):
    """The live values of every batch went over the memory budget."""


def default_budget() -> int:
    """A quarter of the memory available now (``MemAvailable``), at most 8 GiB; 2 GiB if unknown."""
    cap = 8 << 30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return min(cap, int(line.split()[1]) * 1024 // 4)
    except OSError:
        pass
    return 2 << 30


def _nbytes(v: Any) -> int:
    if isinstance(v, torch.Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, (tuple, list)):
        return sum(_nbytes(x) for x in v)
    if isinstance(v, dict):
        return sum(_nbytes(x) for x in v.values())
    return 0


def run_lockstep(gm: fx.GraphModule, batches: Sequence[tuple[Any, ...]], pauses: Sequence[Pause],
                 budget: Optional[int] = None) -> None:
    """Run ``gm`` on every batch of flat arguments in lockstep (module docstring)."""
    if not pauses:
        return
    budget = default_budget() if budget is None else budget
    nodes = list(gm.graph.nodes)
    index = {n.name: i for i, n in enumerate(nodes)}
    by_node = {p.node: p for p in pauses}
    end = max(index[p.node] for p in pauses)
    last = {n.name: i for i, n in enumerate(nodes)}  # a value nobody reads is freed at once
    for i, n in enumerate(nodes[: end + 1]):
        for a in n.all_input_nodes:
            last[a.name] = max(last[a.name], i)
    for p in pauses:
        for r in p.recompute:
            for a in nodes[index[r]].all_input_nodes:
                last[a.name] = max(last[a.name], index[p.node])
            last[r] = max(last[r], index[p.node])
    frees: dict[int, list[fx.Node]] = {}
    for n in nodes[: end + 1]:
        frees.setdefault(min(last[n.name], end), []).append(n)
    runners = [fx.Interpreter(gm, garbage_collect_values=False) for _ in batches]
    for r, args in zip(runners, batches):
        r.args_iter = iter(args)
    live = 0
    for i, n in enumerate(nodes[: end + 1]):
        for r in runners:
            r.env[n] = r.run_node(n)
            live += _nbytes(r.env[n])
        p = by_node.get(n.name)
        if p is not None:
            p.fn([r.env[n] for r in runners])
            for name in p.recompute:
                rn = nodes[index[name]]
                for r in runners:
                    live -= _nbytes(r.env[rn])
                    r.env[rn] = r.run_node(rn)
                    live += _nbytes(r.env[rn])
        for dead in frees.get(i, ()):
            for r in runners:
                live -= _nbytes(r.env.pop(dead))
        if live > budget:
            raise LockstepTooLarge(f"{live / 2**20:.0f} MiB of live values over a budget of {budget / 2**20:.0f} MiB")
