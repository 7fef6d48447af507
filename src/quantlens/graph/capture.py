"""Model -> :class:`LayerGraph`: fx trace, BatchNorm folding, layer discovery.

A *layer* is a ``Conv1d`` / ``Conv2d`` / ``Linear`` module call (depthwise and grouped
included), with BatchNorm folded into it, plus the activation that is its only user
(``ReLU``, ``ReLU6``, ``LeakyReLU``, ``Hardtanh``, ``SiLU``, ``GELU``, ``Hardswish``,
``Sigmoid``, ``Tanh``; module, functional or method form). Layers are listed in topological
order and named by their module's qualified name (``layer1.0.conv1``).

The user's model is never modified: capture works on a deep copy in eval mode.
In-place activations in the copy are made out-of-place, so that cached activations stay valid.

Example:
    >>> import torch.nn as nn
    >>> g = capture(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    >>> [(l.name, l.act) for l in g.layers]
    [('0', 'ReLU')]
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import _pytree as fx_pytree
from torch.utils import _pytree as pytree
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..errors import QuantlensError
from ..inputs import as_inputs
from .onnx_ops import call_onnx_op, is_onnx_op

__all__ = ["Layer", "LayerGraph", "capture", "fx_capture", "CAPTURE_METHODS", "CaptureError", "LAYER_TYPES", "is_layer_module", "layer_op", "transposed_linear", "activation_name", "bind_placeholders"]

LAYER_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)

_ACT_MODULES: dict[type, str] = {
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
_ACT_FUNCTIONS: dict[Any, str] = {
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
_ACT_FUNCTIONS.update({
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
_ACT_METHODS: dict[str, str] = {
    "relu": "ReLU",
    "relu_": "ReLU",
    "sigmoid": "Sigmoid",
    "sigmoid_": "Sigmoid",
    "tanh": "Tanh",
    "tanh_": "Tanh",
}
_INPLACE_FUNCTIONS = {torch.relu_: torch.relu, torch.sigmoid_: torch.sigmoid, torch.tanh_: torch.tanh}


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
        return _ACT_MODULES.get(type(gm.get_submodule(str(node.target))))
    if node.op == "call_function":
        name = _ACT_FUNCTIONS.get(node.target)
        if name == "Hardtanh" and tuple(node.args[1:3]) == (0.0, 6.0):
            return "ReLU6"  # F.relu6 is hardtanh(0, 6) in ATen
        return name
    if node.op == "call_method":
        return _ACT_METHODS.get(str(node.target))
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


def _layer_kind(m: nn.Module) -> str:
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
    """

    gm: fx.GraphModule
    layers: list[Layer]
    method: str = "fx"
    in_spec: Optional[pytree.TreeSpec] = None
    out_spec: Optional[pytree.TreeSpec] = None

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


def _fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold each BatchNorm that is the only user of a conv/linear into that conv/linear."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BN_TYPES):
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        fused = fuse_bn(gm.get_submodule(src.target), gm.get_submodule(node.target))
        if fused is None:
            continue
        _set_submodule(gm, src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


_INPLACE_OPERATORS = {operator.iadd: operator.add, operator.imul: operator.mul, operator.isub: operator.sub}
_INPLACE_METHODS = ("relu", "sigmoid", "tanh", "add", "mul", "sub", "clamp", "div")


def _is_inplace(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` changes its first argument in place (and returns it)."""
    if node.op == "call_function":
        return node.kwargs.get("inplace") is True or node.target in _INPLACE_FUNCTIONS or node.target in _INPLACE_OPERATORS
    if node.op == "call_method":
        t = str(node.target)
        return t.endswith("_") and not t.startswith("_") and t[:-1] in _INPLACE_METHODS
    if node.op == "call_module":
        return getattr(gm.get_submodule(str(node.target)), "inplace", None) is True
    return False


def _make_out_of_place(gm: fx.GraphModule) -> None:
    """In-place ops would overwrite cached activations: make activations out-of-place.

    An in-place call's result is its argument changed, so every later use of that argument
    is first made a use of the call (``y.relu_(); z = y * 2`` reads the ReLU's result, as in
    the model; fx records ``mul(y, 2)``)."""
    order = {n: k for k, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if _is_inplace(gm, node) and node.args and isinstance(node.args[0], fx.Node):
            arg = node.args[0]
            for user in list(arg.users):
                if user is not node and order[user] > order[node]:
                    user.replace_input_with(arg, node)
    for m in gm.modules():
        if hasattr(m, "inplace") and isinstance(getattr(m, "inplace"), bool):
            m.inplace = False
    for node in gm.graph.nodes:
        if node.op == "call_function":
            if node.kwargs.get("inplace") is True:
                node.kwargs = {**node.kwargs, "inplace": False}
            if node.target in _INPLACE_FUNCTIONS:
                node.target = _INPLACE_FUNCTIONS[node.target]
            if node.target in _INPLACE_OPERATORS:
                node.target = _INPLACE_OPERATORS[node.target]
        elif node.op == "call_method" and _is_inplace(gm, node):
            node.target = str(node.target)[:-1]
    gm.recompile()


def _drop_identities(gm: fx.GraphModule) -> None:
    """``nn.Identity`` calls (a switched-off BN or activation slot) are not consumers: remove them,
    so that a BN or activation behind one is folded or fused as the eager capture does."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and type(gm.get_submodule(str(node.target))) is nn.Identity and node.args:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()


def _discover(gm: fx.GraphModule, names: Optional[dict[str, str]] = None) -> list[Layer]:
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
                kind=_layer_kind(m),
                node=node.name,
                act_node=act_node,
                act=act,
                params=int(m.weight.numel()),
                target=str(node.target),
            )
        )
    return layers


class _LayerTracer(fx.Tracer):
    """fx tracer that keeps subclasses of the layer, BatchNorm and activation types as leaves.

    (fx's default only stops at modules defined inside ``torch.nn``; a library's
    ``Conv2dStaticSamePadding(nn.Conv2d)`` would otherwise dissolve into ``F.conv2d`` calls.)
    An onnx2torch op that cannot be traced through (a Reshape to a shape computed at run time:
    an ONNX file with a dynamic axis) is kept whole too: see :mod:`quantlens.graph.onnx_ops`.
    """

    _KEEP = LAYER_TYPES + _BN_TYPES + tuple(_ACT_MODULES)

    def __init__(self) -> None:
        super().__init__()
        self.onnx_leaves: set[nn.Module] = set()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self._KEEP) or m in self.onnx_leaves:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        call = lambda: super(_LayerTracer, self).call_module(m, forward, args, kwargs)  # noqa: E731
        if m in self.onnx_leaves or not is_onnx_op(m, self._KEEP):
            return call()
        return call_onnx_op(self, m, call, self.onnx_leaves)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace a deep, eval-mode copy of ``model`` (raises the tracer's error)."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    graph = _LayerTracer().trace(m)
    return fx.GraphModule(m, graph, class_name=type(m).__name__)


CAPTURE_METHODS = ("auto", "fx", "export")
_PATH_NAMES = {"fx": "torch.fx cannot trace the model", "export": "torch.export cannot export it"}


class CaptureError(RuntimeError):
    """No graph capture worked; ``reasons`` maps each path tried (``fx``, ``export``) to why."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        super().__init__(self.describe())

    def describe(self) -> str:
        return "; ".join(f"{_PATH_NAMES[k]} ({v})" for k, v in self.reasons.items())


def capture(model: nn.Module, sample: Any = None, method: str = "auto") -> LayerGraph:
    """Capture ``model`` (a copy), fold BatchNorm, and list its layers in topological order.

    ``method``: ``fx`` (symbolic trace), ``export`` (``torch.export`` on ``sample``, the first
    batch's :class:`~quantlens.data.Inputs`), or ``auto``: fx, then export when fx
    cannot trace the model. Raises :class:`CaptureError` (why each path failed) when none does.
    """
    if not isinstance(model, nn.Module):
        raise QuantlensError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in CAPTURE_METHODS:
        raise QuantlensError(f"unknown capture {method!r}: use {', '.join(CAPTURE_METHODS)}")
    if method == "export" and sample is None:
        raise QuantlensError("capture='export' needs a sample batch of inputs")
    sample = as_inputs(sample) if sample is not None else None
    order = [method] if method != "auto" else (["export", "fx"] if _prefer_export(model) else ["fx", "export"])
    reasons: dict[str, str] = {}
    for path in order:
        if path == "export" and sample is None:
            continue
        try:
            if path == "fx":
                return fx_capture(model)
            from .export import export_capture

            return export_capture(model, sample)
        except QuantlensError:
            raise
        except Exception as e:
            reasons[path] = trace_failure(e)
    raise CaptureError(reasons)


def _prefer_export(model: nn.Module) -> bool:
    """Go to torch.export first for Hugging Face models (torch.fx cannot trace them) and for a
    program's module (``ExportedProgram.module()``: ATen ops, no layer modules for fx to find)."""
    if type(model).__module__.startswith("transformers."):
        return True
    return isinstance(model, fx.GraphModule) and any(isinstance(n.target, torch._ops.OpOverload) for n in model.graph.nodes)


def fx_capture(model: nn.Module) -> LayerGraph:
    """Trace ``model`` (a copy) with torch.fx, fold BatchNorm, and list its layers."""
    gm = trace(model)
    _drop_identities(gm)
    _make_out_of_place(gm)
    _fold_batchnorm(gm)
    layers = _discover(gm)
    if not layers:
        raise QuantlensError(
            "the model has no quantizable layer: quantlens analyses Conv1d, Conv2d and Linear modules"
        )
    return LayerGraph(gm, layers)
