"""A finished :class:`~quantlens.engine.state.SweepState` -> :class:`~quantlens.sweep.results.SweepResult`.

For each cell: ``degradation = H(y) - H(y_q)`` (sign flipped where lower is better) against the
sweep's baseline, or against the cell's own paired samples when it stopped early (adaptive);
its 95% interval from :func:`quantlens.stats.intervals.metric_interval`.

Example:
    >>> state = sweep.new_state()                                      # doctest: +SKIP
    >>> for batch in data: sweep.process_batch(state, batch)           # doctest: +SKIP
    >>> result = collect(sweep, state)                                 # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from quantlens.core import jsonio
from quantlens.engine.state import SweepState
from quantlens.engine.sweep import Sweep
from quantlens.stats.degradation import degradation
from quantlens.stats.intervals import metric_interval
from quantlens.quant.formats import get_format
from quantlens.quant.grids import detect_grid
from quantlens.sweep.results import Cell, LayerInfo, SweepResult, WeightStats

__all__ = ["collect", "layer_info", "weight_stats"]


STATS_CHUNK = 1 << 20  # values per float64 step of weight_stats: 8 MB


def weight_stats(w: Tensor, bins: int = 64, step: int = STATS_CHUNK) -> WeightStats:
    """Min, max, mean, std, count beyond 3 sigma, a histogram and the grid it sits on (if any) of a weight tensor.

    ``mean = sum(w) / n`` and ``std = sqrt(sum((w - mean)^2) / n)`` (two passes, the population
    std) in float64, ``step`` values at a time: no float64 copy of the whole weight (226 MB for
    SmolLM2's lm_head). The histogram is ``torch.histc`` over ``[min, max]`` (the top edge in the
    last bin), per value, so chunks change nothing; the sums differ from one whole-tensor float64
    sum in the last bits only."""
    grid = detect_grid(w)
    flat = w.detach().reshape(-1)
    n = flat.numel()
    lo, hi = float(flat.min()), float(flat.max())  # exact in the weight's own dtype
    chunks = [flat[k:k + step] for k in range(0, n, step)]
    mean = float(sum(float(c.double().sum()) for c in chunks)) / n
    sq = 0.0
    counts = torch.zeros(bins, dtype=torch.float64, device=flat.device)
    for c in chunks:  # one float64 copy of a chunk for its squares and its histogram
        d = c.double()
        sq += float((d - mean).pow(2).sum())
        if hi > lo:
            counts += torch.histc(d, bins, lo, hi)
    std = math.sqrt(sq / n)
    if hi <= lo:
        counts = torch.tensor([float(n)] + [0.0] * (bins - 1))
    edges = torch.linspace(lo, hi, bins + 1)
    outliers = sum(int(((c.double() - mean).abs() > 3 * std).sum()) for c in chunks) if std > 0 else 0
    return WeightStats(
        min=lo,
        max=hi,
        mean=mean,
        std=std,
        outliers_3sigma=outliers,
        hist_counts=[int(c) for c in counts.tolist()],
        hist_edges=[float(e) for e in edges.tolist()],
        grid=grid.name if grid is not None else "",
    )


def layer_info(sweep: Sweep, state: SweepState) -> list[LayerInfo]:
    """Each swept layer's description: op, parameters, activation, weight statistics, observed ranges."""
    infos = []
    for i in sweep.layer_ids:
        l = sweep.runner.layers[i]
        ir, orr = state.in_range.get(i), state.out_range.get(i)
        infos.append(
            LayerInfo(
                index=l.index,
                name=l.name,
                op=l.op,
                params=l.params,
                kind=l.kind,
                activation=l.act,
                weight=weight_stats(sweep.runner.float_weight(i)),
                input_range=(ir.min, ir.max) if ir is not None and not ir.empty else None,
                output_range=(orr.min, orr.max) if orr is not None and not orr.empty else None,
            )
        )
    return infos

def collect(sweep: Sweep, state: SweepState, elapsed_s: float = float("nan"), model_name: str = "", extra: Optional[dict] = None) -> SweepResult:
    """The :class:`SweepResult` of ``state``: every cell's noise, SQNR, metric, degradation and interval."""
    baseline = state.baseline.compute()
    cells = []
    for i in sweep.layer_ids:
        l = sweep.runner.layers[i]
        std = state.channels[i].std()
        for b in sweep.config.columns:
            acc = state.cells[(i, b)]
            m = acc.metric.compute()
            deg = degradation(baseline, m, sweep.higher_is_better)
            iv = metric_interval(acc.metric, sweep.higher_is_better)
            if acc.n != state.num_samples:  # stopped early: its own paired samples, not the sweep's baseline
                deg = acc.metric.paired.degradation(sweep.higher_is_better)
            cells.append(
                Cell(
                    layer=l.name,
                    w_bits=get_format(b).bits if isinstance(b, str) else b,
                    format=sweep.config.weight_spec(b).format_name,
                    a_bits=sweep.config.a_bits,
                    noise=acc.noise_mean,
                    sqnr_db=acc.sqnr_db,
                    metric=m,
                    degradation=deg,
                    mean_shift=acc.mean_shift(std),
                    w_clip=sweep.qweights[(i, b)].clip,
                    ci_low=iv.low if iv else jsonio.NAN,
                    ci_high=iv.high if iv else jsonio.NAN,
                    samples=acc.n,
                    early_stop=acc.n < state.num_samples,
                )
            )
    return SweepResult(
        metric_name=sweep.metric_name,
        higher_is_better=sweep.higher_is_better,
        baseline=baseline,
        num_samples=state.num_samples,
        layers=tuple(layer_info(sweep, state)),
        cells=tuple(cells),
        config=sweep.config.to_dict(),
        model=model_name,
        engine=sweep.engine,
        elapsed_s=elapsed_s,
        extra=extra or {},
    )
