"""Measure a fully quantized network (:mod:`quantlens.analysis.network` builds it).

:func:`evaluate_network` scores it with the sweep's metrics against the reference output ``y``
(the float model, or the user's ``reference``)::

    noise       = mean_n ||y_n - y_q,n||^2
    sqnr_db     = 10 log10(sum_n ||y_n||^2 / sum_n ||y_n - y_q,n||^2)
    degradation = H(y) - H(y_q)        (sign flipped for lower-is-better metrics)
    mean_shift  = mean_c |E[o_q - o]_c| / std(o)_c   per layer output o (section 4.4)

Example:
    >>> import quantlens as ql, quantlens.demo as demo                     # doctest: +SKIP
    >>> cfg = QuantConfig.uniform(["conv1", "conv2", "conv3", "fc"], w_bits=4)
    >>> quantize_network(demo.model(), demo.data(), cfg).degradation       # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from .. import jsonio
from ..degradation import degradation
from ..errors import QuantlensError
from ..graph.capture import CaptureError, LayerGraph, capture
from ..graph.cone import build_cache_module
from ..guard import preserve_model
from ..jsonio import num as _num
from ..metrics import Metric, make_metric
from ..numerics import analysis_mode
from ..qconfig import QuantConfig
from .accumulate import CellAccumulator, ChannelStats, ShiftAccumulator, channel_axis
from .data import Inputs, extract_output, iterate
from .network import QuantizedNetwork, build_quantized, calibrate_ranges

__all__ = ["NetworkResult", "NetworkMeasurer", "UntraceableError", "capture_traceable", "evaluate_network", "score_network", "quantize_network", "reference_fn", "graph_fn", "MeasurerBase"]


@dataclass(frozen=True)
class NetworkResult:
    """One full-network quantization measured against the reference (see module docstring)."""

    metric_name: str
    higher_is_better: bool
    baseline: float
    metric: float
    degradation: float
    noise: float
    sqnr_db: float
    num_samples: int
    mean_shift: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return jsonio.clean(
            {
                "metric_name": self.metric_name,
                "higher_is_better": self.higher_is_better,
                "baseline": self.baseline,
                "metric": self.metric,
                "degradation": self.degradation,
                "noise": self.noise,
                "sqnr_db": self.sqnr_db,
                "num_samples": self.num_samples,
                "mean_shift": self.mean_shift,
                "config": self.config,
            }
        )

    @classmethod
    def from_dict(cls, d: dict) -> "NetworkResult":
        return cls(
            metric_name=str(d["metric_name"]),
            higher_is_better=bool(d["higher_is_better"]),
            baseline=_num(d["baseline"]),
            metric=_num(d["metric"]),
            degradation=_num(d["degradation"]),
            noise=_num(d["noise"]),
            sqnr_db=_num(d["sqnr_db"]),
            num_samples=int(d["num_samples"]),
            mean_shift={k: _num(v) for k, v in d.get("mean_shift", {}).items()},
            config=d.get("config", {}),
        )


def evaluate_network(
    qnet: QuantizedNetwork,
    data: Iterable[Any],
    reference: Callable[..., Any],
    metric: Union[str, Callable[..., Any], Metric] = "top1",
    output_key: Union[str, int, None] = None,
    device: Union[str, torch.device] = "cpu",
) -> NetworkResult:
    """Run ``qnet`` over ``data`` and score it against ``reference(inputs)``."""
    device = torch.device(device)
    tap_pos = {t: i for i, t in enumerate(qnet.taps)}
    layers = [qnet.graph.layer(n) for n in qnet.config.names]
    shifted = [l for l in layers if l.output_node in tap_pos]

    def quantized(inputs: Inputs) -> tuple[Any, dict[str, Tensor]]:
        out, taps = qnet.gm(*qnet.graph.flat(inputs))
        return qnet.graph.output(out), {l.name: taps[tap_pos[l.output_node]] for l in shifted}

    floats: Optional[Callable[[tuple], dict[str, Tensor]]] = None
    if shifted:  # the float network's layer outputs, only for the mean shift
        float_gm, keep = build_cache_module(qnet.graph, [l.output_node for l in shifted])
        float_gm.to(device)

        def floats(inputs: Inputs) -> dict[str, Tensor]:
            _, values = float_gm(*qnet.graph.flat(inputs))
            fv = dict(zip(keep, values))
            return {l.name: fv[l.output_node] for l in shifted}

    axes = {l.name: channel_axis(l.op) for l in layers}
    return score_network(quantized, floats, axes, data, reference, metric, output_key, device, qnet.config)


def score_network(
    quantized: Callable[[Inputs], tuple[Any, dict[str, Tensor]]],
    floats: Optional[Callable[[Inputs], dict[str, Tensor]]],
    axes: dict[str, int],
    data: Iterable[Any],
    reference: Callable[[Inputs], Any],
    metric: Union[str, Callable[..., Any], Metric],
    output_key: Union[str, int, None],
    device: torch.device,
    config: QuantConfig,
) -> NetworkResult:
    """The scoring loop shared by the traced and the eager networks (see module docstring).

    ``quantized(inputs) -> (output, {layer: quantized output})`` runs the quantized network;
    ``floats(inputs) -> {layer: float output}`` (``None``: no mean shift) the float one;
    ``axes`` gives each layer's channel axis.
    """
    ref_outputs = reference if isinstance(reference, _CachedReference) else None
    base, out_acc = make_metric(metric), CellAccumulator(make_metric(metric))
    stats = {name: ChannelStats() for name in axes}
    shift = {name: ShiftAccumulator() for name in axes}
    with analysis_mode():
        for b, (inputs, labels) in enumerate(iterate(data, "data")):
            inputs = inputs.to(device)
            labels = None if labels is None else labels.to(device)
            y_ref = ref_outputs.get(b, inputs, output_key) if ref_outputs is not None else extract_output(reference(inputs), output_key)
            out, taps = quantized(inputs)
            y = extract_output(out, output_key)
            if not bool(torch.isfinite(y_ref).all()):
                raise QuantlensError("the reference model's output has NaN or Inf: fix the model or its inputs first")
            base.update(y_ref, y_ref, labels)
            out_acc.update(y_ref, y, labels)
            if floats is None or not taps:
                continue
            fv = floats(inputs)
            for name, oq in taps.items():
                stats[name].update(fv[name], axes[name])
                shift[name].update(oq, fv[name], axes[name])
    b, m = base.compute(), out_acc.metric.compute()
    hib = bool(base.higher_is_better)
    shifts = {name: shift[name].mean_shift(stats[name].std()) for name in axes if shift[name].sum is not None and stats[name].sum is not None}
    return NetworkResult(
        metric_name=str(getattr(base, "name", "custom")),
        higher_is_better=hib,
        baseline=b,
        metric=m,
        degradation=degradation(b, m, hib),
        noise=out_acc.noise_mean,
        sqnr_db=out_acc.sqnr_db,
        num_samples=out_acc.n,
        mean_shift=shifts,
        config=config.to_dict(),
    )


class _CachedReference:
    """The reference's output per batch, kept while under ``limit`` bytes.

    A kept output is reused only if the batch at that index has the same inputs (shape and
    sum), so shuffling data loaders get fresh reference outputs.
    """

    def __init__(self, fn: Callable[[Inputs], Any], limit: int = 256 << 20) -> None:
        self.fn, self.limit, self.used = fn, limit, 0
        self.outputs: dict[int, tuple[tuple, Tensor]] = {}

    def get(self, b: int, inputs: Inputs, output_key: Any) -> Tensor:
        key = tuple((tuple(t.shape), float(t.double().sum())) for t in inputs.tensors())
        hit = self.outputs.get(b)
        if hit is not None and hit[0] == key:
            return hit[1]
        y = extract_output(self.fn(inputs), output_key)
        size = y.numel() * y.element_size()
        if hit is None and self.used + size <= self.limit:
            self.outputs[b] = (key, y.detach().clone())
            self.used += size
        return y

    def __call__(self, inputs: Inputs) -> Any:
        return self.fn(inputs)


def graph_fn(graph: LayerGraph, gm: Optional[nn.Module] = None) -> Callable[[Inputs], Any]:
    """``inputs -> output`` of ``gm`` (default: ``graph.gm``), a module built from ``graph``'s graph."""
    run = graph.gm if gm is None else gm
    return lambda inputs: graph.output(run(*graph.flat(inputs)))


def reference_fn(float_fn: Callable[[Inputs], Any], reference: Optional[nn.Module], device: torch.device) -> Callable[[Inputs], Any]:
    """The float function that ``y`` comes from: ``float_fn``, or a copy of ``reference`` (left as it was)."""
    if reference is None:
        return float_fn
    with preserve_model(reference):
        ref = copy.deepcopy(reference).eval().to(device)
    return lambda inputs: inputs.call(ref)


class MeasurerBase:
    """What both measurers keep: data, calibration data, metric, and the reference with its cached outputs."""

    names: list[str]

    def _keep(self, data: Iterable[Any], calib: Optional[Iterable[Any]], metric: Any, output_key: Any, reference: Callable[[Inputs], Any]) -> None:
        self.reference = reference
        self.cached_reference = _CachedReference(reference)
        self._observers: dict[str, tuple[dict, dict]] = {}
        self.data, self.calib = data, (calib if calib is not None else data)
        self.metric, self.output_key = metric, output_key

    def __call__(self, config: QuantConfig, mean_shift: bool = False) -> NetworkResult:  # pragma: no cover
        raise NotImplementedError


def _on_device(data: Iterable[Any], device: torch.device) -> list:
    """The first batch of ``data`` on ``device`` (what a capture is made from)."""
    inputs, labels = next(iter(iterate(data, "data")))
    return [(inputs.to(device), labels)]


class UntraceableError(QuantlensError):
    """Neither torch.fx nor torch.export captures the model; ``reason`` says why, in one line."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def capture_traceable(model: nn.Module, data: Optional[Iterable[Any]] = None) -> LayerGraph:
    """``capture(model, first batch of data)``, with a one-line error (:class:`UntraceableError`)
    if neither torch.fx nor torch.export captures it."""
    sample = next(iter(iterate(data, "data")))[0] if data is not None else None
    try:
        return capture(model, sample)
    except CaptureError as e:
        raise UntraceableError(
            f"fixes need a model that torch.fx or torch.export can capture ({e.describe()}); `quantlens analyze`, "
            "`additivity` and `plan` work on it through forward hooks",
            e.describe(),
        ) from None


class NetworkMeasurer(MeasurerBase):
    """Capture a model once, then quantize and measure it under many configurations.

    ``measurer(config)`` applies the config's fixes to a copy of the captured float graph,
    builds the quantized network (activation ranges calibrated on that float graph) and
    evaluates it against the reference. The user's model is only read, at construction.
    """

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
        with preserve_model(model):
            self.graph = capture_traceable(model, _on_device(data, self.device))
            self.graph.gm.to(self.device)
        self.float_gm = copy.deepcopy(self.graph.gm)
        self.reference_module = None if reference is None else copy.deepcopy(reference).eval().to(self.device)
        self._keep(data, calib, metric, output_key, reference_fn(graph_fn(self.graph, self.float_gm), reference, self.device))

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.graph.layers]

    def fixed_graph(self, config: QuantConfig) -> LayerGraph:
        from ..fixes import apply_fixes

        config.check_layers(self.names)
        return apply_fixes(self.graph, config, self.calib, self.device)

    def build(self, config: QuantConfig, mean_shift: bool = False) -> QuantizedNetwork:
        fixed = self.fixed_graph(config)
        taps = [fixed.layer(n).output_node for n in config.names] if mean_shift else []
        observers = None
        if fixed is self.graph:  # no fix: the float graph's statistics are the same every time
            est = config.act_estimator
            if est not in self._observers:
                everything = QuantConfig.uniform(self.names, a_bits=8, act_estimator=est)
                self._observers[est] = calibrate_ranges(self.graph, everything, self.calib, self.device)
            observers = self._observers[est]
        return build_quantized(fixed, config, self.calib, self.device, taps, observers)

    def __call__(self, config: QuantConfig, mean_shift: bool = False) -> NetworkResult:
        qnet = self.build(config, mean_shift)
        return evaluate_network(qnet, self.data, self.cached_reference, self.metric, self.output_key, self.device)

def quantize_network(
    model: nn.Module,
    data: Iterable[Any],
    config: QuantConfig,
    *,
    calib: Optional[Iterable[Any]] = None,
    metric: Union[str, Callable[..., Any], Metric] = "top1",
    reference: Optional[nn.Module] = None,
    device: Union[str, torch.device] = "cpu",
    output_key: Union[str, int, None] = None,
    mean_shift: bool = False,
) -> NetworkResult:
    """Quantize ``model`` (a copy) with ``config`` (fixes included) and measure it on ``data``.

    The reference output is ``reference`` if given (a fine-tuned model's float original,
    section 4.3), else the model's own float output. ``mean_shift=True`` also measures each
    layer's output mean shift.
    """
    m = NetworkMeasurer(model, data, calib=calib, metric=metric, reference=reference, device=device, output_key=output_key)
    return m(config, mean_shift)
