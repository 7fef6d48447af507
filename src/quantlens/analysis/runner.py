"""Runners: evaluate the network with exactly one layer quantized.

* :class:`ConeRunner` (the default): one float pass per batch fills an activation cache;
  each layer's compiled cone then recomputes only what depends on that layer.
  With ``full=True`` every layer recomputes the whole network instead (the naive way, for
  benchmarks): same numbers, more work.
* :class:`HookRunner`: for models that torch.fx cannot trace. Forward hooks on a copy of the
  model quantize a module's input, weight and output; each evaluation is a full forward
  pass, BatchNorm is not folded and the activation after a module is not fused.

Both expose the same small interface, used by :mod:`quantlens.analysis.sweep`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import QuantlensError
from ..graph.capture import LAYER_TYPES, Layer, LayerGraph, _layer_kind
from ..graph.cone import Cone, build_cache_module, build_cone, input_node
from ..numerics import analysis_mode
from ..quant.quantizer import ActQuantizer
from .multibit import BitBatcher

__all__ = ["Runner", "ConeRunner", "HookRunner"]


@dataclass
class Evaluation:
    """Output of one quantized evaluation: the network output and the layer's own output."""

    output: Any
    layer_output: Tensor


class Runner:
    """Interface shared by the runners."""

    engine = "base"
    layers: list[Layer]
    in_q: list[ActQuantizer]
    out_q: list[ActQuantizer]

    def float_weight(self, i: int) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def float_pass(self, inputs: tuple[Tensor, ...]) -> tuple[Any, dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def layer_io(self, cache: dict[str, Any], i: int) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def run(self, cache: dict[str, Any], i: int, weight: Tensor) -> Evaluation:  # pragma: no cover
        raise NotImplementedError

    def evaluations(self, cache: dict[str, Any], i: int, weights: Sequence[Tensor]) -> Iterator[Evaluation]:
        """One evaluation per weight (bit-width), in order."""
        for w in weights:
            yield self.run(cache, i, w)


class ConeRunner(Runner):
    """Float pass once per batch, then only the cone of each layer (see module docstring)."""

    def __init__(
        self, graph: LayerGraph, device: Union[str, torch.device] = "cpu", full: bool = False, batch_bits: bool = False
    ) -> None:
        self.graph = graph
        # several bit-widths per cone pass (opt-in, see analysis/multibit.py: faster on late
        # layers, but not bitwise reproducible in general); never for the naive loop
        self.batcher = BitBatcher(enabled=batch_bits and not full)
        self.engine = "naive" if full else "cone"
        self.layers = list(graph.layers)
        self.device = torch.device(device)
        graph.gm.to(self.device)
        self.cones: list[Cone] = [build_cone(graph, l, full=full) for l in self.layers]
        for c in self.cones:
            c.gm.to(self.device)
        self.in_q = [c.in_q for c in self.cones]
        self.out_q = [c.out_q for c in self.cones]
        self._inputs = [input_node(graph, l) for l in self.layers]
        keep: list[str] = []
        for c in self.cones:
            keep += c.frontier
        for l, inp in zip(self.layers, self._inputs):
            keep += [inp, l.output_node]
        self.cache_gm, self.keep = build_cache_module(graph, keep)
        self.cache_gm.to(self.device)

    @property
    def cone_sizes(self) -> list[int]:
        return [c.size for c in self.cones]

    def float_weight(self, i: int) -> Tensor:
        return self.graph.module(self.layers[i]).weight.detach()

    def float_pass(self, inputs: tuple[Tensor, ...]) -> tuple[Any, dict[str, Any]]:
        out, values = self.cache_gm(*inputs)
        return out, dict(zip(self.keep, values))

    def layer_io(self, cache: dict[str, Any], i: int) -> tuple[Tensor, Tensor]:
        return cache[self._inputs[i]], cache[self.layers[i].output_node]

    def evaluations(self, cache: dict[str, Any], i: int, weights: Sequence[Tensor]) -> Iterator[Evaluation]:
        return self.batcher.evaluations(self, cache, i, weights)

    def run(self, cache: dict[str, Any], i: int, weight: Tensor) -> Evaluation:
        cone = self.cones[i]
        cone.qlayer.set_weight(weight)
        out, layer_out = cone(cache)
        return Evaluation(out, layer_out)


class HookRunner(Runner):
    """Forward hooks on a copy of the model: full forward per evaluation (see module docstring)."""

    engine = "hooks"

    def __init__(self, model: nn.Module, sample: tuple[Tensor, ...], device: Union[str, torch.device] = "cpu") -> None:
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        names = {m: n for n, m in self.model.named_modules() if isinstance(m, LAYER_TYPES)}
        order: list[nn.Module] = []

        def record(m: nn.Module, args: Any, out: Any) -> None:
            if m not in order:
                order.append(m)

        handles = [m.register_forward_hook(record) for m in names]
        try:
            with analysis_mode():
                self.model(*[t.to(self.device) for t in sample])
        finally:
            for h in handles:
                h.remove()
        if not order:
            raise QuantlensError(
                "the model has no quantizable layer: quantlens analyses Conv1d, Conv2d and Linear modules"
            )
        self.modules = order
        self.layers = [
            Layer(i, names[m], type(m).__name__, _layer_kind(m), names[m], None, None, int(m.weight.numel()))
            for i, m in enumerate(order)
        ]
        self.in_q = [ActQuantizer().to(self.device) for _ in order]
        self.out_q = [ActQuantizer().to(self.device) for _ in order]

    def float_weight(self, i: int) -> Tensor:
        return self.modules[i].weight.detach()

    def float_pass(self, inputs: tuple[Tensor, ...]) -> tuple[Any, dict[str, Any]]:
        cache: dict[str, Any] = {}

        def grab(name: str):
            def hook(m: nn.Module, args: Any, out: Any) -> None:
                if name not in cache:
                    cache[name] = (args[0], out)

            return hook

        handles = [m.register_forward_hook(grab(l.name)) for m, l in zip(self.modules, self.layers)]
        try:
            out = self.model(*inputs)
        finally:
            for h in handles:
                h.remove()
        cache["__inputs__"] = inputs
        return out, cache

    def layer_io(self, cache: dict[str, Any], i: int) -> tuple[Tensor, Tensor]:
        return cache[self.layers[i].name]

    def run(self, cache: dict[str, Any], i: int, weight: Tensor) -> Evaluation:
        m = self.modules[i]
        in_q, out_q = self.in_q[i], self.out_q[i]
        seen: list[Tensor] = []

        def pre(mod: nn.Module, args: tuple) -> tuple:
            return (in_q(args[0]),) + tuple(args[1:])

        def post(mod: nn.Module, args: Any, out: Tensor) -> Tensor:
            q = out_q(out)
            if not seen:
                seen.append(q)
            return q

        original = m.weight.data
        h1 = m.register_forward_pre_hook(pre)
        h2 = m.register_forward_hook(post)
        try:
            m.weight.data = weight
            out = self.model(*cache["__inputs__"])
        finally:
            m.weight.data = original
            h1.remove()
            h2.remove()
        return Evaluation(out, seen[0])
