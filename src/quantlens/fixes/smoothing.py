"""A per-input-channel scale moved from a Linear's input into its weight, folded into a norm where it can be.

For a group of Linear layers that read one tensor ``x`` (siblings: q/k/v, gate/up; or one
layer) and a scale ``s > 0`` per input channel::

    y = x W^T = (x / s)(W diag(s))^T              W[:, j] <- W[:, j] s_j

The float function is unchanged (up to rounding). Where ``x / s`` comes from:

* **folded into the norm** that makes ``x`` when every consumer of ``x`` is a layer of the group
  (all siblings take the scale) and ``x`` is the output of a norm whose last step is a
  per-channel affine map: an ``nn.LayerNorm`` / ``*RMSNorm`` module called once (its
  ``weight`` and ``bias`` divided by ``s``), or a traced ``mul(x_hat, weight)`` whose ``weight``
  is a ``[K]`` attribute read only there (``weight / s``);
* else an **explicit input multiply**: an online op ``x -> x / s`` on the group's own input
  edge (:mod:`.online`), which other consumers of ``x`` do not see.

The graph given, and the user's model, are unchanged (the fixed graph holds private copies of
the layers, the norm module or its weight). Used by ``awq`` and ``smoothquant`` (:mod:`.awq`).

Example:
    >>> out, folded = apply_scale(graph, ["q", "k", "v"], s)   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import operator
from typing import Optional, Sequence

import torch
from torch import Tensor, fx, nn

from quantlens.fixes.base import copy_graph
from quantlens.fixes.online import insert_input_op
from quantlens.graph.layers import LayerGraph, fetch_attr

__all__ = ["ChannelScale", "apply_scale", "fold_target"]

_MULS = {operator.mul, torch.mul, torch.ops.aten.mul.Tensor}


class ChannelScale(nn.Module):
    """``x -> x / s`` along the last axis (``s`` one positive value per channel)."""

    def __init__(self, s: Tensor) -> None:
        super().__init__()
        self.register_buffer("s", s.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x / self.s.to(x.dtype)


def _is_norm_module(m: nn.Module, k: int) -> bool:
    w = getattr(m, "weight", None)
    named = isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")
    return named and isinstance(w, Tensor) and tuple(w.shape) == (k,)


def fold_target(graph: LayerGraph, group: Sequence[str]) -> Optional[tuple[str, str]]:
    """``("module", target)`` or ``("attr", target)`` to fold a scale of ``group``'s input into,
    or None (module docstring's conditions)."""
    nodes = graph.nodes()
    layer_nodes = {graph.layer(n).node for n in group}
    src = nodes[graph.layer(group[0]).node].args[0]
    assert isinstance(src, fx.Node)
    if {u.name for u in src.users} != layer_nodes:
        return None  # some consumer outside the group would see the change
    k = graph.module(graph.layer(group[0])).weight.shape[1]
    if src.op == "call_module":
        m = graph.gm.get_submodule(str(src.target))
        calls = [n for n in graph.gm.graph.nodes if n.op == "call_module" and n.target == src.target]
        return ("module", str(src.target)) if _is_norm_module(m, k) and len(calls) == 1 else None
    if src.op == "call_function" and src.target in _MULS and len(src.args) == 2:
        for a in src.args:
            if isinstance(a, fx.Node) and a.op == "get_attr" and len(a.users) == 1:
                t = fetch_attr(graph.gm, str(a.target))
                if isinstance(t, Tensor) and tuple(t.shape) == (k,) and t.is_floating_point():
                    return ("attr", str(a.target))
    return None


def _private_attr(out: LayerGraph, base: LayerGraph, target: str, value: Tensor) -> None:
    """Set the tensor attribute ``target`` of ``out.gm`` to ``value`` without touching ``base``'s."""
    parent_name, _, attr = target.rpartition(".")
    parent = out.gm.get_submodule(parent_name) if parent_name else out.gm
    if parent_name and parent is base.gm.get_submodule(parent_name):  # a module shared with base: a shallow private copy
        parent = copy.copy(parent)
        parent._parameters, parent._buffers, parent._modules = dict(parent._parameters), dict(parent._buffers), dict(parent._modules)
        out.gm.set_submodule(parent_name, parent)
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Parameter(value, requires_grad=False) if isinstance(old, nn.Parameter) else value)


def apply_scale(graph: LayerGraph, group: Sequence[str], s: Tensor, tag: str) -> tuple[LayerGraph, bool]:
    """A copy of ``graph`` with ``s`` moved into ``group``'s weights and folded or multiplied
    online (module docstring); and whether it was folded."""
    target = fold_target(graph, group)
    out = copy_graph(graph, group)
    for n in group:
        w = out.module(out.layer(n)).weight
        with torch.no_grad():
            w.copy_((w.double() * s.double().to(w.device)).to(w.dtype))
    if target is None:
        return insert_input_op(out, list(group), lambda _names: ChannelScale(s).to(s.device), tag), False
    kind, name = target
    if kind == "module":
        m = copy.deepcopy(graph.gm.get_submodule(name))
        with torch.no_grad():
            m.weight.copy_((m.weight.double() / s.double().to(m.weight.device)).to(m.weight.dtype))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_((m.bias.double() / s.double().to(m.bias.device)).to(m.bias.dtype))
        out.gm.set_submodule(name, m)
    else:
        t = fetch_attr(graph.gm, name)
        _private_attr(out, graph, name, (t.detach().double() / s.double().to(t.device)).to(t.dtype))
    return out, True
