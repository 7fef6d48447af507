"""Measure a fully quantized network (:mod:`quantlens.engine.build` builds it).

:func:`evaluate_network` scores it with the sweep's metrics against the reference output ``y``
(the float model, or the user's ``reference``)::

    noise       = mean_n ||y_n - y_q,n||^2
    sqnr_db     = 10 log10(sum_n ||y_n||^2 / sum_n ||y_n - y_q,n||^2)
    degradation = H(y) - H(y_q)        (sign flipped for lower-is-better metrics)
    mean_shift  = mean_c |E[o_q - o]_c| / std(o)_c   per layer output o (section 4.4)

Example:
    >>> import quantlens as ql, quantlens.demo.digits as demo                     # doctest: +SKIP
    >>> cfg = QuantConfig.uniform(["conv1", "conv2", "conv3", "fc"], w_bits=4)
    >>> quantize_network(demo.model(), demo.data(), cfg).degradation       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import gc
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from quantlens.stats.measurement import Measured
from quantlens.core import jsonio
from quantlens.stats.degradation import degradation
from quantlens.errors import QuantlensError, QuantlensWarning
from quantlens.graph.capture import CaptureError, capture
from quantlens.graph.layers import LayerGraph
from quantlens.graph.shared import weights_memo
from quantlens.engine.cone import build_cache_module
from quantlens.core.guard import preserve_model
from quantlens.core.jsonio import num as _num
from quantlens.metrics.task import Metric, make_metric, update_metric
from quantlens.core.numerics import analysis_mode
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.stats.intervals import metric_interval
from quantlens.core.workload import RunOptions, Workload, check_workload
from quantlens.engine.accumulate import CellAccumulator, ChannelStats, ShiftAccumulator, channel_axis
from quantlens.data.batches import Inputs, extract_output, iterate
from quantlens.engine.build import QuantizedNetwork, build_quantized, calibrate_ranges, layer_quantizers
from quantlens.engine.runner import HookRunner

__all__ = ["measure", "NetworkResult", "MeasurerBase", "NetworkMeasurer", "EagerNetworkMeasurer", "make_measurer", "UntraceableError", "capture_traceable",
           "evaluate_network", "score_network", "network_result", "quantize_network", "reference_fn", "graph_fn", "Workload", "RunOptions"]


@dataclass(frozen=True)
class NetworkResult(Measured):
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
    ci_low: float = jsonio.NAN
    ci_high: float = jsonio.NAN

    _samples_field = "num_samples"

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
                "ci_low": self.ci_low,
                "ci_high": self.ci_high,
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
            ci_low=_num(d.get("ci_low")),
            ci_high=_num(d.get("ci_high")),
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
            update_metric(base, y_ref, y_ref, labels, inputs)
            out_acc.update(y_ref, y, labels, inputs=inputs)
            if floats is None or not taps:
                continue
            fv = floats(inputs)
            for name, oq in taps.items():
                stats[name].update(fv[name], axes[name])
                shift[name].update(oq, fv[name], axes[name])
    shifts = {name: shift[name].mean_shift(stats[name].std()) for name in axes if shift[name].sum is not None and stats[name].sum is not None}
    return network_result(base, out_acc, config, shifts)


def network_result(base: Metric, out_acc: CellAccumulator, config: QuantConfig, shifts: Optional[dict] = None) -> NetworkResult:
    """The :class:`NetworkResult` of a finished measurement: ``base`` scored the reference against
    itself, ``out_acc`` the quantized network against the reference (every engine ends here)."""
    b, m = base.compute(), out_acc.metric.compute()
    hib = bool(base.higher_is_better)
    iv = metric_interval(out_acc.metric, hib)
    return NetworkResult(
        metric_name=str(getattr(base, "name", "custom")),
        higher_is_better=hib,
        baseline=b,
        metric=m,
        degradation=degradation(b, m, hib),
        noise=out_acc.noise_mean,
        sqnr_db=out_acc.sqnr_db,
        num_samples=out_acc.n,
        mean_shift=shifts or {},
        config=config.to_dict(),
        ci_low=iv.low if iv else jsonio.NAN,
        ci_high=iv.high if iv else jsonio.NAN,
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


class MeasurerBase:
    """A measurer: capture a model once (its engine), then quantize and measure it under many
    configurations, ``measurer(config) -> NetworkResult``. The user's model is only read, here.

    The engines differ in how they run a network with every layer of a config quantized
    (:meth:`__call__`); the rest is one design: the workload's data, calibration data, metric and
    reference (its outputs cached per batch), and the calibration tap, one streaming pass of
    :meth:`~quantlens.engine.runner.Runner.observe` per range estimator, kept for every config.
    """

    names: list[str]

    def __init__(self, workload: Workload, options: RunOptions = RunOptions()) -> None:
        self.workload, self.options = workload, options
        self.device = options.torch_device
        self.data, self.calib = workload.data, workload.calib_data
        self.metric, self.output_key = workload.metric, workload.output_key
        self._observers: dict[str, tuple[dict, dict]] = {}
        with preserve_model(workload.model):
            float_fn = self._prepare(workload.model)
        self.reference = reference_fn(float_fn, workload.reference, self.device)
        self.cached_reference = _CachedReference(self.reference)

    def _prepare(self, model: nn.Module) -> Callable[[Inputs], Any]:  # pragma: no cover - interface
        """Capture ``model`` (a copy); return its float function ``inputs -> output``."""
        raise NotImplementedError

    def _tap(self, estimator: str) -> tuple[dict, dict]:  # pragma: no cover - interface
        """Observers of every layer's input and output over the calibration data, by layer name."""
        raise NotImplementedError

    def observers(self, estimator: str) -> tuple[dict, dict]:
        """:meth:`_tap` for ``estimator``, run once and kept."""
        if estimator not in self._observers:
            self._observers[estimator] = self._tap(estimator)
        return self._observers[estimator]

    def __call__(self, config: QuantConfig, mean_shift: bool = False) -> NetworkResult:  # pragma: no cover
        raise NotImplementedError


class NetworkMeasurer(MeasurerBase):
    """The traced engine: ``measurer(config)`` applies the config's fixes to a copy of the
    captured float graph, compiles the quantized network (activation ranges from that float
    graph) and evaluates it against the reference (see :class:`MeasurerBase`)."""

    def _prepare(self, model: nn.Module) -> Callable[[Inputs], Any]:
        self.graph = capture_traceable(model, _on_device(self.data, self.device))
        self.graph.gm.to(self.device)
        # the reference's own modules, the same weight storage (fixes work on copies of the graph and
        # nothing writes the captured weights in place): no second copy of the model's weights
        self.float_gm = copy.deepcopy(self.graph.gm, memo=weights_memo(self.graph.gm))
        return graph_fn(self.graph, self.float_gm)

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.graph.layers]

    @property
    def layers(self) -> list:
        return list(self.graph.layers)

    def _tap(self, estimator: str) -> tuple[dict, dict]:
        return calibrate_ranges(self.graph, QuantConfig.uniform(self.names, a_bits=8, act_estimator=estimator), self.calib, self.device)

    def fixed_graph(self, config: QuantConfig) -> LayerGraph:
        from quantlens.fixes import apply_fixes

        config.check_layers(self.names)
        return apply_fixes(self.graph, config, self.calib, self.device)

    def build(self, config: QuantConfig, mean_shift: bool = False) -> QuantizedNetwork:
        fixed = self.fixed_graph(config)
        taps = [fixed.layer(n).output_node for n in config.names] if mean_shift else []
        # no fix: the float graph's statistics are the same every time; a fix changes the float network
        observers = self.observers(config.act_estimator) if fixed is self.graph else None
        return build_quantized(fixed, config, self.calib, self.device, taps, observers)

    def __call__(self, config: QuantConfig, mean_shift: bool = False) -> NetworkResult:
        qnet = self.build(config, mean_shift)
        try:
            return evaluate_network(qnet, self.data, self.cached_reference, self.metric, self.output_key, self.device)
        finally:
            # a GraphModule and its graph refer to each other: only the cycle collector frees this network's
            # quantized weights (0.54 GB on SmolLM2), and it runs by object counts, not bytes; a plan or a fix
            # measures several networks in a row
            del qnet
            gc.collect()  # the heap keeps the pages for the next network (trimming them cost page faults: 14% system time)


class EagerNetworkMeasurer(MeasurerBase):
    """The hook engine, for a model neither torch.fx nor torch.export captures: forward hooks on
    a prepared copy (:class:`~quantlens.engine.runner.HookRunner`: BatchNorm folded,
    activations fused) quantize every configured layer at once in one forward pass
    (:meth:`~quantlens.engine.runner.HookRunner.run_quantized`). Fixes are graph transforms,
    so a configuration with fixes is refused here (see :class:`MeasurerBase`)."""

    def _prepare(self, model: nn.Module) -> Callable[[Inputs], Any]:
        first = next(iter(iterate(self.data, "data")))
        self.runner = HookRunner(model, first[0].to(self.device), self.device)
        for note in self.runner.notes:
            warnings.warn(note, QuantlensWarning, stacklevel=4)
        self._index = {l.name: i for i, l in enumerate(self.runner.layers)}
        return lambda inputs: inputs.call(self.runner.model)

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.runner.layers]

    @property
    def layers(self) -> list:
        return list(self.runner.layers)

    def _tap(self, estimator: str) -> tuple[dict, dict]:
        spec = LayerQuant(a_bits=8).act_spec(estimator)
        ins, outs, _ = self.runner.observe(self.calib, range(len(self.names)), spec, self.device)
        return {n: ins[i] for i, n in enumerate(self.names)}, {n: outs[i] for i, n in enumerate(self.names)}

    def __call__(self, config: QuantConfig, mean_shift: bool = False) -> NetworkResult:
        config.check_layers(self.names)
        fixed = [n for n in config.names if config.layer(n).fixes]
        if fixed:
            raise QuantlensError(
                f"fixes ({', '.join(config.layer(fixed[0]).fixes)} on {fixed[0]}) need a model torch.fx or torch.export can "
                "capture; this one runs through forward hooks"
            )
        ins, outs = self.observers(config.act_estimator)
        plan = {}
        for n in config.names:
            i = self._index[n]
            qw, iq, oq = layer_quantizers(config.layer(n), config.act_estimator, self.runner.float_weight(i), ins[n], outs[n], self.device,
                                          -1 if self.runner.layers[i].op == "Linear" else 1)
            plan[i] = (None if qw is None else qw.weight, iq, oq)

        def quantized(inputs: Inputs) -> tuple[Any, dict[str, Tensor]]:
            out, taps = self.runner.run_quantized(inputs, plan)
            return out, ({self.runner.layers[i].name: t for i, t in taps.items()} if mean_shift else {})

        def floats(inputs: Inputs) -> dict[str, Tensor]:
            _, cache = self.runner.float_pass(inputs)
            return {n: cache[n][1] for n in config.names}

        axes = {n: channel_axis(self.runner.layers[self._index[n]].op) for n in config.names}
        return score_network(quantized, floats if mean_shift else None, axes, self.data, self.cached_reference,
                             self.metric, self.output_key, self.device, config)


def make_measurer(workload: Workload, options: RunOptions = RunOptions()) -> MeasurerBase:
    """The traced measurer when torch.fx or torch.export captures the model, else the hook one (with a warning).

    Example:
        >>> m = make_measurer(Workload(untraceable_model, data, metric="kl"))   # doctest: +SKIP
        >>> m(QuantConfig.uniform(m.names, w_bits=4)).degradation               # doctest: +SKIP
    """
    try:
        return NetworkMeasurer(workload, options)
    except UntraceableError as e:
        warnings.warn(
            f"{e.reason}; quantizing the whole network through forward hooks "
            "instead: the same quantization (BatchNorm folded, activations fused), no fixes",
            QuantlensWarning,
            stacklevel=2,
        )
        return EagerNetworkMeasurer(workload, options)


def measure(workload: Workload, config: QuantConfig, options: RunOptions = RunOptions()) -> NetworkResult:
    """Quantize the whole network under ``config`` (every layer it names at once, its fixes
    applied) and score it against the float reference: ``quantlens.measure``.

    Example:
        >>> r = measure(Workload(model, data, metric="kl"), QuantConfig.uniform(names, w_bits=4))  # doctest: +SKIP
        >>> r.degradation, r.interval                                                           # doctest: +SKIP
    """
    check_workload(workload, "measure")
    if not isinstance(config, QuantConfig):
        raise QuantlensError(f"measure takes a QuantConfig, got {type(config).__name__}: quantlens.QuantConfig.uniform(names, w_bits=4)")
    m = make_measurer(workload, options)
    config.check_layers(m.names)
    return m(config)


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
    m = NetworkMeasurer(Workload(model, data, calib, metric, reference, output_key), RunOptions(device))
    return m(config, mean_shift)
