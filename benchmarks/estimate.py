"""``python -m benchmarks.estimate [--subject all|resnet18|effnet|lm] [--bits 3,4,5,6,7,8 --bits 4] [--images N] [--size S] [--repeat R]``

The first-order estimate (:mod:`quantlens.sweep.estimate`) against the exact sweep, in one
run, on the same model, data, bit-widths and metric. Both timings are the whole of
``ql.analyze`` (capture, calibration, passes): the estimate's includes its check (the top-k and
k random layers measured exactly with cones). With ``--threads 1`` (the default) the CPU
time is the work done and the ratio holds on a shared machine; the wall time is shown too. Spearman is over all layers at each bit-width,
estimate vs exact degradation; ``check`` is what the estimate reports about itself.

``lm`` is the language-model demo (:mod:`quantlens.demo.lm`, a 4-block Llama trained on the
standard library's docstrings; held-out text, ``--images`` sequences of 128 bytes) scored per
token: ``--metric`` defaults to ``token_kl`` there, and ``nll`` can be asked for too.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

import quantlens as ql
from quantlens.sweep.api import make_config
from quantlens.sweep.estimate import spearman

__all__ = ["main", "compare"]

SUBJECTS = ("resnet18", "effnet", "lm")


def _subject(name: str, n: int, batch: int, size: int) -> tuple[Any, Any]:
    if name == "lm":
        from quantlens.demo import lm as demo_lm

        return demo_lm.model(), demo_lm.data(batch_size=batch, batches=max(1, n // batch))
    from benchmarks.data import photo_crops
    from benchmarks.models import efficientnet_lite0, resnet18

    return (resnet18() if name == "resnet18" else efficientnet_lite0()), photo_crops(n, batch, size=size, seed=0)


def compare(model: Any, data: Any, bits: list[int], metric: str = "kl", k: int = 5, repeat: int = 1,
            output_key: Any = None) -> dict:
    """Time ``analyze(method="estimate")`` and the exact ``analyze`` on the same inputs, wall and CPU
    (process) time, the least of ``repeat`` alternating runs of each; Spearman per bit-width.
    With one thread the CPU time is the work done, whatever else runs on the machine."""
    cfg = make_config(bits)
    warm = [next(iter(data))]  # warm both paths up (first-call costs) on one batch
    ql.analyze(model, warm, config=cfg, metric=metric, method=ql.Estimate(k=1), output_key=output_key)
    ql.analyze(model, warm, config=cfg, metric=metric, output_key=output_key)
    wall = {"estimate": float("inf"), "exact": float("inf")}
    cpu = dict(wall)
    check = float("inf")
    for _ in range(repeat):
        for mode in ("estimate", "exact"):
            t0, c0 = time.perf_counter(), time.process_time()
            r = ql.analyze(model, data, config=cfg, metric=metric, method=ql.Estimate(k=k) if mode == "estimate" else "exact",
                           output_key=output_key)
            wall[mode] = min(wall[mode], time.perf_counter() - t0)
            cpu[mode] = min(cpu[mode], time.process_time() - c0)
            if mode == "estimate":
                est, check = r, min(check, r.extra["estimate"]["check_s"])
            else:
                exact = r
    rho = {}
    for b in bits:
        cells = est.at(b)
        rho[b] = spearman([c.estimate for c in cells], [exact.cell(c.layer, b).degradation for c in cells])
    info = est.extra["estimate"]
    return {"bits": bits, "layers": len(est.layers), "cells": len(est.cells),
            "cpu_s": {m: round(v, 2) for m, v in cpu.items()}, "speedup_cpu": round(cpu["exact"] / cpu["estimate"], 1),
            "wall_s": {m: round(v, 2) for m, v in wall.items()}, "speedup_wall": round(wall["exact"] / wall["estimate"], 1),
            "check_wall_s": round(check, 2), "spearman_all_layers": {b: round(v, 3) for b, v in rho.items()},
            "check": {"bits": info["check_bits"], "cells": info["checked_cells"], "spearman": round(info["spearman"], 3),
                      "topk_overlap": info["topk_overlap"][info["check_bits"]]}}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject", default="all", choices=["all", *SUBJECTS])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bits", action="append", help="a comma list of weight bit-widths; repeat for several sweeps "
                   "(default: 3,4,5,6,7,8 and 4)")
    p.add_argument("--metric", default=None, help="kl for the CNNs, token_kl for the LM (default)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="alternating runs of each; the least time counts")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    bit_sets = [[int(b) for b in s.split(",")] for s in (a.bits or ["3,4,5,6,7,8", "4"])]
    rows = []
    for name in SUBJECTS if a.subject == "all" else (a.subject,):
        model, data = _subject(name, a.images, a.batch, a.size)
        metric = a.metric or ("token_kl" if name == "lm" else "kl")
        key = "logits" if name == "lm" else None
        for bits in bit_sets:
            row = {"subject": name, "images": a.images, "size": a.size, "metric": metric,
                   **compare(model, data, bits, metric, a.k, a.repeat, key)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
