"""Model -> :class:`~quantlens.graph.layers.LayerGraph`: the capture paths, and the fx trace.

:func:`capture` tries torch.fx (here), then torch.export (:mod:`quantlens.graph.export`); the
layers are found by :mod:`quantlens.graph.layers`.

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
from typing import Any

import torch
from torch import fx, nn

from quantlens.errors import QuantlensError
from quantlens.core.inputs import as_inputs
from quantlens.graph.capture_cache import capture_cache
from quantlens.graph.onnx_ops import call_onnx_op, is_onnx_op

from quantlens.graph.layers import (
    ACT_MODULES,
    BN_TYPES,
    INPLACE_FUNCTIONS,
    LAYER_TYPES,
    Layer,
    LayerGraph,
    discover_layers,
    fuse_bn,
    set_submodule,
    trace_failure,
)

__all__ = ["Layer", "LayerGraph", "capture", "fx_capture", "trace", "CAPTURE_METHODS", "CaptureError"]

def _fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold each BatchNorm that is the only user of a conv/linear into that conv/linear."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), BN_TYPES):
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        fused = fuse_bn(gm.get_submodule(src.target), gm.get_submodule(node.target))
        if fused is None:
            continue
        set_submodule(gm, src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()


_INPLACE_OPERATORS = {operator.iadd: operator.add, operator.imul: operator.mul, operator.isub: operator.sub}
_INPLACE_METHODS = ("relu", "sigmoid", "tanh", "add", "mul", "sub", "clamp", "div")


def _is_inplace(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` changes its first argument in place (and returns it)."""
    if node.op == "call_function":
        return node.kwargs.get("inplace") is True or node.target in INPLACE_FUNCTIONS or node.target in _INPLACE_OPERATORS
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
            if node.target in INPLACE_FUNCTIONS:
                node.target = INPLACE_FUNCTIONS[node.target]
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


class _LayerTracer(fx.Tracer):
    """fx tracer that keeps subclasses of the layer, BatchNorm and activation types as leaves.

    (fx's default only stops at modules defined inside ``torch.nn``; a library's
    ``Conv2dStaticSamePadding(nn.Conv2d)`` would otherwise dissolve into ``F.conv2d`` calls.)
    An onnx2torch op that cannot be traced through (a Reshape to a shape computed at run time:
    an ONNX file with a dynamic axis) is kept whole too: see :mod:`quantlens.graph.onnx_ops`.
    """

    _KEEP = LAYER_TYPES + BN_TYPES + tuple(ACT_MODULES)

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


def capture(model: nn.Module, sample: Any = None, method: str = "auto", share_weights: bool = False) -> LayerGraph:
    """Capture ``model`` (a copy), fold BatchNorm, and list its layers in topological order.

    ``method``: ``fx`` (symbolic trace), ``export`` (``torch.export`` on ``sample``, the first
    batch's :class:`~quantlens.data.batches.Inputs`), or ``auto``: fx, then export when fx
    cannot trace the model. Raises :class:`CaptureError` (why each path failed) when none does.

    A model is captured once per process: later calls with the same model (weights and
    structure), sample structure and method get a copy of the first capture (and, inside
    :func:`~quantlens.graph.capture_cache.use_capture_cache`, a capture saved on disk by an
    earlier process); see :mod:`quantlens.graph.capture_cache`. ``share_weights=True``: the copy
    shares the kept capture's weights (no copy of them), for a caller that never changes them in place.
    """
    if not isinstance(model, nn.Module):
        raise QuantlensError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in CAPTURE_METHODS:
        raise QuantlensError(f"unknown capture {method!r}: use {', '.join(CAPTURE_METHODS)}")
    if method == "export" and sample is None:
        raise QuantlensError("capture='export' needs a sample batch of inputs")
    sample = as_inputs(sample) if sample is not None else None
    return capture_cache().get(model, sample, method, lambda: _build(model, sample, method), (QuantlensError, CaptureError),
                               share=share_weights)


def _build(model: nn.Module, sample: Any, method: str) -> tuple[LayerGraph, Any]:
    """A fresh capture: ``(graph, its torch.export program or None)`` (what the cache saves)."""
    order = [method] if method != "auto" else (["export", "fx"] if _prefer_export(model) else ["fx", "export"])
    reasons: dict[str, str] = {}
    for path in order:
        if path == "export" and sample is None:
            continue
        try:
            if path == "fx":
                return fx_capture(model), None
            from quantlens.graph.export import export_program, program_graph

            program = export_program(model, sample)
            return program_graph(program, type(model).__name__), program
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
    layers = discover_layers(gm)
    if not layers:
        raise QuantlensError(
            "the model has no quantizable layer: quantlens analyses Conv1d, Conv2d and Linear modules"
        )
    return LayerGraph(gm, layers)
