"""Sections for the optional files: additivity (Figure 2), fixes (Table 1), mixed-precision plan.

Where ``fix`` and ``plan`` stored 95% intervals, every row shows its interval and what it lets a
reader conclude (:mod:`quantlens.stats.resolve`): a measured degradation is ``worse than float``
(interval above 0) or ``~ 0 (noise)``; a change (a fix against naive, the plan against uniform)
is ``significant`` or ``not significant`` (:func:`~quantlens.stats.resolve.separated`), and a kept
local fix says which, as ``fix`` judged it (``significant`` in ``fix.json``), and the plan's change
from uniform is :meth:`PlanResult.vs_uniform`. The objects are the owners' (:mod:`quantlens.report.extras`).

Example:
    >>> html = additivity_html(extras.additivity, Units.for_metric("top1"))     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import plotly.graph_objects as go

from quantlens.stats.intervals import Interval
from quantlens.stats.resolve import significance
from quantlens.report.extras import plan_avg_bits
from quantlens.report.figures import BASE_LAYOUT
from quantlens.report.fmt import Units, finite
from quantlens.report.page import Td, plot_div, table
from quantlens.report.safe import esc, plot_text
from quantlens.sweep.results import bits_label, weights_label

if TYPE_CHECKING:
    from quantlens.experiments.additivity import AdditivityResult
    from quantlens.experiments.fixloop import FixResult, FixRow, LocalTrial
    from quantlens.experiments.plan import PlanResult

__all__ = ["additivity_figure", "additivity_html", "fix_html", "plan_html", "ci_td", "verdict_td"]


def additivity_figure(a: "AdditivityResult", units: Units) -> go.Figure:
    """Measured against predicted degradation of random mixed-precision networks, with y = x."""
    pts = [p for p in a.points if finite(p.predicted) and finite(p.measured)]
    xs, ys = [p.predicted * units.scale for p in pts], [p.measured * units.scale for p in pts]
    lo, hi = min(xs + ys + [0.0]), max(xs + ys + [0.0])
    pad = 0.05 * (hi - lo or 1.0)
    fig = go.Figure()
    fig.add_scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="y = x (perfect additivity)",
                    line=dict(color="#6b7280", dash="dash"), hoverinfo="skip")
    fig.add_scatter(x=xs, y=ys, mode="markers", name="random configuration", marker=dict(size=10, color="#1f77b4"),
                    text=[plot_text(", ".join(p.low_bit_layers)) or "(none)" for p in pts],
                    hovertemplate="predicted %{x:.3f}<br>measured %{y:.3f}<br>low-bit layers: %{text}<extra></extra>")
    bits = f" ({weights_label(a.low)} / {weights_label(a.high)})" if a.low and a.high else ""
    r = f"Pearson r = {a.pearson_r:.3f}" if finite(a.pearson_r) else "Pearson r = -"
    s = f"slope = {a.slope:.2f}" if finite(a.slope) else "slope = -"
    unit = " (%)" if units.pct else ""
    fig.update_layout(**BASE_LAYOUT, height=460, title=f"Additivity{bits}: {r}, {s}",
                      xaxis=dict(title=f"predicted degradation (sum of single-layer cells){unit}", range=[lo - pad, hi + pad]),
                      yaxis=dict(title=f"measured degradation{unit}", range=[lo - pad, hi + pad]),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def additivity_html(a: "AdditivityResult", units: Units) -> str:
    """Figure 2 and one sentence that reads it."""
    verdict = ""
    if finite(a.pearson_r) and finite(a.slope):
        ok = a.pearson_r >= 0.9
        verdict = (f"Single-layer degradations {'add up' if ok else 'do not add up well'} (r = {a.pearson_r:.2f}); "
                   f"measured = {a.slope:.2f} x predicted"
                   + (": the joint degradation is larger than the sum, look for layers with a mean shift (section 4.4)." if a.slope > 1.2 else "."))
    flagged = (f" Layers whose output mean shifts most under quantization (section 4.4): {', '.join(a.flagged)}."
               if a.flagged else "")
    return (f'<p class="lead">{esc(verdict)} {len(a.points)} random configurations.{esc(flagged)}</p>'
            + plot_div(additivity_figure(a, units), "plot-additivity"))


def _ci(low: float, high: float) -> Optional[tuple[float, float]]:
    """A stored 95% interval ``(low, high)``; None when either end is missing (NaN) or not finite."""
    return (low, high) if finite(low) and finite(high) else None


def _interval(ci: Optional[tuple[float, float]], n: int) -> Optional[Interval]:
    return None if ci is None else Interval.stored(ci[0], ci[1], n)


def ci_td(ci: Optional[tuple[float, float]], u: Units) -> Td:
    """``[+0.70%, +3.18%]``, or ``-`` without an interval."""
    if ci is None:
        return Td("-", None)
    return Td(f"[{u.deg(ci[0], signed=True)}, {u.deg(ci[1], signed=True)}]", ci[0])


_VERDICT = {"worse": ("worse than float", "bad"), "better": ("better than float", "good"), "zero": ("~ 0 (noise)", ""),
            "unknown": ("-", "")}


def verdict_td(ci: Optional[tuple[float, float]], n: int = 0) -> Td:
    """Whether a measured degradation is distinguishable from float (:func:`quantlens.stats.resolve.significance`)."""
    v = significance(_interval(ci, n))
    text, cls = _VERDICT[v]
    return Td(text, text, cls)


def _vs_naive_td(f: "FixResult", r: "FixRow", d: Optional[float], u: Units) -> Td:
    if d is None:
        return Td("-", None)
    vs = f.vs_naive(r.method)
    sig = None if vs is None else vs["significant"]
    tone = "good" if d > 0 else ("bad" if d < 0 else "")
    if sig is None:
        return Td(u.deg(d, signed=True), d, tone)
    return Td(f"{u.deg(d, signed=True)} ({'significant' if sig else 'not significant'})", d, tone if sig else "")


def _kept_td(t: "LocalTrial") -> Td:
    """``kept``, with ``(significant)`` / ``(not significant)`` where ``fix`` judged the gain."""
    if not t.kept:
        return Td("-", 0)
    if t.significant is None:
        return Td("kept", 1, "good")
    return Td("kept (significant)", 2, "good") if t.significant else Td("kept (not significant)", 1, "")


def fix_html(f: "FixResult") -> str:
    """The paper's Table 1 for the user's network: each method, its metric, its improvement over naive,
    and (with intervals) each row's 95% interval and whether its change is significant."""
    u = Units.for_metric(f.metric_name)
    naive_row = next((r for r in f.rows if r.method == "naive"), None)
    naive = naive_row.metric if naive_row is not None else None
    sign = 1.0 if f.higher_is_better else -1.0  # positive "vs naive" is always better
    cis = any(_ci(r.ci_low, r.ci_high) is not None for r in f.rows) or any(_ci(t.ci_low, t.ci_high) is not None for t in f.trials)
    rows = []
    for r in f.rows:
        d = sign * (r.metric - naive) if naive is not None and finite(r.metric) and finite(naive) else None
        fixes = "; ".join(f"{k}: {'+'.join(v)}" for k, v in r.fixes.items())
        row = [Td(r.method, r.method, "t"), Td(u.value(r.metric), r.metric if finite(r.metric) else None),
               Td(u.deg(r.degradation), r.degradation)]
        if cis:
            ci = None if r.method == "float" else _ci(r.ci_low, r.ci_high)
            row += [ci_td(ci, u), verdict_td(ci, f.num_samples)]
        sqnr = r.sqnr_db if finite(r.sqnr_db) else None  # the float row's +Inf shows as "-"
        row += [_vs_naive_td(f, r, d, u), Td(f"{sqnr:.1f}" if sqnr is not None else "-", sqnr), Td(fixes or "-", fixes, "t")]
        rows.append(row)
    at = " as the plan says" if f.w_bits == "plan" else f" at {bits_label(f.w_bits)}" if f.w_bits else ""
    head = f"Whole network quantized{at}, measured on the evaluation data."
    if cis and f.num_samples:
        head += f" 95% paired intervals on {f.num_samples:,} samples."
    cols = ["method", f.metric_name, "degradation"] + (["95% interval", "vs float"] if cis else []) + ["vs naive", "SQNR (dB)", "local fixes"]
    out = (f'<p class="lead">{esc(head)}</p>'
           + table(cols, rows, text_cols=(0, len(cols) - 1), table_id="fix-table"))
    if f.trials:
        trows = []
        for t in f.trials:
            row = [Td(t.layer, t.layer, "t"), Td(t.fix, t.fix, "t"), Td(u.deg(t.naive_degradation), t.naive_degradation),
                   Td(u.deg(t.degradation), t.degradation)]
            trows.append(row + ([ci_td(_ci(t.ci_low, t.ci_high), u)] if cis else []) + [_kept_td(t)])
        tcols = ["layer", "fix", "naive degradation", "with the fix"] + (["95% interval"] if cis else []) + ["kept"]
        out += ("<h3>Fixes tried on each culprit layer alone</h3>"
                + table(tcols, trows, text_cols=(0, 1), table_id="fix-trials"))
        weak = [t for t in f.trials if t.kept and t.significant is False]
        if weak:
            on = f" on {f.num_samples:,} samples" if f.num_samples else ""
            out += ('<p class="lead">Kept, but the gain over the naive cell is within the noise' + esc(on) + ": "
                    + esc(", ".join(f"{t.layer} ({t.fix})" for t in weak)) + ".</p>")
    if f.diagnosis:
        out += _why_html(f)
    return out


def _why_html(f: "FixResult") -> str:
    """Per culprit, why it broke (:mod:`quantlens.experiments.diagnosis`): the four symptoms, the
    ones past their thresholds named, and the fix it kept."""
    from quantlens.experiments.diagnosis import THRESHOLDS

    kept = f.local_fixes
    rows = []
    for name, d in f.diagnosis:
        causes = ", ".join(d.causes) or "none past the thresholds"
        act = d.act_peak if finite(d.act_peak) else None
        rows.append([Td(name, name, "t"), Td(f"{d.weight_peak:.1f}", d.weight_peak),
                     Td(f"{act:.0f}x" if act is not None else "-", act),
                     Td(f"{d.zeroed:.1%}" if finite(d.zeroed) else "-", d.zeroed if finite(d.zeroed) else None),
                     Td(f"{d.dead_blocks:.1%}" if finite(d.dead_blocks) else "-", d.dead_blocks if finite(d.dead_blocks) else None),
                     Td(causes, causes, "t"), Td("+".join(kept.get(name, [])) or "-", "+".join(kept.get(name, [])), "t")])
    cols = ["culprit", "weight max (sigma)", "input channel max / median", "weights to zero", "blocks to zero", "symptoms", "fix kept"]
    rule = (f"Symptoms are named past rules of thumb: weight max over {THRESHOLDS['weight_peak']:g} sigma, an input channel over "
            f"{THRESHOLDS['act_peak']:g}x the median one, over {THRESHOLDS['zeroed']:.0%} of weights or {THRESHOLDS['dead_blocks']:.0%} "
            "of blocks rounding to zero (underflow); the numbers are the evidence.")
    return ("<h3>Why each culprit broke</h3>" + table(cols, rows, text_cols=(0, 5, 6), table_id="fix-why")
            + f'<p class="lead">{esc(rule)}</p>')


def _vs_uniform_td(v: Optional[dict], units: Units) -> Td:
    """The plan's change from uniform, :meth:`PlanResult.vs_uniform`."""
    if v is None:
        return Td("-", None)
    gain, sig = v["gain"], v["significant"]
    text = f"{units.deg(gain, signed=True)} ({'significant' if sig else 'not significant'})"
    return Td(text, gain, "good" if sig and gain > 0 else ("bad" if sig and gain < 0 else ""))


def plan_html(p: "PlanResult", units: Units) -> str:
    """Chosen bits per layer (bar chart) and the plan against the uniform configuration, with each
    measurement's 95% interval and whether the plan's change from uniform is significant."""
    parts = []
    if p.layers:
        fig = go.Figure(go.Bar(x=[plot_text(l.layer) for l in p.layers], y=[l.w_bits for l in p.layers], marker_color="#2ca02c",
                               hovertemplate="<b>%{x}</b>: %{y}-bit weights<extra></extra>"))
        title = "Mixed-precision plan: weight bits per layer" + (f" (budget {p.budget_bits:g})" if finite(p.budget_bits) else "")
        fig.update_layout(**BASE_LAYOUT, height=360, title=title, yaxis=dict(title="weight bits", dtick=1),
                          xaxis=dict(type="category", title="layer"))
        parts.append(plot_div(fig, "plot-plan"))
    mci, uci, v = _ci(*p.measured_ci), _ci(*p.uniform_ci), p.vs_uniform()
    cis = mci is not None or uci is not None or v is not None
    extra = (lambda ci, vs: [ci_td(ci, units), verdict_td(ci, p.num_samples), vs]) if cis else (lambda ci, vs: [])
    avg = plan_avg_bits(p)
    rows = [[Td("plan", "plan", "t"), Td(f"{avg:.2f}" if avg is not None else "-", avg),
             Td(units.deg(p.predicted), p.predicted), Td(units.deg(p.measured), p.measured)]
            + extra(mci, _vs_uniform_td(v, units))]
    ub = None if p.uniform_bits is None else float(p.uniform_bits)
    if ub is not None or finite(p.uniform_predicted) or finite(p.uniform_measured):
        rows.append([Td("uniform", "uniform", "t"), Td(f"{ub:g}" if ub is not None else "-", ub),
                     Td(units.deg(p.uniform_predicted), p.uniform_predicted), Td(units.deg(p.uniform_measured), p.uniform_measured)]
                    + extra(uci, Td("-", None)))
    cols = ["configuration", "weight bits (avg)", "predicted degradation", "measured degradation"]
    cols += ["95% interval", "vs float", "vs uniform"] if cis else []
    parts.append(table(cols, rows, sortable=False, text_cols=(0,), table_id="plan-table"))
    if v is not None:
        on = f" on {p.num_samples:,} samples" if p.num_samples else ""
        gain = f"Plan vs uniform (uniform minus plan degradation): {units.deg(v['gain'], signed=True)}"
        need = v["samples_to_resolve"]
        line = (f"{gain}, significant{on}." if v["significant"] else
                f"{gain} is not significant{on}" + (f"; about {need:,} would resolve it." if need else "."))
        parts.append(f'<p class="lead">{esc(line)}</p>')
    return "".join(parts)
