"""Runners: evaluate the network with exactly one layer quantized.

* :class:`ConeRunner` (the default): one float pass per batch fills an activation cache;
  each layer's compiled cone then recomputes only what depends on that layer.
  With ``full=True`` every layer recomputes the whole network instead (the naive way, for
  benchmarks): same numbers, more work. With ``low_memory=True`` (or on CUDA when the float
  pass runs out of memory) the cache keeps only the values that enter each repeated block
  (:func:`block_starts`), and each cone recomputes in float what it reads inside its block:
  same numbers, a fraction of the memory.
* :class:`HookRunner`: for models that torch.fx cannot trace. Forward hooks on a prepared copy
  of the model quantize a module's input, weight and output; each evaluation is a full forward
  pass. A module called several times (a loop whose length depends on the data) is one layer,
  quantized in every call and calibrated on every call. BatchNorm folding and activation fusion are recovered by following tensors through one
  forward pass (:mod:`quantlens.graph.eager`), so the quantization is the traced path's.

Both implement one engine protocol (:class:`Runner`), which every experiment goes through:

* ``float_pass(inputs) -> (output, cache)``: the float network once per batch, caching what
  the quantized runs read (the cones' frontiers; for hooks, each layer's input and output);
* ``run(cache, i, weight)``: the network with layer ``i`` quantized (the sweep; the fix
  trials use the same cones, see :mod:`quantlens.network.trials`); with many layers quantized
  at once: :meth:`HookRunner.run_quantized`, and for a captured graph the compiled network of
  :func:`quantlens.engine.build.build_quantized`;
* ``observe(data, layers, spec, device)``: the calibration tap, the one streaming pass that
  gives every layer's input and output statistics (the sweep, both whole-network measurers
  and bias correction use it; ``ConeRunner(graph, cones=False)`` is the tap alone).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from quantlens.quant.spec import QuantSpec
from quantlens.errors import QuantlensError
from quantlens.graph.layers import Layer, LayerGraph, layer_kind, layer_op, transposed_linear
from quantlens.engine.cone import Cone, build_cache_module, build_cone, build_io_module, input_node
from quantlens.graph.eager import ActivationWatch, EagerLayer, capture_eager
from quantlens.engine.memory import trim_heap
from quantlens.core.numerics import analysis_mode
from quantlens.quant.quantizer import ActQuantizer, make_observer
from quantlens.data.batches import Inputs, as_inputs, iterate
from quantlens.engine.evaluation import Evaluation
from quantlens.engine.multibit import BitBatcher

__all__ = ["Runner", "ConeRunner", "HookRunner", "block_starts"]


def block_starts(graph: LayerGraph) -> list[int]:
    """Per layer, the topological position from which the low-memory mode recomputes: the first
    layer call of its repeated block (``layers.7.*``, see :mod:`quantlens.core.roles`), else its own."""
    from quantlens.core.roles import split_name

    pos = {n.name: i for i, n in enumerate(graph.gm.graph.nodes)}
    block = {}
    for l in graph.layers:
        s = split_name(l.name)
        block[l.index] = None if s is None else (s[0], s[1])
    per_container: dict[str, set[int]] = {}
    for b in block.values():
        if b is not None:
            per_container.setdefault(b[0], set()).add(b[1])
    first: dict[tuple[str, int], int] = {}
    for l in graph.layers:
        b = block[l.index]
        if b is not None and len(per_container[b[0]]) >= 2:
            first[b] = min(first.get(b, pos[l.node]), pos[l.node])
    return [first.get(block[l.index], pos[l.node]) if block[l.index] is not None else pos[l.node] for l in graph.layers]


class Runner:
    """Interface shared by the runners."""

    engine = "base"
    layers: list[Layer]
    in_q: list[ActQuantizer]
    out_q: list[ActQuantizer]

    def float_weight(self, i: int) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def float_pass(self, inputs: Inputs) -> tuple[Any, dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def layer_io(self, cache: dict[str, Any], i: int) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def calibration_io(self, cache: dict[str, Any], i: int) -> list[tuple[Tensor, Tensor]]:
        """Every ``(input, output)`` pair the layer's quantizers will see (one per call of its module)."""
        return [self.layer_io(cache, i)]

    def observe(self, data: Iterable[Any], layer_ids: Sequence[int], spec: QuantSpec, device: torch.device) -> tuple[dict, dict, int]:
        """Observers of each layer's input and (post-activation) output over ``data`` on the float
        network, streamed: one batch of activations alive at a time. Returns ``(ins, outs, samples)``."""
        ins = {i: make_observer(spec) for i in layer_ids}
        outs = {i: make_observer(spec) for i in layer_ids}
        n = 0
        with analysis_mode():
            for inputs, _ in iterate(data, "calibration data"):
                _, cache = self.float_pass(inputs.to(device))
                for i in layer_ids:
                    for x, o in self.calibration_io(cache, i):
                        ins[i].update(x)
                        outs[i].update(o)
                n += inputs.batch_size
                del cache
                trim_heap()
        return ins, outs, n

    def run(self, cache: dict[str, Any], i: int, weight: Tensor) -> Evaluation:  # pragma: no cover
        raise NotImplementedError

    def evaluations(self, cache: dict[str, Any], i: int, weights: Sequence[Tensor]) -> Iterator[Evaluation]:
        """One evaluation per weight (bit-width), in order."""
        for w in weights:
            yield self.run(cache, i, w)


class ConeRunner(Runner):
    """Float pass once per batch, then only the cone of each layer (see module docstring)."""

    def __init__(
        self, graph: LayerGraph, device: Union[str, torch.device] = "cpu", full: bool = False, batch_bits: bool = False,
        low_memory: bool = False,
        cones: bool = True,
    ) -> None:
        """``cones=False``: only the float pass and the calibration tap (:meth:`observe`), for
        the whole-network measurer, which quantizes every layer at once and needs no cone."""
        self.graph = graph
        self.low_memory = False
        self.io: list[tuple[Any, list[str]]] = []
        # several bit-widths per cone pass (opt-in, see analysis/multibit.py: faster on late
        # layers, but not bitwise reproducible in general); never for the naive loop
        self.batcher = BitBatcher(enabled=batch_bits and not full)
        self.engine = "naive" if full else "cone"
        self.layers = list(graph.layers)
        self.device = torch.device(device)
        graph.gm.to(self.device)
        self.cones: list[Cone] = [build_cone(graph, l, full=full) for l in self.layers] if cones else []
        for c in self.cones:
            c.to(self.device)
        self.in_q = [c.in_q for c in self.cones] if cones else [ActQuantizer() for _ in self.layers]
        self.out_q = [c.out_q for c in self.cones] if cones else [ActQuantizer() for _ in self.layers]
        self._inputs = [input_node(graph, l) for l in self.layers]
        self.selected: list[int] = list(range(len(self.layers)))
        self._selected = frozenset(self.selected)
        self._build_cache()
        if low_memory and not full:
            self.use_low_memory()

    def _build_cache(self) -> None:
        """The float pass keeps what the selected layers' cones and statistics read, nothing else."""
        keep: list[str] = []
        for i in self.selected:
            if self.cones:
                keep += self.cones[i].frontier
            if self.low_memory:
                keep += self.io[i][1]
            else:
                keep += [self._inputs[i], self.layers[i].output_node]
        self.cache_gm, self.keep = build_cache_module(self.graph, keep)
        self.cache_gm.to(self.device)

    def select(self, layer_ids: Sequence[int]) -> None:
        """Keep in the float pass's cache only what layers ``layer_ids`` read (a sweep of a few
        layers of a large model: the values every other layer would read are not kept alive);
        :meth:`run` and :meth:`layer_io` then serve only those layers."""
        self.selected = sorted(set(int(i) for i in layer_ids))
        self._selected = frozenset(self.selected)
        self._build_cache()

    def use_low_memory(self) -> None:
        """Keep only block inputs in the cache; cones and layer statistics recompute inside the block."""
        starts = block_starts(self.graph)
        self.cones = [build_cone(self.graph, l, start=s, quantizers=(c.in_q, c.out_q)) for l, s, c in zip(self.layers, starts, self.cones)]
        self.io = [build_io_module(self.graph, l, s) for l, s in zip(self.layers, starts)]
        for c in self.cones:
            c.to(self.device)
        for gm, _ in self.io:
            gm.to(self.device)
        self.low_memory = True
        self._build_cache()
        self.engine = "cone-lowmem"

    @property
    def cone_sizes(self) -> list[int]:
        return [c.size for c in self.cones]

    def float_weight(self, i: int) -> Tensor:
        return self.graph.module(self.layers[i]).weight.detach()

    def float_pass(self, inputs: Inputs) -> tuple[Any, dict[str, Any]]:
        try:
            out, values = self.cache_gm(*self.graph.flat(inputs))
        except torch.cuda.OutOfMemoryError:
            if self.low_memory or self.device.type != "cuda" or self.engine != "cone":
                raise
            torch.cuda.empty_cache()
            import warnings

            from quantlens.errors import QuantlensWarning

            warnings.warn(
                "the float pass's activation cache does not fit in GPU memory: keeping only the inputs of each "
                "repeated block and recomputing inside the block (same cells, more compute)",
                QuantlensWarning,
                stacklevel=2,
            )
            self.use_low_memory()
            out, values = self.cache_gm(*self.graph.flat(inputs))
        return self.graph.output(out), dict(zip(self.keep, values))

    def per_sample_bytes(self, inputs: Inputs) -> int:
        """Bytes one sample keeps alive at the peak of a batch: the float pass's cache (what the
        selected layers read) and three network outputs (the reference, a cone's output, one
        temporary of the metric), measured on the first sample of ``inputs``; 0 when the network
        does not run on one sample alone."""
        b = inputs.batch_size
        one = lambda t: t[:1].clone() if isinstance(t, Tensor) and t.dim() and t.shape[0] == b else t  # noqa: E731
        from torch.utils import _pytree as pytree

        first = Inputs(tuple(pytree.tree_map(one, list(inputs.args))), pytree.tree_map(one, dict(inputs.kwargs)))
        try:
            with analysis_mode():
                out, cache = self.float_pass(first.to(self.device))
        except Exception:  # noqa: BLE001 - a model that needs its whole batch: no estimate, no check
            return 0
        seen: dict[int, int] = {}
        for t in pytree.tree_leaves((out, list(cache.values()))):
            if isinstance(t, Tensor):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]
        largest = max((t.untyped_storage().nbytes() for t in outs), default=0)
        del out, cache
        return sum(seen.values()) + 3 * largest

    def _check_selected(self, i: int) -> None:
        if i not in self._selected:
            raise QuantlensError(f"layer {self.layers[i].name} is not among the layers this runner keeps values for "
                                 "(ConeRunner.select): select it before the float pass")

    def layer_io(self, cache: dict[str, Any], i: int) -> tuple[Tensor, Tensor]:
        self._check_selected(i)
        if self.low_memory:
            gm, frontier = self.io[i]
            x, o = gm(*[cache[f] for f in frontier])
            return x, o
        return cache[self._inputs[i]], cache[self.layers[i].output_node]

    def evaluations(self, cache: dict[str, Any], i: int, weights: Sequence[Tensor]) -> Iterator[Evaluation]:
        return self.batcher.evaluations(self, cache, i, weights)

    def run(self, cache: dict[str, Any], i: int, weight: Tensor) -> Evaluation:
        self._check_selected(i)
        cone = self.cones[i]
        cone.qlayer.set_weight(weight)
        try:
            out, layer_out = cone(cache)
        finally:
            cone.qlayer.reset_weight()  # the quantized weight is not kept alive by the cone
        return Evaluation(self.graph.output(out), layer_out)


class HookRunner(Runner):
    """Forward hooks on a prepared copy of the model: full forward per evaluation (see module docstring)."""

    engine = "hooks"

    def __init__(self, model: nn.Module, sample: Inputs, device: Union[str, torch.device] = "cpu") -> None:
        self.device = torch.device(device)
        work = copy.deepcopy(model).eval().to(self.device)
        for p in work.parameters():
            p.requires_grad_(False)
        eg = capture_eager(work, as_inputs(sample).to(self.device))
        self.model = eg.model
        self.notes = eg.notes
        self.eager = eg.layers
        self.modules = [l.module for l in eg.layers]
        self.layers = [
            Layer(i, l.name, layer_op(l.module), layer_kind(l.module), l.name, None, l.act, int(l.module.weight.numel()))
            for i, l in enumerate(eg.layers)
        ]
        self.in_q = [ActQuantizer().to(self.device) for _ in self.layers]
        self.out_q = [ActQuantizer().to(self.device) for _ in self.layers]

    def float_weight(self, i: int) -> Tensor:
        """The weight as ``[out, in, ...]`` (a transposed Linear's ``W^T``)."""
        m = self.modules[i]
        return m.weight.detach().t() if transposed_linear(m) else m.weight.detach()

    def float_pass(self, inputs: Inputs) -> tuple[Any, dict[str, Any]]:
        cache: dict[str, Any] = {}
        watch = ActivationWatch()

        def grab(l: EagerLayer):
            def hook(m: nn.Module, args: Any, out: Any) -> None:
                # copies: the model may change these tensors in place later in the pass (``y += x``)
                if l.name in cache or l.name in armed:
                    if l.act_func is None:  # a module called again: its quantizers see this call too
                        cache.setdefault(f"{l.name}#more", []).append((args[0].clone(), out.clone()))
                    return
                if l.act_func is None:
                    cache[l.name] = (args[0].clone(), out.clone())
                    return
                x = args[0].clone()
                armed.add(l.name)

                def after_activation(r: Tensor) -> Tensor:
                    cache[l.name] = (x, r.clone())
                    return r

                watch.arm(out, l.act_func, after_activation)

            return hook

        armed: set[str] = set()
        handles = [l.module.register_forward_hook(grab(l)) for l in self.eager]
        try:
            with watch:
                out = inputs.call(self.model)
        finally:
            for h in handles:
                h.remove()
        missing = [l.name for l in self.layers if l.name not in cache]
        if missing:
            raise QuantlensError(
                f"layer {missing[0]} (or its activation) did not run on this batch as it did on the first one: "
                "quantlens needs every layer to run on every batch"
            )
        cache["__inputs__"] = inputs
        return out, cache

    def layer_io(self, cache: dict[str, Any], i: int) -> tuple[Tensor, Tensor]:
        return cache[self.layers[i].name]

    def calibration_io(self, cache: dict[str, Any], i: int) -> list[tuple[Tensor, Tensor]]:
        name = self.layers[i].name
        return [cache[name]] + cache.get(f"{name}#more", [])

    def run(self, cache: dict[str, Any], i: int, weight: Tensor) -> Evaluation:
        out, taps = self.run_quantized(cache["__inputs__"], {i: (weight, self.in_q[i], self.out_q[i])})
        if i not in taps:
            raise QuantlensError(f"the activation after layer {self.layers[i].name} did not run in the quantized pass (control "
                                 "flow that depends on the values?): quantlens cannot quantize that layer's output")
        return Evaluation(out, taps[i])

    def run_quantized(
        self, inputs: Inputs, plan: dict[int, tuple[Optional[Tensor], Optional[ActQuantizer], Optional[ActQuantizer]]]
    ) -> tuple[Any, dict[int, Tensor]]:
        """One forward pass with each layer ``i`` of ``plan`` quantized: its weight replaced by
        ``plan[i][0]`` (None: kept), its input by ``plan[i][1]`` and its output, after its fused
        activation, by ``plan[i][2]`` (None: float). Returns the output and a copy of each
        layer's first quantized output."""
        watch = ActivationWatch()
        taps: dict[int, Tensor] = {}
        armed: set[int] = set()
        handles: list[Any] = []
        originals: list[tuple[nn.Module, Tensor]] = []

        def hooks(i: int, iq: Optional[ActQuantizer], oq: Optional[ActQuantizer]) -> tuple[Any, Any]:
            act = self.eager[i].act_func

            def record(r: Tensor) -> Tensor:
                q = oq(r) if oq is not None else r
                if i not in taps:
                    taps[i] = q.clone()  # the model may change q in place later
                return q

            def pre(mod: nn.Module, args: tuple) -> tuple:
                return (iq(args[0]),) + tuple(args[1:]) if iq is not None else args

            def post(mod: nn.Module, args: Any, out: Tensor) -> Tensor:
                if act is None:
                    return record(out)
                if i not in taps and i not in armed:  # the first call is the layer: quantize after its activation
                    armed.add(i)
                    watch.arm(out, act, record)
                return out

            return pre, post

        try:
            for i, (weight, iq, oq) in plan.items():
                m = self.modules[i]
                pre, post = hooks(i, iq, oq)
                if weight is not None:  # this module's parameter only: a tied weight (an embedding) stays float
                    originals.append((m, m._parameters["weight"]))
                    stored = weight.t().contiguous() if transposed_linear(m) else weight
                    m._parameters["weight"] = nn.Parameter(stored, requires_grad=False)
                handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
            with watch:
                out = inputs.call(self.model)
        finally:
            for h in handles:
                h.remove()
            for m, w in reversed(originals):
                m._parameters["weight"] = w
        return out, taps
