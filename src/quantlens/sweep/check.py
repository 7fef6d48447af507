"""The estimate's check: which cells are measured exactly, within a time budget, all in one pass.

At the check's column (:func:`~quantlens.sweep.estimate.check_bits`) the layers are ranked by
the estimate (rank 1: the largest). The candidates are

* ``top``: ranks ``1..k``, the layers the estimate names as the worst;
* ``boundary``: ranks ``k+1..2k``, the layers just below them: with the top ones, the cells
  whose exact order decides which layers make the top ``k`` (the top-``k`` overlap);
* ``random``: ``k`` layers drawn (seeded) from ranks ``2k+1..``, the spread that makes the
  Spearman correlation say something about the whole ranking.

Each candidate's predicted cost is its cone's share of the network's work
(:func:`quantlens.engine.cost.cone_shares`) times the measured time of the float network's
forward passes over the data (the estimate's own forward, once per batch)::

    cost(i) = share(i) * t_forward            budget_s = budget * t_estimate

with ``t_estimate`` the estimate's whole pass (forward and backward) and ``budget`` the share
given to the check (:class:`~quantlens.sweep.methods.Estimate`, default 0.25). The choice
(:func:`choose`) keeps two queues, cheapest cone first (ties by rank): the *deciding* cells
(top and boundary) and the *random* ones; it takes from them in turn, deciding first, a cell
whenever its cost fits in what is left of ``budget_s``; a queue whose cheapest remaining cell
does not fit is closed. So ``sum cost(chosen) <= budget_s`` always; late layers (small cones)
come first, and an early layer whose cone is the whole network is checked only if the budget
affords it.

The chosen cells are measured exactly (:func:`measure`): one float pass per batch serves all
of their cones (:meth:`~quantlens.engine.sweep.Sweep.process_batch` over a state that holds
only them), so the cells equal the exact sweep's. That float pass is the one cost of the check
outside the budget: any check needs it (the reference output, and the values the cones read).

Example:
    >>> cands = [Candidate(0, "top", 1, 9.0), Candidate(1, "top", 2, 1.0), Candidate(2, "random", 5, 2.0)]
    >>> [c.layer for c in choose(cands, budget_s=3.5)]
    [1, 2]
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from quantlens.sweep.results import SweepResult, column_label

__all__ = ["Candidate", "candidates", "choose", "measure", "coverage", "check_line", "DECIDING"]

DECIDING = ("top", "boundary")


@dataclass(frozen=True)
class Candidate:
    """A layer the check may measure: ``why`` it is a candidate (``top``, ``boundary``,
    ``random``), its ``rank`` by the estimate (1: the largest) and its predicted ``cost_s``."""

    layer: int
    why: str
    rank: int
    cost_s: float


def candidates(ranked: Sequence[int], k: int, costs: dict[int, float], seed: int = 0) -> list[Candidate]:
    """The top ``k``, the ``k`` below them and ``k`` seeded random others of ``ranked`` (layer ids,
    largest estimate first), with their costs (module docstring)."""
    rank = {i: r + 1 for r, i in enumerate(ranked)}
    rest = list(ranked[2 * k:])
    drawn = random.Random(seed).sample(rest, min(k, len(rest)))
    groups = (("top", ranked[:k]), ("boundary", ranked[k:2 * k]), ("random", sorted(drawn, key=rank.__getitem__)))
    return [Candidate(i, why, rank[i], float(costs[i])) for why, ids in groups for i in ids]


def choose(cands: Sequence[Candidate], budget_s: float) -> list[Candidate]:
    """The candidates measured within ``budget_s``: deciding and random queues, cheapest first,
    taken in turn while a cell fits (module docstring). In the order taken."""
    if not budget_s > 0:
        return []
    queues = [sorted((c for c in cands if (c.why in DECIDING) == deciding), key=lambda c: (c.cost_s, c.rank))
              for deciding in (True, False)]
    left, taken = float(budget_s), []
    while any(queues):
        for q in queues:
            if not q:
                continue
            c = q[0]
            if not (c.cost_s <= left) or math.isnan(c.cost_s):
                q.clear()  # the cheapest left does not fit: none of this queue does
                continue
            taken.append(q.pop(0))
            left -= c.cost_s
    return taken


def measure(sweep: Any, data: Iterable[Any], layer_ids: Sequence[int], column: Any, model_name: str = "") -> SweepResult:
    """The exact cells of ``layer_ids`` at ``column`` (a bit-width or a format of the sweep), in
    one float pass per batch that all their cones read."""
    from quantlens.data.batches import iterate  # here: the summary's text (coverage, check_line) needs no torch
    from quantlens.sweep.collect import collect

    check = copy.copy(sweep)  # the same prepared network (cones, quantizers), fewer cells
    check.layer_ids = sorted(layer_ids)
    check.config = (dataclasses.replace(sweep.config, formats=(column,)) if sweep.config.formats
                    else dataclasses.replace(sweep.config, w_bits=(column,)))
    state = check.new_state()
    select = getattr(sweep.runner, "select", None)
    if select is not None:
        select(check.layer_ids)  # the float pass keeps what the checked layers read, not all layers'
    try:
        for batch in iterate(data, "data"):
            check.process_batch(state, batch)
    finally:
        if select is not None:
            select(sweep.layer_ids)
    return collect(check, state, model_name=model_name)


def coverage(info: dict) -> str:
    """What the check measured, from ``extra["estimate"]``: ``6 of 15 candidate cells (3 top, 1
    boundary, 2 random) within 25% of the estimate's time``; a result written before the budget
    existed says ``N cells (the top k and k random layers)``."""
    n = info.get("checked_cells", 0)
    if "candidates" not in info:
        return f"{n} cells (the estimate's top {info.get('k')} and {info.get('k')} random layers)"
    why = [c["why"] for c in info["candidates"] if c["checked"]]
    parts = ", ".join(f"{why.count(w)} {w}" for w in ("top", "boundary", "random") if why.count(w))
    b = info.get("budget")
    within = "with no time limit" if b is None or not math.isfinite(b) else f"within {b:.0%} of the estimate's time"
    return f"{n} of {info.get('candidate_cells', len(info['candidates']))} candidate cells" + (f" ({parts})" if parts else "") + f" {within}"


def check_line(info: dict) -> str:
    """The summary's line about the check (``extra["estimate"]``): its cells, times and agreement."""
    rho = info.get("spearman")
    ok = rho is not None and math.isfinite(rho)
    times = f"{info['check_s']:.1f} s"
    if info.get("predicted_check_s") is not None:
        times = f"predicted {info['predicted_check_s']:.1f} s + one float pass, took {info['check_s']:.1f} s"
    unit = f" ({info['unit']})" if info.get("unit") else ""
    head = (f"estimate{unit}: {info['estimate_s']:.1f} s; checked exactly on {coverage(info)} at {column_label(info['check_bits'])} "
            f"({times}): ")
    if not ok:
        return head + ("too few cells for a Spearman correlation -- the estimate is unchecked: raise --check-budget "
                       "or run the exact sweep")
    overlap = ", ".join(f"{column_label(b)} {v:.0%}" for b, v in info["topk_overlap"].items())
    return (head + f"Spearman {rho:.2f}, top-{info['k']} overlap {overlap}"
            + ("" if info.get("trusted", rho >= 0.7) else " -- the estimate cannot be trusted for this model: run the exact sweep"))
