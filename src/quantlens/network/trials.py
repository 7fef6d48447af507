"""Single-layer cells of fixed graphs, measured against one cached float pass.

A *trial* is a layer ``l`` of a graph that a fix has changed (``fixed``, made by
:func:`~quantlens.fixes.base.copy_graph`, so that every layer it did not touch shares its module
with the float graph). Its cell is the sweep's: ``l``'s weight fake-quantized, its input and
output quantized with ranges calibrated on ``fixed``'s float network, every other layer float,
and the network output ``y_l`` compared with the reference output ``y``::

    noise       = mean_n ||y_n - y_l,n||^2
    degradation = H(y) - H(y_l)            (sign flipped for lower-is-better metrics)

Only what depends on ``l`` or on a layer the fix changed is recomputed (the union of their
cones, compiled once per trial); everything else is read from the float pass of the unfixed
graph, run once per batch and shared by every trial. The numbers are those of
``analyze(fixed.gm, data, layers=[l])`` (same quantizers, same calibration, same reference).

Example:
    >>> ref = lambda k, inputs: inputs.call(float_model)
    >>> cells = TrialRunner(graph, ref, weight_spec, act_spec).run(
    ...     [("conv2", fixed_graph)], data, calib, "top1")            # doctest: +SKIP
    >>> cells[0].degradation                                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

from quantlens.stats.measurement import Measured
from quantlens.quant.spec import QuantSpec
from quantlens.stats.degradation import degradation
from quantlens.graph.layers import LayerGraph
from quantlens.engine.cone import Cone, build_cache_module, build_cone
from quantlens.engine.memory import trim_heap
from quantlens.metrics.task import Metric, make_metric, update_metric
from quantlens.core.numerics import analysis_mode
from quantlens.quant.quantizer import make_observer, quantize_weight
from quantlens.stats.intervals import metric_interval
from quantlens.engine.accumulate import CellAccumulator, per_sample_sq
from quantlens.data.batches import Inputs, extract_output, iterate

__all__ = ["TrialCell", "TrialRunner"]


@dataclass(frozen=True)
class TrialCell(Measured):
    """One trial's single-layer cell."""

    layer: str
    degradation: float
    noise: float
    sqnr_db: float
    metric: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    samples: int = 0


class TrialRunner:
    """Measure many ``(layer, fixed graph)`` trials in one pass over the data (module docstring).

    ``reference(k, inputs)`` gives the reference output ``y`` of batch ``k`` (its
    :class:`~quantlens.data.batches.Inputs`; already the tensor the metric reads).
    """

    def __init__(
        self,
        graph: LayerGraph,
        reference: Callable[[int, Inputs], Any],
        weight_spec: QuantSpec,
        act_spec: Optional[QuantSpec],
        device: Union[str, torch.device] = "cpu",
        output_key: Union[str, int, None] = None,
    ) -> None:
        self.graph, self.reference = graph, reference
        self.weight_spec, self.act_spec = weight_spec, act_spec
        self.device = torch.device(device)
        self.output_key = output_key

    def _cone(self, layer: str, fixed: LayerGraph) -> Cone:
        from quantlens.fixes.base import changed_layers, changed_nodes

        also = [fixed.layer(n) for n in changed_layers(self.graph, fixed) if n != layer]
        cone = build_cone(fixed, fixed.layer(layer), also=also, tap_input=True, also_nodes=changed_nodes(self.graph, fixed))
        return cone.to(self.device)

    def run(
        self,
        trials: Sequence[tuple[str, LayerGraph]],
        data: Iterable[Any],
        calib: Iterable[Any],
        metric: Union[str, Callable[..., Any], Metric],
        on_batch: Optional[Callable[[], None]] = None,
    ) -> list[TrialCell]:
        """The cell of each trial; ``on_batch`` is called after each batch of ``calib`` and ``data``."""
        cones = [self._cone(layer, fixed) for layer, fixed in trials]
        cache_gm, keep = build_cache_module(self.graph, [n for c in cones for n in c.frontier])
        cache_gm.to(self.device)

        def float_pass(inputs: Inputs) -> dict:
            _, values = cache_gm(*self.graph.flat(inputs))
            return dict(zip(keep, values))

        if self.act_spec is not None:
            axes = [-1 if self.graph.layer(layer).op == "Linear" else 1 for layer, _ in trials]  # the consumer's reduction axis
            self._calibrate(cones, float_pass, calib, on_batch, axes)
        for c, (layer, fixed) in zip(cones, trials):
            w = c.qlayer.layer.weight.detach()  # a weight a fix already quantized is used as it is
            c.qlayer.set_weight(w if layer in fixed.prequantized else quantize_weight(w, self.weight_spec).weight)
        base = make_metric(metric)
        accs = [CellAccumulator(make_metric(metric)) for _ in cones]
        with analysis_mode():
            for k, (inputs, labels) in enumerate(iterate(data, "data")):
                inputs = inputs.to(self.device)
                labels = None if labels is None else labels.to(self.device)
                cache = float_pass(inputs)
                y_ref = self.reference(k, inputs)
                update_metric(base, y_ref, y_ref, labels, inputs)
                signal = per_sample_sq(y_ref)
                for c, acc in zip(cones, accs):
                    out, _, _ = c(cache)
                    acc.update(y_ref, extract_output(self.graph.output(out), self.output_key), labels, signal, inputs=inputs)
                    del out
                del cache
                trim_heap()
                if on_batch is not None:
                    on_batch()
        b = base.compute()
        hib = bool(base.higher_is_better)
        cells = []
        for (layer, _), acc in zip(trials, accs):
            m = acc.metric.compute()
            iv = metric_interval(acc.metric, hib)
            cells.append(TrialCell(layer, degradation(b, m, hib), acc.noise_mean, acc.sqnr_db, m,
                                   iv.low if iv else float("nan"), iv.high if iv else float("nan"), acc.n))
        return cells

    def _calibrate(self, cones: list[Cone], float_pass: Callable, calib: Iterable[Any], on_batch: Optional[Callable[[], None]],
                   axes: list[int]) -> None:
        """Each trial layer's input and output ranges on its fixed graph's float network."""
        spec = self.act_spec
        ins = [make_observer(spec) for _ in cones]
        outs = [make_observer(spec) for _ in cones]
        with analysis_mode():
            for inputs, _ in iterate(calib, "calibration data"):
                cache = float_pass(inputs.to(self.device))
                for c, oi, oo in zip(cones, ins, outs):
                    _, o, x = c(cache)  # quantizers still off, float weight: the fixed float network
                    oi.update(x)
                    oo.update(o)
                    del o, x
                del cache
                trim_heap()
                if on_batch is not None:
                    on_batch()
        for c, oi, oo, axis in zip(cones, ins, outs, axes):
            assert spec is not None
            c.in_q.set(spec, oi, axis)
            c.out_q.set(spec, oo, axis)
