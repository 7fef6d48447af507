"""``quantlens verify``: run the ONNX model in onnxruntime and compare it with the simulation and the float model."""

from __future__ import annotations

import argparse
import math

from rich.table import Table

from quantlens.report.fmt import Units
from quantlens.cli.common import add_capture_cache_arg, console, prepare_out_dir

__all__ = ["register", "run", "print_verify"]


def register(sub: argparse._SubParsersAction) -> None:
    from quantlens.metrics.task import metrics

    p = sub.add_parser("verify", help="run an exported (or tool-quantized) ONNX model in onnxruntime, or a compressed-tensors "
                       "checkpoint in transformers, or read a GGUF file back; compare with the simulation")
    p.add_argument("--onnx", metavar="PATH", help="model.onnx (from `quantlens export`, or quantized by another tool)")
    p.add_argument("--checkpoint", metavar="DIR", help="a compressed-tensors checkpoint (from `quantlens export --format compressed-tensors`)")
    p.add_argument("--gguf", metavar="PATH", help="model.gguf (from `quantlens export --format gguf`): check its types and values")
    p.add_argument("--config", metavar="PATH", help="gguf: the plan the file should hold (default: the one export.json records)")
    p.add_argument("--data", metavar="MOD:FN", help="batches of (inputs, labels) (onnx, checkpoint)")
    p.add_argument("--model", metavar="MOD:FN", help="the float model (default: the one export.json records)")
    p.add_argument("--calib", metavar="MOD:FN", help="calibration batches (a tool-quantized model, or a config without saved ranges)")
    p.add_argument("--metric", default=None, help=f"task metric: {', '.join(metrics())} (default: top1; perplexity for --checkpoint)")
    p.add_argument("--w-bits", default=None, help="a tool-quantized model: the weight bits it used (quantlens predicts it)")
    p.add_argument("--a-bits", default="8", help="a tool-quantized model: activation bits (default 8)")
    p.add_argument("--granularity", default="per-tensor", help="a tool-quantized model: weight granularity")
    p.add_argument("--convention", default=None, help="a tool-quantized model: the tool's quantizer convention (see `quantlens info`)")
    p.add_argument("--output-key", default=None, help="key/attribute/index of the output tensor when the model returns a tuple/dict")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (verify.json)")
    add_capture_cache_arg(p)
    p.set_defaults(func=run)


def _pct(x: float, pct: bool, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return (f"{100 * x:+.2f}%" if sign else f"{100 * x:.2f}%") if pct else (f"{x:+.4g}" if sign else f"{x:.4g}")


def _db(x: float) -> str:
    return "identical" if x == float("inf") else f"{x:.1f} dB"


def print_verify(r) -> None:  # noqa: ANN001
    pct = Units.for_metric(r.metric_name).pct
    t = Table(title=f"runtime check: {r.metric_name} on {r.num_samples} samples")
    for col in ("network", r.metric_name, "degradation"):
        t.add_column(col, justify="left" if col == "network" else "right")
    t.add_row("float", _pct(r.float_metric, pct), "-")
    t.add_row("simulation (quantlens)", _pct(r.simulated_metric, pct), _pct(r.predicted, pct, True))
    t.add_row(r.extra.get("runtime_name", "onnxruntime"), _pct(r.runtime_metric, pct), _pct(r.runtime, pct, True))
    t.add_row(r.extra.get("plain_name", "onnxruntime, no graph optimizations"), _pct(r.plain_metric, pct), _pct(r._deg(r.plain_metric), pct, True))
    console.print(t)
    if r.source == "compressed-tensors":
        return _print_ct(r, pct)
    lo, hi = r.difference_interval
    verdict = "[bold red]FLAGGED: beyond the interval[/bold red]" if r.flagged else "within the interval"
    console.print(f"runtime - predicted degradation: {_pct(r.difference, pct, True)} (95% interval {_pct(lo, pct, True)} .. "
                  f"{_pct(hi, pct, True)}): {verdict}")
    slo, shi = r.simulated_interval
    console.print(f"runtime {r.metric_name} {_pct(r.runtime_metric, pct)} is {'within' if r.within_simulated_interval else 'OUTSIDE'} "
                  f"the simulation's 95% interval {_pct(slo, pct)} .. {_pct(shi, pct)}")
    c = r.runtime_vs_simulation
    console.print(f"runtime vs simulation: top-1 agreement {100 * c.agreement:.2f}%, output SQNR {_db(c.sqnr_db)}; "
                  f"integer kernels onnxruntime used: {', '.join(f'{k} x{v}' for k, v in r.fused_ops.items()) or 'none'}")


def _print_ct(r, pct: bool) -> None:  # noqa: ANN001
    lo, hi = r.difference_interval
    verdict = "[bold red]FLAGGED: beyond the interval[/bold red]" if r.flagged else "within the interval"
    console.print(f"checkpoint - simulation {r.metric_name}: {_pct(r.difference, pct, True)} (95% interval {_pct(lo, pct, True)} .. "
                  f"{_pct(hi, pct, True)}): {verdict}")
    for name, c in (("checkpoint vs simulation", r.runtime_vs_simulation), ("float model with simulated weights vs simulation", r.plain_vs_simulation),
                    ("checkpoint vs float model with simulated weights", r.runtime_vs_plain)):
        console.print(f"{name}: token agreement {100 * c.agreement:.2f}%, logits SQNR {_db(c.sqnr_db)}, max |difference| {c.max_abs:.3g}")
    for note in r.extra.get("load_notes", []):
        console.print(f"note: {note}")


def run(args: argparse.Namespace) -> int:
    from quantlens.errors import QuantlensError
    from quantlens.data.loading import load_data, load_model
    from quantlens.runtime.export_check import read_export_info, verify_export

    if sum(x is not None for x in (args.onnx, args.checkpoint, args.gguf)) != 1:
        raise QuantlensError("give exactly one of --onnx PATH, --checkpoint DIR or --gguf PATH")
    if args.gguf is not None:
        from quantlens.cli.gguf import run_verify

        return run_verify(args)
    if not args.data:
        raise QuantlensError("give --data MOD:FN: the batches to run the model on")
    if args.checkpoint is not None:
        return _run_ct(args)
    args.metric = args.metric or "top1"
    out = prepare_out_dir(args.out)
    info = read_export_info(args.onnx) if not args.w_bits else None
    model_spec = args.model or (info or {}).get("model")
    if not model_spec:
        raise QuantlensError("give --model MOD:FN (the float model): export.json does not record one")
    model = load_model(model_spec)
    data = load_data(args.data)
    calib = load_data(args.calib, "--calib") if args.calib else None
    if args.w_bits:
        from quantlens.runtime.tool_check import verify_tool_model

        r = verify_tool_model(args.onnx, model, data, w_bits=int(args.w_bits), a_bits=args.a_bits, granularity=args.granularity,
                              convention=args.convention or "quantlens", metric=args.metric, calib=calib, output_key=args.output_key)
    else:
        if info is None:
            raise QuantlensError(f"{args.onnx}: no export.json beside it; for a model quantized by another tool give --w-bits "
                                 "(and --convention, e.g. onnxruntime)")
        r = verify_export(args.onnx, model, data, metric=args.metric, calib=calib, output_key=args.output_key)
    return _finish(r, out)


def _run_ct(args: argparse.Namespace) -> int:
    from quantlens.errors import QuantlensError
    from quantlens.data.loading import load_data, load_model
    from quantlens.runtime.ct_check import read_ct_info, verify_compressed_tensors

    info = read_ct_info(args.checkpoint)
    model_spec = args.model or info.get("model")
    if not model_spec:
        raise QuantlensError("give --model MOD:FN (the float model): export.json does not record one")
    out = prepare_out_dir(args.out)
    r = verify_compressed_tensors(args.checkpoint, load_model(model_spec), load_data(args.data), metric=args.metric or "perplexity",
                                  output_key=args.output_key or "logits")
    return _finish(r, out)


def _finish(r, out) -> int:  # noqa: ANN001
    r.to_json(out / "verify.json")
    print_verify(r)
    wrote = f"{out / 'verify.json'}"
    if (out / "results.json").is_file():  # the report there gains its "Runtime check" section
        from quantlens.report import write_report

        wrote += f" (and {write_report(out)})"
    console.print(f"wrote {wrote}")
    return 0
