"""Cells of groups of layers on the cone engine: the whole-network measurement, recomputing only cones.

A group cell quantizes every layer of a group at once (a :class:`~quantlens.core.layer_config.QuantConfig`
naming them) and scores the network against the float reference, exactly as
:meth:`~quantlens.network.measure.NetworkMeasurer.__call__` does::

    noise       = mean_n ||y_n - y_G,n||^2
    sqnr_db     = 10 log10(sum_n ||y_n||^2 / sum_n ||y_n - y_G,n||^2)
    degradation = H(y) - H(y_G)        with its interval (the metric's rule)

but batch-outer: one float pass per batch fills an activation cache with what the groups' cones
read (:mod:`quantlens.engine.group_cone`), then each cell recomputes only the union of its
members' cones. The quantizers are the whole-network build's
(:func:`~quantlens.engine.build.layer_quantizers`, ranges from the measurer's calibration tap),
the reference output, its signal ``||y_n||^2`` and the baseline are computed once per batch and
shared by every cell: the cells are bitwise those of the whole-network pass (the test's oracle).

Example:
    >>> m = NetworkMeasurer(Workload(model, data, metric="token_kl"))                 # doctest: +SKIP
    >>> cells = measure_groups(m, [QuantConfig.uniform(["q", "k", "v"], w_bits=4)])   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from quantlens.core.layer_config import QuantConfig
from quantlens.core.numerics import analysis_mode
from quantlens.data.batches import extract_output, iterate
from quantlens.engine.accumulate import CellAccumulator, per_sample_sq
from quantlens.engine.build import layer_quantizers
from quantlens.engine.cone import build_cache_module
from quantlens.engine.group_cone import GroupCone, build_group_cone
from quantlens.engine.memory import trim_heap
from quantlens.errors import QuantlensError
from quantlens.metrics.task import make_metric, update_metric
from quantlens.network.measure import NetworkResult, network_result

__all__ = ["measure_groups", "cone_unsupported", "WEIGHT_CACHE_BYTES"]

#: quantized weights kept across batches up to this many bytes; beyond it they are quantized again per batch
WEIGHT_CACHE_BYTES = 1 << 30


def cone_unsupported(measurer: Any, configs: Sequence[QuantConfig]) -> Optional[str]:
    """Why the cone engine cannot measure these cells (``None``: it can): no graph (the hook
    engine), or a configuration with fixes (they change the float network)."""
    if getattr(measurer, "graph", None) is None:
        return "the model runs through forward hooks (no graph to cut cones from)"
    for c in configs:
        fixed = [n for n in c.names if c.layer(n).fixes]
        if fixed:
            return f"a configuration has fixes ({fixed[0]})"
    return None


def measure_groups(measurer: Any, configs: Sequence[QuantConfig], on_batch: Optional[Callable[[int], None]] = None) -> list[NetworkResult]:
    """One :class:`NetworkResult` per configuration, each its members quantized at once, the rest
    float (module docstring); ``measurer`` is a :class:`~quantlens.network.measure.NetworkMeasurer`.
    ``on_batch(b)`` is called after each batch."""
    why = cone_unsupported(measurer, configs)
    if why is not None:
        raise QuantlensError(f"group cells on the cone engine: {why}; use engine='network'")
    graph, device = measurer.graph, measurer.device
    for c in configs:
        c.check_layers(measurer.names)
    cones: dict[tuple[str, ...], GroupCone] = {}
    for c in configs:
        key = tuple(c.names)
        if key not in cones:
            cones[key] = build_group_cone(graph, [graph.layer(n) for n in key]).to(device)
    keep = [f for cone in cones.values() for f in cone.frontier]
    cache_gm, keep = build_cache_module(graph, keep)
    cache_gm.to(device)
    plans = _Plans(measurer, configs)
    base = make_metric(measurer.metric)
    accs = [CellAccumulator(make_metric(measurer.metric)) for _ in configs]
    own_reference = measurer.workload.reference is None
    key_out = measurer.output_key
    with analysis_mode():
        for b, (inputs, labels) in enumerate(iterate(measurer.data, "data")):
            inputs = inputs.to(device)
            labels = None if labels is None else labels.to(device)
            out, values = cache_gm(*graph.flat(inputs))
            cache = dict(zip(keep, values))
            if own_reference:  # the float pass is the reference's own network
                y_ref = extract_output(graph.output(out), key_out)
            else:
                y_ref = measurer.cached_reference.get(b, inputs, key_out)
            del out
            if not bool(torch.isfinite(y_ref).all()):
                raise QuantlensError("the reference model's output has NaN or Inf: fix the model or its inputs first")
            update_metric(base, y_ref, y_ref, labels, inputs)
            signal = per_sample_sq(y_ref)
            for k, c in enumerate(configs):
                cone = cones[tuple(c.names)]
                for name, (w, iq, oq) in plans.get(k).items():
                    cone.set(name, w, iq, oq)
                try:
                    y = extract_output(graph.output(cone(cache)), key_out)
                finally:
                    cone.clear()
                accs[k].update(y_ref, y, labels, signal=signal, inputs=inputs)
                del y
            del cache, values, y_ref
            plans.end_batch()
            trim_heap()
            if on_batch is not None:
                on_batch(b)
    return [network_result(base, acc, c) for acc, c in zip(accs, configs)]


class _Plans:
    """Each configuration's quantizers per member, ``{name: (weight, in_q, out_q)}``, made as the
    whole-network build makes them; kept across batches while they fit :data:`WEIGHT_CACHE_BYTES`."""

    def __init__(self, measurer: Any, configs: Sequence[QuantConfig]) -> None:
        self.measurer, self.configs = measurer, list(configs)
        graph = measurer.graph
        size = 0
        for c in self.configs:
            for n in c.names:
                if c.layer(n).weight_spec() is not None:
                    size += graph.module(graph.layer(n)).weight.numel() * 4
        self.keep = size <= WEIGHT_CACHE_BYTES
        self.made: dict[int, dict] = {}

    def get(self, k: int) -> dict:
        if k in self.made:
            return self.made[k]
        plan = self._make(self.configs[k])
        if self.keep:
            self.made[k] = plan
        return plan

    def end_batch(self) -> None:
        if not self.keep:
            self.made.clear()

    def _make(self, config: QuantConfig) -> dict:
        graph, m = self.measurer.graph, self.measurer
        acts = any(config.layer(n).a_bits is not None for n in config.names)
        ins, outs = m.observers(config.act_estimator) if acts else ({}, {})
        plan = {}
        for n in config.names:
            layer = graph.layer(n)
            module = graph.module(layer)
            qw, iq, oq = layer_quantizers(config.layer(n), config.act_estimator, module.weight, ins.get(n), outs.get(n), m.device,
                                          -1 if layer.op == "Linear" else 1, n in graph.prequantized)
            plan[n] = (None if qw is None else qw.weight, iq, oq)
        return plan
