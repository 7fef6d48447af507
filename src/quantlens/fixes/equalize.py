"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"), fix ``equalize``.

For consecutive layers ``l1 -> f -> l2`` where ``f`` is positively homogeneous
(``f(x / s) = f(x) / s`` for ``s > 0``: no activation, ReLU, LeakyReLU, and on the way max/avg
pooling, dropout, identity, and a flatten into a Linear), output channel ``c`` of ``l1`` and
input channel ``c`` of ``l2`` are rescaled::

    W1[c] <- W1[c] / s_c,  b1[c] <- b1[c] / s_c,  W2[:, c] <- W2[:, c] * s_c,
    s_c = sqrt(r1_c / r2_c)

with ``r1_c = max|W1[c]|`` and ``r2_c = max|W2[:, c]|``, so that both become ``sqrt(r1_c r2_c)``.
The float function is unchanged (up to float rounding). Depthwise and grouped ``l2`` are
handled (input channel ``c`` is column ``c mod (C/groups)`` of its group's output channels);
a flatten into a Linear scales the block of features that channel ``c`` becomes. Passes over
all pairs repeat until the scales settle (at most ``iterations`` times). ReLU6/Hardtanh and
other bounded activations are not homogeneous: such pairs are skipped.

Example:
    >>> from quantlens.fixes import FixContext, make_fix               # doctest: +SKIP
    >>> g2 = make_fix("equalize", FixContext(cfg)).apply(g, [l.name for l in g.layers])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from quantlens.graph.layers import Layer, LayerGraph
from quantlens.fixes.base import FixContext, copy_graph, register_fix

__all__ = ["Pair", "equalizable_pairs", "Equalize"]

_HOMOGENEOUS_ACTS = {None, "ReLU", "LeakyReLU"}
_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)
_PASS_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout}
_FLATTEN = {torch.flatten}


@dataclass(frozen=True)
class Pair:
    """``l1`` feeds ``l2`` through homogeneous ops; ``block`` features of ``l2`` per channel."""

    l1: str
    l2: str
    block: int = 1


def _is_flatten(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_function":
        return n.target in _FLATTEN
    if n.op == "call_method":
        return str(n.target) == "flatten"
    return n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), nn.Flatten)


def _is_pass(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(str(n.target)), _PASS_MODULES)
    return n.op == "call_function" and n.target in _PASS_FUNCTIONS


def _follow(graph: LayerGraph, l1: Layer) -> Optional[Pair]:
    gm = graph.gm
    if l1.act not in _HOMOGENEOUS_ACTS:
        return None
    by_node = {l.node: l for l in graph.layers}
    nodes = graph.nodes()
    n = nodes[l1.output_node]
    flattened = False
    while True:
        if len(n.users) != 1:
            return None
        u = next(iter(n.users))
        if u.op == "call_module" and u.name in by_node and u.args and u.args[0] is n:
            l2 = by_node[u.name]
            if graph.shared(l1) or graph.shared(l2):  # rescaling shared weights would change their other calls
                return None
            m1, m2 = graph.module(l1), graph.module(l2)
            c = m1.weight.shape[0]
            if isinstance(m2, nn.Linear):
                if m2.in_features % c or (not isinstance(m1, nn.Linear) and not flattened):
                    return None  # after a conv, a Linear mixes channels only once they are flattened
                return Pair(l1.name, l2.name, m2.in_features // c)
            if flattened or m2.in_channels != c:
                return None
            return Pair(l1.name, l2.name, 1)
        if _is_flatten(gm, u):
            flattened = True
        elif not _is_pass(gm, u):
            return None
        if u.args[0] is not n:
            return None
        n = u


def equalizable_pairs(graph: LayerGraph) -> list[Pair]:
    """Every ``(l1, l2)`` of the graph that cross-layer equalization can rescale."""
    out = []
    for l in graph.layers:
        p = _follow(graph, l)
        if p is not None:
            out.append(p)
    return out


def _input_columns(m2: nn.Module, c: int, block: int) -> tuple[slice | Tensor, slice]:
    """``(output rows, input columns)`` of ``m2.weight`` that read input channel ``c``."""
    if isinstance(m2, nn.Linear):
        return slice(None), slice(c * block, (c + 1) * block)
    ipg = m2.weight.shape[1]
    g = c // ipg
    opg = m2.weight.shape[0] // m2.groups
    return slice(g * opg, (g + 1) * opg), slice(c % ipg, c % ipg + 1)


def _r2(m2: nn.Module, channels: int, block: int) -> Tensor:
    w = m2.weight.detach()
    r = torch.empty(channels, dtype=w.dtype, device=w.device)
    for c in range(channels):
        rows, cols = _input_columns(m2, c, block)
        r[c] = w[rows, cols].abs().max()
    return r


def _equalize_pair(gm: fx.GraphModule, p: Pair) -> float:
    """Rescale one pair in place; returns ``max_c |log s_c|``."""
    m1, m2 = gm.get_submodule(p.l1), gm.get_submodule(p.l2)
    w1 = m1.weight.detach()
    c = w1.shape[0]
    r1 = w1.reshape(c, -1).abs().amax(1)
    r2 = _r2(m2, c, p.block)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))), torch.ones_like(r1))
    with torch.no_grad():
        m1.weight.div_(s.reshape(c, *([1] * (w1.dim() - 1))))
        if m1.bias is not None:
            m1.bias.div_(s)
        for ch in range(c):
            rows, cols = _input_columns(m2, ch, p.block)
            m2.weight[rows, cols] *= s[ch]
    return float(s.log().abs().max())


@register_fix("equalize", order=10)
class Equalize:
    """Cross-layer equalization of every pair with a layer in ``layers`` (see module docstring)."""

    def __init__(self, ctx: FixContext, iterations: int = 20, tol: float = 1e-4) -> None:
        self.ctx = ctx
        self.iterations = iterations
        self.tol = tol

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        chosen = set(layers)
        pairs = [p for p in equalizable_pairs(graph) if p.l1 in chosen or p.l2 in chosen]
        out = copy_graph(graph, [n for p in pairs for n in (p.l1, p.l2)])
        for _ in range(self.iterations):
            change = max((_equalize_pair(out.gm, p) for p in pairs), default=0.0)
            if change < self.tol or not math.isfinite(change):
                break
        return out

