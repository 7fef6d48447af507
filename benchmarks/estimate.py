"""``python -m benchmarks.estimate [--subject all|resnet18|effnet|lm|smollm] [--bits 3,4,5,6,7,8 --bits 4] [--formats nvfp4] [--a-bits none] [--budget 0.25] [--images N] [--size S] [--tokens T] [--repeat R] [--no-warm]``

The first-order estimate (:mod:`quantlens.sweep.estimate`) against the exact sweep, in one
run, on the same model, data, bit-widths and metric. Both timings are the whole of
``ql.analyze`` (capture, calibration, passes): the estimate's includes its check (the top-k and
k random layers measured exactly with cones). With ``--threads 1`` (the default) the CPU
time is the work done and the ratio holds on a shared machine; the wall time is shown too. Spearman is over all layers at each bit-width,
estimate vs exact degradation; ``check`` is what the estimate reports about itself.

Without warm-up (``--no-warm``) each timed run starts from an empty capture cache
(:mod:`quantlens.graph.capture_cache`), as a fresh ``quantlens analyze`` process does: both pay
their capture. (Before, the exact run found the estimate's capture in the process's cache: on
SmolLM2 the estimate paid a ``torch.export`` that the exact sweep skipped.) One-time imports
still fall on whichever runs first, the estimate.

The check measures, within ``--budget`` times the estimate's time, candidates among the top
``k``, the ``k`` below them and ``k`` random layers, cheapest cones first
(:mod:`quantlens.sweep.check`); ``check`` reports how many it covered, its predicted and measured
time, and the Spearman over the checked cells both against the check itself and against the exact
sweep (the same cells).

``smollm`` is SmolLM2-135M (:mod:`quantlens.demo.smollm`, ``--images`` windows of ``--tokens``
tokens, batches of 4); run it under ``flock /tmp/bigmem.lock`` beyond 8 x 128.

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
from quantlens.graph.capture_cache import capture_cache
from quantlens.sweep.api import make_config
from quantlens.sweep.estimate import spearman

__all__ = ["main", "compare"]

SUBJECTS = ("resnet18", "effnet", "lm", "smollm")


def _subject(name: str, n: int, batch: int, size: int, tokens: int = 128) -> tuple[Any, Any]:
    if name == "smollm":
        from quantlens.demo import smollm

        return smollm.model(), smollm.data(windows=n, tokens=tokens)
    if name == "lm":
        from quantlens.demo import lm as demo_lm

        return demo_lm.model(), demo_lm.data(batch_size=batch, batches=max(1, n // batch))
    from benchmarks.data import photo_crops
    from benchmarks.models import efficientnet_lite0, resnet18

    return (resnet18() if name == "resnet18" else efficientnet_lite0()), photo_crops(n, batch, size=size, seed=0)


def compare(model: Any, data: Any, bits: list, metric: str = "kl", k: int = 5, repeat: int = 1,
            output_key: Any = None, budget: float = 0.25, a_bits: Any = 8, warm: bool = True) -> dict:
    """Time ``analyze(method="estimate")`` and the exact ``analyze`` on the same inputs, wall and CPU
    (process) time, the least of ``repeat`` alternating runs of each; Spearman per bit-width.
    With one thread the CPU time is the work done, whatever else runs on the machine."""
    named = any(isinstance(b, str) for b in bits)
    cfg = make_config((), a_bits, formats=bits) if named else make_config(bits, a_bits)
    if warm:
        first = [next(iter(data))]  # warm both paths up (first-call costs) on one batch
        ql.analyze(model, first, config=cfg, metric=metric, method=ql.Estimate(k=1), output_key=output_key)
        ql.analyze(model, first, config=cfg, metric=metric, output_key=output_key)
    wall = {"estimate": float("inf"), "exact": float("inf")}
    cpu = dict(wall)
    check = float("inf")
    for _ in range(repeat):
        for mode in ("estimate", "exact"):
            if not warm:
                capture_cache().clear()  # each run captures, as its own process would
            t0, c0 = time.perf_counter(), time.process_time()
            r = ql.analyze(model, data, config=cfg, metric=metric,
                           method=ql.Estimate(k=k, budget=budget) if mode == "estimate" else "exact", output_key=output_key)
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
    b_chk = info["check_bits"]
    checked = [c for c in est.at(b_chk) if c.samples > 0]
    rho_common = spearman([c.estimate for c in checked], [exact.cell(c.layer, b_chk).degradation for c in checked])
    same = all(c.degradation == exact.cell(c.layer, b_chk).degradation for c in checked)
    return {"bits": bits, "layers": len(est.layers), "cells": len(est.cells),
            "cpu_s": {m: round(v, 2) for m, v in cpu.items()}, "speedup_cpu": round(cpu["exact"] / cpu["estimate"], 1),
            "wall_s": {m: round(v, 2) for m, v in wall.items()}, "speedup_wall": round(wall["exact"] / wall["estimate"], 1),
            "check_wall_s": round(check, 2), "spearman_all_layers": {b: round(v, 3) for b, v in rho.items()},
            "check": {"bits": b_chk, "cells": info["checked_cells"], "candidates": info["candidate_cells"],
                      "why": [c["why"] for c in info["candidates"] if c["checked"]],
                      "budget": budget, "budget_s": round(info["budget_s"], 2), "predicted_s": round(info["predicted_check_s"], 2),
                      "estimate_s": round(info["estimate_s"], 2), "forward_s": round(info["forward_s"], 2),
                      "spearman": round(info["spearman"], 3), "spearman_vs_exact_sweep": round(rho_common, 3),
                      "cells_equal_exact_sweep": same, "topk_overlap": info["topk_overlap"][b_chk]}}


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subject", default="all", choices=["all", *SUBJECTS])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bits", action="append", help="a comma list of weight bit-widths; repeat for several sweeps "
                   "(default: 3,4,5,6,7,8 and 4)")
    p.add_argument("--formats", action="append", help="a comma list of named formats instead of --bits (nvfp4)")
    p.add_argument("--a-bits", default="8", help="activation bits, or none (float activations)")
    p.add_argument("--budget", type=float, default=0.25, help="the check's share of the estimate's time")
    p.add_argument("--tokens", type=int, default=128, help="tokens per window (smollm)")
    p.add_argument("--no-warm", action="store_true", help="no warm-up runs on the first batch")
    p.add_argument("--metric", default=None, help="kl for the CNNs, token_kl for the LM (default)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="alternating runs of each; the least time counts")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    bit_sets: list[list] = ([s.split(",") for s in a.formats] if a.formats else
                            [[int(b) for b in s.split(",")] for s in (a.bits or ["3,4,5,6,7,8", "4"])])
    a_bits = None if a.a_bits == "none" else int(a.a_bits)
    rows = []
    for name in SUBJECTS if a.subject == "all" else (a.subject,):
        model, data = _subject(name, a.images, a.batch, a.size, a.tokens)
        metric = a.metric or ("token_kl" if name in ("lm", "smollm") else "kl")
        key = "logits" if name in ("lm", "smollm") else None
        for bits in bit_sets:
            row = {"subject": name, "images": a.images, "size": a.size, "metric": metric,
                   **compare(model, data, bits, metric, a.k, a.repeat, key, a.budget, a_bits, not a.no_warm)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
