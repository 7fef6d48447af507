"""Plotly figures of one sweep, drawn from the stored results only.

* :func:`layer_profile` -- degradation (bars) and SQNR (line) per layer in topological order,
  with a bit-width selector (the paper's Figure 1b).
* :func:`heatmap` -- layers x bits, each cell annotated with the absolute degradation, colour
  saturated at ``saturate`` (the paper's Figure 3); for an ``--estimate`` result
  :func:`estimate_heatmap`, every cell's estimate with the measured (checked) cells outlined.
* :func:`noise_scatter` -- output noise against degradation, one colour per bit-width.
* :func:`activation_figure` -- each layer's input/output range and the mean shift of its output.

Every name from the user's model passes through :func:`~quantlens.report.safe.plot_text`.

Example:
    >>> fig = heatmap(result, Units.for_metric("top1"), saturate=0.05)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Optional

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from quantlens.sweep.results import column_label, bits_label, weights_label
from quantlens.sweep.results import SweepResult
from quantlens.report.fmt import Units, finite
from quantlens.report.layout import EstimateCheck, estimate_saturation, is_checked
from quantlens.report.safe import plot_text

__all__ = ["layer_profile", "heatmap", "estimate_heatmap", "noise_scatter", "activation_figure", "bits_buttons", "BASE_LAYOUT", "COLORS"]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
BASE_LAYOUT: dict[str, Any] = dict(template="plotly_white", margin=dict(l=60, r=30, t=70, b=60), hoverlabel=dict(align="left"))


def _val(x: Optional[float]) -> Optional[float]:
    return float(x) if finite(x) else None


def bits_buttons(labels: list[str], masks: list[list[bool]], titles: list[str], active: int) -> list[dict]:
    """A plotly ``updatemenus`` row that shows one group of traces (and its title) at a time."""
    buttons = [
        dict(label=lab, method="update", args=[{"visible": m}, {"title.text": t}])
        for lab, m, t in zip(labels, masks, titles)
    ]
    return [dict(type="buttons", direction="right", active=active, buttons=buttons, x=0, y=1.0, xanchor="left",
                 yanchor="bottom", pad=dict(t=4, b=4), showactive=True, bgcolor="#f3f4f6")]


def layer_profile(result: SweepResult, units: Units, focus: int) -> go.Figure:
    """Degradation and SQNR per layer at each bit-width; one bit-width visible at a time."""
    names = [plot_text(n) for n in result.layer_names]
    info = {l.name: l for l in result.layers}
    fig = go.Figure()
    bits = result.w_bits
    check = EstimateCheck.of(result)
    for b in bits:
        cells = result.at(b)
        cd = [[plot_text(info[c.layer].op), info[c.layer].kind, info[c.layer].params, units.deg(c.degradation),
               units.value(c.metric), f"{c.noise:.4g}", f"{c.mean_shift:.3g}", f"{c.estimate:.3g}" if finite(c.estimate) else "-"]
              for c in cells]
        vis = b == focus
        xs = [plot_text(c.layer) for c in cells]  # a layer without a cell at b is a gap, never a shift
        if check is not None:  # every cell has an estimate; the checked ones are outlined and add their measurement
            fig.add_bar(x=xs, y=[_val(c.estimate) for c in cells], name=f"estimate ({weights_label(b)})", customdata=cd,
                        marker=dict(color="#9ca3af", line=dict(color=["#111827" if is_checked(c) else "#9ca3af" for c in cells],
                                                               width=[2 if is_checked(c) else 0 for c in cells])), visible=vis,
                        hovertemplate="<b>%{x}</b> (%{customdata[0]}, %{customdata[1]}, %{customdata[2]:,} params)<br>"
                        f"{weights_label(b)} weights: estimate %{{customdata[7]}} ({plot_text(check.unit)})<br>"
                        "measured degradation %{customdata[3]} (- : estimate only)<extra></extra>")
        else:
            fig.add_bar(x=xs, y=[units.shown(c.degradation) for c in cells], name=f"degradation ({weights_label(b)})", customdata=cd,
                        marker_color="#d62728", visible=vis,
                        hovertemplate="<b>%{x}</b> (%{customdata[0]}, %{customdata[1]}, %{customdata[2]:,} params)<br>"
                        f"{weights_label(b)} weights: degradation %{{customdata[3]}}, metric %{{customdata[4]}}<br>"
                        "noise %{customdata[5]}, mean shift %{customdata[6]} std<extra></extra>")
        fig.add_scatter(x=xs, y=[_val(c.sqnr_db) for c in cells], name=f"SQNR ({weights_label(b)})", yaxis="y2", visible=vis,
                        mode="lines+markers", line=dict(color="#1f77b4"),
                        hovertemplate=f"<b>%{{x}}</b><br>SQNR at {bits_label(b)}: %{{y:.2f}} dB<extra></extra>")
    masks = [[bb == b for bb in bits for _ in (0, 1)] for b in bits]
    titles = [(f"Estimated degradation per layer, {weights_label(b)} weights (outlined: measured)" if check is not None
               else f"Degradation and SQNR per layer, {weights_label(b)} weights") for b in bits]
    active = bits.index(focus)
    fig.update_layout(
        **BASE_LAYOUT, title=dict(text=titles[active], y=0.97), height=440, barmode="group",
        updatemenus=bits_buttons([f"{bits_label(b)}" for b in bits], masks, titles, active),
        yaxis=dict(title=f"{plot_text(result.metric_name)} degradation{' (%)' if units.pct else ''}" if check is None
                   else f"estimate: {plot_text(check.short_unit())}", zeroline=True),
        yaxis2=dict(title="SQNR (dB)", overlaying="y", side="right", showgrid=False, rangemode="tozero", tickmode="auto"),
        xaxis=dict(title="layer (topological order)", type="category", categoryorder="array", categoryarray=names,
                   tickangle=-45 if len(names) > 8 else 0),
        legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"),
    )
    return fig


def heatmap(result: SweepResult, units: Units, saturate: float) -> go.Figure:
    """Layers (rows, topological order) x bits (columns), annotated, colour saturated at ``saturate``
    (an ``--estimate`` result: :func:`estimate_heatmap`)."""
    check = EstimateCheck.of(result)
    if check is not None:
        return estimate_heatmap(result, units, check)
    names, bits, deg = result.table("degradation")
    _, _, sqnr = result.table("sqnr_db")
    z = [[units.shown(v) for v in row] for row in deg]
    _, _, lo = result.table("ci_low")
    _, _, hi = result.table("ci_high")
    text = [[units.deg(v).rstrip("%") for v in row] for row in deg]

    def ci(a: float, b: float) -> str:
        if not (finite(a) and finite(b)):
            return "no interval (custom metric)"
        zero = " (contains 0: not distinguishable from float)" if a <= 0 <= b else ""
        return f"95% interval [{units.deg(a, signed=True)}, {units.deg(b, signed=True)}]{zero}"

    cd = [[[units.deg(v, signed=True), f"{s:.1f}" if finite(s) else "-", ci(a, b)] for v, s, a, b in zip(r1, r2, r3, r4)]
          for r1, r2, r3, r4 in zip(deg, sqnr, lo, hi)]
    sat = saturate * units.scale
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"{bits_label(b)}" for b in bits], y=[plot_text(n) for n in names], text=text, texttemplate="%{text}",
        customdata=cd, zmin=-sat, zmax=sat, zmid=0,
        colorscale=[[0, "#2166ac"], [0.35, "#d1e5f0"], [0.5, "#ffffff"], [0.65, "#fddbc7"], [0.85, "#d6604d"], [1, "#67001f"]],
        colorbar=dict(title=dict(text=f"degradation{' (%)' if units.pct else ''}<br>saturated at {units.deg(saturate)}"),
                      lenmode="pixels", len=min(300, 26 * len(names) + 40), y=1, yanchor="top"),
        hovertemplate="<b>%{y}</b> at %{x}<br>degradation %{customdata[0]}<br>%{customdata[2]}<br>SQNR %{customdata[1]} dB<extra></extra>",
        xgap=1, ygap=1,
    ))
    # cells whose 95% interval contains 0: a light veil and a "~" (not distinguishable from float)
    veil = [[1.0 if finite(a) and finite(b) and a <= 0 <= b else None for a, b in zip(r3, r4)] for r3, r4 in zip(lo, hi)]
    if any(v is not None for row in veil for v in row):
        fig.add_trace(go.Heatmap(
            z=veil, x=[f"{bits_label(b)}" for b in bits], y=[plot_text(n) for n in names], name="interval contains 0",
            text=[[f"~{t}" if v is not None else "" for t, v in zip(tr, vr)] for tr, vr in zip(text, veil)],
            texttemplate="%{text}", customdata=cd, showscale=False, zmin=0, zmax=1,
            colorscale=[[0, "rgba(255,255,255,0.65)"], [1, "rgba(255,255,255,0.65)"]],
            hovertemplate="<b>%{y}</b> at %{x}<br>degradation %{customdata[0]}<br>%{customdata[2]}<br>SQNR %{customdata[1]} dB<extra></extra>",
            xgap=1, ygap=1,
        ))
    fig.update_layout(**BASE_LAYOUT, title=f"Degradation when only that layer is quantized (colour saturated at {units.deg(saturate)}; "
                      "pale with ~: the 95% interval contains 0)",
                      height=max(320, 26 * len(names) + 160), yaxis=dict(autorange="reversed", type="category"),
                      xaxis=dict(side="top", type="category"))
    fig.update_layout(margin=dict(l=60, r=30, t=100, b=30))
    return fig


def estimate_heatmap(result: SweepResult, units: Units, check: EstimateCheck) -> go.Figure:
    """Layers x bits of an ``--estimate`` result: every cell coloured and annotated by its estimate
    (saturated at the 95th percentile of ``|estimate|``, :func:`~quantlens.report.layout.estimate_saturation`), the checked cells outlined with their measured degradation on hover."""
    names, bits, est = result.table("estimate")
    _, _, deg = result.table("degradation")
    top = estimate_saturation(v for row in est for v in row)
    xs, ys = [f"{bits_label(b)}" for b in bits], [plot_text(n) for n in names]
    cd = [[[f"{e:.3g}" if finite(e) else "-", units.deg(d, signed=True) if finite(d) else "not measured (estimate only)"]
           for e, d in zip(r1, r2)] for r1, r2 in zip(est, deg)]
    fig = go.Figure(go.Heatmap(
        z=[[_val(v) for v in row] for row in est], x=xs, y=ys, text=[[f"{v:.3g}" if finite(v) else "-" for v in row] for row in est],
        texttemplate="%{text}", customdata=cd, zmin=-top, zmax=top, zmid=0, xgap=1, ygap=1,
        colorscale=[[0, "#2166ac"], [0.35, "#d1e5f0"], [0.5, "#ffffff"], [0.65, "#fddbc7"], [0.85, "#d6604d"], [1, "#67001f"]],
        colorbar=dict(title=dict(text="estimate"), lenmode="pixels", len=min(300, 26 * len(names) + 40), y=1, yanchor="top"),
        hovertemplate=f"<b>%{{y}}</b> at %{{x}}<br>estimate %{{customdata[0]}} ({plot_text(check.unit)})"
                      "<br>measured degradation %{customdata[1]}<extra></extra>",
    ))
    marks = [(i, j) for i, row in enumerate(deg) for j, d in enumerate(row) if finite(d) and finite(est[i][j])]
    if marks:
        fig.add_scatter(x=[xs[j] for _, j in marks], y=[ys[i] for i, _ in marks], mode="markers", showlegend=False,
                        marker=dict(symbol="square-open", size=18, color="#111827", line=dict(width=2)),
                        customdata=[cd[i][j] for i, j in marks],
                        hovertemplate="<b>%{y}</b> at %{x} (measured to check the estimate)<br>measured degradation "
                                      "%{customdata[1]}<br>estimate %{customdata[0]}<extra></extra>")
    fig.update_layout(**BASE_LAYOUT, title=f"Estimated degradation when only that layer is quantized ({plot_text(check.short_unit())}; "
                      "outlined: measured)", height=max(320, 26 * len(names) + 160), yaxis=dict(autorange="reversed", type="category"),
                      xaxis=dict(side="top", type="category"))
    fig.update_layout(margin=dict(l=60, r=30, t=100, b=30))
    return fig


def noise_scatter(result: SweepResult, units: Units) -> go.Figure:
    """Output noise (log scale when positive) against degradation, one trace per bit-width."""
    fig = go.Figure()
    positive = all(c.noise > 0 for c in result.cells if finite(c.noise))
    for i, b in enumerate(result.w_bits):
        cells = [c for c in result.at(b) if finite(c.noise)]
        fig.add_scatter(x=[c.noise for c in cells], y=[units.shown(c.degradation) for c in cells], mode="markers",
                        name=f"{bits_label(b)}", marker=dict(size=9, color=COLORS[i % len(COLORS)], line=dict(width=0.5, color="#333")),
                        text=[plot_text(c.layer) for c in cells],
                        customdata=[[units.deg(c.degradation, signed=True), f"{c.sqnr_db:.1f}"] for c in cells],
                        hovertemplate=f"<b>%{{text}}</b> at {bits_label(b)}<br>noise %{{x:.4g}} (SQNR %{{customdata[1]}} dB)"
                        "<br>degradation %{customdata[0]}<extra></extra>")
    fig.update_layout(**BASE_LAYOUT, title="Output noise against degradation, every layer at every bit-width", height=430,
                      xaxis=dict(title="output noise  mean ||y - y_i||^2" + (" (log)" if positive else ""), type="log" if positive else "linear"),
                      yaxis=dict(title=f"degradation{' (%)' if units.pct else ''}"))
    return fig


def activation_figure(result: SweepResult, focus: int) -> go.Figure:
    """Row 1: each layer's input and output range (floating bars). Row 2: output mean shift per bit-width."""
    names = [plot_text(n) for n in result.layer_names]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45],
                        subplot_titles=("activation range seen by each layer (input) and produced by it (output)",
                                        "mean shift of the layer's output under quantization (in output std)"))
    for attr, label, color in (("input_range", "input range", "#9ecae1"), ("output_range", "output range", "#fdae6b")):
        lo = [getattr(l, attr)[0] if getattr(l, attr) else None for l in result.layers]
        hi = [getattr(l, attr)[1] if getattr(l, attr) else None for l in result.layers]
        fig.add_bar(x=names, base=lo, y=[(h - l) if finite(h) and finite(l) else None for l, h in zip(lo, hi)], name=label,
                    marker_color=color, customdata=[[_val(a), _val(b)] for a, b in zip(lo, hi)], row=1, col=1,
                    hovertemplate=f"<b>%{{x}}</b><br>{label} [%{{customdata[0]:.4g}}, %{{customdata[1]:.4g}}]<extra></extra>")
    for i, b in enumerate(result.w_bits):
        cells = result.at(b)
        fig.add_scatter(x=[plot_text(c.layer) for c in cells], y=[_val(c.mean_shift) for c in cells], name=f"mean shift {column_label(b)}", mode="lines+markers",
                        line=dict(color=COLORS[i % len(COLORS)], width=3 if b == focus else 1.5), row=2, col=1,
                        visible=True if b in (focus, result.w_bits[0]) or len(result.w_bits) <= 3 else "legendonly",
                        hovertemplate=f"<b>%{{x}}</b><br>{weights_label(b)} weights: mean shift %{{y:.3g}} std<extra></extra>")
    fig.update_layout(**BASE_LAYOUT, height=560, barmode="group", title="Activation ranges and bias shift (section 4.4)",
                      legend=dict(x=1.01, y=1, xanchor="left", yanchor="top"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=names, tickangle=-45 if len(names) > 8 else 0)
    fig.update_yaxes(title_text="value", row=1, col=1)
    fig.update_yaxes(title_text="|mean shift| / std", rangemode="tozero", row=2, col=1)
    return fig
