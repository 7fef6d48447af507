"""Full-network quantization: every layer of a :class:`QuantConfig` quantized at once.

:func:`build_quantized` compiles a copy of the LayerGraph's GraphModule in which, for each
configured layer ``l``::

    x --ActQuantizer(in_l)--> op(x, Q_w(W_l), b_l) --activation--> ActQuantizer(out_l) --> users

The input quantizer sits on ``l``'s own input edge (other consumers of the same tensor see
what they saw before); the output quantizer follows the layer's fused activation. Weights are
quantized with the layer's :class:`~quantlens.core.layer_config.LayerQuant` (bits, granularity, range
estimator). Activation ranges are calibrated on the **float** network given as ``graph`` (no
quantizer active, after any fixes already applied to it), so that every layer's ranges are
those its tensors have in the network being quantized, not ones distorted by upstream noise.

Measuring it: :mod:`quantlens.network.measure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import torch
from torch import Tensor, fx

from quantlens.graph.layers import Layer, LayerGraph
from quantlens.engine.cone import QuantLayer
from quantlens.graph.layers import fetch_attr
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.quant.quantizer import ActQuantizer, QuantizedWeight, as_quantized, quantize_weight

__all__ = ["QuantizedNetwork", "build_quantized", "calibrate_ranges", "layer_quantizers"]


@dataclass
class QuantizedNetwork:
    """A compiled, fully quantized copy of a network.

    ``gm(*graph.flat(inputs)) -> (flat output, (tap values...))`` where ``taps`` names nodes of the float graph;
    a tap on a layer's output node gives the value after its output quantizer.
    """

    gm: fx.GraphModule
    graph: LayerGraph
    config: QuantConfig
    taps: list[str]
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)
    in_q: dict[str, ActQuantizer] = field(default_factory=dict)
    out_q: dict[str, ActQuantizer] = field(default_factory=dict)

    def ranges(self) -> dict[str, dict]:
        """Per layer: weight clip and scales, input/output activation scale and zero point."""
        out: dict[str, dict] = {}
        for name in self.config.names:
            d: dict[str, Any] = {}
            if name in self.weights:
                qw = self.weights[name]
                d["w_clip"] = qw.clip
                d["w_scale"] = [float(s) for s in qw.scale.reshape(-1).tolist()]
            for key, qs in (("in", self.in_q), ("out", self.out_q)):
                q = qs.get(name)
                if q is not None and q.enabled:
                    s, z = float(q.scale), int(q.zero_point)
                    d[f"{key}_scale"], d[f"{key}_zero_point"] = s, z
                    d[f"{key}_range"] = [(q.qmin - z) * s, (q.qmax - z) * s]
            out[name] = d
        return out


def calibrate_ranges(graph: LayerGraph, config: QuantConfig, calib: Iterable[Any], device: torch.device) -> tuple[dict, dict]:
    """Observers of each configured layer's input and output over ``calib`` on the float graph,
    by name: the engine's one calibration tap (:meth:`~quantlens.engine.runner.Runner.observe`)."""
    from quantlens.engine.runner import ConeRunner

    names = {n for n in config.names if config.layer(n).a_bits is not None}
    ids = [i for i, l in enumerate(graph.layers) if l.name in names]
    if not ids:
        return {}, {}
    spec = LayerQuant(a_bits=8).act_spec(config.act_estimator)  # the observer depends on the estimator only
    ins, outs, _ = ConeRunner(graph, device, cones=False).observe(calib, ids, spec, torch.device(device))
    return {graph.layers[i].name: ins[i] for i in ids}, {graph.layers[i].name: outs[i] for i in ids}


def build_quantized(
    graph: LayerGraph,
    config: QuantConfig,
    calib: Iterable[Any],
    device: Union[str, torch.device] = "cpu",
    taps: Iterable[str] = (),
    observers: Optional[tuple[dict, dict]] = None,
) -> QuantizedNetwork:
    """Compile ``graph`` with every layer of ``config`` quantized (see module docstring).

    ``observers``: ``(inputs, outputs)`` statistics per layer name from an earlier
    :func:`calibrate_ranges` on this same float graph, to skip the calibration pass.
    """
    device = torch.device(device)
    config.check_layers(l.name for l in graph.layers)
    graph.gm.to(device)
    if observers is None:
        obs_in, obs_out = calibrate_ranges(graph, config, calib, device)
    else:
        want = [n for n in config.names if config.layer(n).a_bits is not None]
        obs_in, obs_out = ({n: observers[0][n] for n in want}, {n: observers[1][n] for n in want})
    tap_list = list(dict.fromkeys(taps))
    by_node = {l.node: l for l in graph.layers if config.get(l.name) is not None}
    by_out = {l.output_node: l for l in by_node.values()}
    modules: dict[str, Any] = {}
    qnet = QuantizedNetwork(gm=None, graph=graph, config=config, taps=tap_list)  # type: ignore[arg-type]
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    gm = graph.gm
    for n in gm.graph.nodes:
        if n.op == "output":
            y = fx.node.map_arg(n.args[0], lambda a: env[a.name])
            g.output((y, tuple(env[t] for t in tap_list)))
            continue
        layer = by_node.get(n.name)
        if layer is None:
            new = g.node_copy(n, lambda a: env[a.name])
            if n.op in ("call_module", "get_attr"):
                modules[str(n.target)] = fetch_attr(gm, str(n.target))
        else:
            new = _quantized_call(g, n, env, layer, config, qnet, modules, obs_in, obs_out, device)
        env[n.name] = new
        lo = by_out.get(n.name)
        if lo is not None and lo.name in qnet.out_q:
            key = f"ql_out_{lo.index}"
            modules[key] = qnet.out_q[lo.name]
            env[n.name] = g.call_module(key, (new,))
    qnet.gm = fx.GraphModule(modules, g, class_name="QuantizedNetwork").to(device).eval()
    return qnet


def layer_quantizers(
    lq: LayerQuant, act_estimator: str, weight: Tensor, obs_in: Any, obs_out: Any, device: Union[str, torch.device],
    axis: int = -1, prequantized: bool = False,
) -> tuple[Optional[QuantizedWeight], Optional[ActQuantizer], Optional[ActQuantizer]]:
    """One layer's quantizers in a whole-network configuration, for every engine: its weight
    quantized as ``lq`` says (None: float; ``prequantized``: a fix already quantized it, used
    as it is, :func:`~quantlens.quant.quantizer.as_quantized`), and its input and output
    quantizers from the calibration statistics (None: float activations or no statistics)."""
    wspec = lq.weight_spec()
    qw = None if wspec is None else as_quantized(weight.detach()) if prequantized else quantize_weight(weight.detach(), wspec)
    aspec = lq.act_spec(act_estimator)
    iq = ActQuantizer.from_spec(aspec, obs_in, axis).to(device) if aspec is not None and obs_in is not None else None
    oq = ActQuantizer.from_spec(aspec, obs_out, axis).to(device) if aspec is not None and obs_out is not None else None
    return qw, iq, oq


def _quantized_call(g: fx.Graph, n: fx.Node, env: dict, layer: Layer, config: QuantConfig, qnet: QuantizedNetwork, modules: dict,
                    obs_in: dict, obs_out: dict, device: torch.device) -> fx.Node:
    module = qnet.graph.module(layer)
    ql = QuantLayer(module)
    qw, iq, oq = layer_quantizers(config.layer(layer.name), config.act_estimator, module.weight, obs_in.get(layer.name),
                                  obs_out.get(layer.name), device, -1 if layer.op == "Linear" else 1,
                                  layer.name in qnet.graph.prequantized)
    if qw is not None:
        ql.set_weight(qw.weight)
        qnet.weights[layer.name] = qw
    if oq is not None:
        qnet.out_q[layer.name] = oq
    src = env[n.args[0].name]  # type: ignore[union-attr]
    if iq is not None:
        key = f"ql_in_{layer.index}"
        modules[key] = qnet.in_q[layer.name] = iq
        src = g.call_module(key, (src,))
    key = f"ql_layer_{layer.index}"
    modules[key] = ql
    return g.call_module(key, (src,))
