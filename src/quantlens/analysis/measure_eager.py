"""Full-network quantization of a model torch.fx cannot trace, through forward hooks.

The same network as :func:`~quantlens.analysis.network.build_quantized` builds from a graph,
on the prepared copy of :class:`~quantlens.analysis.runner.HookRunner` (BatchNorm folded,
activations fused, found eagerly by :mod:`quantlens.graph.eager`): for every configured layer
at once, a pre-hook quantizes the input the layer receives, its weight is swapped for
``Q_w(W)``, and its output is quantized after its fused activation. Activation ranges are
calibrated on the float copy, as in the traced path; it is scored by the same loop
(:func:`~quantlens.analysis.measure.score_network`). Fixes are written on fx graphs, so a
configuration with fixes is refused here.

:func:`make_measurer` picks the traced :class:`~quantlens.analysis.measure.NetworkMeasurer`
when torch.fx can trace the model, and this one (with a one-line warning) when it cannot.

Example:
    >>> m = make_measurer(untraceable_model, data, metric="kl")     # doctest: +SKIP
    >>> m(QuantConfig.uniform(m.names, w_bits=4)).degradation        # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import QuantlensError, QuantlensWarning
from ..guard import preserve_model
from ..metrics import Metric
from ..qconfig import LayerQuant, QuantConfig
from ..quant.quantizer import (
    ActQuantizer,
    QuantizedWeight,
    quantize_weight,
)
from .accumulate import channel_axis
from .data import Inputs, iterate
from .measure import (
    MeasurerBase,
    NetworkMeasurer,
    NetworkResult,
    UntraceableError,
    reference_fn,
    score_network,
)
from .runner import HookRunner

__all__ = ["EagerNetworkMeasurer", "make_measurer"]


class EagerNetworkMeasurer(MeasurerBase):
    """Quantize and measure an untraceable model under many configurations (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        data: Iterable[Any],
        *,
        calib: Optional[Iterable[Any]] = None,
        metric: Union[str, Callable[..., Any], Metric] = "top1",
        reference: Optional[nn.Module] = None,
        device: Union[str, torch.device] = "cpu",
        output_key: Union[str, int, None] = None,
    ) -> None:
        self.device = torch.device(device)
        first = next(iter(iterate(data, "data")))
        with preserve_model(model):
            self.runner = HookRunner(model, first[0].to(self.device), self.device)
        for note in self.runner.notes:
            warnings.warn(note, QuantlensWarning, stacklevel=3)
        ref = reference_fn(lambda inputs: inputs.call(self.runner.model), reference, self.device)
        self._keep(data, calib, metric, output_key, ref)
        self._index = {l.name: i for i, l in enumerate(self.runner.layers)}

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.runner.layers]

    def _calibrated(self, estimator: str) -> tuple[dict, dict]:
        """Observers of every layer's input and (post-activation) output over the calibration data."""
        if estimator not in self._observers:
            spec = LayerQuant(a_bits=8).act_spec(estimator)
            assert spec is not None
            ins, outs, _ = self.runner.observe(self.calib, range(len(self.names)), spec, self.device)
            self._observers[estimator] = ({n: ins[i] for i, n in enumerate(self.names)}, {n: outs[i] for i, n in enumerate(self.names)})
        return self._observers[estimator]

    def _quantizers(self, config: QuantConfig) -> tuple[dict[str, QuantizedWeight], dict[str, ActQuantizer], dict[str, ActQuantizer]]:
        config.check_layers(self.names)
        fixed = [n for n in config.names if config.layer(n).fixes]
        if fixed:
            raise QuantlensError(
                f"fixes ({', '.join(config.layer(fixed[0]).fixes)} on {fixed[0]}) need a model torch.fx can trace; "
                "this one runs through forward hooks"
            )
        ins, outs = self._calibrated(config.act_estimator)
        weights: dict[str, QuantizedWeight] = {}
        in_q: dict[str, ActQuantizer] = {}
        out_q: dict[str, ActQuantizer] = {}
        for n in config.names:
            lq = config.layer(n)
            wspec = lq.weight_spec()
            if wspec is not None:
                weights[n] = quantize_weight(self.runner.float_weight(self._index[n]), wspec)
            aspec = lq.act_spec(config.act_estimator)
            if aspec is not None:
                in_q[n] = ActQuantizer.from_spec(aspec, ins[n]).to(self.device)
                out_q[n] = ActQuantizer.from_spec(aspec, outs[n]).to(self.device)
        return weights, in_q, out_q

    def _run(self, inputs: Inputs, config: QuantConfig, weights: dict, in_q: dict, out_q: dict) -> tuple[Any, dict[str, Tensor]]:
        """One forward pass with every configured layer quantized; each layer's first quantized output."""
        plan = {self._index[n]: (weights[n].weight if n in weights else None, in_q.get(n), out_q.get(n)) for n in config.names}
        out, taps = self.runner.run_quantized(inputs, plan)
        return out, {self.runner.layers[i].name: t for i, t in taps.items()}

    def __call__(self, config: QuantConfig, mean_shift: bool = False) -> NetworkResult:
        weights, in_q, out_q = self._quantizers(config)

        def quantized(inputs: Inputs) -> tuple[Any, dict[str, Tensor]]:
            out, taps = self._run(inputs, config, weights, in_q, out_q)
            return out, (taps if mean_shift else {})

        def floats(inputs: Inputs) -> dict[str, Tensor]:
            _, cache = self.runner.float_pass(inputs)
            return {n: cache[n][1] for n in config.names}

        axes = {n: channel_axis(self.runner.layers[self._index[n]].op) for n in config.names}
        return score_network(quantized, floats if mean_shift else None, axes, self.data, self.cached_reference,
                             self.metric, self.output_key, self.device, config)


def make_measurer(model: nn.Module, data: Iterable[Any], **kwargs: Any) -> Union[NetworkMeasurer, EagerNetworkMeasurer]:
    """The traced measurer when torch.fx can trace ``model``, else the eager one (with a warning)."""
    try:
        return NetworkMeasurer(model, data, **kwargs)
    except UntraceableError as e:
        warnings.warn(
            f"{e.reason}; quantizing the whole network through forward hooks "
            "instead: the same quantization (BatchNorm folded, activations fused), no fixes",
            QuantlensWarning,
            stacklevel=2,
        )
        return EagerNetworkMeasurer(model, data, **kwargs)
