"""``quantlens analyze``: the layers x bits sweep of a user's model."""

from __future__ import annotations

import argparse

from ._loop_args import load_inputs
from .common import (
    add_model_args,
    add_quant_args,
    console,
    parse_a_bits,
    parse_bits_list,
    prepare_out_dir,
    print_summary,
)
from .scale import add_scale_args, scale_kwargs

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="quantize one layer at a time and rank the layers by damage")
    add_model_args(p)
    add_quant_args(p)
    p.add_argument("--reference", metavar="MOD:FN", help="float model to measure against (for a fine-tuned/QAT model)")
    p.add_argument("--engine", default="cone", choices=["cone", "naive", "hooks"], help="cone (default), naive or hooks")
    p.add_argument("--capture", default="auto", choices=["auto", "fx", "export"],
                   help="how the cone engine gets the graph: auto (torch.fx, then torch.export), fx or export")
    p.add_argument("--top", type=int, default=5, help="how many worst layers to print (default 5)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (results.json, results.csv)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_scale_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.api import analyze, make_config

    w_bits = parse_bits_list(args.w_bits)
    a_bits = parse_a_bits(args.a_bits)
    cfg = make_config(w_bits, a_bits, args.granularity, args.weight_estimator, args.act_estimator)
    out = prepare_out_dir(args.out)
    model, data, calib, reference = load_inputs(args)
    result = analyze(
        model,
        data,
        config=cfg,
        metric=args.metric,
        calib=calib,
        device=args.device,
        output_key=args.output_key,
        reference=reference,
        engine=args.engine,
        capture=args.capture,
        progress=not args.no_progress,
        model_name=args.model,
        **scale_kwargs(args, out),
    )
    result.to_json(out / "results.json")
    result.to_csv(out / "results.csv")
    from ..report import save_report

    report = save_report(result, out)
    print_summary(result, k=args.top)
    console.print(f"wrote {out / 'results.json'}, {out / 'results.csv'} and {report} in {result.elapsed_s:.1f} s")
    return 0
