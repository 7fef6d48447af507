"""The fix registry: graph transforms ``apply(graph, layers) -> graph`` registered by name.

A fix is built from a :class:`FixContext` (the quantization config it prepares for, the
calibration data, the device) by :func:`make_fix`, then applied with
``fix.apply(graph, ["conv2", ...])``. It returns a new :class:`LayerGraph` and never changes
the graph it was given (nor, therefore, the user's model). Fixes run in a fixed order
(``order``): equalization (10), the rotation ``hadamard`` (12) and the channel scales ``awq`` /
``smoothquant`` (14), which change what a layer reads; clipping (20); the fixes that quantize
the weights themselves (25: ``gptq``, ``four-over-six``, ``mx-scale``, ``keep-outliers``; the
layer is then marked :attr:`~quantlens.graph.layers.LayerGraph.prequantized` and no engine
rounds it again; one such fix per layer); then bias correction (30), which measures what the
final quantized weights do.

A fix whose class has ``not_applicable(spec)`` says in one line why it does not apply to a
layer's weight spec (:func:`not_applicable`); a fix with ``restore(graph, layers)`` can rebuild
its graph around saved weights (:func:`restore_fixes`).

Example:
    >>> from quantlens.fixes import fixes
    >>> fixes()[:3]
    ['awq', 'bias_correction', 'equalize']
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

import torch
from torch import fx

from quantlens.quant.spec import DEFAULT_PERCENTILE, QuantSpec
from quantlens.errors import QuantlensError
from quantlens.graph.layers import LayerGraph
from quantlens.core.layer_config import QuantConfig

__all__ = ["Fix", "FixContext", "register_fix", "fixes", "make_fix", "apply_fixes", "copy_graph", "changed_layers", "changed_nodes", "check_fix",
           "not_applicable", "prequantize", "layer_weight_spec", "QuantizingFix",
           "mark_prequantized", "restore_fixes", "FixRefused"]


class FixRefused(QuantlensError):
    """A fix that does not apply to a layer where the layer stands in the network (not for its
    format: that is ``not_applicable``), e.g. ``awq`` on q_proj alone, whose siblings k/v read
    the same tensor. The fix loop skips such a trial and names why; elsewhere it is a user error."""


@dataclass(frozen=True)
class FixContext:
    """What a fix may need: the config it prepares for, calibration batches, device."""

    config: QuantConfig
    calib: Optional[Iterable[Any]] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    percentile: float = DEFAULT_PERCENTILE


class Fix(Protocol):
    name: str
    order: int

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph: ...


_REGISTRY: dict[str, tuple[int, Callable[[FixContext], Fix]]] = {}


def register_fix(name: str, order: int) -> Callable[[type], type]:
    """Class decorator: ``cls(ctx)`` builds the fix; ``order`` sorts fixes when several apply."""

    def deco(cls: type) -> type:
        cls.name = name
        cls.order = order
        _REGISTRY[name] = (order, cls)
        return cls

    return deco


def fixes() -> list[str]:
    """Names of the registered fixes."""
    return sorted(_REGISTRY)


def check_fix(name: str) -> None:
    if name not in _REGISTRY:
        raise QuantlensError(f"unknown fix {name!r}: choose one of {', '.join(fixes())}")


def not_applicable(name: str, spec: Optional[QuantSpec]) -> Optional[str]:
    """Why the fix ``name`` does not apply to weights quantized as ``spec`` (None: it does).

    A fix class says so with a classmethod ``not_applicable(spec)``; one without applies everywhere.
    """
    check_fix(name)
    if spec is None:
        return None
    test = getattr(_REGISTRY[name][1], "not_applicable", None)
    return None if test is None else test(spec)


def make_fix(name: str, ctx: FixContext) -> Fix:
    check_fix(name)
    return _REGISTRY[name][1](ctx)


def copy_graph(graph: LayerGraph, layers: Optional[Iterable[str]] = None) -> LayerGraph:
    """A copy with the same node and layer names whose named layers' modules are private copies.

    ``layers=None`` copies every module (a deep copy). Otherwise only the modules of the named
    layers are copied, the rest (and every other weight) are shared with ``graph``: a fix that
    changes only those layers' weights leaves ``graph`` as it was without copying the network.
    """
    if layers is None:
        return dataclasses.replace(graph, gm=copy.deepcopy(graph.gm), layers=list(graph.layers))
    gm = fx.GraphModule(graph.gm, copy.deepcopy(graph.gm.graph), class_name=type(graph.gm).__name__)
    for name in dict.fromkeys(graph.layer(n).module_name for n in layers):
        gm.set_submodule(name, copy.deepcopy(graph.gm.get_submodule(name)))
    return dataclasses.replace(graph, gm=gm, layers=list(graph.layers))


def changed_layers(base: LayerGraph, fixed: LayerGraph) -> list[str]:
    """Layers of ``fixed`` whose module is not ``base``'s (see :func:`copy_graph`): the ones a fix may have changed."""
    return [l.name for l in fixed.layers if fixed.module(l) is not base.module(l)]


def changed_nodes(base: LayerGraph, fixed: LayerGraph) -> list[str]:
    """Nodes of ``fixed`` other than layer calls whose module or tensor attribute is not
    ``base``'s (a norm a fix folded a scale into): what follows them must be recomputed. For a
    tensor attribute, the nodes that read it are given."""
    from quantlens.graph.layers import fetch_attr

    layer_nodes = {l.node for l in fixed.layers}
    out: list[str] = []
    for n in fixed.gm.graph.nodes:
        if n.name in layer_nodes or n.op not in ("call_module", "get_attr"):
            continue
        try:
            mine, theirs = fetch_attr(fixed.gm, str(n.target)), fetch_attr(base.gm, str(n.target))
        except AttributeError:
            continue  # a module a fix added (an input op): recomputed with its layer's cone
        if mine is not theirs:
            out.extend([n.name] if n.op == "call_module" else [u.name for u in n.users])
    return out


def apply_fixes(graph: LayerGraph, config: QuantConfig, calib: Optional[Iterable[Any]], device: torch.device) -> LayerGraph:
    """Apply every fix that ``config`` records, in fix order, each to the layers that list it."""
    todo = config.fix_layers()
    if not todo:
        return graph
    for name in todo:
        check_fix(name)
    ctx = FixContext(config, calib, device)
    out = graph
    for name in sorted(todo, key=lambda n: _REGISTRY[n][0]):
        out = make_fix(name, ctx).apply(out, todo[name])
    return out


def weight_of(graph: LayerGraph, name: str) -> torch.Tensor:
    """The (float, BN-folded) weight parameter of layer ``name`` in ``graph``."""
    return graph.module(graph.layer(name)).weight


def layer_weight_spec(ctx: FixContext, fix: str, name: str) -> Optional[QuantSpec]:
    """The weight spec ``ctx``'s config gives layer ``name`` (None: float weights), refused in one
    line when the fix ``fix`` does not apply to it (its class's ``not_applicable``)."""
    lq = ctx.config.get(name)
    spec = None if lq is None else lq.weight_spec()
    if spec is not None:
        why = not_applicable(fix, spec)
        if why is not None:
            raise QuantlensError(f"fix {fix!r} on layer {name}: {why}")
    return spec


def prequantize(graph: LayerGraph, fix: str, weights: dict[str, torch.Tensor]) -> LayerGraph:
    """A copy of ``graph`` whose layers in ``weights`` hold those (already quantized) weights and
    are marked :attr:`~quantlens.graph.layers.LayerGraph.prequantized`, so that no engine
    quantizes them again. A layer another fix has already quantized is refused in one line."""
    again = sorted(set(weights) & graph.prequantized)
    if again:
        raise QuantlensError(f"fix {fix!r} on layer {again[0]}: its weights are already quantized by another fix; give a layer one "
                             "fix that quantizes (gptq, four-over-six, mx-scale, keep-outliers)")
    out = copy_graph(graph, list(weights))
    for name, wq in weights.items():
        w = weight_of(out, name)
        with torch.no_grad():
            w.copy_(wq.reshape(w.shape).to(w))
    return dataclasses.replace(out, prequantized=graph.prequantized | frozenset(weights))


class QuantizingFix:
    """A fix that replaces each chosen layer's weight by its own quantization of it (``quantized``),
    marking the layer prequantized (:func:`prequantize`); a module called twice is skipped."""

    def __init__(self, ctx: FixContext) -> None:
        self.ctx = ctx

    def quantized(self, w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        weights = {}
        for name in layers:
            spec = layer_weight_spec(self.ctx, self.name, name)  # type: ignore[attr-defined]
            if spec is None or graph.shared(graph.layer(name)):
                continue
            weights[name] = self.quantized(weight_of(graph, name).detach(), spec)
        return prequantize(graph, self.name, weights) if weights else graph  # type: ignore[attr-defined]

    def restore(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        """Saved weights this fix quantized (export's rebuild): marked prequantized, not recomputed."""
        return mark_prequantized(graph, self.ctx, layers)


def mark_prequantized(graph: LayerGraph, ctx: FixContext, layers: Sequence[str]) -> LayerGraph:
    """``graph`` with the ``layers`` that ``ctx``'s config quantizes (and that are not shared) marked prequantized."""
    names = [n for n in layers if ctx.config.get(n) is not None and ctx.config.layer(n).weight_spec() is not None
             and not graph.shared(graph.layer(n))]
    return dataclasses.replace(graph, prequantized=graph.prequantized | frozenset(names))


def restore_fixes(graph: LayerGraph, config: QuantConfig) -> LayerGraph:
    """A graph holding saved fixed weights (``weights.safetensors``) made whole again without
    recomputing a weight: each fix of ``config`` that has a ``restore(graph, layers)`` re-inserts
    its online input ops or marks the weights it quantized (in fix order)."""
    todo = config.fix_layers()
    ctx = FixContext(config)
    out = graph
    for name in sorted(todo, key=lambda n: _REGISTRY[n][0]):
        check_fix(name)
        fix = make_fix(name, ctx)
        if hasattr(fix, "restore"):
            out = fix.restore(out, todo[name])  # type: ignore[attr-defined]
    return out
