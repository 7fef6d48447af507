"""Online ops on a layer's input edge: a module inserted between the tensor a layer reads and the layer.

A fix that changes what a layer *reads* (a rotation ``x H``, a per-channel scale ``x / s``)
inserts a ``call_module`` node on that layer's own input edge of a copy of the graph::

    src --> [op] --> layer            (every other consumer of src still reads src)

Layers of ``layers`` that read the same tensor (siblings: q/k/v, gate/up) share one node, so
they stay siblings. The node is recorded in :attr:`~quantlens.graph.layers.LayerGraph.input_ops`:
a layer's cone starts at it (:func:`~quantlens.engine.cone.cone_nodes`), and the layer's input
quantizer, which every engine puts on the layer's own input edge, sees the op's output. The
graph given, and the user's model, are unchanged.

Example:
    >>> g2 = insert_input_op(g, ["fc"], lambda names: nn.Identity(), "rot")   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from torch import fx, nn

from quantlens.fixes.base import copy_graph
from quantlens.graph.layers import LayerGraph

__all__ = ["insert_input_op", "group_by_input"]


def insert_input_op(graph: LayerGraph, layers: Sequence[str], make: Callable[[list[str]], nn.Module], tag: str) -> LayerGraph:
    """A copy of ``graph`` (the modules of ``layers`` private to it) with ``make(names)`` on the
    input edge of each group of ``layers`` that reads one tensor (module docstring)."""
    out = copy_graph(graph, layers)
    nodes = out.nodes()
    groups = group_by_input(out, layers)
    g = out.gm.graph
    added = []
    for src_name, names in groups.items():
        target = _free_name(out.gm, f"fix_{tag}")
        out.gm.add_submodule(target, make(names))
        first = min((nodes[out.layer(n).node] for n in names), key=_position(g))
        with g.inserting_before(first):
            op = g.call_module(target, (nodes[src_name],))
        for n in names:
            nodes[out.layer(n).node].replace_input_with(nodes[src_name], op)
        added.append(op.name)
    out.gm.recompile()
    return dataclasses.replace(out, input_ops=graph.input_ops | frozenset(added))


def group_by_input(graph: LayerGraph, names: Sequence[str]) -> dict[str, list[str]]:
    """``{input node: [chosen layers reading it]}`` in the order of ``names``."""
    nodes = graph.nodes()
    out: dict[str, list[str]] = {}
    for n in names:
        src = nodes[graph.layer(n).node].args[0]
        assert isinstance(src, fx.Node)
        out.setdefault(src.name, []).append(n)
    return out


def _free_name(gm: fx.GraphModule, base: str) -> str:
    k = 0
    while hasattr(gm, f"{base}_{k}"):
        k += 1
    return f"{base}_{k}"


def _position(g: fx.Graph) -> Callable[[fx.Node], int]:
    order = {n: i for i, n in enumerate(g.nodes)}
    return order.__getitem__
