"""Empirical bias correction, fix ``bias_correction`` (Nagel et al. 2019; Finkelstein et al. 2019).

Quantization shifts the mean of a layer's output (most in small-kernel layers, section 4.4 of
the paper). For each layer ``l`` of ``layers`` in topological order, with every layer of the
context's config quantized as it says (the network being built) and the layers before ``l``
already corrected, measure over the calibration data the per-channel mean shift of ``l``'s
pre-activation output against the float network, and remove it from the bias::

    b_l[c] <- b_l[c] - (E[z_q,l[c]] - E[z_l[c]])

(a layer without a bias gets one). Because upstream layers are already quantized and
corrected, the correction also absorbs the shift they pass on. The float network is the one
as fixed: a layer whose weights a fix already quantized (``gptq``, ``four-over-six``, ...) has
those weights in it too, so its own rounding is not among the shifts corrected (GPTQ
compensates it inside the layer); the shifts of its activation quantizers and of the layers
before it are.

All layers are corrected in one lockstep pass of the quantized network over the calibration
batches (:mod:`quantlens.graph.lockstep`), which gives the numbers of one pass up to each layer
at the cost of one pass; when the calibration batches' activations do not fit in memory at
once, it falls back to those per-layer passes.

Example:
    >>> from quantlens.fixes import FixContext, make_fix                          # doctest: +SKIP
    >>> g2 = make_fix("bias_correction", FixContext(cfg, calib)).apply(g, ["conv1"])
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import Tensor, fx, nn

from quantlens.engine.accumulate import channel_sums, channel_axis
from quantlens.data.batches import iterate
from quantlens.errors import QuantlensError
from quantlens.graph.layers import LayerGraph
from quantlens.engine.cone import build_cache_module
from quantlens.graph.lockstep import LockstepTooLarge, Pause, run_lockstep
from quantlens.core.numerics import analysis_mode
from quantlens.core.layer_config import QuantConfig
from quantlens.fixes.base import FixContext, copy_graph, register_fix

__all__ = ["BiasCorrection"]


@register_fix("bias_correction", order=30)
class BiasCorrection:
    """Remove the quantization-induced mean shift of each layer's output (module docstring)."""

    def __init__(self, ctx: FixContext) -> None:
        self.ctx = ctx

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        from quantlens.engine.build import build_quantized

        if self.ctx.calib is None:
            raise QuantlensError("fix 'bias_correction' needs calibration data")
        cfg = self.ctx.config
        # a module called twice is skipped: its one bias cannot correct two different shifts
        chosen = [l for l in graph.layers if l.name in set(layers) and cfg.get(l.name) is not None and not graph.shared(l)]
        if not chosen:
            return graph
        out = _with_biases(graph, chosen)
        quantized = QuantConfig(tuple((n, lq) for n, lq in cfg.layers if n in {l.name for l in graph.layers}), cfg.act_estimator)
        dev = self.ctx.device
        qnet = build_quantized(out, quantized, self.ctx.calib, dev)
        floats = self._float_sums(graph, chosen)
        try:
            self._correct_lockstep(graph, out, qnet.gm, chosen, floats)
        except LockstepTooLarge:  # too many calibration batches to hold at once: one pass per layer
            return self._apply_per_layer(graph, chosen, quantized, floats)
        return out

    def _correct(self, out: LayerGraph, l: Any, zs: Iterable[Tensor], floats: list[Tensor]) -> None:
        """``b_l -= E[z_q - z]`` per channel: ``zs`` the tap's value on each calibration batch."""
        axis = channel_axis(l.op)
        total: Optional[Tensor] = None
        count = 0
        for z, fsum in zip(zs, floats):
            s = _sums(z, axis) - fsum
            total = s if total is None else total + s
            count += z.numel() // z.shape[axis % z.dim()]
        if total is None or count == 0:
            return
        m = out.module(l)
        with torch.no_grad():
            m.bias.sub_((total / count).float().to(m.bias))

    def _correct_lockstep(self, graph: LayerGraph, out: LayerGraph, qgm: fx.GraphModule, chosen: list, floats: dict) -> None:
        """Every chosen layer corrected in one lockstep pass of the quantized network
        (:mod:`~quantlens.graph.lockstep`): at each layer's tap, its shift over every batch, its
        bias corrected, the layer (and its output quantizer) re-run before anything downstream."""
        by_target = {str(n.target): n.name for n in qgm.graph.nodes if n.op == "call_module"}
        pauses = []
        for l in chosen:
            layer_node = by_target[f"ql_layer_{l.index}"]
            tap = by_target[_tap_target(qgm, l)]
            pauses.append(Pause(tap, lambda zs, l=l: self._correct(out, l, zs, floats[l.name]),
                                (layer_node,) if tap == layer_node else (layer_node, tap)))
        batches = [graph.flat(inputs.to(self.ctx.device)) for inputs, _ in iterate(self.ctx.calib, "calibration data")]
        with analysis_mode():
            run_lockstep(qgm, batches, pauses)

    def _apply_per_layer(self, graph: LayerGraph, chosen: list, quantized: QuantConfig, floats: dict) -> LayerGraph:
        """The same corrections with one pass of the quantized network up to each layer."""
        from quantlens.engine.build import build_quantized

        out = _with_biases(graph, chosen)
        qnet = build_quantized(out, quantized, self.ctx.calib, self.ctx.device)
        for l in chosen:
            self._correct(out, l, self._tap_values(graph, qnet.gm.get_submodule(_tap_target(qnet.gm, l)), qnet.gm), floats[l.name])
        return out

    def _float_sums(self, graph: LayerGraph, chosen: list) -> dict[str, list[Tensor]]:
        """Per layer, per calibration batch: the float network's per-channel sums of the layer's
        pre-activation output (float64). The float network does not change while biases are
        corrected, so one pass serves every layer."""
        gm, keep = build_cache_module(graph, [l.node for l in chosen])
        gm.to(self.ctx.device)
        out: dict[str, list[Tensor]] = {l.name: [] for l in chosen}
        with analysis_mode():
            for inputs, _ in iterate(self.ctx.calib, "calibration data"):
                _, values = gm(*graph.flat(inputs.to(self.ctx.device)))
                vals = dict(zip(keep, values))
                for l in chosen:
                    out[l.name].append(_sums(vals[l.node], channel_axis(l.op)))
                del values, vals
        return out

    def _tap_values(self, graph: LayerGraph, layer_module: nn.Module, qgm: nn.Module) -> Iterator[Tensor]:
        """The tap module's output on each calibration batch. The quantized network runs only up
        to it (a hook on the module stops the pass there): what follows cannot change it."""

        def stop(_m: nn.Module, _a: object, z: Tensor) -> None:
            raise _Reached(z)

        handle = layer_module.register_forward_hook(stop)
        try:
            with analysis_mode():
                for inputs, _ in iterate(self.ctx.calib, "calibration data"):
                    try:
                        qgm(*graph.flat(inputs.to(self.ctx.device)))
                        raise QuantlensError("bias correction: a corrected layer did not run on a calibration batch")
                    except _Reached as r:
                        z = r.value
                    yield z
        finally:
            handle.remove()


def _tap_target(qgm: nn.Module, layer: Any) -> str:
    """The module of the quantized network whose output is the value of ``layer``'s node there:
    its output quantizer when the layer has no activation (the node is its output), else the layer."""
    if layer.output_node == layer.node and hasattr(qgm, f"ql_out_{layer.index}"):
        return f"ql_out_{layer.index}"
    return f"ql_layer_{layer.index}"


def _with_biases(graph: LayerGraph, chosen: list) -> LayerGraph:
    """A copy whose chosen layers' modules are private, each with a bias (zeros if it had none)."""
    out = copy_graph(graph, [l.name for l in chosen])
    for l in chosen:
        m = out.module(l)
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], device=m.weight.device), requires_grad=False)
    return out


class _Reached(Exception):
    """Carries a layer's output out of a forward pass that need not go further."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.value = value


def _sums(t: Tensor, axis: int) -> Tensor:
    """Per-channel sums of ``t`` along ``axis``, in float64 (as the shift's difference is taken)."""
    return channel_sums(t.double(), axis)[0]
