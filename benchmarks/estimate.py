"""``python -m benchmarks.estimate [--subject resnet18|effnet] [--images N] [--size S] [--bits 4]``

The first-order estimate (:mod:`quantlens.analysis.sweep.estimate`) against the exact sweep, in one
run on the same data: wall time of the estimate (calibration + one forward/backward per batch +
each layer's own op) vs the exact cone sweep, and Spearman over all cells at each bit-width.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import quantlens as ql
from quantlens.analysis.sweep.api import make_config
from quantlens.data import iterate
from quantlens.analysis.sweep.estimate import first_order, spearman
from quantlens.parallel import SweepRecipe

__all__ = ["main"]


def _subject(name: str, n: int, batch: int, size: int) -> tuple[Any, Any]:
    from benchmarks.data import photo_crops
    from benchmarks.models import efficientnet_lite0, resnet18

    return (resnet18() if name == "resnet18" else efficientnet_lite0()), photo_crops(n, batch, size=size, seed=0)


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject", default="resnet18", choices=["resnet18", "effnet"])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bits", default="4")
    p.add_argument("--metric", default="kl")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    bits = [int(b) for b in a.bits.split(",")]
    model, data = _subject(a.subject, a.images, a.batch, a.size)
    cfg = make_config(bits)
    t0 = time.perf_counter()
    sweep = SweepRecipe(model, next(iterate(data)), cfg, a.metric, "cpu", None, None, "cone", None).build()
    sweep.calibrate(data)
    est = first_order(sweep, data)
    t_est = time.perf_counter() - t0
    t1 = time.perf_counter()
    exact = ql.analyze(model, data, config=cfg, metric=a.metric)
    t_exact = time.perf_counter() - t1
    names = {i: sweep.runner.layers[i].name for i in sweep.layer_ids}
    rho = {}
    for b in bits:
        xs = [est[(i, b)] for i in sweep.layer_ids]
        rho[b] = {"degradation": spearman(xs, [exact.cell(names[i], b).degradation for i in sweep.layer_ids]),
                  "noise": spearman(xs, [exact.cell(names[i], b).noise for i in sweep.layer_ids])}
    out = {"subject": a.subject, "images": exact.num_samples, "size": a.size, "metric": a.metric, "bits": bits,
           "layers": len(sweep.layer_ids), "estimate_s": t_est, "exact_s": t_exact, "speedup": t_exact / t_est, "spearman": rho}
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
