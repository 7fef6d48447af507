"""``quantlens additivity``: do single-layer degradations add up (the paper's Figure 2)?"""

from __future__ import annotations

import argparse
import math

from quantlens.cli._loop_args import add_common, experiment_spec, load_workload, parse_bits, run_options, sweep_or_run
from quantlens.cli.common import add_model_args, console, parse_a_bits, prepare_out_dir

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("additivity", help="compare summed single-layer degradations with jointly quantized networks")
    add_model_args(p)
    p.add_argument("--low", default="4", help="weight bits of the randomly chosen layers (default 4)")
    p.add_argument("--high", default="8", help="weight bits of the other layers (default 8)")
    p.add_argument("--configs", type=int, default=20, help="how many random configurations (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subsets (default 0)")
    p.add_argument("--shift-threshold", type=float, default=0.1, help="flag layers whose relative output mean shift exceeds this (default 0.1)")
    add_common(p)
    p.set_defaults(func=run)


def _f(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    from quantlens.experiments.additivity import run_additivity
    from quantlens.quant.spec import parse_granularity
    from quantlens.errors import QuantlensError

    low, high = parse_bits(args.low, "--low"), parse_bits(args.high, "--high")
    a_bits = parse_a_bits(args.a_bits)
    if args.configs < 2:
        raise QuantlensError(f"--configs must be at least 2 to compute a correlation, got {args.configs}")
    if low == high:
        raise QuantlensError(f"--low and --high are both {low}: give two different bit-widths")
    parse_granularity(args.granularity)
    out = prepare_out_dir(args.out)
    workload = load_workload(args)
    sweep = sweep_or_run(args, out, workload, sorted({low, high}), a_bits)
    r = run_additivity(
        workload, options=run_options(args), low=low, high=high, configs=args.configs, seed=args.seed, spec=experiment_spec(args),
        shift_threshold=args.shift_threshold, sweep=sweep, model_name=args.model,
    )
    r.to_json(out / "additivity.json")
    console.print(
        f"{len(r.points)} configurations ({low}/{high}-bit weights): {r.metric_name} Pearson r = {_f(r.pearson_r)}, "
        f"slope = {_f(r.slope)}; output noise r = {_f(r.noise_pearson_r)}, slope = {_f(r.noise_slope)}"
    )
    if r.flagged:
        console.print(f"large output mean shift (> {r.shift_threshold} std) when quantized alone: {', '.join(r.flagged)}; "
                      "where measured exceeds predicted, look there first (section 4.4)")
    from quantlens.report import save_report

    report = save_report(sweep, out)
    console.print(f"wrote {out / 'additivity.json'} (and {report})")
    return 0
