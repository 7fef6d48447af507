"""``quantlens demo``: train (once) a digits CNN and run the full sweep on held-out digits."""

from __future__ import annotations

import argparse
import time

from .common import (
    console,
    parse_a_bits,
    parse_bits_list,
    prepare_out_dir,
    print_summary,
)

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole analysis on an embedded digits CNN (no download)")
    p.add_argument("--out", default="quantlens-demo", metavar="DIR", help="output directory (default: quantlens-demo)")
    p.add_argument("--w-bits", default="3,4,5,6,7,8", help="weight bit-widths (default: 3,4,5,6,7,8)")
    p.add_argument("--a-bits", default="8", help="activation bits or 'none' (default: 8)")
    p.add_argument("--retrain", action="store_true", help="retrain the model instead of using the cached one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import demo
    from ..analysis.api import analyze

    t0 = time.perf_counter()
    w_bits, a_bits = parse_bits_list(args.w_bits), parse_a_bits(args.a_bits)
    out = prepare_out_dir(args.out)
    cached = (demo.cache_dir() / f"{demo.TRAIN_VERSION}.pt").exists() and not args.retrain
    console.print(("loading the cached" if cached else "training the") + " digits CNN (scikit-learn digits, 1,347 train / 450 held out)")
    model = demo.model(retrain=args.retrain)
    data = demo.data()
    result = analyze(
        model,
        data,
        w_bits=w_bits,
        a_bits=a_bits,
        metric="top1",
        progress=not args.no_progress,
        model_name="quantlens.demo:model (digits CNN)",
    )
    result.to_json(out / "results.json")
    result.to_csv(out / "results.csv")
    from ..report import save_report

    report = save_report(result, out)
    print_summary(result, k=5)
    console.print(f"wrote {out}/results.json, results.csv and {report.name}; demo took {time.perf_counter() - t0:.1f} s")
    return 0
