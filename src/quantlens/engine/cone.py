"""Downstream cones and the compiled modules that recompute only them.

For layer ``i`` the *cone* is every node that depends on ``i``'s module call. A node
outside the cone has the same value in the float network and in the network where only
layer ``i`` is quantized, so it is read from the activation cache of the float pass; only
the cone is recomputed. Each cone is its own :class:`~quantlens.engine.program.Program` (the
captured graph's nodes run in place, no compiled copy) whose inputs are the cached values it reads
(the *frontier*) and whose outputs are the network's output and the quantized layer's output::

    x_in --ActQuantizer--> QuantLayer(weight = Q_w(W)) --activation--> ActQuantizer --> ... --> y_i

The input quantizer sits on the edge into layer ``i`` only: other consumers of the same
tensor still see float values.

Example:
    >>> import torch, torch.nn as nn
    >>> from quantlens.graph.capture import capture
    >>> g = capture(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> cone = build_cone(g, g.layers[1])
    >>> cone.frontier
    ['_1']
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from quantlens.engine.program import Program
from quantlens.quant.quantizer import ActQuantizer
from quantlens.graph.layers import Layer, LayerGraph, fetch_attr

__all__ = [
    "QuantLayer", "Cone", "cone_nodes", "downstream_nodes", "build_cone", "build_cache_module", "frontier_of", "input_node", "recompute_nodes",
    "build_io_module",
]


class QuantLayer(nn.Module):
    """A Conv1d/Conv2d/Linear that computes with a replaceable (fake-quantized) weight.

    ``forward(x) = op(x, qweight, bias)``; ``qweight`` defaults to the float weight itself (a
    detached view of its storage, not a copy: one cone per layer would otherwise hold a second
    copy of every weight of the network, 0.5 GB on a 135M-parameter model).
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("qweight", layer.weight.detach(), persistent=False)

    def set_weight(self, w: Tensor) -> None:
        self.qweight = w

    def reset_weight(self) -> None:
        """Back to the float weight (a view, no copy): a quantized weight that was set is not
        kept alive by the cone once it ran (the sweep's kept quantized weights have a budget)."""
        self.qweight = self.layer.weight.detach()

    def set_weights(self, ws: Optional[list[Tensor]]) -> None:
        """Several weights in one pass (or ``None`` for one): the input's batch is ``len(ws)``
        equal chunks, chunk ``k`` goes through weight ``k``, and the outputs are concatenated."""
        self.multi = ws

    def forward(self, x: Tensor) -> Tensor:
        ws = getattr(self, "multi", None)
        if ws:
            return torch.cat([self._compute(c, w) for c, w in zip(x.chunk(len(ws)), ws)])
        return self._compute(x, self.qweight)

    def _compute(self, x: Tensor, w: Tensor) -> Tensor:
        return layer_forward(self.layer, x, w)


def layer_forward(layer: nn.Module, x: Tensor, w: Tensor) -> Tensor:
    """``layer(x)`` computed with weight ``w`` instead of ``layer.weight`` (the bias kept)."""
    kind = type(layer)
    if kind is nn.Linear:
        return F.linear(x, w, layer.bias)
    if kind in (nn.Conv1d, nn.Conv2d):
        return layer._conv_forward(x, w, layer.bias)  # type: ignore[operator]
    # a subclass (e.g. a conv with its own padding): its own forward, with the weight replaced
    return torch.func.functional_call(layer, {"weight": w}, (x,))


def input_node(graph: LayerGraph, layer: Layer) -> str:
    """Name of the node whose value enters ``layer``."""
    node = graph.nodes()[layer.node]
    arg = node.args[0]
    assert isinstance(arg, fx.Node)
    return arg.name


def cone_nodes(graph: LayerGraph, layer: Layer) -> list[fx.Node]:
    """Nodes downstream of (and including) the layer's module call, in topological order; a
    layer fed by a fix's input ops (:attr:`LayerGraph.input_ops`) starts at the first of them."""
    nodes = graph.nodes()
    start = nodes[layer.node]
    while graph.input_ops and start.args and isinstance(start.args[0], fx.Node) and start.args[0].name in graph.input_ops:
        start = start.args[0]
    return downstream_nodes(graph, [start])


def downstream_nodes(graph: LayerGraph, start: Iterable[fx.Node]) -> list[fx.Node]:
    """Nodes downstream of (and including) ``start``, in topological order (the output excluded)."""
    seen = {n.name for n in start}
    stack = list(start)
    while stack:
        n = stack.pop()
        for u in n.users:
            if u.op != "output" and u.name not in seen:
                seen.add(u.name)
                stack.append(u)
    return [n for n in graph.gm.graph.nodes if n.name in seen]


def _output_node(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in reversed(gm.graph.nodes) if n.op == "output")


def frontier_of(graph: LayerGraph, inside: Iterable[fx.Node]) -> list[str]:
    """Nodes outside ``inside`` that ``inside`` or the network output reads (get_attr excluded)."""
    inside_names = {n.name for n in inside}
    out: list[str] = []
    consumers = list(inside) + [_output_node(graph.gm)]
    for n in consumers:
        for a in n.all_input_nodes:
            if a.name not in inside_names and a.op != "get_attr" and a.name not in out:
                out.append(a.name)
    order = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    return sorted(out, key=order.__getitem__)


def recompute_nodes(graph: LayerGraph, targets: Iterable[fx.Node], start: int) -> list[fx.Node]:
    """The float nodes at topological position ``>= start`` that ``targets`` read, transitively
    (placeholders and attributes excluded), in topological order.

    With these recomputed, a module reads only values from before ``start`` (the block's inputs):
    the low-memory mode keeps only those in its activation cache.
    """
    pos = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    target_names = {n.name for n in targets}
    seen: set[str] = set()
    stack = [a for t in targets for a in t.all_input_nodes]
    while stack:
        n = stack.pop()
        if n.name in seen or n.name in target_names or n.op in ("placeholder", "get_attr") or pos[n.name] < start:
            continue
        seen.add(n.name)
        stack.extend(n.all_input_nodes)
    return [n for n in graph.gm.graph.nodes if n.name in seen]


class Cone:
    """A module that recomputes one layer's cone with that layer quantized.

    ``gm(*[cache[name] for name in frontier]) -> (network_output, quantized_layer_output)``.
    The frontier, the quantized layer and its quantizers exist at once; ``gm`` is compiled on
    first use (a sweep that measures a few of its layers, like the estimate's check, compiles
    only theirs).
    """

    def __init__(self, layer: Layer, compile: Callable[[], Program], frontier: list[str], qlayer: QuantLayer,
                 in_q: ActQuantizer, out_q: ActQuantizer, size: int = 0) -> None:
        self.layer, self.frontier, self.qlayer, self.in_q, self.out_q, self.size = layer, frontier, qlayer, in_q, out_q, size
        self._compile: Optional[Callable[[], Program]] = compile
        self._gm: Optional[Program] = None
        self.device: Optional[torch.device] = None

    @property
    def gm(self) -> Program:
        """The cone's :class:`~quantlens.engine.program.Program` (built on first use, no compilation)."""
        if self._gm is None:
            assert self._compile is not None
            self._gm = self._compile()
            self._compile = None
            if self.device is not None:
                self._gm.to(self.device)
        return self._gm

    @property
    def compiled(self) -> bool:
        return self._gm is not None

    def to(self, device: Union[str, torch.device]) -> "Cone":
        """Move the cone's own modules (and ``gm`` once compiled) to ``device``; returns itself."""
        self.device = torch.device(device)
        for m in (self.qlayer, self.in_q, self.out_q):
            m.to(self.device)
        if self._gm is not None:
            self._gm.to(self.device)
        return self

    def __call__(self, cache: dict[str, Any]) -> tuple[Any, Tensor]:
        return self.gm(*[cache[n] for n in self.frontier])


def build_cone(
    graph: LayerGraph,
    layer: Layer,
    full: bool = False,
    start: Optional[int] = None,
    quantizers: Optional[tuple[ActQuantizer, ActQuantizer]] = None,
    also: Iterable[Layer] = (),
    tap_input: bool = False,
    also_nodes: Iterable[str] = (),
) -> Cone:
    """Compile the cone of ``layer`` (or, with ``full=True``, the whole network: the naive way).

    ``start``: also recompute, in float, the nodes from topological position ``start`` on that
    the cone reads (:func:`recompute_nodes`), so that its frontier is only values from before
    ``start``. ``quantizers``: the layer's (input, output) activation quantizers to reuse.
    ``also``: other layers whose cones are recomputed too (their weights differ from the float
    pass's, e.g. after a fix changed them); ``also_nodes``: other nodes recomputed with all
    that follows them (a norm a fix folded a scale into); ``tap_input``: the compiled module also returns the
    value entering ``layer`` (before its input quantizer), ``(output, layer output, input)``.
    """
    gm = graph.gm
    if full:
        inside = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    else:
        names = {n.name for l in (layer, *also) for n in cone_nodes(graph, l)}
        starts = [graph.nodes()[n] for n in also_nodes]
        names |= {n.name for n in downstream_nodes(graph, [s for s in starts if s.op != "get_attr"])}
        inside = [n for n in gm.graph.nodes if n.name in names]
        if start is not None:
            extra = {n.name for n in recompute_nodes(graph, inside + [_output_node(gm)], start)}
            names = names | extra
            inside = [n for n in gm.graph.nodes if n.name in names]
    frontier = frontier_of(graph, inside)
    qlayer = QuantLayer(gm.get_submodule(layer.module_name))
    in_q, out_q = quantizers if quantizers is not None else (ActQuantizer(), ActQuantizer())

    def compile() -> Program:
        nodes = graph.nodes()
        entering = nodes[layer.node].args[0]
        outputs = (_output_node(gm).args[0], nodes[layer.output_node])
        return Program(gm, inside, frontier, (*outputs, entering) if tap_input else outputs,
                       replace={layer.node: lambda x: qlayer(in_q(x))}, after={layer.output_node: out_q})

    return Cone(layer, compile, frontier, qlayer, in_q, out_q, size=len(inside))


def build_io_module(graph: LayerGraph, layer: Layer, start: int) -> tuple[fx.GraphModule, list[str]]:
    """A float module ``gm(*frontier) -> (layer input, layer output)`` that recomputes from ``start``."""
    nodes = graph.nodes()
    pos = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    want = [input_node(graph, layer), layer.output_node]
    computed = {w for w in want if pos[w] >= start and nodes[w].op not in ("placeholder", "get_attr")}
    names = {n.name for n in recompute_nodes(graph, [nodes[w] for w in computed], start)} | computed
    inside = [n for n in graph.gm.graph.nodes if n.name in names]
    frontier: list[str] = [w for w in want if w not in names]
    for n in inside:
        for a in n.all_input_nodes:
            if a.name not in names and a.op != "get_attr" and a.name not in frontier:
                frontier.append(a.name)
    frontier.sort(key=pos.__getitem__)
    g = fx.Graph()
    env: dict[str, fx.Node] = {f: g.placeholder(f) for f in frontier}
    modules: dict[str, Any] = {}
    for n in graph.gm.graph.nodes:
        if n.op == "get_attr" and any(u in inside for u in n.users):
            env[n.name] = g.node_copy(n, lambda a: env[a.name])
            modules[str(n.target)] = fetch_attr(graph.gm, str(n.target))
    for n in inside:
        env[n.name] = g.node_copy(n, lambda a: env[a.name])
        if n.op == "call_module":
            modules[str(n.target)] = graph.gm.get_submodule(str(n.target))
    g.output(tuple(env[w] for w in want))
    return fx.GraphModule(modules, g, class_name=f"LayerIO_{layer.index}"), frontier


def build_cache_module(graph: LayerGraph, keep: Iterable[str]) -> tuple[fx.GraphModule, list[str]]:
    """A copy of the network that returns ``(output, (value of each kept node, ...))``."""
    keep_list = list(dict.fromkeys(keep))
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    for n in graph.gm.graph.nodes:
        if n.op == "output":
            y = fx.node.map_arg(n.args[0], lambda a: env[a.name])
            g.output((y, tuple(env[k] for k in keep_list)))
        else:
            env[n.name] = g.node_copy(n, lambda a: env[a.name])
    return fx.GraphModule(graph.gm, g, class_name="FloatCache"), keep_list
