"""Adaptive sample size: stop measuring a cell once its 95% interval has decided it.

Batches are added to every cell, as in the exact sweep, until the cell's paired interval
(:mod:`quantlens.stats.intervals`) lies on one side of the tolerance ``tol`` and of 0::

    worse   low > tol                     significantly worse than the tolerance: a culprit
    within  -tol < low  and  high < tol   within the tolerance (0 included or not): negligible
    better  high < 0                      significantly better than float

A decided cell gets no more cone passes; the loop ends when every cell is decided or the data
run out. Each decided cell keeps the samples it was measured on (``Cell.samples``,
``Cell.early_stop``) and its degradation is the paired mean on those samples.

The interval is looked at after every batch, so the 95% holds per look, not for the whole
sequence; a cell needs ``min_samples`` before it may stop. Shuffle ordered data (by class, by
source) first: a cell that stops on the first batches sees only those.

Example:
    >>> r = ql.analyze(model, data, metric="agreement", adaptive=True, tolerance=0.005)  # doctest: +SKIP
    >>> r.extra["adaptive"]["saved"]                                                   # doctest: +SKIP
    0.71
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

from ...errors import QuantlensError
from ...progress import Progress
from ...stats.intervals import Interval, interval_rule, metric_interval
from ...stats.resolve import separated
from ...data import iterate

__all__ = ["DEFAULT_TOLERANCE", "MIN_SAMPLES", "parse_tolerance", "decide", "AdaptiveExecutor", "compare_to_exact", "check_adaptive_metric"]

DEFAULT_TOLERANCE = 0.005
MIN_SAMPLES = 64


def parse_tolerance(value: Union[str, float, None], pct_metric: bool = True) -> float:
    """``0.5%`` -> 0.005; a plain number as is. Accuracy-type metrics need ``0 < tol < 1`` (100%),
    others ``tol > 0``.

    >>> parse_tolerance("0.5%"), parse_tolerance(0.01)
    (0.005, 0.01)
    """
    if value is None:
        return DEFAULT_TOLERANCE
    text = str(value).strip()
    try:
        tol = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise QuantlensError(f"--tolerance {value!r} is not a number: write e.g. 0.5% or 0.005") from None
    if not math.isfinite(tol) or tol <= 0 or (pct_metric and tol >= 1):
        raise QuantlensError(f"--tolerance {value} is out of range: give a positive value"
                             + (" below 100% (e.g. 0.5%)" if pct_metric else " (e.g. 0.005)"))
    return tol


def decide(iv: Optional[Interval], tol: float) -> Optional[str]:
    """``worse`` / ``within`` / ``better`` once the interval has decided the cell, else None (see module docstring)."""
    if iv is None:
        return None
    if iv.low > tol:
        return "worse"
    if iv.high < 0:
        return "better"
    if iv.high < tol and iv.low > -tol:
        return "within"
    return None


def check_adaptive_metric(metric: Any) -> None:
    """A one-line error for a metric without an interval rule (a user callable)."""
    if interval_rule(metric) is None:
        name = getattr(metric, "name", "custom")
        raise QuantlensError(f"--adaptive needs a metric with an interval (top1, top5, agreement, kl, mse, cosine); "
                             f"{name!r} has none: drop --adaptive")


class AdaptiveExecutor:
    """The serial batch loop, skipping decided cells (see module docstring)."""

    name = "adaptive"

    def __init__(self, tolerance: float = DEFAULT_TOLERANCE, min_samples: int = MIN_SAMPLES) -> None:
        self.tolerance, self.min_samples = tolerance, min_samples
        self.cone_passes = 0
        self.full_cone_passes = 0
        self.decisions: dict[tuple[int, int], str] = {}

    def plan(self, sweep: Any, num_batches: Optional[int]) -> dict:
        return {"backend": "adaptive", "tolerance": self.tolerance, "min_samples": self.min_samples}

    def run(self, recipe: Any, sweep: Any, data: Any, store: Any = None, progress: Optional[Progress] = None) -> Any:
        if store is not None:
            raise QuantlensError("--adaptive does not resume from a cache yet: add --no-cache")
        bar = progress or Progress()
        state = sweep.new_state()
        check_adaptive_metric(state.baseline)
        active = set(state.cells)
        hib = sweep.higher_is_better
        for batch in iterate(data, "data"):
            self.full_cone_passes += len(state.cells)
            if not active:
                state.num_samples += _batch_size(batch)
                state.batches += 1
                continue
            self.cone_passes += len(active)
            sweep.process_batch(state, batch, on_layer=bar.advance, active=active)
            for key in list(active):
                acc = state.cells[key]
                if acc.n < self.min_samples:
                    continue
                d = decide(metric_interval(acc.metric, hib), self.tolerance)
                if d is not None:
                    self.decisions[key] = d
                    active.discard(key)
        return state

    def summary(self) -> dict:
        full = self.full_cone_passes
        counts: dict[str, int] = {}
        for d in self.decisions.values():
            counts[d] = counts.get(d, 0) + 1
        return {"tolerance": self.tolerance, "min_samples": self.min_samples, "cone_passes": self.cone_passes,
                "exact_cone_passes": full, "saved": 1 - self.cone_passes / full if full else 0.0,
                "speedup": full / self.cone_passes if self.cone_passes else float("inf"), "decided": counts}


def _batch_size(batch: Any) -> int:
    return int(batch[0].batch_size)


def compare_to_exact(exact: Any, other: Any, bits: int, tol: float) -> dict:
    """Rank agreement of ``other`` (adaptive or estimated) with ``exact`` at ``bits``.

    ``pairs``: layer pairs whose exact intervals separate them; ``agree``: of those, ordered the
    same way by ``other``; ``missed``: layers significantly worse than ``tol`` in ``exact`` that
    ``other`` does not find worse than ``tol`` (its interval, or its value without one).
    """
    cells = exact.at(bits)
    pairs = agree = 0
    for k, a in enumerate(cells):
        for b in cells[k + 1:]:
            ia, ib = a.interval, b.interval
            if ia is None or ib is None or not separated(ia, a.degradation, ib, b.degradation):
                continue
            pairs += 1
            oa, ob = other.cell(a.layer, bits).degradation, other.cell(b.layer, bits).degradation
            agree += (oa - ob) * (a.degradation - b.degradation) > 0
    missed = []
    for c in cells:
        if c.ci_low > tol:
            o = other.cell(c.layer, bits)
            flagged = o.ci_low > tol if not math.isnan(o.ci_low) else o.degradation > tol
            if not flagged:
                missed.append(c.layer)
    return {"bits": bits, "separated_pairs": pairs, "agree": agree, "missed": missed}
