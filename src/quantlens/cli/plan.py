"""``quantlens plan``: per-layer weight bits under a size budget (exact multiple-choice knapsack)."""

from __future__ import annotations

import argparse
import math

from rich.table import Table

from quantlens.report.fmt import Units
from quantlens.cli._loop_args import add_common, experiment_spec, load_workload, run_options, sweep_or_run
from quantlens.cli.common import (
    _fmt,
    add_convention_arg,
    add_model_args,
    console,
    parse_bits_list,
    prepare_out_dir,
)

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="choose per-layer weight bits under a budget, measure it against uniform")
    add_model_args(p)
    p.add_argument("--budget", type=float, help="average weight bits, weighted by parameter count (e.g. 5.0)")
    p.add_argument("--budget-bytes", type=float, help="total weight bytes instead of --budget")
    p.add_argument("--w-bits", default="3,4,5,6,7,8", help="candidate weight bit-widths (default: 3,4,5,6,7,8)")
    p.add_argument("--formats", default=None, metavar="F1,F2",
                   help="choose one format per layer among these (nvfp4,fp8-e4m3,bf16) under --budget average effective bits")
    p.add_argument("--no-fuse-siblings", action="store_true",
                   help="with --formats: let layers that read the same tensor (q/k/v, gate/up) take different formats")
    p.add_argument("--group-by", default="layer", choices=["layer", "role", "siblings"],
                   help="role: one bit-width per role of the repeated blocks (every mlp.down_proj alike); siblings (with "
                   "--formats): one cell per group of fused siblings, measured with the group quantized at once")
    add_common(p)
    add_convention_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quantlens.errors import QuantlensError
    from quantlens.experiments.plan import run_plan

    if (args.budget is None) == (args.budget_bytes is None):
        raise QuantlensError("give exactly one of --budget (average weight bits) or --budget-bytes")
    w_bits = parse_bits_list(args.w_bits)
    a_bits = experiment_spec(args).a_bits
    for v, name in ((args.budget, "--budget"), (args.budget_bytes, "--budget-bytes")):
        if v is not None and (not math.isfinite(v) or v <= 0):
            raise QuantlensError(f"{name} must be a positive number, got {v}")
    if args.formats:
        return _run_formats(args, a_bits)
    if args.no_fuse_siblings:
        raise QuantlensError("--no-fuse-siblings is for a plan over --formats")
    out = prepare_out_dir(args.out)
    workload = load_workload(args)
    sweep = sweep_or_run(args, out, workload, list(w_bits), a_bits)
    r = run_plan(workload, options=run_options(args), budget=args.budget, budget_bytes=args.budget_bytes, w_bits=w_bits,
                 spec=experiment_spec(args), sweep=sweep)
    r.to_json(out / "plan.json")
    pct = Units.for_metric(r.metric_name).pct  # the report's rule
    t = Table(title=f"plan: {r.avg_bits:.2f} average weight bits (budget {r.budget_bits:.2f})")
    for col in ("layer", "params", "bits", "cell degradation"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for l in r.layers:
        t.add_row(l.layer, f"{l.params:,}", str(l.w_bits), _fmt(l.predicted, pct))
    console.print(t)

    def ci(t: tuple) -> str:
        return "" if any(math.isnan(x) for x in t) else f" [95% CI {_fmt(t[0], pct)}, {_fmt(t[1], pct)}]"

    console.print(f"plan: predicted {_fmt(r.predicted, pct)}, measured {_fmt(r.measured, pct)}{ci(r.measured_ci)} degradation")
    if r.uniform_bits is not None:
        console.print(f"uniform {r.uniform_bits} bits (same size or smaller): predicted {_fmt(r.uniform_predicted, pct)}, "
                      f"measured {_fmt(r.uniform_measured, pct)}{ci(r.uniform_ci)}")
    vs = r.vs_uniform()
    if vs is not None:
        console.print(f"plan vs uniform: {_fmt(vs['gain'], pct)} "
                      + (f"(significant on {r.num_samples:,} samples)" if vs["significant"] else
                         f"is not significant on {r.num_samples:,} samples"
                         + (f"; about {vs['samples_to_resolve']:,} would resolve it" if vs["samples_to_resolve"] else "")))
    wrote = _write_config(args, r, workload, out)
    from quantlens.report import save_report

    report = save_report(sweep, out)
    console.print(f"wrote {out / 'plan.json'}{wrote} (and {report})")
    return 0


def _write_config(args: argparse.Namespace, r, workload, out) -> str:  # noqa: ANN001
    """``quant_config.json`` and ``weights.safetensors`` of the plan (for ``quantlens export``), if fx can trace the model."""
    from quantlens.network.measure import NetworkMeasurer, UntraceableError
    from quantlens.export import export
    from quantlens.core.layer_config import QuantConfig
    from quantlens.core.workload import RunOptions

    spec = experiment_spec(args)
    if any(l.format for l in r.layers):  # a plan over formats (a sibling plan lists its layers' formats)
        col_of = r.extra.get("layer_formats") or {l.layer: l.format for l in r.layers}
    else:
        col_of = r.extra.get("layer_bits") or {l.layer: l.w_bits for l in r.layers}  # a role plan lists its layers' bits
    cfg = QuantConfig(tuple((n, spec.layer(b)) for n, b in col_of.items()))
    try:
        m = NetworkMeasurer(workload, RunOptions(args.device))
    except UntraceableError as e:
        console.print(f"no quant_config.json: export needs a captured graph ({e.reason})")
        return ""
    export(m.build(cfg), out, extra={"model": args.model, "data": args.data, "calib": args.calib, "metric": r.metric_name,
                                     "measured_metric": r.measured_metric})
    return f", {out / 'quant_config.json'}, {out / 'weights.safetensors'}"


def _run_formats(args: argparse.Namespace, a_bits) -> int:  # noqa: ANN001
    """``plan --formats``: one format per layer (fused siblings alike) under --budget effective bits."""
    from quantlens.errors import QuantlensError
    from quantlens.experiments.format_plan import run_format_plan
    from quantlens.quant.formats import get_format
    from quantlens.sweep.results import SweepResult

    if args.budget is None:
        raise QuantlensError("plan --formats takes --budget (average effective bits per weight), not --budget-bytes")
    if args.group_by == "role":
        raise QuantlensError("plan --formats plans per layer or per group of fused siblings: drop --group-by role "
                             "(or use --group-by siblings)")
    formats = [get_format(s.strip()).name for s in args.formats.split(",") if s.strip()]
    out = prepare_out_dir(args.out)
    workload = load_workload(args)
    sweep = SweepResult.from_json(args.results) if args.results else None
    r = run_format_plan(workload, budget=args.budget, formats=formats, options=run_options(args), spec=experiment_spec(args),
                        sweep=sweep, fuse_siblings=not args.no_fuse_siblings, group_by=args.group_by)
    r.to_json(out / "plan.json")
    pct = Units.for_metric(r.metric_name).pct
    t = Table(title=f"plan: {r.avg_bits:.3f} average effective bits per weight (budget {r.budget_bits:g})")
    for col in ("layer", "params", "format", "cell degradation"):
        t.add_column(col, justify="left" if col in ("layer", "format") else "right")
    for l in r.layers:
        t.add_row(l.layer, f"{l.params:,}", l.format, _fmt(l.predicted, pct))
    console.print(t)

    def ci(pair) -> str:  # noqa: ANN001
        return "" if any(math.isnan(x) for x in pair) else f" [95% CI {_fmt(pair[0], pct)}, {_fmt(pair[1], pct)}]"

    console.print(f"plan: predicted {_fmt(r.predicted, pct)}, measured {_fmt(r.measured, pct)}{ci(r.measured_ci)} degradation")
    for f, u in r.extra["uniform_formats"].items():
        console.print(f"uniform {f} ({u['effective_bits']:g} bits): predicted {_fmt(u['predicted'], pct)}, "
                      f"measured {_fmt(u['measured'], pct)}{ci(tuple(u['ci']))}")
    groups = r.extra.get("groups") or []
    if groups:
        console.print(f"{len(groups)} groups of fused siblings share a format (e.g. {', '.join(groups[0])})")
    wrote = _write_config(args, r, workload, out)
    console.print(f"wrote {out / 'plan.json'}{wrote}")
    return 0
