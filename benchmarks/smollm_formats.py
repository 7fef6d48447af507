"""``python -m benchmarks.smollm_formats``: SmolLM2-135M under today's formats, on the docstrings.

1. the checked estimate over ``--formats`` (weights only, activations float), every layer;
2. the exact cells of three layers on the cone engine against the naive engine (same cells);
3. W4A4 (``nvfp4`` weights and activations) per role of the blocks, whole-network cells.

Writes one JSON file (``--json``) and prints the five worst layers per format.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="int4-g128,mxfp4,nvfp4,fp8-e4m3")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--json", default="smollm_formats.json")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: estimate,exact,w4a4")
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    import quantlens as ql
    from quantlens.demo import smollm

    skip = set(args.skip.split(","))
    formats = args.formats.split(",")
    model, data = smollm.model(), smollm.data(windows=args.windows, tokens=args.tokens)
    work = ql.Workload(model, data, metric="perplexity", output_key="logits")
    out: dict = {"formats": formats, "windows": args.windows, "tokens": args.tokens}
    if "estimate" not in skip:
        t0 = time.perf_counter()
        est = ql.analyze(work, formats=formats, a_bits=None, method=ql.Estimate(k=5))
        out["estimate"] = {"seconds": time.perf_counter() - t0, "check": est.extra["estimate"],
                           "baseline": est.baseline,
                           "worst": {f: [(c.layer, c.estimate) for c in sorted(est.at(f), key=lambda c: -c.estimate)[:5]] for f in formats}}
        est.to_json("smollm_estimate_results.json")
        print(json.dumps(out["estimate"], indent=1, default=str)[:4000], flush=True)
    if "exact" not in skip:
        layers = ["model.layers.0.self_attn.q_proj", "model.layers.15.mlp.down_proj", "model.layers.29.mlp.down_proj"]
        t0 = time.perf_counter()
        cone = ql.analyze(work, formats=formats, a_bits=None, layers=layers)
        t1 = time.perf_counter()
        naive = ql.analyze(work, formats=formats, a_bits=None, layers=layers, engine="naive")
        t2 = time.perf_counter()
        diff = max(abs(a.noise - b.noise) / max(abs(b.noise), 1e-30) for a, b in zip(cone.cells, naive.cells))
        out["exact"] = {"cone_s": t1 - t0, "naive_s": t2 - t1, "max_rel_noise_diff": diff,
                        "metric_equal": all(a.metric == b.metric for a, b in zip(cone.cells, naive.cells)),
                        "cells": [(c.layer, c.format, c.degradation, c.ci_low, c.ci_high, c.sqnr_db) for c in cone.cells]}
        print(json.dumps(out["exact"], indent=1, default=str), flush=True)
    if "w4a4" not in skip:
        from quantlens.experiments.role_sweep import analyze_roles

        t0 = time.perf_counter()
        cfg = ql.SweepConfig(w_bits=(), formats=("nvfp4",), a_format="nvfp4")
        roles = analyze_roles(work, config=cfg)
        out["w4a4_roles"] = {"seconds": time.perf_counter() - t0,
                             "cells": [(c.layer, c.degradation, c.ci_low, c.ci_high) for c in roles.at("nvfp4")]}
        print(json.dumps(out["w4a4_roles"], indent=1, default=str), flush=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1, default=str)


if __name__ == "__main__":
    main()
