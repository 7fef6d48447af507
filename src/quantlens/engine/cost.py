"""The predicted cost of one layer's cell: its cone's share of a float pass.

Measuring layer ``i``'s cell recomputes its cone (:mod:`quantlens.engine.cone`), so per batch
it costs about the float pass's time times the cone's share of the network's work::

    share(i) = sum_{n in cone(i)} work(n) / sum_{n in network} work(n)
    work(n)  = FLOPs(n) + elements(n)

``FLOPs(n)`` is what :class:`torch.utils.flop_counter.FlopCounterMode` counts for node ``n``
(matrix products, convolutions, attention: its formulas and decompositions, :class:`_Flops`), and ``elements(n)`` the number of values ``n``
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

import torch
from torch import Tensor, fx
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

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


_SHAPE_QUERIES = {torch.ops.aten.sym_is_contiguous.default, torch.ops.aten.is_contiguous.default,
                  torch.ops.aten.is_contiguous.memory_format, torch.ops.aten.is_strides_like_format.default,
                  torch.ops.aten.is_non_overlapping_and_dense.default, torch.ops.aten.size.default,
                  torch.ops.aten.sym_size.default, torch.ops.aten.stride.default, torch.ops.aten.sym_stride.default,
                  torch.ops.aten.storage_offset.default, torch.ops.aten.sym_storage_offset.default,
                  torch.ops.aten.numel.default, torch.ops.aten.sym_numel.default, torch.ops.aten.dim.default,
                  torch.ops.prim.layout.default}


class _Flops(TorchDispatchMode):
    """The total of :class:`~torch.utils.flop_counter.FlopCounterMode` (its ``flop_registry``
    formulas, an op outside the registry decomposed first, as it does) without its module tracker
    and without ``torch._dynamo``: every other dispatch mode's first call imports it (about 1.2 s
    of CPU once per process, which the exact sweep never pays). ``flops`` is the running total."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:  # torch's own opt-out (TorchDispatchMode's docstring)
        return False

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _SHAPE_QUERIES:
            return NotImplemented
        if func not in flop_registry and func is not torch.ops.prim.device.default:  # an overload: never a key
            with self:
                r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
        out = func(*args, **kwargs)
        f = flop_registry.get(func._overloadpacket)
        if f is not None:
            self.flops += f(*args, **kwargs, out_val=out)
        return out


class _Counter(fx.Interpreter):
    """Runs ``gm`` node by node, recording each node's ``FLOPs + elements written``."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.work: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        with _Flops() as counter:
            out = super().run_node(n)
        written = sum(t.numel() for t in pytree.tree_leaves(out) if isinstance(t, Tensor))
        self.work[n.name] = float(counter.flops) + float(written)
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

