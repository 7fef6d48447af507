"""How a report is laid out, decided from the results alone, and how an estimate's cells are named.

Two layouts:

* ``flat`` (a CNN, a small model): the per-layer chart and the layers x bits heatmap, one row
  or bar per layer, then the role x block view if the model has repeated blocks.
* ``blocks`` (an LLM): the role x block view leads, and the per-layer list is a sortable,
  filterable table (block, role, layer) instead of a figure with one row per layer. Chosen when::

      len(layers) > FLAT_MAX_LAYERS  and  roles exist  and
      (layers inside repeated blocks) >= BLOCK_SHARE * len(layers)

  (roles: :func:`quantlens.core.roles.assign_roles`). Past ``FLAT_MAX_LAYERS`` the flat figures'
  labels overlap; below ``BLOCK_SHARE`` the blocks are not what the network is made of.

An estimate result (``--estimate``) stores in every cell the first-order ``estimate`` and, only
in the checked cells, the exact fields; :class:`EstimateCheck` reads the check from
``extra["estimate"]`` (written by :func:`quantlens.sweep.estimate.estimate_sweep`).

Example:
    >>> choose_layout(result).kind, choose_layout(result).reason       # doctest: +SKIP
    ('blocks', '210 of 211 layers sit in 30 repeated blocks')
    >>> EstimateCheck.of(result).agreement()                           # doctest: +SKIP
    'checked on 10 measured cells at nvfp4: Spearman 0.93, top-5 overlap 80%'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Optional

from quantlens.core.roles import RoleMap, assign_roles
from quantlens.report.fmt import finite
from quantlens.sweep.results import Cell, SweepResult, bits_label, column_label

__all__ = ["FLAT_MAX_LAYERS", "BLOCK_SHARE", "Layout", "choose_layout", "EstimateCheck", "is_checked", "block_role", "layer_label",
           "estimate_saturation", "SATURATE_QUANTILE"]

FLAT_MAX_LAYERS = 64
BLOCK_SHARE = 0.5
SATURATE_QUANTILE = 0.95


@dataclass(frozen=True)
class Layout:
    """``kind``: ``flat`` or ``blocks``; ``reason``: why, in one phrase; ``roles``: the role map (empty without blocks)."""

    kind: Literal["flat", "blocks"]
    reason: str
    roles: RoleMap

    @property
    def blocks(self) -> bool:
        return self.kind == "blocks"


def choose_layout(result: SweepResult) -> Layout:
    """The layout of ``result``'s report (module docstring: the rule)."""
    names = result.layer_names
    grouped = result.extra.get("group_by") == "role"
    rmap = assign_roles(names) if not grouped else RoleMap({}, tuple(names))
    inside = sum(len(m) for m in rmap.members.values())
    n = len(names)
    if not rmap:
        return Layout("flat", "no repeated blocks", rmap)
    if n <= FLAT_MAX_LAYERS:
        return Layout("flat", f"{n} layers (at most {FLAT_MAX_LAYERS} fit one figure row each)", rmap)
    if inside < BLOCK_SHARE * n:
        return Layout("flat", f"only {inside} of {n} layers sit in repeated blocks", rmap)
    return Layout("blocks", f"{inside} of {n} layers sit in {len(rmap.block_ids)} repeated blocks", rmap)


def block_role(rmap: RoleMap, layer: str) -> tuple[Optional[int], str]:
    """``(block, role)`` of ``layer``; ``(None, layer)`` for a layer outside the repeated blocks (``lm_head``)."""
    br = rmap.role_of(layer)
    return (br[1], br[0]) if br is not None else (None, layer)


def estimate_saturation(values: Iterable[Optional[float]], q: float = SATURATE_QUANTILE) -> float:
    """The colour saturation of estimated cells: the ``q`` quantile of ``|estimate|`` over the
    finite values (linear interpolation between order statistics, as ``numpy.quantile``), 1.0
    when there is none or it is 0. A quantile, not the maximum: one layer's estimate can be
    a thousand times the others' (an LLM's outlier ``down_proj``) and would leave every other cell white."""
    xs = sorted(abs(float(v)) for v in values if v is not None and finite(v))
    if not xs:
        return 1.0
    pos = q * (len(xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    top = xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return top if top > 0 else (xs[-1] or 1.0)


def layer_label(rmap: RoleMap, layer: str) -> str:
    """``block 7 mlp.down_proj`` for a layer of a repeated block, the layer's name otherwise."""
    blk, role = block_role(rmap, layer)
    return layer if blk is None else f"block {blk} {role}"


def is_checked(cell: Cell) -> bool:
    """Whether an estimate result's ``cell`` was also measured exactly (it holds both numbers)."""
    return finite(cell.estimate) and finite(cell.degradation)


@dataclass(frozen=True)
class EstimateCheck:
    """The check of a first-order estimate: ``checked`` cells measured exactly at ``column``
    (the estimate's top ``k`` layers and ``k`` random others), Spearman ``spearman`` between the
    estimate and the measured degradation, and the share of the estimate's top ``k`` that are in
    the measured top ``k`` (``topk_overlap``); ``unit``: what ``estimate`` measures."""

    unit: str
    column: Any
    k: int
    checked: int
    spearman: float
    topk_overlap: float
    trusted: bool

    @classmethod
    def of(cls, result: SweepResult) -> Optional[EstimateCheck]:
        """The check stored in ``result``, or None for a result that is not an estimate."""
        d = result.extra.get("estimate")
        if not isinstance(d, dict):
            return None
        col = d.get("check_bits")
        over = d.get("topk_overlap") or {}
        ov = over.get(col, over.get(str(col), math.nan)) if isinstance(over, dict) else math.nan
        rho = d.get("spearman")
        return cls(unit=str(d.get("unit", "estimate")), column=col, k=int(d.get("k", 0)), checked=int(d.get("checked_cells", 0)),
                   spearman=float(rho) if finite(rho) else math.nan, topk_overlap=float(ov) if finite(ov) else math.nan,
                   trusted=bool(d.get("trusted", False)))

    def agreement(self) -> str:
        """``checked on 10 measured cells at nvfp4: Spearman 0.93, top-5 overlap 80%`` (and a warning when not trusted)."""
        rho = f"Spearman {self.spearman:.2f}" if finite(self.spearman) else "no Spearman (too few cells)"
        ov = f", top-{self.k} overlap {self.topk_overlap:.0%}" if finite(self.topk_overlap) else ""
        warn = "" if self.trusted else " -- not trusted: run the exact sweep"
        return f"checked on {self.checked} measured cells at {bits_label(self.column)}: {rho}{ov}{warn}"

    def short_unit(self) -> str:
        """The unit without its parenthesis, for axis titles (``expected nll change per token``)."""
        return self.unit.split(" (")[0]

    def column_label(self) -> str:
        return column_label(self.column)
