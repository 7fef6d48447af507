"""The cone of a GROUP of layers: every member quantized at once, only their union of cones recomputed.

For a group ``G`` (q/k/v of one block, every ``mlp.down_proj``...) a node outside
``cone(G) = U_{l in G} cone(l)`` has its float value in the network where only ``G`` is
quantized, so it is read from the float pass's cache; the union of the members' cones (it starts
at the earliest member) is recomputed, each member as in the whole-network build
(:func:`~quantlens.engine.build.build_quantized`)::

    x_l --in_l--> op(x_l, Q_w(W_l), b_l) --activation--> out_l --> users      for every l in G

with ``in_l`` on ``l``'s own input edge only. The quantizers sit in slots (:class:`Slot`) that
hold an :class:`~quantlens.quant.quantizer.ActQuantizer` or ``None`` (float), so one
:class:`~quantlens.engine.program.Program` serves every column of a sweep: ``cone.set(name, weight, in_q, out_q)`` then
``cone(cache) -> network output``.

Example:
    >>> import torch, torch.nn as nn
    >>> from quantlens.graph.capture import capture
    >>> g = capture(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> build_group_cone(g, [g.layers[1]]).frontier
    ['_1']
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from quantlens.engine.cone import QuantLayer, _output_node, cone_nodes, frontier_of
from quantlens.engine.program import Program
from quantlens.graph.layers import Layer, LayerGraph
from quantlens.quant.quantizer import ActQuantizer

__all__ = ["Slot", "GroupCone", "build_group_cone"]


class Slot(nn.Module):
    """``forward(x) = q(x)``, or ``x`` itself while ``q`` is ``None`` (a float edge)."""

    def __init__(self) -> None:
        super().__init__()
        self.q: Optional[ActQuantizer] = None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.q is None else self.q(x)


class GroupCone:
    """A program (:mod:`quantlens.engine.program`) that recomputes the union of the cones of ``members`` with all of them
    quantized: ``gm(*[cache[n] for n in frontier]) -> network output`` (built on first use)."""

    def __init__(self, graph: LayerGraph, members: Sequence[Layer]) -> None:
        if not members:
            raise ValueError("a group cone needs at least one layer")
        self.graph, self.members = graph, list(members)
        gm = graph.gm
        names = {n.name for l in self.members for n in cone_nodes(graph, l)}
        self.inside = [n for n in gm.graph.nodes if n.name in names]
        self.frontier = frontier_of(graph, self.inside)
        self.size = len(self.inside)
        self.qlayers = {l.name: QuantLayer(gm.get_submodule(l.module_name)) for l in self.members}
        self.in_slots = {l.name: Slot() for l in self.members}
        self.out_slots = {l.name: Slot() for l in self.members}
        self.floats = {l.name: q.qweight for l, q in zip(self.members, self.qlayers.values())}
        self._gm: Optional[Program] = None
        self.device: Optional[torch.device] = None

    def set(self, name: str, weight: Optional[Tensor], in_q: Optional[ActQuantizer], out_q: Optional[ActQuantizer]) -> None:
        """Member ``name`` computes with ``weight`` (None: its float weight) and the given input and
        output quantizers (None: float)."""
        self.qlayers[name].set_weight(self.floats[name] if weight is None else weight)
        self.in_slots[name].q, self.out_slots[name].q = in_q, out_q

    def clear(self) -> None:
        """Every member back to float (drops the references to quantized weights)."""
        for name in self.qlayers:
            self.set(name, None, None, None)

    @property
    def gm(self) -> Program:
        if self._gm is None:
            self._gm = self._compile()
            if self.device is not None:
                self._gm.to(self.device)
        return self._gm

    def to(self, device: Union[str, torch.device]) -> "GroupCone":
        self.device = torch.device(device)
        if self._gm is not None:
            self._gm.to(self.device)
        return self

    def __call__(self, cache: dict[str, Any]) -> Any:
        return self.gm(*[cache[n] for n in self.frontier])

    def _compile(self) -> Program:
        gm = self.graph.gm
        replace, after = {}, {}
        for l in self.members:
            replace[l.node] = _Twin(self.in_slots[l.name], self.qlayers[l.name])
            after[l.output_node] = self.out_slots[l.name]
        return Program(gm, self.inside, self.frontier, _output_node(gm).args[0], replace=replace, after=after)


class _Twin(nn.Module):
    """``forward(x) = layer(slot(x))``: a member's input slot, then its quantized twin."""

    def __init__(self, slot: Slot, layer: QuantLayer) -> None:
        super().__init__()
        self.slot, self.layer = slot, layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(self.slot(x))


def build_group_cone(graph: LayerGraph, members: Sequence[Layer]) -> GroupCone:
    """The :class:`GroupCone` of ``members`` (layers of ``graph``); its program is built on first use."""
    return GroupCone(graph, members)
