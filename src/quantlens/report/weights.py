"""Per-layer weight histogram with its quantization range (the paper's Figure 6).

For each layer: the stored 64-bin histogram of its BN-folded float weights, the weights' min and
max (dotted), the quantizer's range ``±w_clip`` at the focus bit-width (dashed red; it differs
from ``max|w|`` when a clipping estimator is used), the quantization grid of that bit-width as
ticks on the axis (up to 6 bits), and the number of weights beyond 3 sigma. A dropdown picks the
layer, the worst one at the focus bit-width first; counts are on a log axis when that layer has
outliers (a switch toggles it).

Example:
    >>> fig = weight_histograms(result, focus=4)     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Optional

import plotly.graph_objects as go

from quantlens.sweep.results import Cell, LayerInfo, SweepResult, bits_label, column_label, weights_label
from quantlens.report.figures import BASE_LAYOUT
from quantlens.report.fmt import finite
from quantlens.report.insights import OUTLIER_RATIO
from quantlens.report.safe import plot_text

__all__ = ["weight_histograms", "layer_note", "MAX_GRID_TICKS"]

MAX_GRID_TICKS = 65



def _float_format(name: str) -> bool:
    """Whether ``name`` is a named format whose grid is not the uniform integer one (FP8, MX, NVFP4, a cast)."""
    if not name:
        return False
    from quantlens.quant.formats import get_format

    try:
        return get_format(name).family != "int"
    except Exception:  # an older file's unknown name: draw it as bits
        return False

def _line(x: float, color: str, dash: str) -> dict:
    return dict(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, line=dict(color=color, dash=dash, width=2))


def _label(x: float, text: str, color: str, y: float) -> dict:
    return dict(x=x, y=y, xref="x", yref="paper", text=text, showarrow=False, font=dict(color=color, size=11),
                bgcolor="rgba(255,255,255,0.8)")


def layer_note(layer: LayerInfo, cell: Optional[Cell]) -> str:
    """One line of numbers under the histogram (plotly text, already escaped)."""
    parts = []
    w = layer.weight
    if w is not None:
        n = max(1, sum(w.hist_counts) or layer.params)
        parts.append(f"{w.outliers_3sigma} of {n} weights beyond 3σ ({100 * w.outliers_3sigma / n:.2f}%)")
        parts.append(f"max|w| = {w.absmax:.4g} = {w.absmax_over_std:.1f}σ")
    for attr, label in (("input_range", "input"), ("output_range", "output")):
        r = getattr(layer, attr)
        if r and all(finite(v) for v in r):
            parts.append(f"{label} range [{r[0]:.3g}, {r[1]:.3g}]")
    if cell is not None and finite(cell.mean_shift):
        parts.append(f"mean shift at {bits_label(cell.format if _float_format(cell.format) else cell.w_bits)}: {cell.mean_shift:.3g}σ")
    return " · ".join(parts)


def _shapes(layer: LayerInfo, cell: Optional[Cell], symmetric: bool, granularity: str) -> tuple[list[dict], list[dict]]:
    w = layer.weight
    assert w is not None
    shapes = [_line(w.min, "#555", "dot"), _line(w.max, "#555", "dot")]
    ann = [_label(w.min, "min", "#555", 1.04), _label(w.max, "max", "#555", 1.04)]
    if cell is not None and finite(cell.w_clip) and cell.w_clip > 0:
        clip, b = cell.w_clip, cell.w_bits
        lo = -clip if symmetric else w.min
        clipped = clip < 0.999 * w.absmax
        per_tensor = granularity in ("per-tensor", "")
        name = ("clip" if clipped else "quant range") if per_tensor else "widest channel range"
        shapes += [_line(lo, "#d62728", "dash"), _line(clip, "#d62728", "dash")]
        named = _float_format(cell.format)
        col = cell.format if named else b
        ann += [_label(lo, f"-{name} ({column_label(col)})" if symmetric else f"{name} lo", "#d62728", 0.93),
                _label(clip, f"+{name} ({column_label(col)})", "#d62728", 0.93)]
        levels = 0 if named else 2 ** (b - 1) - 1  # a floating-point format's grid is not uniform: no level ticks
        if symmetric and per_tensor and levels > 0 and 2 * levels + 1 <= MAX_GRID_TICKS:
            step = clip / levels  # the grid as ticks on the axis (shapes: they survive a log count axis)
            shapes += [dict(type="line", xref="x", yref="paper", x0=k * step, x1=k * step, y0=0, y1=0.05,
                            line=dict(color="#d62728", width=1.5)) for k in range(-levels - 1, levels + 1)]
    return shapes, ann


def weight_histograms(result: SweepResult, focus: int) -> Optional[go.Figure]:
    """One histogram per layer behind a dropdown; ``None`` when no layer has weight statistics."""
    layers = [l for l in result.layers if l.weight is not None and len(l.weight.hist_counts) + 1 == len(l.weight.hist_edges)]
    if not layers:
        return None
    wcfg = result.config.get("weight") if isinstance(result.config, dict) else None
    wcfg = wcfg if isinstance(wcfg, dict) else {}
    symmetric, granularity = bool(wcfg.get("symmetric", True)), str(wcfg.get("granularity", "per-tensor"))
    cells = {c.layer: c for c in result.cells if result.key_of(c) == focus}
    worst = [c.layer for c in result.worst(focus, 1)]
    first = next((i for i, l in enumerate(layers) if worst and l.name == worst[0]), 0)
    fig = go.Figure()
    views: list[dict[str, Any]] = []
    for i, l in enumerate(layers):
        w = l.weight
        assert w is not None
        e = w.hist_edges
        centers = [(a + b) / 2 for a, b in zip(e[:-1], e[1:])]
        widths = [b - a for a, b in zip(e[:-1], e[1:])]
        name = plot_text(l.name)
        fig.add_bar(x=centers, y=w.hist_counts, width=widths, name=name, marker_color="#4c78a8", visible=i == first,
                    customdata=[[a, b] for a, b in zip(e[:-1], e[1:])],
                    hovertemplate="[%{customdata[0]:.4g}, %{customdata[1]:.4g}): %{y} weights<extra></extra>")
        shapes, ann = _shapes(l, cells.get(l.name), symmetric, granularity)
        ann.append(dict(x=0, y=-0.3, xref="paper", yref="paper", xanchor="left", showarrow=False, font=dict(size=12),
                        text=layer_note(l, cells.get(l.name))))
        views.append(dict(label=name, title=f"Weights of {name} ({plot_text(l.op)}, {l.kind}, {l.params:,} params) "
                          f"and the {weights_label(focus)} quantization range", shapes=shapes, annotations=ann))
    n = len(layers)
    w0 = layers[first].weight
    log = w0 is not None and w0.absmax_over_std >= OUTLIER_RATIO  # outliers: a few weights, visible on a log axis
    buttons = []
    for i, v in enumerate(views):
        mask = [j == i for j in range(n)]
        buttons.append(dict(label=v["label"], method="update",
                            args=[{"visible": mask}, {"title.text": v["title"], "shapes": v["shapes"], "annotations": v["annotations"]}]))
    fig.update_layout(**BASE_LAYOUT, height=440, showlegend=False, bargap=0, title=dict(text=views[first]["title"], y=0.97),
                      shapes=views[first]["shapes"], annotations=views[first]["annotations"],
                      xaxis=dict(title="weight value (BN folded)"), yaxis=dict(title="count", type="log" if log else "linear"),
                      updatemenus=[dict(type="dropdown", buttons=buttons, active=first, x=1.0, xanchor="right", y=1.13,
                                        yanchor="bottom", bgcolor="#f3f4f6"),
                                   dict(type="buttons", direction="right", active=int(log), x=0.83, xanchor="right", y=1.13,
                                        yanchor="bottom", bgcolor="#f3f4f6", showactive=True,
                                        buttons=[dict(label="linear count", method="relayout", args=[{"yaxis.type": "linear"}]),
                                                 dict(label="log count", method="relayout", args=[{"yaxis.type": "log"}])])])
    fig.update_layout(margin=dict(l=60, r=30, t=110, b=120))
    return fig
