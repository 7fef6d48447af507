"""HTML of the report's text sections: the summary and the sortable per-layer table.

Every string from the results goes through :func:`~quantlens.report.safe.esc` (via
:func:`~quantlens.report.page.table` or directly).

Example:
    >>> html = summary_html(result, Units.for_metric("top1"), focus=4)     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Optional

from quantlens.sweep.results import column_label
from quantlens.sweep.results import SweepResult, weights_label
from quantlens.report.extras import Extras
from quantlens.report.fmt import Units, finite
from quantlens.report.followup import followups
from quantlens.report.insights import insights, worst_by_bits
from quantlens.core.roles import RoleMap
from quantlens.report.layout import EstimateCheck, block_role, is_checked, layer_label
from quantlens.report.page import Td, filter_bar, table
from quantlens.report.safe import esc
from quantlens.sweep.predicted import in_metric_units, predicted

__all__ = ["facts", "summary_html", "layers_table", "config_text"]


def config_text(result: SweepResult) -> str:
    """The quantization settings in one line (``per-tensor minmax weights, 8-bit minmax activations``)."""
    c: Any = result.config if isinstance(result.config, dict) else {}
    w, a = c.get("weight") or {}, c.get("act") or {}
    wt = ("weights in named formats" if c.get("formats") else f"{w.get('granularity', 'per-tensor')} {w.get('estimator', 'minmax')} weights")
    ab = c.get("a_bits", a.get("bits") if a else None)
    if c.get("a_format"):
        at = f"{c['a_format']} activations"
    else:
        at = f"{ab}-bit {a.get('estimator', 'minmax')} activations" if ab else "float activations"
    return f"{wt}, {at}"


def facts(result: SweepResult, units: Units) -> list[tuple[str, str]]:
    """(label, value) pairs shown as cards at the top of the summary."""
    return [
        ("model", result.model or "(unnamed)"),
        ("data", f"{result.num_samples:,} samples"),
        ("metric", f"{result.metric_name} ({'higher' if result.higher_is_better else 'lower'} is better)"),
        ("float baseline", units.value(result.baseline)),
        ("layers", f"{len(result.layers)}"),
        ("weight formats" if result.is_format_sweep else "weight bit-widths", ", ".join(str(b) for b in result.w_bits)),
        ("quantization", config_text(result)),
        ("engine / time", f"{result.engine}, {result.elapsed_s:.1f} s" if finite(result.elapsed_s) else result.engine),
    ]


def _cards(pairs: list[tuple[str, str]]) -> str:
    return '<div class="facts">' + "".join(f'<div class="fact"><b>{esc(k)}</b><span>{esc(v)}</span></div>' for k, v in pairs) + "</div>"


def worst_table(result: SweepResult, units: Units, k: int = 3, roles: Optional[RoleMap] = None) -> str:
    """Per bit-width: summed positive degradation and the ``k`` worst layers; with ``roles`` (the
    blocks layout) each layer is named by its block and role. An ``--estimate`` result ranks by
    the estimate (every cell has one) and sums it; a checked cell adds its measured degradation."""
    rows = []
    check = EstimateCheck.of(result)
    name = (lambda n: layer_label(roles, n)) if roles else (lambda n: n)
    for b, cells in worst_by_bits(result, k).items():
        if check is not None:
            ranked = sorted((c for c in result.at(b) if finite(c.estimate)), key=lambda c: -c.estimate)[:k]
            if in_metric_units(result.metric_name):  # the estimate in the metric's units, as the summary sums it
                est = {c.layer: predicted(result, c) for c in result.at(b)}
                shown = lambda c: units.deg(est[c.layer], signed=True)  # noqa: E731
                total = sum(max(0.0, v) for v in est.values() if v is not None and finite(v))
                shown_total = Td(f"est {units.deg(total)}", total)
            else:
                shown = lambda c: f"{c.estimate:.3g}"  # noqa: E731
                total = sum(max(0.0, c.estimate) for c in result.at(b) if finite(c.estimate))
                shown_total = Td(f"est {total:.3g}", total)
            worst = [Td(f"{name(c.layer)} (est {shown(c)}"
                        + (f"; measured {units.deg(c.degradation, signed=True)})" if is_checked(c) else ")"), c.layer, "t")
                     for c in ranked if c.estimate > 0]
        else:
            total = result.summed_degradation(b)
            worst = [Td(f"{name(c.layer)} ({units.deg(c.degradation, signed=True)})", c.layer, "t") for c in cells
                     if finite(c.degradation) and c.degradation > 0]
            shown_total = Td(units.deg(total), total)
        worst += [Td("")] * (k - len(worst))
        rows.append([Td(f"{b}", b), shown_total, *worst])
    heads = ["weight format" if result.is_format_sweep else "weight bits", "summed degradation"] + [f"worst #{i + 1}" for i in range(k)]
    return table(heads, rows, sortable=False, text_cols=range(2, 2 + k))


def summary_html(result: SweepResult, units: Units, focus: int, extras: Optional[Extras] = None,
                 roles: Optional[RoleMap] = None) -> str:
    """Cards, what to do next at ``focus`` bits, what the follow-up commands measured, and the worst layers."""
    items = "".join(f'<li class="{esc(i.kind)}">{esc(i.text)}</li>' for i in insights(result, focus, units))
    measured = followups(extras, units, result.metric_name) if extras is not None else []
    done = ("<h3>Measured on the whole network</h3><ul class=\"next\">"
            + "".join(f'<li class="{esc(i.kind)}">{esc(i.text)}</li>' for i in measured) + "</ul>") if measured else ""
    each = "format" if result.is_format_sweep else "bit-width"
    return (_cards(facts(result, units)) + f"<h3>What to do next ({weights_label(focus)} weights)</h3><ul class=\"next\">{items}</ul>"
            + done + f"<h3>Worst layers at each {each}</h3>" + worst_table(result, units, roles=roles))


def layers_table(result: SweepResult, units: Units, focus: int, roles: Optional[RoleMap] = None) -> str:
    """Every layer with its degradation at every bit-width and its statistics; click a header to sort.

    ``roles`` (the blocks layout, :mod:`quantlens.report.layout`): a block and a role column after
    ``#``, and a filter bar (text, role, block) above the table, which scrolls in a box. An
    ``--estimate`` result has an ``est@`` column per bit-width (every cell's first-order estimate,
    grey italics) beside the ``deg@`` one (measured: only the checked cells)."""
    bits = result.w_bits
    share = result.share(focus)
    check = EstimateCheck.of(result)
    grouped = roles is not None and bool(roles)
    heads = ["#"] + (["block", "role"] if grouped else []) + ["layer", "op", "kind", "params"]
    for b in bits:
        heads += [f"deg@{column_label(b)}"] + ([f"est@{column_label(b)}"] if check is not None else [])
    heads += [f"SQNR@{column_label(focus)} (dB)", f"share@{column_label(focus)}", "max|w|/std", "outliers >3σ", f"clip@{column_label(focus)}",
              f"mean shift@{column_label(focus)}", "input range", "output range", f"95% CI@{column_label(focus)}"]
    split = any(c.noise_source for c in result.cells)
    if split:
        heads.append(f"noise source@{column_label(focus)}")
    rows = []
    for l in result.layers:
        c = result.find(l.name, focus)
        row: list[Td] = [Td(str(l.index), l.index)]
        if grouped:
            blk, role = block_role(roles, l.name)  # type: ignore[arg-type]
            row += [Td("" if blk is None else str(blk), blk, "t"), Td(role, role, "t")]
        row += [Td(l.name, l.name, "t"), Td(l.op, l.op, "t"), Td(l.kind, l.kind, "t"), Td(f"{l.params:,}", l.params)]
        for b in bits:
            cb = result.find(l.name, b)
            d = cb.degradation if cb else None
            row.append(Td(units.deg(d, signed=True), d if finite(d) else None, "bad" if finite(d) and d > 0.001 else ""))
            if check is not None:
                e = cb.estimate if cb else None
                row.append(Td(f"{e:.3g}" if finite(e) else "-", e if finite(e) else None, "est"))
        w = l.weight
        ratio = w.absmax_over_std if w else None
        row += [
            Td(f"{c.sqnr_db:.1f}" if c and finite(c.sqnr_db) else "-", c.sqnr_db if c and finite(c.sqnr_db) else None),
            Td(f"{100 * share.get(l.name, 0.0):.0f}%", share.get(l.name, 0.0)),
            Td(f"{ratio:.1f}" if finite(ratio) else "-", ratio if finite(ratio) else None),
            Td(str(w.outliers_3sigma) if w else "-", w.outliers_3sigma if w else None),
            Td(f"{c.w_clip:.4g}" if c and finite(c.w_clip) else "-", c.w_clip if c and finite(c.w_clip) else None),
            Td(f"{c.mean_shift:.3g}" if c and finite(c.mean_shift) else "-", c.mean_shift if c and finite(c.mean_shift) else None),
        ]
        for r in (l.input_range, l.output_range):
            ok = r is not None and all(finite(v) for v in r)
            row.append(Td(f"[{r[0]:.3g}, {r[1]:.3g}]" if ok else "-", (r[1] - r[0]) if ok else None))  # type: ignore[index]
        ci = c.interval if c else None
        row.append(Td(f"[{units.deg(ci.low, signed=True)}, {units.deg(ci.high, signed=True)}]" + (" ~0" if ci.contains(0.0) else "")
                      if ci else "-", ci.low if ci else None, "" if ci is None or ci.contains(0.0) else "bad"))
        if split:
            src = c.noise_source if c else None
            parts = c.noise_parts if c else {}
            tot = sum(parts.values())
            row.append(Td(f"{src} ({parts[src] / tot:.0%})" if src and tot > 0 else (src or "-"), src or "", "t"))
        rows.append(row)
    n = len(heads)
    first = 3 if grouped else 1
    html = table(heads, rows, text_cols=tuple(range(first, first + 3)) + ((1, 2) if grouped else ()) + ((n - 1,) if split else ()),
                 table_id="layers-table", tall=grouped)
    if roles is None or not grouped:
        return html
    blocks = [str(b) for b in roles.block_ids]
    bar = filter_bar("layers-table", [(2, "role", list(roles.roles) + list(roles.loose)), (1, "block", blocks)], what="layers",
                     placeholder="filter: words that must all appear in a row (down_proj, Linear, layers.7.)")
    return bar + html
