"""The layers of a captured network: :class:`Layer`, :class:`LayerGraph`, and how they are found.

A *layer* is a ``Conv1d`` / ``Conv2d`` / ``Linear`` module call (depthwise and grouped
included), with BatchNorm folded into it, plus the activation that is its only user
(``ReLU``, ``ReLU6``, ``LeakyReLU``, ``Hardtanh``, ``SiLU``, ``GELU``, ``Hardswish``,
``Sigmoid``, ``Tanh``; module, functional or method form). Layers are listed in topological
order and named by their module's qualified name (``layer1.0.conv1``). Every capture path
(:mod:`~quantlens.graph.capture`'s fx trace, :mod:`~quantlens.graph.export`,
:mod:`~quantlens.graph.eager`) builds its :class:`LayerGraph` from these pieces.
"""

from __future__ import annotations
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import _pytree as fx_pytree
from torch.utils import _pytree as pytree
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from quantlens.errors import QuantlensError

__all__ = ["Layer", "LayerGraph", "LAYER_TYPES", "BN_TYPES", "ACT_MODULES", "ACT_FUNCTIONS", "ACT_METHODS", "INPLACE_FUNCTIONS", "is_layer_module", "layer_op", "layer_kind", "transposed_linear", "activation_name", "bind_placeholders", "trace_failure", "fuse_bn", "set_submodule", "discover_layers", "fetch_attr", "sibling_groups"]

LAYER_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)

ACT_MODULES: dict[type, str] = {
    nn.ReLU: "ReLU",
    nn.ReLU6: "ReLU6",
    nn.LeakyReLU: "LeakyReLU",
    nn.Hardtanh: "Hardtanh",
    nn.SiLU: "SiLU",
    nn.GELU: "GELU",
    nn.Hardswish: "Hardswish",
    nn.Sigmoid: "Sigmoid",
    nn.Tanh: "Tanh",
}
ACT_FUNCTIONS: dict[Any, str] = {
    F.relu: "ReLU",
    torch.relu: "ReLU",
    F.relu6: "ReLU6",
    F.leaky_relu: "LeakyReLU",
    F.hardtanh: "Hardtanh",
    F.silu: "SiLU",
    F.gelu: "GELU",
    F.hardswish: "Hardswish",
    torch.sigmoid: "Sigmoid",
    F.sigmoid: "Sigmoid",
    torch.tanh: "Tanh",
    F.tanh: "Tanh",
}
_aten = torch.ops.aten
# torch.export's ATen forms (after run_decompositions, so never in-place)
ACT_FUNCTIONS.update({
    _aten.relu.default: "ReLU",
    _aten.relu6.default: "ReLU6",  # F.relu6 (nn.ReLU6 is hardtanh(x, 0, 6))
    _aten.hardtanh.default: "Hardtanh",
    _aten.leaky_relu.default: "LeakyReLU",
    _aten.silu.default: "SiLU",
    _aten.gelu.default: "GELU",
    _aten.hardswish.default: "Hardswish",
    _aten.sigmoid.default: "Sigmoid",
    _aten.tanh.default: "Tanh",
})
ACT_METHODS: dict[str, str] = {
    "relu": "ReLU",
    "relu_": "ReLU",
    "sigmoid": "Sigmoid",
    "sigmoid_": "Sigmoid",
    "tanh": "Tanh",
    "tanh_": "Tanh",
}
INPLACE_FUNCTIONS = {torch.relu_: torch.relu, torch.sigmoid_: torch.sigmoid, torch.tanh_: torch.tanh}


@dataclass(frozen=True)
class Layer:
    """One quantizable layer of a :class:`LayerGraph`.

    Attributes:
        index: position in topological order.
        name: the module's qualified name.
        op: ``Conv1d``, ``Conv2d`` or ``Linear``.
        kind: ``conv``, ``depthwise``, ``grouped`` or ``linear``.
        node: the fx node of the module call.
        act_node: the fx node of the fused activation, if any.
        act: the activation's name, if any.
        params: number of weight elements.
        target: the module's qualified name when ``name`` had to be made unique
            (a module called more than once is one layer per call: ``fc``, ``fc:1``, ...).
    """

    index: int
    name: str
    op: str
    kind: str
    node: str
    act_node: Optional[str]
    act: Optional[str]
    params: int
    target: str = ""

    @property
    def module_name(self) -> str:
        """Qualified name of the module (differs from ``name`` for a module called twice)."""
        return self.target or self.name

    @property
    def output_node(self) -> str:
        """The node whose value is the layer's output (after its activation)."""
        return self.act_node or self.node


def activation_name(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    """The activation's name if ``node`` is a supported activation, else ``None``."""
    if node.op == "call_module":
        return ACT_MODULES.get(type(gm.get_submodule(str(node.target))))
    if node.op == "call_function":
        name = ACT_FUNCTIONS.get(node.target)
        if name == "Hardtanh" and tuple(node.args[1:3]) == (0.0, 6.0):
            return "ReLU6"  # F.relu6 is hardtanh(0, 6) in ATen
        return name
    if node.op == "call_method":
        return ACT_METHODS.get(str(node.target))
    return None


def transposed_linear(m: nn.Module) -> bool:
    """A Linear that stores its weight as ``[in, out]`` and computes ``addmm(b, x, W)``: the
    ``Conv1D`` of Hugging Face's GPT-2 (its ``nf`` is the output width)."""
    w = getattr(m, "weight", None)
    return type(m).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2 and getattr(m, "nf", None) == w.shape[1]


def is_layer_module(m: nn.Module) -> bool:
    """Conv1d, Conv2d, Linear, or a transposed Linear (:func:`transposed_linear`)."""
    return isinstance(m, LAYER_TYPES) or transposed_linear(m)


def layer_op(m: nn.Module) -> str:
    """The op name a layer module reports: its class, ``Linear`` for a transposed Linear."""
    return "Linear" if transposed_linear(m) else type(m).__name__


def layer_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear) or transposed_linear(m):
        return "linear"
    assert isinstance(m, (nn.Conv1d, nn.Conv2d))
    if m.groups == 1:
        return "conv"
    if m.groups == m.in_channels:
        return "depthwise"
    return "grouped"


@dataclass
class LayerGraph:
    """A captured, BN-folded copy of a model and its layers in topological order.

    ``gm`` is an fx GraphModule in eval mode whose weights are the folded float weights; each
    layer is a ``call_module`` of a ``Conv1d`` / ``Conv2d`` / ``Linear``, however it was captured.
    ``gm`` and every module built from its graph are called with :meth:`flat` of the batch's
    inputs, and their output is rebuilt by :meth:`output`.

    Attributes:
        method: how the graph was captured: ``fx`` (symbolic trace) or ``export``
            (``torch.export``, non-strict).
        in_spec / out_spec: for ``export``, the pytree specs of ``(args, kwargs)`` and of the
            output (a tuple, a dict or a Hugging Face ``ModelOutput``); ``None`` for ``fx``.
        prequantized: layers whose weight a fix has already quantized (GPTQ, four-over-six,
            ...): every engine uses such a weight as it is, never quantizing it again.
        input_ops: nodes a fix inserted on layers' own input edges (an online rotation or
            scale, between the tensor a layer read and the layer): a layer's cone starts at
            the chain of them that feeds it, so they are recomputed with the layer.
    """

    gm: fx.GraphModule
    layers: list[Layer]
    method: str = "fx"
    in_spec: Optional[pytree.TreeSpec] = None
    out_spec: Optional[pytree.TreeSpec] = None
    prequantized: frozenset[str] = frozenset()
    input_ops: frozenset[str] = frozenset()

    def flat(self, inputs: Any) -> tuple[Any, ...]:
        """The values of ``gm``'s placeholders, in order, for one batch's :class:`Inputs`."""
        if self.in_spec is not None:
            try:
                return tuple(fx_pytree.tree_flatten_spec((tuple(inputs.args), dict(inputs.kwargs)), self.in_spec))
            except Exception:
                raise QuantlensError(
                    f"a batch's inputs ({_describe(inputs)}) do not have the structure of the first batch the model "
                    "was captured with: give every batch the same arguments"
                ) from None
        return bind_placeholders(self.gm, inputs.args, inputs.kwargs)

    def output(self, out: Any) -> Any:
        """The model's output structure from the flat output of ``gm`` (identity for ``fx``)."""
        if self.out_spec is None:
            return out
        return pytree.tree_unflatten(list(out), self.out_spec)

    def module(self, layer: Layer) -> nn.Module:
        return self.gm.get_submodule(layer.module_name)

    def shared(self, layer: Layer) -> bool:
        """Whether ``layer``'s module is called more than once (its weights serve several layers)."""
        return sum(l.module_name == layer.module_name for l in self.layers) > 1

    def layer(self, name: str) -> Layer:
        for l in self.layers:
            if l.name == name:
                return l
        raise QuantlensError(f"no layer named {name!r}; layers are: {', '.join(l.name for l in self.layers)}")

    def nodes(self) -> dict[str, fx.Node]:
        return {n.name: n for n in self.gm.graph.nodes}


def _describe(inputs: Any) -> str:
    parts = [f"{len(inputs.args)} positional"] if inputs.args else []
    if inputs.kwargs:
        parts.append("keywords " + ", ".join(sorted(inputs.kwargs)))
    return "; ".join(parts) or "no arguments"


def bind_placeholders(gm: fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Positional values for ``gm``'s placeholders from a call's ``args`` and ``kwargs``
    (a placeholder's default is used when neither gives it)."""
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names = [str(n.target).lstrip("*") for n in holders]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise QuantlensError(
            f"the batch has keyword(s) {', '.join(unknown)} that the model's forward does not accept "
            f"(it takes {', '.join(names)}): rename or drop them in your data"
        )
    if len(args) > len(holders):
        raise QuantlensError(f"the batch has {len(args)} positional inputs but the model's forward takes {len(holders)}")
    values: list[Any] = list(args)
    for n, name in zip(holders[len(args):], names[len(args):]):
        if name in kwargs:
            values.append(kwargs[name])
        elif n.args:
            values.append(n.args[0])
        else:
            raise QuantlensError(f"the batch does not give the model's input {name!r}: add it to every batch")
    return tuple(values)


def trace_failure(e: BaseException) -> str:
    """Why tracing failed, in one line: ``TraceError: <first line, at most 160 characters>``."""
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def fuse_bn(layer: nn.Module, bn: nn.Module) -> Optional[nn.Module]:
    """``layer`` with eval-mode ``bn`` folded in (a new module), or None when they do not fold."""
    if not getattr(bn, "track_running_stats", False) or bn.running_mean is None:
        return None
    if isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
        return fuse_conv_bn_eval(layer, bn)
    if isinstance(layer, nn.Conv1d) and isinstance(bn, nn.BatchNorm1d):
        return fuse_conv_bn_eval(layer, bn)
    if isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
        return fuse_linear_bn_eval(layer, bn)
    return None


def set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def discover_layers(gm: fx.GraphModule, names: Optional[dict[str, str]] = None) -> list[Layer]:
    """The layers of ``gm`` in topological order; ``names`` maps a module target to the layer's
    name where they differ (a module registered under another name by the export capture)."""
    names = names or {}
    layers: list[Layer] = []
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = gm.get_submodule(node.target)
        if not isinstance(m, LAYER_TYPES):
            continue
        act_node, act = None, None
        if len(node.users) == 1:
            user = next(iter(node.users))
            act = activation_name(gm, user)
            act_node = user.name if act else None
        base = names.get(str(node.target), str(node.target))
        k = calls.get(base, 0)
        calls[base] = k + 1
        layers.append(
            Layer(
                index=len(layers),
                name=base if k == 0 else f"{base}:{k}",
                op=type(m).__name__,
                kind=layer_kind(m),
                node=node.name,
                act_node=act_node,
                act=act,
                params=int(m.weight.numel()),
                target=str(node.target),
            )
        )
    return layers


def fetch_attr(gm: nn.Module, target: str) -> Any:
    """The attribute at dotted ``target`` of ``gm`` (a submodule, parameter or buffer)."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def sibling_groups(graph: "LayerGraph") -> list[list[str]]:
    """The layers that read the same tensor, grouped, in topological order (a layer alone is a
    group of one): q/k/v after one norm, gate/up after another. Found from the graph (the fx node
    each layer's call takes as its input), not from names. Fused kernels (vLLM, TensorRT-LLM)
    run such a group as one matrix, so they must share one format."""
    nodes = graph.nodes()
    groups: dict[str, list[str]] = {}
    for l in graph.layers:
        args = nodes[l.node].args
        src = args[0] if args else None
        key = src.name if isinstance(src, fx.Node) else f"__{l.name}"
        groups.setdefault(key, []).append(l.name)
    return list(groups.values())
