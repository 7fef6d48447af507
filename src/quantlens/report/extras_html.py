"""Sections for the optional files: additivity (Figure 2), fixes (Table 1), mixed-precision plan.

Example:
    >>> html = additivity_html(extras.additivity, Units.for_metric("top1"))     # doctest: +SKIP
"""

from __future__ import annotations

import plotly.graph_objects as go

from .extras import Additivity, FixTable, Plan
from .figures import BASE_LAYOUT
from .fmt import Units, finite
from .page import Td, plot_div, table
from .safe import esc, plot_text

__all__ = ["additivity_figure", "additivity_html", "fix_html", "plan_html"]


def additivity_figure(a: Additivity, units: Units) -> go.Figure:
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
    bits = f" ({a.low}-bit / {a.high}-bit)" if a.low and a.high else ""
    r = f"Pearson r = {a.pearson_r:.3f}" if finite(a.pearson_r) else "Pearson r = -"
    s = f"slope = {a.slope:.2f}" if finite(a.slope) else "slope = -"
    unit = " (%)" if units.pct else ""
    fig.update_layout(**BASE_LAYOUT, height=460, title=f"Additivity{bits}: {r}, {s}",
                      xaxis=dict(title=f"predicted degradation (sum of single-layer cells){unit}", range=[lo - pad, hi + pad]),
                      yaxis=dict(title=f"measured degradation{unit}", range=[lo - pad, hi + pad]),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def additivity_html(a: Additivity, units: Units) -> str:
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


def fix_html(f: FixTable) -> str:
    """The paper's Table 1 for the user's network: each method, its metric, its improvement over naive."""
    u = Units.for_metric(f.metric)
    naive = next((r.metric for r in f.rows if r.method == "naive"), None)
    sign = 1.0 if f.higher_is_better else -1.0  # positive "vs naive" is always better
    rows = []
    for r in f.rows:
        d = sign * (r.metric - naive) if naive is not None and finite(r.metric) and finite(naive) else None
        fixes = "; ".join(f"{k}: {'+'.join(v)}" for k, v in r.fixes.items())
        rows.append([Td(r.method, r.method, "t"), Td(u.value(r.metric), r.metric if finite(r.metric) else None),
                     Td(u.deg(r.degradation), r.degradation),
                     Td(u.deg(d, signed=True) if d is not None else "-", d, "good" if d and d > 0 else ("bad" if d and d < 0 else "")),
                     Td(f"{r.sqnr_db:.1f}" if r.sqnr_db is not None else "-", r.sqnr_db), Td(fixes or "-", fixes, "t")])
    head = f"Whole network quantized{f' at {f.w_bits} bits' if f.w_bits else ''}, measured on the evaluation data."
    out = (f'<p class="lead">{esc(head)}</p>'
           + table(["method", f.metric, "degradation", "vs naive", "SQNR (dB)", "local fixes"], rows, text_cols=(0, 5), table_id="fix-table"))
    if f.trials:
        trows = [[Td(t.layer, t.layer, "t"), Td(t.fix, t.fix, "t"), Td(u.deg(t.naive_degradation), t.naive_degradation),
                  Td(u.deg(t.degradation), t.degradation), Td("kept" if t.kept else "-", int(t.kept), "good" if t.kept else "")]
                 for t in f.trials]
        out += ("<h3>Fixes tried on each culprit layer alone</h3>"
                + table(["layer", "fix", "naive degradation", "with the fix", "kept"], trows, text_cols=(0, 1), table_id="fix-trials"))
    return out


def plan_html(p: Plan, units: Units) -> str:
    """Chosen bits per layer (bar chart) and the plan against the uniform configuration."""
    parts = []
    if p.layers:
        fig = go.Figure(go.Bar(x=[plot_text(l.layer) for l in p.layers], y=[l.bits for l in p.layers], marker_color="#2ca02c",
                               hovertemplate="<b>%{x}</b>: %{y}-bit weights<extra></extra>"))
        title = "Mixed-precision plan: weight bits per layer" + (f" (budget {p.budget:g})" if p.budget is not None else "")
        fig.update_layout(**BASE_LAYOUT, height=360, title=title, yaxis=dict(title="weight bits", dtick=1),
                          xaxis=dict(type="category", title="layer"))
        parts.append(plot_div(fig, "plot-plan"))
    rows = [[Td("plan", "plan", "t"), Td(f"{p.avg_bits:.2f}" if p.avg_bits is not None else "-", p.avg_bits),
             Td(units.deg(p.predicted), p.predicted), Td(units.deg(p.measured), p.measured)]]
    if any(v is not None for v in (p.uniform_bits, p.uniform_predicted, p.uniform_measured)):
        rows.append([Td("uniform", "uniform", "t"), Td(f"{p.uniform_bits:g}" if p.uniform_bits is not None else "-", p.uniform_bits),
                     Td(units.deg(p.uniform_predicted), p.uniform_predicted), Td(units.deg(p.uniform_measured), p.uniform_measured)])
    parts.append(table(["configuration", "weight bits (avg)", "predicted degradation", "measured degradation"], rows,
                       sortable=False, text_cols=(0,), table_id="plan-table"))
    return "".join(parts)
