"""``python -m benchmarks.adaptive [--subject demo|effnet] [--metric agreement] [--tolerance 0.5%] ...``

Adaptive sample size vs the exact sweep, on the same data in one run: the exact sweep records
every cell's accumulator after each batch; the adaptive rule (:mod:`quantlens.sweep.adaptive`)
is then replayed on those records, which is exactly what :class:`AdaptiveExecutor` computes
(the sums after ``k`` batches are the same; ``tests/analysis/sweep/test_adaptive.py`` checks replay == executor).
Prints the share of cone passes saved and the rank agreement with the exact sweep wherever the
exact intervals separate two layers, and the significant layers the adaptive run missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any, Optional

import quantlens as ql
from quantlens.sweep.collect import collect
from quantlens.engine.accumulate import CellAccumulator
from quantlens.sweep.adaptive import MIN_SAMPLES, Z_STOP, StopRule, compare_to_exact, parse_tolerance
from quantlens.data.batches import iterate
from quantlens.metrics.task import make_metric

__all__ = ["Recording", "replay", "main"]


class Recording:
    """The serial loop, keeping every batch's own cell accumulators (they merge into any prefix)."""

    name = "recording"

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.sizes: list[int] = []

    def plan(self, sweep: Any, num_batches: Any) -> dict:
        return {"backend": "recording"}

    def run(self, recipe: Any, sweep: Any, data: Any, store: Any = None, progress: Any = None) -> Any:
        state = sweep.new_state()
        for batch in iterate(data, "data"):
            one = sweep.new_state()
            sweep.process_batch(one, batch)
            self.batches.append(one.cells)
            self.sizes.append(one.num_samples)
            state = state.merge(one)
        self.sweep, self.state = sweep, state
        return state


def replay(rec: Recording, tol: float, min_samples: int = MIN_SAMPLES, z_stop: Optional[float] = Z_STOP) -> tuple[Any, dict]:
    """The adaptive result and its cone-pass counts from a recorded exact sweep: the executor's
    loop with :class:`StopRule`, each active cell merging its next batch."""
    sweep, state = rec.sweep, rec.state
    rule = StopRule(tol, min_samples, z_stop)
    cells = {key: CellAccumulator(make_metric(sweep.metric_spec)) for key in state.cells}
    active, passes, seen = set(cells), 0, 0
    for k, (batch, size) in enumerate(zip(rec.batches, rec.sizes)):
        passes += len(active)
        seen += size
        for key in active:
            cells[key] = cells[key].merge(batch[key])
        active -= rule.after_batch(cells, active, sweep.higher_is_better, seen, k + 1, len(rec.batches))
    adaptive_state = dataclasses.replace(state, cells=cells)
    full = len(state.cells) * len(rec.batches)
    return collect(sweep, adaptive_state), {"cone_passes": passes, "exact_cone_passes": full,
                                          "saved": 1 - passes / full, "speedup": full / passes}


def _subject(name: str, n: int, batch: int, size: int) -> tuple[Any, Any]:
    if name == "demo":
        from quantlens.demo import digits as demo

        return demo.model(), demo.data()
    from benchmarks.data import photo_crops
    from benchmarks.models import efficientnet_lite0

    return efficientnet_lite0(), photo_crops(n, batch, size=size, seed=0)


def _row(exact: Any, adaptive: Any, counts: dict, bits: list, tol: float) -> dict:
    rank = [compare_to_exact(exact, adaptive, b, tol) for b in bits]
    return {**counts, "early_stopped": sum(c.early_stop for c in adaptive.cells),
            "separated_pairs": sum(r["separated_pairs"] for r in rank),
            "swapped": sum(r["separated_pairs"] - r["agree"] for r in rank),
            "exact_worse": sum(r["worse"] for r in rank), "missed": [m for r in rank for m in r["missed"]], "rank": rank}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject", default="demo", choices=["demo", "effnet"])
    p.add_argument("--metric", default="agreement", help="one or more, comma-separated: agreement,kl")
    p.add_argument("--tolerance", default="0.5%")
    p.add_argument("--bits", default="4")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--z-stop", default=str(Z_STOP),
                   help="rule 2's z_s; more than one (comma-separated): each is replayed on the same record "
                        "(the first is the main row; the decided-only rule is always replayed too)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    bits = [int(b) for b in a.bits.split(",")]
    model, data = _subject(a.subject, a.images, a.batch, a.size)
    rows = []
    for metric in a.metric.split(","):
        rec = Recording()
        t0 = time.perf_counter()
        exact = ql.analyze(model, data, w_bits=bits, metric=metric, backend=rec)
        t_exact = time.perf_counter() - t0
        tol = parse_tolerance(a.tolerance, pct_metric=metric in ("top1", "top5", "agreement"))
        zs = [float(z) for z in a.z_stop.split(",")]
        adaptive, counts = replay(rec, tol, z_stop=zs[0])
        out = {"subject": a.subject, "metric": metric, "tolerance": tol, "z_stop": zs[0], "samples": exact.num_samples,
               "bits": bits, "layers": len(exact.layers), "exact_s": t_exact, **_row(exact, adaptive, counts, bits, tol)}
        # the decided-only rule (rule 1 alone, before rule 2 existed) and other z_s, on the same record
        for name, z in [("decided_only", None)] + [(f"z_stop={z}", z) for z in zs[1:]]:
            other, c1 = replay(rec, tol, z_stop=z)
            out[name] = {k: v for k, v in _row(exact, other, c1, bits, tol).items() if k != "rank"}
        out["cells"] = [{"layer": c.layer, "bits": c.w_bits, "exact": [c.degradation, c.ci_low, c.ci_high],
                         "adaptive": [a_.degradation, a_.ci_low, a_.ci_high, a_.samples]}
                        for c in exact.cells for a_ in [adaptive.cell(c.layer, c.w_bits)]]
        rows.append(out)
        print(json.dumps({k: v for k, v in out.items() if k not in ("cells", "rank")}), flush=True)
    print(f"{'subject':8s} {'metric':10s} {'N':>5s} {'bits':5s} {'saved':>6s} {'fewer':>6s} {'pairs':>6s} {'swapped':>7s} "
          f"{'worse':>5s} {'missed':>6s} | decided-only: {'fewer':>6s} {'swapped':>7s} {'missed':>6s}")
    for r in rows:
        for name in [k for k in r if k.startswith("z_stop=")]:
            o = r[name]
            print(f"  {r['metric']} with {name}: {o['speedup']:.2f}x fewer, {o['swapped']} of {o['separated_pairs']} "
                  f"separated pairs swapped, {len(o['missed'])} missed")
        d = r["decided_only"]
        print(f"{r['subject']:8s} {r['metric']:10s} {r['samples']:5d} {','.join(map(str, r['bits'])):5s} {r['saved']:6.1%} "
              f"{r['speedup']:5.2f}x {r['separated_pairs']:6d} {r['swapped']:7d} {r['exact_worse']:5d} {len(r['missed']):6d} | "
              f"{'':14s}{d['speedup']:5.2f}x {d['swapped']:7d} {len(d['missed']):6d}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
