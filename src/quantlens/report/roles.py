"""The role x block view of a layer sweep (transformers and other stacks of repeated blocks).

:func:`role_view` arranges the cells at one bit-width by role (rows) and block (columns),
from the layer names only (:mod:`quantlens.core.roles`)::

    matrix[role][block] = degradation of the layer `role` of block `block` at `bits`
    estimates[role][block] = that cell's first-order estimate (``--estimate``; None otherwise)
    total[role]         = sum over blocks of those degradations   (the additive estimate of
                                                                  quantizing the whole role)

:func:`role_heatmap` draws it with a bit-width selector; :func:`worst_roles` ranks roles by
``total``. A role-grouped sweep (``--group-by role``) has no per-block cells: its rows
already are roles.

Example:
    >>> v = role_view(result, bits=4)                      # doctest: +SKIP
    >>> [r for r, _ in worst_roles(result, 4, k=3)]        # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import plotly.graph_objects as go

from quantlens.core.roles import assign_roles
from quantlens.report.figures import BASE_LAYOUT, bits_buttons
from quantlens.report.fmt import Units, finite
from quantlens.report.layout import EstimateCheck, estimate_saturation
from quantlens.report.safe import plot_text
from quantlens.sweep.results import SweepResult, bits_label, weights_label

__all__ = ["RoleView", "role_view", "worst_roles", "role_heatmap"]


@dataclass(frozen=True)
class RoleView:
    """Degradations at ``bits`` by role (rows, in network order) and block (columns)."""

    bits: int
    roles: tuple[str, ...]
    blocks: tuple[int, ...]
    matrix: tuple[tuple[Optional[float], ...], ...]
    layers: tuple[tuple[Optional[str], ...], ...]
    estimates: tuple[tuple[Optional[float], ...], ...] = ()

    @property
    def estimated(self) -> bool:
        """Whether the cells carry a first-order estimate (``--estimate``)."""
        return any(x is not None and finite(x) for row in self.estimates for x in row)

    def total(self, role: str, estimate: bool = False) -> float:
        """The role's cells summed over its blocks (``estimate``: their estimates), NaN when none is finite."""
        row = (self.estimates if estimate else self.matrix)[self.roles.index(role)]
        vals = [v for v in row if v is not None and finite(v)]
        return sum(vals) if vals else float("nan")


def role_view(result: SweepResult, bits: int) -> Optional[RoleView]:
    """The role x block table at ``bits``; ``None`` when the layers form no repeated blocks
    or the result is already grouped by role."""
    if result.extra.get("group_by") == "role":
        return None
    rmap = assign_roles(result.layer_names)
    if not rmap:
        return None
    blocks = rmap.block_ids
    matrix, layers, ests = [], [], []
    for role in rmap.roles:
        members = rmap.blocks(role)
        row, names, est = [], [], []
        for b in blocks:
            n = members.get(b)
            c = result.find(n, bits) if n is not None else None
            row.append(c.degradation if c is not None else None)
            est.append(c.estimate if c is not None and finite(c.estimate) else None)
            names.append(n)
        matrix.append(tuple(row))
        layers.append(tuple(names))
        ests.append(tuple(est))
    return RoleView(bits, rmap.roles, blocks, tuple(matrix), tuple(layers), tuple(ests))


def worst_roles(result: SweepResult, bits: int, k: int = 5, by: str = "degradation") -> list[tuple[str, float]]:
    """``(role, value)`` of the ``k`` worst roles at ``bits``.

    For a layer sweep the value is the sum over the role's blocks (additive estimate) of the
    cells' ``by`` field (``degradation``, or ``estimate`` for an ``--estimate`` result);
    for a role-grouped sweep it is the measured cell.
    """
    if by not in ("degradation", "estimate"):
        raise ValueError(f"worst_roles: by={by!r}, expected 'degradation' or 'estimate'")
    if result.extra.get("group_by") == "role":
        scored = [(c.layer, getattr(c, by)) for c in result.at(bits)]
    else:
        v = role_view(result, bits)
        if v is None:
            return []
        scored = [(r, v.total(r, estimate=by == "estimate")) for r in v.roles]
    return sorted(scored, key=lambda t: -t[1] if not math.isnan(t[1]) else math.inf)[:k]


SCALE = [[0, "#2166ac"], [0.35, "#d1e5f0"], [0.5, "#ffffff"], [0.65, "#fddbc7"], [0.85, "#d6604d"], [1, "#67001f"]]
TEXT_MAX_BLOCKS = 16  # more columns than this: values on hover only (the numbers would overlap)


def _fmt_est(x: Optional[float]) -> str:
    return f"{x:.3g}" if x is not None and finite(x) else "-"


def role_heatmap(result: SweepResult, units: Units, saturate: float, focus: int) -> Optional[go.Figure]:
    """Roles x blocks heatmap, one bit-width at a time (buttons); ``None`` without repeated blocks.

    For an ``--estimate`` result every cell is coloured by its first-order estimate (its own
    unit, saturated at the 95th percentile of ``|estimate|`` in that column: :func:`~quantlens.report.layout.estimate_saturation`) and the cells measured to check
    it are outlined, with their measured degradation on hover."""
    views = [v for v in (role_view(result, b) for b in result.w_bits) if v is not None]
    if not views:
        return None
    check = EstimateCheck.of(result)
    sat = saturate * units.scale
    show_text = len(views[0].blocks) <= TEXT_MAX_BLOCKS
    fig = go.Figure()
    per_view: list[int] = []
    for v in views:
        xs, ys = [f"block {b}" for b in v.blocks], [plot_text(r) for r in v.roles]
        if check is not None:
            top = estimate_saturation(x for row in v.estimates for x in row)
            z = [[x if x is not None and finite(x) else None for x in row] for row in v.estimates]
            text = [[_fmt_est(x) if x is not None else "" for x in row] for row in v.estimates]
            cd = [[[plot_text(n or "-"), _fmt_est(e), units.deg(d, signed=True) if finite(d) else "not measured (estimate only)"]
                   for n, e, d in zip(names, erow, drow)] for names, erow, drow in zip(v.layers, v.estimates, v.matrix)]
            hover = (f"<b>%{{customdata[0]}}</b><br>%{{y}}, %{{x}}<br>estimate %{{customdata[1]}} ({plot_text(check.unit)})"
                     f"<br>measured degradation %{{customdata[2]}}<extra></extra>")
            bar = f"estimate<br>{plot_text(check.unit.split(' (')[-1].rstrip(')'))}"
            zmin, zmax = -top, top
        else:
            z = [[units.shown(x) for x in row] for row in v.matrix]
            text = [[units.deg(x).rstrip("%") if x is not None else "" for x in row] for row in v.matrix]
            cd = [[[plot_text(n or "-"), units.deg(x, signed=True)] for n, x in zip(names, row)] for names, row in zip(v.layers, v.matrix)]
            hover = "<b>%{customdata[0]}</b><br>%{y}, %{x}: degradation %{customdata[1]}<extra></extra>"
            bar = f"degradation{' (%)' if units.pct else ''}"
            zmin, zmax = -sat, sat
        fig.add_trace(go.Heatmap(
            z=z, x=xs, y=ys, text=text if show_text else None, texttemplate="%{text}" if show_text else None,
            customdata=cd, zmin=zmin, zmax=zmax, zmid=0, visible=v.bits == focus, colorscale=SCALE,
            colorbar=dict(title=dict(text=bar), lenmode="pixels", len=min(300, 30 * len(v.roles) + 40), y=1, yanchor="top"),
            hovertemplate=hover, xgap=1, ygap=1,
        ))
        n = 1
        marks = [(i, j) for i, row in enumerate(v.matrix) for j, d in enumerate(row)
                 if check is not None and d is not None and finite(d) and v.estimates[i][j] is not None]
        if marks:
            fig.add_scatter(
                x=[xs[j] for _, j in marks], y=[ys[i] for i, _ in marks], mode="markers", name="measured (the check)",
                marker=dict(symbol="square-open", size=16, color="#111827", line=dict(width=2)), visible=v.bits == focus,
                customdata=[cd[i][j] for i, j in marks], showlegend=False,
                hovertemplate=("<b>%{customdata[0]}</b> (measured to check the estimate)<br>%{y}, %{x}<br>"
                               "measured degradation %{customdata[2]}<br>estimate %{customdata[1]}<extra></extra>"))
            n = 2
        per_view.append(n)
    bits = [v.bits for v in views]
    if check is not None:
        titles = [f"Estimated degradation by role and block, {weights_label(b)} weights (first-order; outlined: measured)" for b in bits]
    else:
        titles = [f"Degradation by role and block, {weights_label(b)} weights (only that layer quantized)" for b in bits]
    active = bits.index(focus) if focus in bits else 0
    masks = [[i == j for j, n in enumerate(per_view) for _ in range(n)] for i in range(len(views))]
    fig.update_layout(**BASE_LAYOUT, title=dict(text=titles[active], y=0.98), height=max(300, 30 * len(views[0].roles) + 180),
                      updatemenus=bits_buttons([f"{bits_label(b)}" for b in bits], masks, titles, active),
                      yaxis=dict(autorange="reversed", type="category"),
                      xaxis=dict(side="bottom", type="category", tickangle=-45 if len(views[0].blocks) > TEXT_MAX_BLOCKS else 0))
    return fig
