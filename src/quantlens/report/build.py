"""Build the report page of one sweep: ``render_report`` (HTML text) and ``write_report`` (a file).

The page is drawn from a :class:`SweepResult` (and the optional files next to it) only; nothing
is recomputed.

Example:
    >>> path = write_report("quantlens-demo")                       # doctest: +SKIP
    >>> html = render_report(SweepResult.from_json("results.json"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from quantlens.sweep.results import SweepResult, bits_label
from quantlens.errors import QuantlensError
from quantlens.core.jsonio import write_atomic
from quantlens.report.extras import Extras, load_extras
from quantlens.report.extras_html import additivity_html, fix_html, plan_html
from quantlens.report.figures import activation_figure, heatmap, layer_profile, noise_scatter
from quantlens.report.fmt import Units
from quantlens.report.layout import EstimateCheck, choose_layout
from quantlens.report.options import ReportOptions
from quantlens.report.page import Page, plot_div, table
from quantlens.report.roles import role_heatmap, worst_roles
from quantlens.report.safe import esc
from quantlens.report.sections import layers_table, summary_html
from quantlens.report.weights import weight_histograms

__all__ = ["render_report", "write_report", "save_report", "load_result", "write_html", "results_path"]


def results_path(source: Union[str, os.PathLike]) -> Path:
    """``DIR/results.json`` for a directory, the path itself for a file."""
    p = Path(source)
    return p / "results.json" if p.is_dir() else p


def load_result(source: Union[str, os.PathLike]) -> SweepResult:
    """Load a ``results.json`` (or its directory); one clear error for each way it can be wrong."""
    r = SweepResult.from_json(results_path(source))
    if not r.cells or not r.layers:
        raise QuantlensError(f"{results_path(source)} holds no measurements: rerun `quantlens analyze`")
    return r


def write_html(html: str, out: Union[str, os.PathLike], suggest: str = "report.html") -> Path:
    """Write ``html`` to ``out`` atomically; a clear error if ``out`` is a directory or unwritable."""
    p = Path(out)
    if p.is_dir():
        raise QuantlensError(f"{p} is a directory: give a file name such as {p / suggest}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, html)
    except OSError as e:
        raise QuantlensError(f"cannot write {p} ({e.strerror or e}); choose another --out") from None
    return p


def render_report(result: SweepResult, extras: Optional[Extras] = None, options: Optional[ReportOptions] = None) -> str:
    """The whole page as HTML text, in the layout :func:`~quantlens.report.layout.choose_layout` picks."""
    opt = options or ReportOptions()
    ex = extras or Extras()
    units = Units.for_metric(result.metric_name)
    focus = opt.focus_bits(result.w_bits)
    sat = opt.saturation(result.metric_name, result.baseline, [c.degradation for c in result.cells])
    layout = choose_layout(result)
    check = EstimateCheck.of(result)
    title = opt.title or f"quantlens report: {result.model or 'model'}"
    sub = f"{result.metric_name} on {result.num_samples:,} samples · float baseline {units.value(result.baseline)} · {len(result.layers)} layers"
    if layout.blocks:
        sub += f" in {len(layout.roles.block_ids)} blocks x {len(layout.roles.roles)} roles"
    page = Page(title, sub)
    page.add("summary", "Summary", summary_html(result, units, focus, ex, roles=layout.roles if layout.blocks else None))
    each = "format" if result.is_format_sweep else "bit-width"
    if layout.blocks:
        _roles_section(page, result, units, sat, focus, check, lead=True)
        page.add("layers", "All layers",
                 f'<p class="lead">{len(result.layers)} layers ({esc(layout.reason)}): the role x block view above, one row each here. '
                 "Type words to filter (all must appear), pick a role or a block, click a column header to sort."
                 + (f" deg@: measured degradation (only the checked cells); est@: the first-order estimate "
                    f"({esc(check.unit)}), {esc(check.agreement())}." if check is not None else "")
                 + "</p>" + layers_table(result, units, focus, roles=layout.roles))
    else:
        est_lead = (f" Bars are the first-order estimate ({esc(check.unit)}), {esc(check.agreement())}; hover a checked layer "
                    "for its measured degradation." if check is not None else "")
        page.add("per-layer", "Per-layer degradation and noise",
                 '<p class="lead">Quantize one layer at a time, everything else in float; layers in topological order. '
                 f"Pick the {each} with the buttons; hover for exact values.{est_lead}</p>"
                 + plot_div(layer_profile(result, units, focus), "plot-profile"))
        hm_lead = (f"Each cell: the first-order estimate ({esc(check.unit)}) when only that layer is quantized to that {each}; "
                   f"outlined cells were measured, {esc(check.agreement())}. Colour saturates at the 95th percentile of |estimate|."
                   if check is not None else
                   f"Each cell: the absolute degradation of {esc(result.metric_name)} when only that layer is "
                   f"quantized to that {each} (the paper's Figure 3). Colour saturates at {esc(units.deg(sat))}; "
                   "blue cells improved the metric.")
        page.add("heatmap", "Layers x formats" if result.is_format_sweep else "Layers x bits",
                 f'<p class="lead">{hm_lead}</p>' + plot_div(heatmap(result, units, sat), "plot-heatmap"))
        _roles_section(page, result, units, sat, focus, check, lead=False)
    members = result.extra.get("roles") if result.extra.get("group_by") == "role" else None
    if members:
        page.add("roles", "Roles",
                 '<p class="lead">This sweep is grouped by role: each row quantizes every layer of the role at once '
                 "(the rest of the network in float) and measures the whole network.</p>"
                 + table(["role", "layers"], [[r, ", ".join(ls)] for r, ls in members.items()], sortable=False, text_cols=(0, 1)))
    hist = weight_histograms(result, focus)
    acts = ("" if layout.blocks else plot_div(activation_figure(result, focus), "plot-activations"))
    page.add("weights", "Weights, activation ranges and bias shift" if not layout.blocks else "Weights",
             '<p class="lead">The weight histogram of the chosen layer (the worst one first) with its quantization range '
             "(the paper's Figure 6): dotted lines mark the weights' min and max, dashed red the quantizer's range, red ticks "
             + ("its levels. Below it, every layer's activation ranges and the mean shift of its output under quantization.</p>"
                if not layout.blocks else "its levels. Each layer's activation ranges and mean shift are columns of the table above.</p>")
             + (plot_div(hist, "plot-weights") if hist is not None else '<p class="note">No weight statistics in these results.</p>')
             + acts)
    page.add("noise", "Noise against degradation",
             '<p class="lead">Each point is one layer at one bit-width. Noise and degradation usually rise together; '
             "a layer far above the trend hurts the metric more than its noise suggests."
             + (" Only the cells measured to check the estimate have a noise.</p>" if check is not None else "</p>")
             + plot_div(noise_scatter(result, units), "plot-noise"))
    if not layout.blocks:
        page.add("layers", "All layers", '<p class="lead">Click a column header to sort.</p>' + layers_table(result, units, focus))
    if ex.additivity is not None:
        page.add("additivity", "Additivity", additivity_html(ex.additivity, units))
    if ex.fix is not None:
        page.add("fixes", "Fixes: global against local", fix_html(ex.fix))
    if ex.plan is not None:
        page.add("plan", "Mixed-precision plan", plan_html(ex.plan, units))
    if ex.verify is not None:
        from quantlens.report.runtime_html import runtime_html

        page.add("runtime", "Runtime check", runtime_html(ex.verify))
    if ex.notes:
        page.add("notes", "Notes", "".join(f'<p class="note">{esc(n)}</p>' for n in ex.notes))
    return page.render()


def _roles_section(page: Page, result: SweepResult, units: Units, sat: float, focus: int | str,
                   check: Optional[EstimateCheck], lead: bool) -> None:
    """The role x block section (nothing without repeated blocks); ``lead``: it opens the page
    (the blocks layout), the flat list of layers is the table below rather than the figures."""
    fig = role_heatmap(result, units, sat, focus)
    if fig is None:
        return
    by = "estimate" if check is not None else "degradation"
    shown = (lambda d: f"est {d:.3g}") if check is not None else (lambda d: units.deg(d, signed=True))
    worst = ", ".join(f"{r} ({shown(d)})" for r, d in worst_roles(result, focus, 5, by=by))
    what = (f"Every cell is the first-order estimate ({esc(check.unit)}) of quantizing that one layer; the outlined cells were "
            f"measured exactly: {esc(check.agreement())}. Colour saturates at the 95th percentile of |estimate| of the "
            f"{'format' if result.is_format_sweep else 'bit-width'} (the few cells beyond it are the darkest); "
            "hover a cell for its layer and numbers. "
            if check is not None else "")
    page.add("roles", "Roles x blocks",
             f'<p class="lead">{"The cells" if lead else "The same cells"} arranged the way a transformer is built: one row per role (the layer\'s '
             f"name inside its block), one column per block; each cell quantizes that one layer. {what}Worst roles at "
             f"{esc(bits_label(focus))} (summed over blocks): {esc(worst)}. "
             + ("Every layer, with its numbers, is in the table below.</p>" if lead else "The flat list of layers is below.</p>")
             + plot_div(fig, "plot-roles"))


def write_report(source: Union[str, os.PathLike], out: Union[str, os.PathLike, None] = None,
                 options: Optional[ReportOptions] = None) -> Path:
    """Render the report of ``source`` (a results directory or ``results.json``) to ``out``.

    ``out`` defaults to ``report.html`` next to ``results.json``. Returns the path written.
    """
    rp = results_path(source)
    result = load_result(rp)
    target = Path(out) if out is not None else rp.parent / "report.html"
    return write_html(render_report(result, load_extras(rp.parent), options), target)


def save_report(result: SweepResult, directory: Union[str, os.PathLike], options: Optional[ReportOptions] = None) -> Path:
    """Write ``directory/report.html`` for a result just computed (with any extras already in ``directory``)."""
    d = Path(directory)
    return write_html(render_report(result, load_extras(d), options), d / "report.html")
