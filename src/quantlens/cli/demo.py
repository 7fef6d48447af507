"""``quantlens demo``: the full sweep of the shipped digits CNN on its held-out digits.

``quantlens demo --lm``: the shipped small byte-level Llama, trained on the standard library's
docstrings (:mod:`quantlens.demo.lm`), all its Linear layers swept by held-out perplexity.
``--retrain`` trains either model anew first (it matches the shipped weights only on the CPU
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
    from quantlens.core.workload import RunOptions, Workload
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
