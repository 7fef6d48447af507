"""``quantlens additivity``: do single-layer degradations add up (the paper's Figure 2)?"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from quantlens.cli._loop_args import add_common, experiment_spec, load_workload, run_options, sweep_or_run
from quantlens.cli.common import add_model_args, console, prepare_out_dir

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("additivity", help="compare summed single-layer degradations with jointly quantized networks")
    add_model_args(p)
    p.add_argument("--low", default="4", metavar="BITS|FORMAT|PLAN",
                   help="weights of the randomly chosen layers: bits, a format, or a plan (its quant_config.json or directory: "
                   "each chosen layer at its planned bits or format) (default 4)")
    p.add_argument("--high", default="8", metavar="BITS|FORMAT", help="weights of the other layers: bits or a format (default 8)")
    p.add_argument("--configs", type=int, default=20, help="how many random configurations (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random subsets (default 0)")
    p.add_argument("--shift-threshold", type=float, default=0.1, help="flag layers whose relative output mean shift exceeds this (default 0.1)")
    add_common(p)
    p.set_defaults(func=run)


def _f(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    from quantlens.core.layer_config import QuantConfig
    from quantlens.experiments.additivity import run_additivity, sweep_columns
    from quantlens.errors import QuantlensError

    spec = experiment_spec(args)
    plan = QuantConfig.from_json(args.low) if Path(args.low).exists() else None  # a plan's quant_config.json, or its directory
    low, high, columns = sweep_columns(plan if plan is not None else args.low, args.high, spec)
    if args.configs < 2:
        raise QuantlensError(f"--configs must be at least 2 to compute a correlation, got {args.configs}")
    out = prepare_out_dir(args.out)
    workload = load_workload(args)
    sweep = sweep_or_run(args, out, workload, columns)
    r = run_additivity(
        workload, options=run_options(args), low=low, high=high, configs=args.configs, seed=args.seed, spec=spec,
        shift_threshold=args.shift_threshold, sweep=sweep, model_name=args.model,
    )
    r.to_json(out / "additivity.json")
    pair = f"{r.low}/{r.high}-bit" if isinstance(r.low, int) and isinstance(r.high, int) else f"{r.low}/{r.high}"
    console.print(
        f"{len(r.points)} configurations ({pair} weights): {r.metric_name} Pearson r = {_f(r.pearson_r)}, "
        f"slope = {_f(r.slope)}; output noise r = {_f(r.noise_pearson_r)}, slope = {_f(r.noise_slope)}"
    )
    if r.flagged:
        console.print(f"large output mean shift (> {r.shift_threshold} std) when quantized alone: {', '.join(r.flagged)}; "
                      "where measured exceeds predicted, look there first (section 4.4)")
    from quantlens.report import save_report

    report = save_report(sweep, out)
    console.print(f"wrote {out / 'additivity.json'} (and {report})")
    return 0
