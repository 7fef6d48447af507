"""``quantlens compare``: overlay the per-layer profiles of several runs in one page.

Two training runs, a model before and after equalization, before and after fine-tuning (the
paper's Figures 4 and 7). Layers are matched by name; a layer missing from a run is a gap in
its curve and is listed in the summary. The union of layers keeps each run's topological order.

Example:
    >>> write_compare(["before", "after"], "compare.html", labels=["before", "after"])   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from quantlens.sweep.results import SweepResult, weights_label
from quantlens.errors import QuantlensError
from quantlens.report.build import load_result, results_path, write_html
from quantlens.report.figures import BASE_LAYOUT, COLORS, bits_buttons
from quantlens.report.fmt import Units, finite
from quantlens.report.options import ReportOptions
from quantlens.report.page import Page, Td, plot_div, table
from quantlens.report.safe import esc, plot_text
from quantlens.report.sections import config_text

__all__ = ["merged_layers", "render_compare", "write_compare", "run_labels"]

Run = tuple[str, SweepResult]


def merged_layers(results: Sequence[SweepResult]) -> list[str]:
    """Union of layer names: the first run's order, others' extra layers after their predecessor."""
    merged: list[str] = []
    for r in results:
        prev: Optional[str] = None
        for name in r.layer_names:
            if name not in merged:
                merged.insert(merged.index(prev) + 1 if prev is not None else 0, name)
            prev = name
    return merged


def run_labels(paths: Sequence[Union[str, os.PathLike]]) -> list[str]:
    """Short unique labels from the runs' paths (directory names, disambiguated by parents)."""
    dirs = [results_path(p).resolve().parent for p in paths]
    for depth in range(1, 6):
        labels = ["/".join(d.parts[-depth:]) for d in dirs]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i + 1}: {d.name}" for i, d in enumerate(dirs)]


def _deg(r: SweepResult, layer: str, b: int, field: str = "degradation") -> Optional[float]:
    c = r.find(layer, b)
    v = getattr(c, field) if c is not None else None
    return v if finite(v) else None


def _total(r: SweepResult, b: int) -> Optional[float]:
    return r.summed_degradation(b) if b in r.w_bits else None


def profile_overlay(runs: Sequence[Run], layers: list[str], bits: list[int], focus: int, units: Units) -> go.Figure:
    """Degradation (top) and SQNR (bottom) per layer, one colour per run, a button per bit-width."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=("degradation when only that layer is quantized", "SQNR of the network output (dB)"))
    x = [plot_text(n) for n in layers]
    for b in bits:
        for i, (label, r) in enumerate(runs):
            color, vis = COLORS[i % len(COLORS)], b == focus
            lab = plot_text(label)
            fig.add_scatter(x=x, y=[units.shown(_deg(r, n, b)) for n in layers], mode="lines+markers", name=lab,
                            legendgroup=lab, line=dict(color=color), visible=vis, row=1, col=1,
                            hovertemplate=f"<b>%{{x}}</b><br>{lab}, {b} bits: degradation %{{y:.3f}}<extra></extra>")
            fig.add_scatter(x=x, y=[_deg(r, n, b, "sqnr_db") for n in layers], mode="lines+markers", name=lab, legendgroup=lab,
                            showlegend=False, line=dict(color=color, dash="dot"), visible=vis, row=2, col=1,
                            hovertemplate=f"<b>%{{x}}</b><br>{lab}, {b} bits: SQNR %{{y:.2f}} dB<extra></extra>")
    per = 2 * len(runs)
    masks = [[bb == b for bb in bits for _ in range(per)] for b in bits]
    titles = [f"Per-layer profiles at {weights_label(b)} weights" for b in bits]
    fig.update_layout(**BASE_LAYOUT, height=620, title=dict(text=titles[bits.index(focus)], y=0.97),
                      updatemenus=bits_buttons([f"{b} bits" for b in bits], masks, titles, bits.index(focus)),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=x, tickangle=-45 if len(x) > 8 else 0)
    fig.update_yaxes(title_text=f"degradation{' (%)' if units.pct else ''}", row=1, col=1)
    fig.update_yaxes(title_text="SQNR (dB)", row=2, col=1)
    return fig


def _summary(runs: Sequence[Run], layers: list[str], bits: list[int], focus: int, units: Units) -> str:
    heads = ["run", "model", "metric", "float baseline", "layers", "quantization"] + [f"summed deg@{b}b" for b in bits] + [f"worst@{focus}b"]
    rows = []
    for label, r in runs:
        worst = r.worst(focus, 1)[0] if focus in r.w_bits else None
        rows.append([Td(label, label, "t"), Td(r.model, r.model, "t"), Td(r.metric_name, r.metric_name, "t"),
                     Td(units.value(r.baseline), r.baseline), Td(str(len(r.layers)), len(r.layers)),
                     Td(config_text(r), config_text(r), "t")]
                    + [Td(units.deg(_total(r, b)), _total(r, b)) for b in bits]
                    + [Td(f"{worst.layer} ({units.deg(worst.degradation)})" if worst else "-", worst.layer if worst else None, "t")])
    notes: list[str] = []
    if len({r.metric_name for _, r in runs}) > 1:
        notes.append("The runs use different metrics: their degradations are not comparable.")
    for label, r in runs:
        missing = [n for n in layers if n not in set(r.layer_names)]
        if missing:
            notes.append(f"{label} lacks {len(missing)} layer(s): {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    ref_label, ref = runs[0]
    for label, r in runs[1:]:
        a, b = _total(ref, focus), _total(r, focus)
        if a is not None and b is not None:
            common = [n for n in layers if n in set(r.layer_names) and n in set(ref.layer_names)]
            delta = [(n, (_deg(r, n, focus) or 0.0) - (_deg(ref, n, focus) or 0.0)) for n in common]
            big = max(delta, key=lambda t: abs(t[1]), default=None)
            text = f"At {focus} bits, {label} sums to {units.deg(b)} against {units.deg(a)} for {ref_label}"
            if big is not None and abs(big[1]) > 0:
                text += (f"; the largest change is {big[0]} ({units.deg(_deg(ref, big[0], focus))} -> "
                         f"{units.deg(_deg(r, big[0], focus))})")
            notes.append(text + ".")
    ul = "<ul class=\"next\">" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else ""
    return table(heads, rows, text_cols=(0, 1, 2, 5, len(heads) - 1), table_id="runs-table") + ul


def _layer_table(runs: Sequence[Run], layers: list[str], focus: int, units: Units) -> str:
    heads = ["layer"] + [f"{lab} deg@{focus}b" for lab, _ in runs] + [f"{lab} - {runs[0][0]}" for lab, _ in runs[1:]]
    rows = []
    for n in layers:
        vals = [_deg(r, n, focus) for _, r in runs]
        row = [Td(n, n, "t")] + [Td(units.deg(v, signed=True), v) for v in vals]
        for v in vals[1:]:
            d = v - vals[0] if v is not None and vals[0] is not None else None
            row.append(Td(units.deg(d, signed=True), d, "bad" if d and d > 0 else ("good" if d and d < 0 else "")))
        rows.append(row)
    return table(heads, rows, text_cols=(0,), table_id="compare-table")


def render_compare(runs: Sequence[Run], options: Optional[ReportOptions] = None) -> str:
    """One page overlaying the per-layer profiles of ``runs`` (label, result), the first as reference."""
    if len(runs) < 2:
        raise QuantlensError("compare needs at least two runs: quantlens compare DIR_A DIR_B [...] --out FILE")
    opt = options or ReportOptions()
    units = Units.for_metric(runs[0][1].metric_name)
    layers = merged_layers([r for _, r in runs])
    common = sorted(set.intersection(*(set(r.w_bits) for _, r in runs)))
    bits = common or sorted(set().union(*(set(r.w_bits) for _, r in runs)))
    focus = opt.focus_bits(bits)
    page = Page(opt.title or "quantlens compare: " + " vs ".join(l for l, _ in runs),
                f"{len(runs)} runs · {len(layers)} layers matched by name · reference: {runs[0][0]}")
    page.add("summary", "Runs", _summary(runs, layers, bits, focus, units))
    page.add("profiles", "Per-layer profiles", '<p class="lead">Pick the bit-width with the buttons; a gap means the run '
             "has no such layer.</p>" + plot_div(profile_overlay(runs, layers, bits, focus, units), "plot-compare"))
    page.add("layers", "Layer by layer", '<p class="lead">Click a column header to sort.</p>' + _layer_table(runs, layers, focus, units))
    return page.render()


def write_compare(sources: Sequence[Union[str, os.PathLike]], out: Union[str, os.PathLike],
                  labels: Optional[Sequence[str]] = None, options: Optional[ReportOptions] = None) -> Path:
    """Load each run (directory or ``results.json``), render the comparison, write it to ``out``."""
    if len(sources) < 2:
        raise QuantlensError("compare needs at least two runs: quantlens compare DIR_A DIR_B [...] --out FILE")
    if labels is not None and len(labels) != len(sources):
        raise QuantlensError(f"--labels has {len(labels)} names for {len(sources)} runs: give one per run")
    names = list(labels) if labels is not None else run_labels(sources)
    runs = [(n, load_result(s)) for n, s in zip(names, sources)]
    return write_html(render_compare(runs, options), out, suggest="compare.html")
