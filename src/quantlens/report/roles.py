"""The role x block view of a layer sweep (transformers and other stacks of repeated blocks).

:func:`role_view` arranges the cells at one bit-width by role (rows) and block (columns),
from the layer names only (:mod:`quantlens.core.roles`)::

    matrix[role][block] = degradation of the layer `role` of block `block` at `bits`
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

from quantlens.sweep.results import bits_label, weights_label
from quantlens.sweep.results import SweepResult
from quantlens.core.roles import assign_roles
from quantlens.report.figures import BASE_LAYOUT, bits_buttons
from quantlens.report.fmt import Units, finite
from quantlens.report.safe import plot_text

__all__ = ["RoleView", "role_view", "worst_roles", "role_heatmap"]


@dataclass(frozen=True)
class RoleView:
    """Degradations at ``bits`` by role (rows, in network order) and block (columns)."""

    bits: int
    roles: tuple[str, ...]
    blocks: tuple[int, ...]
    matrix: tuple[tuple[Optional[float], ...], ...]
    layers: tuple[tuple[Optional[str], ...], ...]

    def total(self, role: str) -> float:
        row = self.matrix[self.roles.index(role)]
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
    matrix, layers = [], []
    for role in rmap.roles:
        members = rmap.blocks(role)
        row, names = [], []
        for b in blocks:
            n = members.get(b)
            c = result.find(n, bits) if n is not None else None
            row.append(c.degradation if c is not None else None)
            names.append(n)
        matrix.append(tuple(row))
        layers.append(tuple(names))
    return RoleView(bits, rmap.roles, blocks, tuple(matrix), tuple(layers))


def worst_roles(result: SweepResult, bits: int, k: int = 5) -> list[tuple[str, float]]:
    """``(role, degradation)`` of the ``k`` worst roles at ``bits``.

    For a layer sweep the degradation is the sum over the role's blocks (additive estimate);
    for a role-grouped sweep it is the measured cell.
    """
    if result.extra.get("group_by") == "role":
        scored = [(c.layer, c.degradation) for c in result.at(bits)]
    else:
        v = role_view(result, bits)
        if v is None:
            return []
        scored = [(r, v.total(r)) for r in v.roles]
    return sorted(scored, key=lambda t: -t[1] if not math.isnan(t[1]) else math.inf)[:k]


def role_heatmap(result: SweepResult, units: Units, saturate: float, focus: int) -> Optional[go.Figure]:
    """Roles x blocks heatmap, one bit-width at a time (buttons); ``None`` without repeated blocks."""
    views = [v for v in (role_view(result, b) for b in result.w_bits) if v is not None]
    if not views:
        return None
    sat = saturate * units.scale
    fig = go.Figure()
    for v in views:
        z = [[units.shown(x) for x in row] for row in v.matrix]
        text = [[units.deg(x).rstrip("%") if x is not None else "" for x in row] for row in v.matrix]
        cd = [[[plot_text(n or "-"), units.deg(x, signed=True)] for n, x in zip(names, row)] for names, row in zip(v.layers, v.matrix)]
        fig.add_trace(go.Heatmap(
            z=z, x=[f"block {b}" for b in v.blocks], y=[plot_text(r) for r in v.roles], text=text, texttemplate="%{text}",
            customdata=cd, zmin=-sat, zmax=sat, zmid=0, visible=v.bits == focus,
            colorscale=[[0, "#2166ac"], [0.35, "#d1e5f0"], [0.5, "#ffffff"], [0.65, "#fddbc7"], [0.85, "#d6604d"], [1, "#67001f"]],
            colorbar=dict(title=dict(text=f"degradation{' (%)' if units.pct else ''}"), lenmode="pixels",
                          len=min(300, 30 * len(v.roles) + 40), y=1, yanchor="top"),
            hovertemplate="<b>%{customdata[0]}</b><br>%{y}, %{x}: degradation %{customdata[1]}<extra></extra>",
            xgap=1, ygap=1,
        ))
    bits = [v.bits for v in views]
    titles = [f"Degradation by role and block, {weights_label(b)} weights (only that layer quantized)" for b in bits]
    active = bits.index(focus) if focus in bits else 0
    masks = [[i == j for j in range(len(views))] for i in range(len(views))]
    fig.update_layout(**BASE_LAYOUT, title=dict(text=titles[active], y=0.98), height=max(300, 30 * len(views[0].roles) + 180),
                      updatemenus=bits_buttons([f"{bits_label(b)}" for b in bits], masks, titles, active),
                      yaxis=dict(autorange="reversed", type="category"), xaxis=dict(side="bottom", type="category"))
    return fig
