"""Adaptive sample size: stop measuring a cell once its interval has decided it and its rank is settled.

Batches are added to every cell, as in the exact sweep. After each batch, an active cell ``c``
(a layer at one bit-width) with ``n_c >= min_samples`` samples stops when both hold:

1. *decided*: its paired 95% interval ``[lo, hi]`` (:mod:`quantlens.stats.intervals`) lies on
   one side of the tolerance ``tol`` and of 0::

       worse   lo > tol                     significantly worse than the tolerance: a culprit
       within  -tol < lo  and  hi < tol     within the tolerance (0 included or not): negligible
       better  hi < 0                       significantly better than float

2. *settled*: for every other cell ``x`` at the same bit-width (active or stopped)::

       |d_c - d_x| > z_s sqrt(se_c^2 (1 - f_c) + se_x^2 (1 - f_x)) - z sqrt(se_c^2 f_c + se_x^2 f_x)

   with ``d`` the degradation so far, ``se = half width / z`` of the current interval,
   ``f = n / N`` the share of the data's ``N`` samples the cell has seen, ``z = 1.96`` and
   ``z_s = 2.576`` (``Z_STOP``).

Why 2. The exact sweep ranks ``c`` and ``x`` on all ``N`` samples and calls them separated
(:func:`quantlens.stats.resolve.separated`) when ``|e_c - e_x| > z sqrt(se_c(N)^2 + se_x(N)^2)``,
where ``se(N)^2 = se^2 f``. A stopped cell keeps ``d_c``, a mean on a prefix of the data, which
differs from its full-data value ``e_c`` with standard error ``se_c sqrt(1 - f_c)``; an active
``x`` still moves towards ``e_x`` by as much. The order of ``c`` and ``x`` in the result can
differ from an order the exact sweep separates only if these two movements together exceed
``|d_c - d_x| + z se_cx(N)``: rule 2 makes that at least a ``z_s``-sigma event (the ``se`` treat
the two cells as independent, as ``separated`` does; sharing samples, they move less apart).
When ``x`` stops later it passes the same test against ``c``'s frozen value. Only the cells
next to ``c`` in the ranking can fail the test in practice; farther ones pass at once. With ``f = 0`` the test is a plain
separation at 99%; near the end of the data (``f -> 1``) the right side turns negative and any
decided cell may stop. Cells close to a neighbour run on until the data tells them apart (or
until it runs out, then they carry the exact sweep's numbers). ``N`` is read as
``samples so far / batches so far * len(data)``; data without a length gives ``f = 0``.

The loop ends when every cell has stopped or the data run out. Each stopped cell keeps the
samples it was measured on (``Cell.samples``, ``Cell.early_stop``) and its degradation is the
paired mean on those samples.

The intervals are looked at after every batch, so their 95% holds per look, not for the whole
sequence; a cell needs ``min_samples`` before it may stop. Shuffle ordered data (by class, by
source) first: a cell that stops on the first batches sees only those.

Example:
    >>> r = ql.analyze(model, data, metric="agreement", method=ql.Adaptive(tolerance=0.005))  # doctest: +SKIP
    >>> r.extra["adaptive"]["saved"]                                                   # doctest: +SKIP
    0.71
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

from quantlens.data.batches import count_batches, iterate
from quantlens.errors import QuantlensError
from quantlens.core.progress import Progress
from quantlens.stats.intervals import Z, Interval, interval_rule, metric_interval
from quantlens.stats.resolve import separated

__all__ = ["DEFAULT_TOLERANCE", "MIN_SAMPLES", "Z_STOP", "parse_tolerance", "decide", "settled", "CellView", "StopRule",
           "AdaptiveExecutor", "compare_to_exact", "check_adaptive_metric"]

DEFAULT_TOLERANCE = 0.005
MIN_SAMPLES = 64
Z_STOP = 2.5758293035489004  # two-sided 99% normal quantile: how far a stopped value may still move


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


@dataclass(frozen=True)
class CellView:
    """What the stopping rule reads of a cell: its interval, its degradation so far, its samples."""

    interval: Interval
    degradation: float
    n: int


def settled(a: CellView, b: CellView, total: Optional[float], z_stop: float = Z_STOP) -> bool:
    """Rule 2 of the module docstring for one pair: may ``a`` keep its value next to ``b``?

    ``total`` is the data's sample count ``N`` (None: unknown, ``f = 0``).

    >>> iv = lambda lo, hi: Interval(lo, hi, "mean", 64)
    >>> a, b = CellView(iv(0.10, 0.14), 0.12, 64), CellView(iv(0.13, 0.17), 0.15, 64)
    >>> settled(a, b, None), settled(a, b, 128)   # apart by 0.03: not at 99% yet, but half the data is seen
    (False, True)
    """
    sa, sb = a.interval.half_width / Z, b.interval.half_width / Z
    fa = min(a.n / total, 1.0) if total else 0.0
    fb = min(b.n / total, 1.0) if total else 0.0
    moves = z_stop * math.sqrt(sa * sa * (1 - fa) + sb * sb * (1 - fb))
    exact = Z * math.sqrt(sa * sa * fa + sb * sb * fb)
    return abs(a.degradation - b.degradation) > moves - exact


@dataclass
class StopRule:
    """Rules 1 and 2 of the module docstring, applied after each batch (the executor and the
    benchmark's replay share it). ``z_stop=None``: rule 1 alone (for comparison only: it may
    swap layers that the full data separates)."""

    tolerance: float = DEFAULT_TOLERANCE
    min_samples: int = MIN_SAMPLES
    z_stop: Optional[float] = Z_STOP

    def __post_init__(self) -> None:
        self.decisions: dict[Any, str] = {}
        self._frozen: dict[Any, CellView] = {}

    def after_batch(self, cells: Any, active: set, hib: bool, seen: int, batches: int,
                    total_batches: Optional[int]) -> set:
        """The active cells of ``cells`` (key ``(layer, bits)`` -> accumulator) that stop now."""
        if seen < self.min_samples:  # the active cells have seen every batch: none may stop yet
            return set()
        total = seen / batches * total_batches if total_batches else None
        views = dict(self._frozen)
        for key in active:
            acc = cells[key]
            iv = metric_interval(acc.metric, hib) if acc.n >= 2 else None
            if iv is not None:
                views[key] = CellView(iv, acc.metric.paired.degradation(hib), acc.n)
        by_bits: dict[int, list] = {}
        for key in views:
            by_bits.setdefault(key[1], []).append(key)
        stop = set()
        for key in active:
            v = views.get(key)
            if v is None or v.n < self.min_samples:
                continue
            d = decide(v.interval, self.tolerance)
            if d is None:
                continue
            if self.z_stop is None or all(settled(v, views[x], total, self.z_stop) for x in by_bits[key[1]] if x != key):
                stop.add(key)
                self.decisions[key] = d
        for key in stop:
            self._frozen[key] = views[key]
        return stop


def check_adaptive_metric(metric: Any) -> None:
    """A one-line error for a metric without an interval rule (a user callable)."""
    if interval_rule(metric) is None:
        name = getattr(metric, "name", "custom")
        from quantlens.metrics.task import metrics_with_intervals

        raise QuantlensError(f"--adaptive needs a metric with an interval ({', '.join(metrics_with_intervals())}); "
                             f"{name!r} has none: drop --adaptive")


class AdaptiveExecutor:
    """The serial batch loop, skipping decided cells (see module docstring)."""

    name = "adaptive"

    def __init__(self, tolerance: float = DEFAULT_TOLERANCE, min_samples: int = MIN_SAMPLES, z_stop: float = Z_STOP) -> None:
        self.rule = StopRule(tolerance, min_samples, z_stop)
        self.cone_passes = 0
        self.full_cone_passes = 0

    @property
    def decisions(self) -> dict:
        return self.rule.decisions

    def plan(self, sweep: Any, num_batches: Optional[int]) -> dict:
        return {"backend": "adaptive", "tolerance": self.rule.tolerance, "min_samples": self.rule.min_samples,
                "z_stop": self.rule.z_stop}

    def run(self, recipe: Any, sweep: Any, data: Any, store: Any = None, progress: Optional[Progress] = None) -> Any:
        if store is not None:
            raise QuantlensError("--adaptive does not resume from a cache yet: add --no-cache")
        bar = progress or Progress()
        state = sweep.new_state()
        check_adaptive_metric(state.baseline)
        active = set(state.cells)
        hib = sweep.higher_is_better
        total_batches = count_batches(data)
        for batch in iterate(data, "data"):
            self.full_cone_passes += len(state.cells)
            if not active:
                state.num_samples += _batch_size(batch)
                state.batches += 1
                continue
            self.cone_passes += len(active)
            sweep.process_batch(state, batch, on_layer=bar.advance, active=active)
            active -= self.rule.after_batch(state.cells, active, hib, state.num_samples, state.batches, total_batches)
        return state

    def summary(self) -> dict:
        full = self.full_cone_passes
        counts: dict[str, int] = {}
        for d in self.decisions.values():
            counts[d] = counts.get(d, 0) + 1
        return {"tolerance": self.rule.tolerance, "min_samples": self.rule.min_samples, "z_stop": self.rule.z_stop,
                "cone_passes": self.cone_passes,
                "exact_cone_passes": full, "saved": 1 - self.cone_passes / full if full else 0.0,
                "speedup": full / self.cone_passes if self.cone_passes else float("inf"), "decided": counts}


def _batch_size(batch: Any) -> int:
    return int(batch[0].batch_size)


def compare_to_exact(exact: Any, other: Any, bits: int, tol: float) -> dict:
    """Rank agreement of ``other`` (adaptive or estimated) with ``exact`` at ``bits``.

    ``separated_pairs``: layer pairs whose exact intervals separate them; ``agree``: of those,
    ordered the same way by ``other`` (a tie is not); ``worse``: layers significantly worse than
    ``tol`` in ``exact``; ``missed``: those of them that ``other`` does not find worse than ``tol``
    (its interval, or its value without one).
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
    missed, worse = [], 0
    for c in cells:
        if c.ci_low > tol:
            worse += 1
            o = other.cell(c.layer, bits)
            flagged = o.ci_low > tol if not math.isnan(o.ci_low) else o.degradation > tol
            if not flagged:
                missed.append(c.layer)
    return {"bits": bits, "separated_pairs": pairs, "agree": agree, "worse": worse, "missed": missed}
