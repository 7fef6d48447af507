"""``quantlens analyze``: the layers x bits sweep of a user's model."""

from __future__ import annotations

import argparse

from quantlens.sweep.check import check_line
from quantlens.cli._loop_args import load_inputs
from quantlens.cli.common import (
    add_model_args,
    add_quant_args,
    console,
    parse_a_bits,
    parse_bits_list,
    prepare_out_dir,
    print_summary,
)
from quantlens.cli.scale import add_scale_args, scale_kwargs

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="quantize one layer at a time and rank the layers by damage")
    add_model_args(p)
    add_quant_args(p)
    p.add_argument("--reference", metavar="MOD:FN", help="float model to measure against (for a fine-tuned/QAT model)")
    p.add_argument("--engine", default="cone", choices=["cone", "naive", "hooks", "cone-lowmem"],
                   help="cone (default), naive, hooks, or cone-lowmem (cache only block inputs, recompute inside blocks)")
    p.add_argument("--capture", default="auto", choices=["auto", "fx", "export"],
                   help="how the cone engine gets the graph: auto (torch.fx, then torch.export), fx or export")
    p.add_argument("--group-by", default="layer", choices=["layer", "role", "siblings"],
                   help="layer (default): one cell per (layer, bits); role: quantize every layer of a role of the "
                   "repeated blocks at once (every mlp.down_proj), one cell per (role, bits); siblings: one cell per "
                   "group of layers that read the same tensor (q/k/v, gate/up), quantized at once as a fused kernel runs them")
    p.add_argument("--top", type=int, default=5, help="how many worst layers to print (default 5)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (results.json, results.csv)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--split-noise", action="store_true",
                   help="also split each cell's output noise into weights / input quantizer / output quantizer alone (bits+2 more cone passes per layer)")
    p.add_argument("--adaptive", action="store_true",
                   help="stop measuring a cell once its 95%% interval is clear of --tolerance and 0 (serial, no cache)")
    p.add_argument("--tolerance", default=None, metavar="TOL",
                   help="the degradation that matters for --adaptive: 0.5%% (default) or a plain number in the metric's units")
    p.add_argument("--estimate", action="store_true",
                   help="first-order estimate of every cell (one forward+backward per batch), checked on exact cells chosen within --check-budget")
    p.add_argument("--estimate-k", type=int, default=5, metavar="K",
                   help="the check's candidates at one bit-width (4 if swept, else the lowest): the estimate's top K, "
                   "the K below them and K random layers (default 5)")
    p.add_argument("--check-budget", type=float, default=None, metavar="SHARE",
                   help="for --estimate: the check's time as a share of the estimate's (default 0.25; inf: every "
                   "candidate); candidates with the cheapest cones are measured first")
    add_scale_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quantlens.sweep.api import analyze, make_config

    if args.a_format is not None and args.a_bits is not None:
        from quantlens.errors import QuantlensError

        raise QuantlensError("give --a-format or --a-bits, not both: --a-format int8 is 8-bit integer activations, none float")
    a_bits = parse_a_bits(args.a_bits or "8")
    formats = _formats(args)
    w_bits = parse_bits_list(args.w_bits or args.w_bits_default) if not formats else ()
    cfg = make_config(w_bits, a_bits, args.granularity, args.weight_estimator, args.act_estimator, convention=args.convention,
                      formats=formats, a_format=args.a_format)
    out = prepare_out_dir(args.out)
    model, data, calib, reference = load_inputs(args)
    if args.group_by in ("role", "siblings"):
        from quantlens.experiments.group_sweep import analyze_siblings
        from quantlens.experiments.role_sweep import analyze_roles
        from quantlens.core.workload import RunOptions, Workload
        from quantlens.errors import QuantlensError

        if args.backend != "serial" or args.engine != "cone":
            raise QuantlensError(f"--group-by {args.group_by} measures whole networks serially: drop --backend ray and --engine")
        sweep_fn = analyze_roles if args.group_by == "role" else analyze_siblings
        result = sweep_fn(Workload(model, data, calib, args.metric, reference, args.output_key), config=cfg,
                          options=RunOptions(args.device, progress=not args.no_progress), model_name=args.model)
    else:
        from quantlens.core.workload import Workload

        result = analyze(
            Workload(model, data, calib, args.metric, reference, args.output_key),
            method=_method(args),
            config=cfg,
            device=args.device,
            engine=args.engine,
            capture=args.capture,
            progress=not args.no_progress,
            model_name=args.model,
            **{**scale_kwargs(args, out), **({"cache": None} if args.adaptive or args.estimate else {})},
        )
    result.to_json(out / "results.json")
    result.to_csv(out / "results.csv")
    from quantlens.report import save_report

    report = save_report(result, out)
    print_summary(result, k=args.top)
    est = result.extra.get("estimate")
    if est:
        console.print(check_line(est))
    ad = result.extra.get("adaptive")
    if ad:
        stopped = sum(c.early_stop for c in result.cells)
        console.print(f"adaptive: {ad['cone_passes']:,} of {ad['exact_cone_passes']:,} cone passes ({ad['speedup']:.1f}x fewer); "
                      f"{stopped} of {len(result.cells)} cells stopped early"
                      + (" (an early-stopped cell's interval is the one that stopped it: it covers about 90%, not 95%)"
                         if stopped else ""))
    console.print(f"wrote {out / 'results.json'}, {out / 'results.csv'} and {report} in {result.elapsed_s:.1f} s")
    return 0


def _formats(args: argparse.Namespace) -> list[str]:
    """``--formats`` as names (one line if unknown, or given with --w-bits or --granularity)."""
    from quantlens.errors import QuantlensError
    from quantlens.quant.formats import get_format

    if not args.formats:
        return []
    if args.w_bits is not None:
        raise QuantlensError("give --formats or --w-bits, not both: int{b} formats stand for bit-widths (--formats int4,int8)")
    if args.granularity != "per-tensor" or args.weight_estimator != "minmax":
        raise QuantlensError("--formats names its own blocks and scales: drop --granularity and --weight-estimator "
                             "(int4-g128 is 4-bit weights in groups of 128)")
    names = [s.strip() for s in args.formats.split(",") if s.strip()]
    if not names:
        raise QuantlensError("--formats is empty: give format names, e.g. nvfp4,mxfp4,fp8-e4m3")
    return [get_format(n).name for n in names]


def _method(args: argparse.Namespace):
    """The sweep method the flags ask for: ``--estimate``, ``--adaptive`` or the exact sweep."""
    from quantlens.errors import QuantlensError
    from quantlens.sweep.methods import Adaptive, Estimate, Exact

    if args.estimate and (args.adaptive or args.split_noise):
        raise QuantlensError("--estimate runs alone: drop --adaptive and --split-noise")
    if args.adaptive and args.split_noise:
        raise QuantlensError("--adaptive and --split-noise are two methods: drop one")
    if args.tolerance is not None and not args.adaptive:
        raise QuantlensError("--tolerance is for --adaptive: add --adaptive or drop --tolerance")
    if args.check_budget is not None and not args.estimate:
        raise QuantlensError("--check-budget is for --estimate: add --estimate or drop --check-budget")
    if args.estimate:
        if args.estimate_k < 1:
            raise QuantlensError(f"--estimate-k must be at least 1, got {args.estimate_k}")
        if args.check_budget is not None and not args.check_budget > 0:
            raise QuantlensError(f"--check-budget is the check's share of the estimate's time and must be above 0 "
                                 f"(0.25: a quarter; inf: every candidate), got {args.check_budget}")
        return Estimate(k=args.estimate_k, **({} if args.check_budget is None else {"budget": args.check_budget}))
    if args.adaptive:
        return Adaptive(tolerance=args.tolerance)
    return Exact(split_noise=args.split_noise)
