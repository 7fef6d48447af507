"""``quantlens fix``: culprit layers, local fixes, and the paper's Table 1 for the user's network."""

from __future__ import annotations

import argparse
import math

from rich.table import Table

from quantlens.report.fmt import Units
from quantlens.cli._loop_args import add_common, experiment_spec, load_workload, run_options, sweep_or_run
from quantlens.cli.common import add_model_args, console, prepare_out_dir
from quantlens.core.experiment import parse_column
from quantlens.sweep.results import weights_label

__all__ = ["register", "run", "print_table"]


def register(sub: argparse._SubParsersAction) -> None:
    from quantlens.experiments.fixloop import DEFAULT_FIXES
    from quantlens.fixes import fixes

    p = sub.add_parser("fix", help="find the culprit layers, fix them locally, and print Table 1 (float/naive/global/local)")
    add_model_args(p)
    p.add_argument("--w-bits", default="8", metavar="BITS|FORMAT",
                   help="weights of the quantized network: bits, or a format such as nvfp4, mxfp4, fp8-e4m3, int4-g128 (default: 8)")
    p.add_argument("--formats", metavar="FMT[,FMT...]",
                   help="one Table 1 per weight format (e.g. nvfp4,mxfp4,int4-g128): one sweep over them all finds each "
                   "format's culprits; with several, each format's fix.json, quant_config.json and report go to OUT/<format>/")
    add_common(p)
    p.add_argument("--config", metavar="PATH", help="a plan's quant_config.json (or its directory): fix the culprits of that "
                   "mixed configuration, each layer at its planned bits or format, instead of every layer at --w-bits")
    p.add_argument("--fixes", default=",".join(DEFAULT_FIXES), help=f"fixes to try on each culprit, from: {', '.join(fixes())} (default: {','.join(DEFAULT_FIXES)})")
    p.add_argument("--top", type=int, default=3, help="how many culprit layers to try fixing (default 3)")
    p.set_defaults(func=run)


def _pct(x: float, pct: bool) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{100 * x:.2f}%" if pct else f"{x:.5g}"


def print_table(result) -> None:  # noqa: ANN001
    pct = Units.for_metric(result.metric_name).pct  # the report's rule
    a = (f"{result.a_format} activations" if result.a_format else f"{result.a_bits}-bit activations" if result.a_bits
         else "float activations")
    w = "the plan's" if result.w_bits == "plan" else weights_label(result.w_bits)
    t = Table(title=f"Table 1: {w} weights, {a}, whole network quantized")
    for col, just in (("method", "left"), (result.metric_name, "right"), ("degradation", "right"), ("95% CI", "right"),
                      ("SQNR", "right"), ("time", "right"), ("fixes", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in result.rows:
        fixes = ", ".join(f"{k}: {'+'.join(v)}" for k, v in r.fixes.items())
        sq = "-" if math.isinf(r.sqnr_db) or math.isnan(r.sqnr_db) else f"{r.sqnr_db:.1f} dB"
        ci = "-" if math.isnan(r.ci_low) or r.method == "float" else f"[{_pct(r.ci_low, pct)}, {_pct(r.ci_high, pct)}]"
        secs = "-" if math.isnan(r.seconds) else f"{r.seconds:.1f} s"
        t.add_row(r.method, _pct(r.metric, pct), _pct(r.degradation, pct), ci, sq, secs, fixes)
    console.print(t)
    for line in significance_lines(result):
        console.print(line)


def significance_lines(result) -> list[str]:  # noqa: ANN001
    """Whether each kept fix, and the local configuration as a whole, beat naive beyond the noise."""
    pct = Units.for_metric(result.metric_name).pct
    out = []
    for tr in result.trials:
        if tr.kept and tr.significant is False:
            out.append(f"{tr.layer}: {tr.fix} is kept ({_pct(tr.naive_degradation, pct)} -> {_pct(tr.degradation, pct)} as a "
                       f"single-layer cell) but the gain is not significant on {result.num_samples:,} samples")
        elif tr.kept and tr.significant:
            out.append(f"{tr.layer}: {tr.fix} is kept, a significant gain ({_pct(tr.naive_degradation, pct)} -> "
                       f"{_pct(tr.degradation, pct)} as a single-layer cell)")
    local = next((r for r in result.rows if r.method == "local"), None)
    best = result.best_global()
    if local is not None and local.fixes and best is not None:  # the paper's claim, tested: local against the best global fix
        g = result.versus("local", best.method)
        gap = best.degradation - local.degradation
        sig = "" if g is None else (", significant" if g["significant"] else f", not significant on {result.num_samples:,} samples")
        if gap > 0:
            out.append(f"local beats the best global fix ({best.method}): {_pct(local.degradation, pct)} vs {_pct(best.degradation, pct)}{sig}")
        else:
            out.append(f"the best global fix ({best.method}) beats local: {_pct(best.degradation, pct)} vs {_pct(local.degradation, pct)}{sig}; "
                       "the paper's claim does not hold here")
        both = next((r for r in result.rows if r.method == "local+" + best.method), None)
        if both is not None:  # the culprits' local fixes on top of the best global fix
            g = result.versus(both.method, best.method)
            sig = "" if g is None else (", significant" if g["significant"] else f", not significant on {result.num_samples:,} samples")
            verdict = "improve on" if both.degradation < best.degradation else "do not improve on"
            out.append(f"the local fixes on top of {best.method} {verdict} it: {_pct(both.degradation, pct)} vs "
                       f"{_pct(best.degradation, pct)}{sig}")
    vs = result.vs_naive("local") if local is not None and local.fixes else None
    if vs is not None:
        n, gain = result.num_samples, vs["gain"]
        if vs["significant"]:
            out.append(f"local fixes vs naive: {_pct(gain, pct)} {'better' if gain > 0 else 'worse'}, significant on {n:,} samples")
        else:
            out.append(f"local fixes vs naive: {_pct(gain, pct)} is not significant on {n:,} samples"
                       + (f"; about {vs['samples_to_resolve']:,} would resolve it" if vs["samples_to_resolve"] else ""))
    return out


def run(args: argparse.Namespace) -> int:
    from quantlens.errors import QuantlensError
    from quantlens.experiments.fixloop import applicable_fixes
    from quantlens.fixes import check_fix

    spec = experiment_spec(args)
    plan = None
    if args.config:
        from quantlens.core.layer_config import QuantConfig

        if args.w_bits != "8" or args.formats:
            raise QuantlensError("give --w-bits/--formats or --config, not both: a plan's config gives every layer its own bits or format")
        plan = QuantConfig.from_json(args.config)
        columns = spec.config_columns(plan)
        loops: list = ["plan"]
    elif args.formats is not None:
        if args.w_bits != "8":
            raise QuantlensError("give --w-bits or --formats, not both")
        columns = list(dict.fromkeys(parse_column(f.strip(), "--formats") for f in args.formats.split(",") if f.strip()))
        if not columns:
            raise QuantlensError("--formats is empty: give formats, e.g. nvfp4,mxfp4,int4-g128")
        loops = list(columns)
    else:
        columns = [parse_column(args.w_bits, "--w-bits")]
        loops = list(columns)
    candidates = [f.strip() for f in args.fixes.split(",") if f.strip()]
    if not candidates:
        raise QuantlensError("--fixes is empty: give fix names, e.g. sawb,mse,equalize")
    for f in candidates:
        check_fix(f)
    for col in ([columns] if plan is not None else [[c] for c in columns]):
        applicable_fixes(candidates, col, spec)  # one line before the sweep when none applies
    if args.top < 1:
        raise QuantlensError(f"--top must be at least 1, got {args.top}")
    out = prepare_out_dir(args.out)
    workload = load_workload(args, need_fx=True)
    if "gptq" in candidates:  # its Hessian's size, before the sweep
        from quantlens.fixes.gptq import check_calibration_rows

        check_calibration_rows(workload.model, workload.calib_data)
    sweep = sweep_or_run(args, out, workload, columns)
    for w_bits in loops:
        dest = out if len(loops) == 1 else prepare_out_dir(out / str(w_bits))
        _one_format(args, workload, sweep, spec, candidates, plan, columns[0] if plan is not None else w_bits, w_bits, dest)
    return 0


def _one_format(args: argparse.Namespace, workload, sweep, spec, candidates: list, plan, column, w_bits, out) -> None:  # noqa: ANN001
    """One Table 1 (the fix loop at ``column``, or over the plan), written to ``out`` with its export and report."""
    from quantlens.experiments.fixloop import fix_loop
    from quantlens.export import export
    from quantlens.report import save_report

    result, measurer = fix_loop(
        workload, sweep, options=run_options(args), w_bits=column, spec=spec, candidates=candidates,
        top=args.top, model_name=args.model, config=plan,
    )
    result.to_json(out / "fix.json")
    export(measurer.build(result.config), out, extra={"model": args.model, "data": args.data, "calib": args.calib, "metric": result.metric_name,
                                                    "local": result.row("local").metric})
    at = f"{w_bits} bits" if isinstance(w_bits, int) else "the plan's formats" if plan is not None else w_bits
    for f, why in result.skipped:
        console.print(f"not tried: {f} ({why})")
    if result.culprits:
        console.print(f"culprits at {at}: {', '.join(result.culprits)}; kept: "
                      + (", ".join(f"{k}: {'+'.join(v)}" for k, v in result.local_fixes.items()) or "none"))
    else:
        console.print(f"no layer degrades {result.metric_name} at {at} on its own: nothing to fix locally")
    for name, d in result.diagnosis:
        console.print(f"why {name} broke: {', '.join(d.causes) or 'no symptom past the thresholds'} ({d.sentence()})")
    print_table(result)
    report = save_report(sweep, out)
    console.print(f"wrote {out / 'fix.json'}, {out / 'quant_config.json'} and {out / 'weights.safetensors'} (and {report})")
