"""The predicted cost of one layer's cell: its cone's share of a float pass.

Measuring layer ``i``'s cell recomputes its cone (:mod:`quantlens.engine.cone`), so per batch
it costs about the float pass's time times the cone's share of the network's work::

    share(i) = sum_{n in cone(i)} work(n) / sum_{n in network} work(n)
    work(n)  = FLOPs(n) + elements(n)

``FLOPs(n)`` is what :class:`torch.utils.flop_counter.FlopCounterMode` counts for node ``n``
(matrix products, convolutions, attention), and ``elements(n)`` the number of values ``n``
writes (the elementwise work, which FLOP counters leave out). Both are counted in one
interpreted float pass on the first sample of a batch (every tensor argument whose first
dimension is the batch's is cut to one row): shares are ratios, so the batch size cancels.
A cone includes the quantized layer itself and everything downstream of it (the input ops a
fix inserted before it too), as :func:`~quantlens.engine.cone.cone_nodes` says.

Example:
    >>> import torch, torch.nn as nn
    >>> from quantlens.graph.capture import capture
    >>> from quantlens.core.inputs import Inputs
    >>> g = capture(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)))
    >>> s = cone_shares(g, Inputs((torch.randn(4, 8),)))
    >>> s[0] > s[1] > 0, s[0] <= 1.0
    (True, True)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import Tensor, fx
from torch.utils import _pytree as pytree
from torch.utils.flop_counter import FlopCounterMode

from quantlens.core.inputs import Inputs
from quantlens.core.numerics import analysis_mode
from quantlens.engine.cone import cone_nodes
from quantlens.graph.layers import LayerGraph

__all__ = ["cone_shares", "node_work", "one_sample"]


def one_sample(inputs: Inputs) -> Inputs:
    """``inputs`` cut to their first sample: every tensor whose first dimension is the batch's."""
    n = inputs.batch_size

    def cut(v: Any) -> Any:
        return v[:1] if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == n else v

    return Inputs(tuple(pytree.tree_map(cut, list(inputs.args))), pytree.tree_map(cut, dict(inputs.kwargs)))


class _Counter(fx.Interpreter):
    """Runs ``gm`` node by node, recording each node's ``FLOPs + elements written``."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.work: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        with FlopCounterMode(display=False) as counter:
            out = super().run_node(n)
        written = sum(t.numel() for t in pytree.tree_leaves(out) if isinstance(t, Tensor))
        self.work[n.name] = float(counter.get_total_flops()) + float(written)
        return out


def node_work(graph: LayerGraph, inputs: Inputs) -> dict[str, float]:
    """``work(n)`` of every node of ``graph`` on the first sample of ``inputs`` (module docstring);
    placeholders, attributes and the output count 0."""
    counter = _Counter(graph.gm)
    with analysis_mode():
        counter.run(*graph.flat(one_sample(inputs)))
    return {n.name: (0.0 if n.op in ("placeholder", "get_attr", "output") else counter.work.get(n.name, 0.0))
            for n in graph.gm.graph.nodes}


def cone_shares(graph: LayerGraph, inputs: Inputs, layer_ids: Optional[Sequence[int]] = None,
                work: Optional[dict[str, float]] = None) -> dict[int, float]:
    """``share(i)`` of each layer ``i`` (default: all), in ``[0, 1]`` (module docstring)."""
    w = node_work(graph, inputs) if work is None else work
    total = sum(w.values())
    ids = range(len(graph.layers)) if layer_ids is None else layer_ids
    if total <= 0:
        return {i: 1.0 for i in ids}
    return {i: min(1.0, sum(w.get(n.name, 0.0) for n in cone_nodes(graph, graph.layers[i])) / total) for i in ids}

