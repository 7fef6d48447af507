"""``python -m benchmarks.adaptive_coverage [--reps 2000]``

How often the interval an adaptive run reports for a cell covers the cell's true degradation.
A cell stops at the first look where its interval decides it (rule 1 of
:mod:`quantlens.sweep.adaptive`; alone here: one cell, no neighbours to settle), so the
interval it keeps was chosen by the data it was computed from, and its coverage can fall below
the nominal 95% of a fixed-size interval. Synthetic paired per-sample scores of a mean metric
(kl), ``q_n ~ N(delta, sd)`` against the reference's 0, looks after every batch of 64, 2,048
samples at most, the real :class:`~quantlens.sweep.adaptive.StopRule` and intervals.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from quantlens.engine.accumulate import CellAccumulator
from quantlens.sweep.adaptive import StopRule
from quantlens.metrics.task import make_metric
from quantlens.stats.intervals import metric_interval

__all__ = ["coverage", "main"]

CASES = ((0.0, 0.02), (0.003, 0.03), (0.006, 0.05), (0.008, 0.05), (0.02, 0.05))


def coverage(delta: float, sd: float, reps: int, tol: float = 0.005, batch: int = 64, batches: int = 32,
             seed: int = 0) -> dict[str, Any]:
    """Coverage of the reported 95% interval over ``reps`` seeded runs, and the share stopped early."""
    g = torch.Generator().manual_seed(seed)
    covered = early = 0
    for _ in range(reps):
        rule = StopRule(tol)
        acc = CellAccumulator(make_metric("kl"))
        for k in range(batches):
            one = CellAccumulator(make_metric("kl"))
            q = torch.randn(batch, generator=g, dtype=torch.float64) * sd + delta
            one.metric.paired.update(torch.zeros(batch, dtype=torch.float64), q)
            one.n = batch
            acc = acc.merge(one)
            if rule.after_batch({(0, 4): acc}, {(0, 4)}, False, acc.n, k + 1, batches):
                early += k + 1 < batches
                break
        iv = metric_interval(acc.metric, False)
        covered += iv.low <= delta <= iv.high
    return {"delta": delta, "sd": sd, "tolerance": tol, "reps": reps, "stopped_early": early / reps,
            "coverage": covered / reps}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=2000)
    a = p.parse_args(argv)
    for delta, sd in CASES:
        print(json.dumps(coverage(delta, sd, a.reps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
