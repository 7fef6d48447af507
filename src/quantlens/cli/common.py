"""Options and output shared by the sub-commands."""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from rich import box
from rich.console import Console
from rich.table import Table

from quantlens.sweep.predicted import in_metric_units, predicted, predicted_degradation
from quantlens.sweep.results import column_label
from quantlens.sweep.results import SweepResult
from quantlens.quant.spec import check_bits, parse_a_bits
from quantlens.errors import QuantlensError
from quantlens.report.fmt import Units
from quantlens.report.layout import EstimateCheck, block_role, choose_layout

__all__ = [
    "add_model_args",
    "add_quant_args",
    "add_convention_arg",
    "add_capture_cache_arg",
    "parse_bits_list",
    "parse_a_bits",
    "prepare_out_dir",
    "print_summary",
    "print_worst_roles",
    "summary_table",
    "console",
]

# a terminal's own width; printed to a pipe or a file: $COLUMNS if set, else 140
console = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 140)

# the CLI's tables: a rule under the header, two spaces between columns, no outer edge
TABLE_STYLE = dict(box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)


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
    add_capture_cache_arg(p)


def add_capture_cache_arg(p: argparse.ArgumentParser) -> None:
    """``--capture-cache DIR``: keep the model's torch.export capture on disk across commands."""
    p.add_argument("--capture-cache", default=None, metavar="DIR",
                   help="keep the model's torch.export capture in DIR and reuse it in later commands (it is rebuilt "
                   "when the model, its code, the sample's shapes, quantlens or torch change)")


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


@dataclass(frozen=True)
class _Column:
    key: str
    header: str
    cells: tuple[str, ...]
    justify: str = "right"


def summary_table(result: SweepResult, k: int = 5, rank_bits: Optional[int] = None, width: int = 100) -> Table:
    """The ``k`` worst layers ranked at ``rank_bits`` (default 4 if swept, else the lowest) with
    every bit-width's degradation, the interval, SQNR and share at ``rank_bits``, made to fit
    ``width`` columns without wrapping: columns are left out, least needed first (op, params,
    the verdict, share, SQNR, the other bit-widths farthest from ``rank_bits`` first, the
    interval), until the rest fits; rank, layer and the degradation at ``rank_bits`` always stay.
    A caption names the columns left out.

    Example:
        >>> Console(width=100).print(summary_table(result, width=100))  # doctest: +SKIP
    """
    from quantlens.report.noise import has_intervals, verdict

    bits = result.w_bits
    rb = _rank_bits(result, rank_bits)
    pct = Units.for_metric(result.metric_name).pct  # the report's rule
    info = {l.name: l for l in result.layers}
    share = result.share(rb)
    said = {"worse": "worse", "better": "better", "zero": "~ 0 (noise)", "unknown": "-"}
    layout = choose_layout(result)
    check = EstimateCheck.of(result)
    if check is not None:  # every cell has an estimate, only the checked ones a degradation
        worst = sorted((c for c in result.at(rb) if math.isfinite(c.estimate)), key=lambda c: -c.estimate)[:k]
    else:
        worst = result.worst(rb, k)
    cols = [_col("#", "#", (str(r) for r in range(1, len(worst) + 1)))]
    if layout.blocks:  # an LLM: the block and the role name the layer
        where = [block_role(layout.roles, c.layer) for c in worst]
        cols += [_col("block", "block", ("-" if b is None else str(b) for b, _ in where)), _col("role", "role", (r for _, r in where), "left")]
    else:
        cols.append(_col("layer", "layer", (c.layer for c in worst), "left"))
    cols += [_col("op", "op", (info[c.layer].op + ("/dw" if info[c.layer].kind == "depthwise" else "") for c in worst), "left"),
             _col("params", "params", (f"{info[c.layer].params:,}" for c in worst))]
    r = column_label(rb)
    if check is not None:
        if in_metric_units(result.metric_name):  # the estimate in the measured column's units
            cols.append(_col("est", f"est@{r}", (_fmt(predicted(result, c), pct) for c in worst)))
        else:
            cols.append(_col("est", f"est@{r}", (f"{c.estimate:.3g}" for c in worst)))
        cols.append(_col(f"deg@{rb}", f"measured@{r}", (_fmt(c.degradation, pct) for c in worst)))
    else:
        cols += [_col(f"deg@{b}", f"deg@{column_label(b)}", (_fmt(result.cell(c.layer, b).degradation, pct) for c in worst)) for b in bits]
    if has_intervals(result.at(rb)) and check is None:
        cols.append(_col("ci", f"95% CI@{r}", (f"[{_fmt(c.ci_low, pct)}, {_fmt(c.ci_high, pct)}]" for c in worst)))
        cols.append(_col("verdict", f"vs float@{r}", (said[verdict(c)] + (f" (n={c.samples:,}, stopped early)" if c.early_stop else "")
                                                      for c in worst), "left"))
    if check is None:
        cols.append(_col("sqnr", f"SQNR@{r}", (f"{c.sqnr_db:.1f} dB" for c in worst)))
        cols.append(_col("share", f"share@{r}", (f"{100 * share[c.layer]:.0f}%" for c in worst)))
    at = bits.index  # columns farthest from the ranked one go first (bit-widths or formats alike)
    others = sorted((b for b in bits if b != rb), key=lambda b: (-abs(at(b) - at(rb)), -at(b)))
    drop = ["op", "params", "verdict", "share", "sqnr", *(f"deg@{b}" for b in others), "ci"]
    a_bits, a_format = result.cells[0].a_bits, result.config.get("a_format")
    acts = f", {a_format} activations" if a_format else f", {a_bits}-bit activations" if a_bits else ", float activations"
    title = (f"worst layers at {rb}-bit weights" if isinstance(rb, int) else f"worst layers in {rb} weights") + acts
    if check is not None:
        title += ", ranked by estimate" + (f" (in {result.metric_name} units)" if in_metric_units(result.metric_name) else "")
    kept, left_out = list(cols), []
    while True:
        table = _build(title, kept, left_out, width)
        rest = [key for key in drop if any(c.key == key for c in kept)]
        if _natural_width(table) <= width or not rest:
            return table
        gone = next(c for c in kept if c.key == rest[0])
        kept.remove(gone)
        left_out.append(gone.header)


def _col(key: str, header: str, cells: Iterable[str], justify: str = "right") -> _Column:
    return _Column(key, header, tuple(cells), justify)


def _rank_bits(result: SweepResult, rank_bits: Optional[int]) -> int:
    bits = result.w_bits
    return rank_bits if rank_bits in bits else (4 if 4 in bits else bits[0])


def _build(title: str, cols: list[_Column], left_out: list[str], width: int) -> Table:
    caption = f"not shown at {width} columns: {', '.join(left_out)}" if left_out else None
    table = Table(title=title, caption=caption, **TABLE_STYLE)
    longest = max((len(c) for col in cols if col.key in ("layer", "role") for c in col.cells), default=5)
    for c in cols:
        extra = dict(overflow="fold", min_width=min(16, max(5, longest))) if c.key in ("layer", "role") else {}
        table.add_column(c.header, justify=c.justify, **extra)
    for row in zip(*(c.cells for c in cols)):
        table.add_row(*row)
    return table


def _natural_width(table: Table) -> int:
    """The width ``table`` takes when nothing constrains it (no wrapping)."""
    wide = Console(width=10_000, file=io.StringIO())
    return wide.measure(table).maximum


def print_summary(result: SweepResult, k: int = 5, rank_bits: Optional[int] = None, out: Optional[Console] = None) -> None:
    """Baseline, then the ``k`` worst layers ranked at ``rank_bits`` (:func:`summary_table`,
    fitted to the console's width), what the intervals say, and the worst roles."""
    from quantlens.report.noise import noise_sentences

    out = out or console
    rb = _rank_bits(result, rank_bits)
    pct = Units.for_metric(result.metric_name).pct
    base = f"{100 * result.baseline:.2f}%" if pct else f"{result.baseline:.6g}"
    out.print(
        f"[bold]{result.model}[/bold]: {len(result.layers)} layers, {result.num_samples} samples, "
        f"float {result.metric_name} = [bold]{base}[/bold] (engine: {result.engine})"
    )
    out.print(summary_table(result, k, rb, width=out.width))
    for line in noise_sentences(result, rb):
        out.print(line)
    from quantlens.report.insights import grid_sentence

    grid = grid_sentence(result)
    if grid is not None:
        out.print(f"[yellow]{grid}[/yellow]")
    print_worst_roles(result, rb, k, out)


def print_worst_roles(result: SweepResult, bits: int, k: int = 5, out: Optional[Console] = None) -> None:
    """The ``k`` worst roles at ``bits`` (layers of repeated blocks grouped by role); nothing without roles."""
    from quantlens.report.roles import worst_roles

    check = EstimateCheck.of(result)
    worst = worst_roles(result, bits, k, by="estimate" if check is not None else "degradation")
    if not worst or result.extra.get("group_by") == "role":  # a role sweep's table above already lists roles
        return
    units = Units.for_metric(result.metric_name)
    t = Table(title=f"worst roles at {bits}-bit weights" if isinstance(bits, int) else f"worst roles in {bits} weights", caption="summed over blocks, one layer quantized at a time", **TABLE_STYLE)
    t.add_column("#", justify="right")
    t.add_column("role")
    t.add_column(f"{'est' if check is not None else 'deg'}@{column_label(bits)}", justify="right")
    for rank, (role, d) in enumerate(worst, 1):
        if check is not None and in_metric_units(result.metric_name):  # the summed estimate in the metric's units
            d = predicted_degradation(result.metric_name, result.baseline, d)
            t.add_row(str(rank), role, units.deg(d, signed=True))
            continue
        t.add_row(str(rank), role, (f"{d:.3g}" if math.isfinite(d) else "-") if check is not None else units.deg(d, signed=True))
    (out or console).print(t)
