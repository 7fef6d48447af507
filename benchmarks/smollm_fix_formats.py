"""``python -m benchmarks.smollm_fix_formats``: the paper's Table 1 and Figure 2 on SmolLM2-135M, per format.

For each weight format of ``--formats`` (activations float, or ``--a-format``):

1. the checked estimate ranks all 211 layers; the ``--shortlist`` worst are measured exactly
   (cone engine) and the fix loop takes its culprits from those exact cells;
2. ``fix_loop``: every applicable fix on each of the ``--top`` culprits alone (single-layer
   cells), then the whole network (perplexity with its 95% interval and the seconds each row
   took): float, naive, each fix on every layer (``global:...``), the culprits' best fixes (``local``),
   and those on top of the best global fix (``local+global:...``); why each culprit broke.

Then, with ``--additivity LOW,HIGH`` (e.g. ``nvfp4,fp8-e4m3``): the exact sweep of every layer at
both formats and ``--configs`` random mixed configurations, predicted (sum of single-layer
perplexity changes) against measured.

Writes one JSON file (``--json``) and prints each table.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="nvfp4,mxfp4,int4-g128", help="weight formats, one Table 1 each (empty: none)")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--calib-windows", type=int, default=4)
    ap.add_argument("--shortlist", type=int, default=12)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--fixes", default="", help="candidate fixes (default: the fix loop's DEFAULT_FIXES)")
    ap.add_argument("--global-fixes", default="", help="fixes applied to every layer, one global row each; 'same': those of --fixes (default: the loop's)")
    ap.add_argument("--a-format", default="none", help="activations: none (weights only), or a format such as nvfp4 (W4A4)")
    ap.add_argument("--additivity", default="", help="LOW,HIGH formats for the additivity experiment (empty: skip)")
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--json", default="smollm_fix_formats.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    import quantlens as ql
    from quantlens.demo import smollm
    from quantlens.experiments.additivity import run_additivity
    from quantlens.experiments.fixloop import fix_loop

    model = smollm.model()
    data = smollm.data(windows=args.windows, tokens=args.tokens)
    calib = smollm.calib(windows=args.calib_windows, tokens=args.tokens)
    work = ql.Workload(model, data, calib, metric="perplexity", output_key="logits")
    spec = ql.ExperimentSpec(a_format=args.a_format)
    out: dict = {"windows": args.windows, "tokens": args.tokens, "calib_windows": args.calib_windows, "fix": {}}
    for fmt in [f for f in args.formats.split(",") if f]:
        t0 = time.perf_counter()
        est = ql.analyze(work, config=ql.ExperimentSpec(a_bits=None).sweep_config([fmt]), method=ql.Estimate(k=5))  # weights only: the shortlist
        shortlist = [c.layer for c in est.worst(fmt, k=args.shortlist)]
        t1 = time.perf_counter()
        exact = ql.analyze(work, config=spec.sweep_config([fmt]), layers=shortlist)
        t2 = time.perf_counter()
        kw: dict = {}
        if args.fixes:
            kw["candidates"] = [f for f in args.fixes.split(",") if f]
        if args.global_fixes:
            glob = args.fixes if args.global_fixes == "same" else args.global_fixes
            kw["global_rows"] = [(f,) for f in glob.split(",") if f]
        res, _ = fix_loop(work, exact, w_bits=fmt, spec=spec, top=args.top, model_name="SmolLM2-135M", **kw)
        t3 = time.perf_counter()
        out["fix"][fmt] = {"estimate_s": t1 - t0, "exact_shortlist_s": t2 - t1, "fix_s": t3 - t2, "shortlist": shortlist,
                           "result": res.to_dict()}
        print(f"\n== {fmt}: culprits {res.culprits}; kept {res.local_fixes or 'none'}; skipped {dict(res.skipped)} "
              f"(estimate {t1 - t0:.0f} s, exact shortlist {t2 - t1:.0f} s, fix loop {t3 - t2:.0f} s)")
        for r in res.rows:
            print(f"  {r.method:34s} ppl {r.metric:8.3f}  deg {r.degradation:+8.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]  {r.seconds:6.1f} s")
        for name, d in res.diagnosis:
            print(f"    why {name}: {', '.join(d.causes) or 'no symptom past the thresholds'} ({d.sentence()})")
        for f, why in res.skipped:
            print(f"    not tried: {f} ({why})")
        for t in res.trials:
            print(f"    trial {t.layer} {t.fix:16s} {t.naive_degradation:+.3f} -> {t.degradation:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}]"
                  f"{' kept' if t.kept else ''}{' (significant)' if t.significant else ''}")
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    if args.additivity:
        low, high = args.additivity.split(",")
        t0 = time.perf_counter()
        sweep = ql.analyze(work, config=spec.sweep_config([low, high]))
        t1 = time.perf_counter()
        add = run_additivity(work, low=low, high=high, configs=args.configs, spec=spec, sweep=sweep, model_name="SmolLM2-135M")
        t2 = time.perf_counter()
        out["additivity"] = {"sweep_s": t1 - t0, "measure_s": t2 - t1, "result": add.to_dict()}
        print(f"\n== additivity {low}/{high}: Pearson r {add.pearson_r:.3f}, slope {add.slope:.3f} "
              f"(sweep {t1 - t0:.0f} s, {len(add.points)} configurations {t2 - t1:.0f} s)")
        for p in add.points:
            print(f"  {len(p.low_bit_layers):3d} layers at {low}: predicted {p.predicted:+.3f}, measured {p.measured:+.3f} "
                  f"[{p.measured_ci_low:+.3f}, {p.measured_ci_high:+.3f}]")
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
