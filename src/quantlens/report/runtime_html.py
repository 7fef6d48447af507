"""The "Runtime check" section: ``verify.json`` (onnxruntime against the simulation and the float model).

Example:
    >>> html = runtime_html(VerifyResult.from_json("run/verify.json"))     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from quantlens.report.fmt import Units
from quantlens.report.page import Td, table
from quantlens.report.safe import esc

__all__ = ["runtime_html"]


def _db(x: float) -> str:
    return "identical" if x == float("inf") else f"{x:.1f} dB"


def runtime_html(v: Any) -> str:
    """Float / simulation / runtime metrics, the difference with its interval (flagged if beyond it), and the rounding split."""
    u = Units.for_metric(v.metric_name)
    rt, plain = v.extra.get("runtime_name", "onnxruntime"), v.extra.get("plain_name", "onnxruntime, no graph optimizations")
    rows = [
        [Td("float", "float", "t"), Td(u.value(v.float_metric), v.float_metric), Td("-")],
        [Td("simulation (quantlens)", "simulation", "t"), Td(u.value(v.simulated_metric), v.simulated_metric), Td(u.deg(v.predicted, True), v.predicted)],
        [Td(rt, rt, "t"), Td(u.value(v.runtime_metric), v.runtime_metric), Td(u.deg(v.runtime, True), v.runtime)],
        [Td(plain, "plain", "t"), Td(u.value(v.plain_metric), v.plain_metric),
         Td(u.deg(v._deg(v.plain_metric), True), v._deg(v.plain_metric))],
    ]
    lo, hi = v.difference_interval
    verdict = (f'<p class="note" style="color:#b91c1c"><b>Flagged:</b> the runtime\'s degradation differs from the prediction by '
               f"{esc(u.deg(v.difference, True))}, beyond the 95% interval {esc(u.deg(lo, True))} .. {esc(u.deg(hi, True))}.</p>"
               if v.flagged else
               f'<p class="lead">Runtime minus predicted degradation: {esc(u.deg(v.difference, True))} (95% paired interval '
               f"{esc(u.deg(lo, True))} .. {esc(u.deg(hi, True))}): within sampling noise.</p>")
    c, p, rp = v.runtime_vs_simulation, v.plain_vs_simulation, v.runtime_vs_plain
    names = ((f"{rt} vs simulation", f"{plain} vs simulation", f"{rt} vs {plain}") if v.source == "compressed-tensors" else
             ("onnxruntime vs simulation", "no optimizations vs simulation", "onnxruntime vs no optimizations"))
    crow = [[Td(name, name, "t"), Td(f"{100 * x.agreement:.2f}%", x.agreement), Td(_db(x.sqnr_db), x.sqnr_db), Td(f"{x.max_abs:.3g}", x.max_abs)]
            for name, x in zip(names, (c, p, rp))]
    if v.source == "compressed-tensors":
        lead = f"The exported checkpoint loaded by {esc(rt)} on {v.num_samples:,} sequences"
        agreement = "token agreement"
        note = f"{esc(v.extra.get('rounding_note', ''))} (see docs/runtimes.md)."
    else:
        fused = ", ".join(f"{k} x{n}" for k, n in v.fused_ops.items()) or "none"
        lead = f"The exported model run in onnxruntime on {v.num_samples:,} samples"
        agreement = "top-1 agreement"
        note = (f"Integer kernels onnxruntime fused: {esc(fused)}. With graph optimizations off, onnxruntime runs "
                "each QuantizeLinear/DequantizeLinear as written; the rows above separate its integer kernels' rounding "
                "from the rest (see docs/export.md).")
    return (f'<p class="lead">{lead}, against quantlens\'s simulation of the same quantized network and the float model.</p>'
            + table(["network", v.metric_name, "degradation"], rows, sortable=False, text_cols=(0,), table_id="runtime-table")
            + verdict
            + table(["outputs compared", agreement, "SQNR", "max |difference|"], crow, sortable=False, text_cols=(0,),
                    table_id="runtime-rounding")
            + f'<p class="note">{note}</p>')
