"""``python -m benchmarks.adaptive [--subject demo|effnet] [--metric agreement] [--tolerance 0.5%] ...``

Adaptive sample size vs the exact sweep, on the same data in one run: the exact sweep records
every cell's accumulator after each batch; the adaptive rule (:mod:`quantlens.analysis.sweep.adaptive`)
is then replayed on those records, which is exactly what :class:`AdaptiveExecutor` computes
(the sums after ``k`` batches are the same; ``tests/analysis/sweep/test_adaptive.py`` checks replay == executor).
Prints the share of cone passes saved and the rank agreement with the exact sweep wherever the
exact intervals separate two layers, and the significant layers the adaptive run missed.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import quantlens as ql
from quantlens.analysis.sweep.accumulate import CellAccumulator
from quantlens.analysis.sweep.adaptive import MIN_SAMPLES, compare_to_exact, decide, parse_tolerance
from quantlens.data import iterate
from quantlens.metrics import make_metric
from quantlens.stats.intervals import metric_interval

__all__ = ["Recording", "replay", "main"]


class Recording:
    """The serial loop, keeping every cell's accumulator state after each batch."""

    name = "recording"

    def __init__(self) -> None:
        self.snaps: list[dict] = []
        self.samples: list[int] = []

    def plan(self, sweep: Any, num_batches: Any) -> dict:
        return {"backend": "recording"}

    def run(self, recipe: Any, sweep: Any, data: Any, store: Any = None, progress: Any = None) -> Any:
        state = sweep.new_state()
        for batch in iterate(data, "data"):
            sweep.process_batch(state, batch)
            self.snaps.append({k: acc.state() for k, acc in state.cells.items()})
            self.samples.append(state.num_samples)
        self.sweep, self.state = sweep, state
        return state


def replay(rec: Recording, tol: float, min_samples: int = MIN_SAMPLES) -> tuple[Any, dict]:
    """The adaptive result and its cone-pass counts from a recorded exact sweep."""
    sweep, state = rec.sweep, rec.state
    stop: dict = {}
    for k, snap in enumerate(rec.snaps):
        for key, st in snap.items():
            if key in stop:
                continue
            acc = CellAccumulator(make_metric(sweep.metric_spec))
            acc.load_state(st)
            if acc.n >= min_samples and decide(metric_interval(acc.metric, sweep.higher_is_better), tol) is not None:
                stop[key] = k
    last = len(rec.snaps) - 1
    cells = {}
    for key in state.cells:
        acc = CellAccumulator(make_metric(sweep.metric_spec))
        acc.load_state(rec.snaps[stop.get(key, last)][key])
        cells[key] = acc
    import dataclasses

    adaptive_state = dataclasses.replace(state, cells=cells)
    passes = sum(stop.get(key, last) + 1 for key in state.cells)
    full = len(state.cells) * len(rec.snaps)
    return sweep.result(adaptive_state), {"cone_passes": passes, "exact_cone_passes": full,
                                          "saved": 1 - passes / full, "speedup": full / passes}


def _subject(name: str, n: int, batch: int, size: int) -> tuple[Any, Any]:
    if name == "demo":
        from quantlens import demo

        return demo.model(), demo.data()
    from benchmarks.data import photo_crops
    from benchmarks.models import efficientnet_lite0

    return efficientnet_lite0(), photo_crops(n, batch, size=size, seed=0)


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject", default="demo", choices=["demo", "effnet"])
    p.add_argument("--metric", default="agreement")
    p.add_argument("--tolerance", default="0.5%")
    p.add_argument("--bits", default="4")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    bits = [int(b) for b in a.bits.split(",")]
    model, data = _subject(a.subject, a.images, a.batch, a.size)
    rec = Recording()
    t0 = time.perf_counter()
    exact = ql.analyze(model, data, w_bits=bits, metric=a.metric, backend=rec)
    t_exact = time.perf_counter() - t0
    tol = parse_tolerance(a.tolerance, pct_metric=a.metric in ("top1", "top5", "agreement"))
    adaptive, counts = replay(rec, tol)
    out = {"subject": a.subject, "metric": a.metric, "tolerance": tol, "samples": exact.num_samples, "bits": bits,
           "layers": len(exact.layers), "exact_s": t_exact, **counts,
           "early_stopped": sum(c.early_stop for c in adaptive.cells),
           "rank": [compare_to_exact(exact, adaptive, b, tol) for b in bits]}
    out["cells"] = [{"layer": c.layer, "bits": c.w_bits, "exact": [c.degradation, c.ci_low, c.ci_high],
                     "adaptive": [a_.degradation, a_.ci_low, a_.ci_high, a_.samples]}
                    for c in exact.cells for a_ in [adaptive.cell(c.layer, c.w_bits)]]
    print(json.dumps({k: v for k, v in out.items() if k != "cells"}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
