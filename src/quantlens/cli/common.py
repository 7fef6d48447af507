"""Options and output shared by the sub-commands."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from quantlens.sweep.results import column_label
from quantlens.sweep.results import SweepResult
from quantlens.quant.spec import check_bits, parse_a_bits
from quantlens.errors import QuantlensError
from quantlens.report.fmt import Units

__all__ = [
    "add_model_args",
    "add_quant_args",
    "add_convention_arg",
    "parse_bits_list",
    "parse_a_bits",
    "prepare_out_dir",
    "print_summary",
    "print_worst_roles",
    "console",
]

console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def parse_bits_list(text: str) -> tuple[int, ...]:
    """``3,4,5`` or ``3-8`` -> a tuple of bit-widths, each checked to be in 2..16."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out += list(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise QuantlensError(f"--w-bits {text!r}: expected integers like 3,4,5,6,7,8 or 3-8") from None
    if not out:
        raise QuantlensError("--w-bits is empty: give bit-widths like 3,4,5,6,7,8")
    for b in out:
        check_bits(b, "weight bits")
    return tuple(dict.fromkeys(out))


def add_model_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--model", required=True, metavar="MOD:FN", help="function returning the nn.Module (MOD: module or .py path)")
    if data:
        p.add_argument("--data", required=True, metavar="MOD:FN", help="function returning an iterable of (inputs, labels) batches")
        p.add_argument("--calib", metavar="MOD:FN", help="calibration batches for activation ranges (default: --data)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--output-key", default=None, help="key/attribute/index of the output tensor when the model returns a tuple/dict")


def add_quant_args(p: argparse.ArgumentParser, w_bits_default: str = "3,4,5,6,7,8") -> None:
    from quantlens.metrics.task import metrics
    from quantlens.quant.ranges import estimators

    p.add_argument("--metric", default="top1", help=f"task metric: {', '.join(metrics())} (default: top1)")
    p.add_argument("--w-bits", default=None, help=f"weight bit-widths (default: {w_bits_default})")
    p.add_argument("--formats", default=None, metavar="F1,F2",
                   help="named weight formats as the sweep's columns instead of --w-bits: nvfp4, mxfp4, mxfp6, mxfp8, "
                   "fp8-e4m3[-channel|-block128], int4-g128, bf16, ... (`quantlens info` lists them)")
    p.set_defaults(w_bits_default=w_bits_default)
    p.add_argument("--a-bits", default=None, help="activation bits, or 'none' for float activations (default: 8)")
    p.add_argument("--a-format", default=None, metavar="FMT",
                   help="activations in a format instead of --a-bits: int8, fp8-e4m3 (static scale), mxfp8, mxfp4, nvfp4 "
                   "(block scales per batch along the consumer's reduction axis), none")
    p.add_argument("--granularity", default="per-tensor", help="weights: per-tensor, per-channel or per-group-N")
    p.add_argument("--weight-estimator", default="minmax", help=f"weight range: {', '.join(estimators())}")
    p.add_argument("--act-estimator", default="minmax", help="activation range: minmax, percentile, mse")
    add_convention_arg(p)


def add_convention_arg(p: argparse.ArgumentParser) -> None:
    from quantlens.quant.conventions import conventions

    p.add_argument("--convention", default="quantlens",
                   help=f"quantizer convention of the tool to predict: {', '.join(conventions())} (default: quantlens)")


def prepare_out_dir(path: str) -> Path:
    """Create ``path`` as a directory and lock it for this run (until the command ends: a second
    run given the same ``--out`` at once stops with one line); one clear error if impossible."""
    from quantlens.parallel.lock import hold

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise QuantlensError(f"--out {path}: exists and is not a directory; choose another path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QuantlensError(f"--out {path}: cannot create it ({e.strerror})") from None
    hold(p, "--out")
    return p


def _fmt(x: float, pct: bool) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.2f}%" if pct else f"{x:+.4g}"


def print_summary(result: SweepResult, k: int = 5, rank_bits: Optional[int] = None) -> None:
    """Baseline, then the ``k`` worst layers ranked at ``rank_bits`` with every bit-width's degradation."""
    bits = result.w_bits
    rb = rank_bits if rank_bits in bits else (4 if 4 in bits else bits[0])
    pct = Units.for_metric(result.metric_name).pct  # the report's rule
    base = f"{100 * result.baseline:.2f}%" if pct else f"{result.baseline:.6g}"
    console.print(
        f"[bold]{result.model}[/bold]: {len(result.layers)} layers, {result.num_samples} samples, "
        f"float {result.metric_name} = [bold]{base}[/bold] (engine: {result.engine})"
    )
    table = Table(title=f"worst layers at {rb}-bit weights" if isinstance(rb, int) else f"worst layers in {rb} weights"
                  + (f", {result.config['a_format']} activations" if result.config.get("a_format")
                     else f", {result.cells[0].a_bits}-bit activations" if result.cells[0].a_bits else ", float activations"))
    table.add_column("#", justify="right")
    table.add_column("layer", overflow="fold", min_width=16)
    table.add_column("op")
    table.add_column("params", justify="right")
    for b in bits:
        table.add_column(f"deg@{column_label(b)}", justify="right")
    from quantlens.report.noise import has_intervals, noise_sentences, verdict

    noisy = has_intervals(result.at(rb))
    if noisy:
        table.add_column(f"95% CI@{column_label(rb)}", justify="right")
        table.add_column(f"vs float@{column_label(rb)}")
    table.add_column(f"SQNR@{column_label(rb)}", justify="right")
    table.add_column(f"share@{column_label(rb)}", justify="right")
    info = {l.name: l for l in result.layers}
    share = result.share(rb)
    said = {"worse": "worse", "better": "better", "zero": "~ 0 (noise)", "unknown": "-"}
    for rank, c in enumerate(result.worst(rb, k), 1):
        l = info[c.layer]
        op = l.op + ("/dw" if l.kind == "depthwise" else "")
        row = [str(rank), c.layer, op, f"{l.params:,}"]
        row += [_fmt(result.cell(c.layer, b).degradation, pct) for b in bits]
        if noisy:
            row += [f"[{_fmt(c.ci_low, pct)}, {_fmt(c.ci_high, pct)}]", said[verdict(c)]
                    + (f" (n={c.samples:,}, stopped early)" if c.early_stop else "")]
        row += [f"{c.sqnr_db:.1f} dB", f"{100 * share[c.layer]:.0f}%"]
        table.add_row(*row)
    console.print(table)
    for line in noise_sentences(result, rb):
        console.print(line)
    print_worst_roles(result, rb, k)


def print_worst_roles(result: SweepResult, bits: int, k: int = 5) -> None:
    """The ``k`` worst roles at ``bits`` (layers of repeated blocks grouped by role); nothing without roles."""
    from quantlens.report.roles import worst_roles

    worst = worst_roles(result, bits, k)
    if not worst or result.extra.get("group_by") == "role":  # a role sweep's table above already lists roles
        return
    units = Units.for_metric(result.metric_name)
    t = Table(title=f"worst roles at {bits}-bit weights", caption="summed over blocks, one layer quantized at a time")
    t.add_column("#", justify="right")
    t.add_column("role")
    t.add_column(f"deg@{column_label(bits)}", justify="right")
    for rank, (role, d) in enumerate(worst, 1):
        t.add_row(str(rank), role, units.deg(d, signed=True))
    console.print(t)
