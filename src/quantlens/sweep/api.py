"""The public entry point: :func:`analyze` and the :func:`make_config` it builds on.

``analyze`` validates the data, prepares a :class:`~quantlens.engine.sweep.Sweep`
(through a :class:`~quantlens.parallel.SweepRecipe`, so that Ray workers rebuild the same
one), runs it with the chosen executor (serial or Ray, resumable through ``cache``) and
returns the :class:`~quantlens.sweep.results.SweepResult`.

Example:
    >>> import quantlens as ql                                       # doctest: +SKIP
    >>> r = ql.analyze(model, loader, w_bits=range(3, 9), a_bits=8)  # doctest: +SKIP
    >>> r.worst(bits=4, k=5)                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from quantlens.sweep.collect import collect
from quantlens.quant.spec import Granularity, PerTensor, QuantSpec, parse_granularity
from quantlens.core.sweep_config import SweepConfig
from quantlens.errors import QuantlensError
from quantlens.core.guard import preserve_model
from quantlens.core.precision import check_dtype_support
from quantlens.core.progress import make_progress
from quantlens.data.batches import check_reiterable, iterate
from quantlens.sweep.results import SweepResult
from quantlens.engine.sweep import MetricSpec
from quantlens.core.workload import RunOptions, Workload
from quantlens.sweep.methods import Adaptive, Estimate, Exact, Method, as_method

__all__ = ["analyze", "make_config"]


def make_config(
    w_bits: Iterable[int] = range(3, 9),
    a_bits: Optional[int] = 8,
    granularity: Union[str, Granularity] = "per-tensor",
    weight_estimator: str = "minmax",
    act_estimator: str = "minmax",
    symmetric_weights: bool = True,
    convention: str = "quantlens",
    formats: Optional[Sequence[str]] = None,
    a_format: Optional[str] = None,
) -> SweepConfig:
    """A :class:`SweepConfig` from the plain options of :func:`analyze` (``convention``: a tool's
    quantizer grid and scale rule, :mod:`quantlens.quant.conventions`)."""
    g = parse_granularity(granularity) if isinstance(granularity, str) else granularity
    try:
        bits = tuple(int(b) if not isinstance(b, bool) else b for b in w_bits)  # type: ignore[misc]
    except (TypeError, ValueError):
        raise QuantlensError(f"w_bits must be integers, got {w_bits!r}") from None
    act = QuantSpec(bits=8, symmetric=False, granularity=PerTensor(), estimator=act_estimator, convention=convention)
    if formats:
        return SweepConfig(w_bits=(), a_bits=a_bits, formats=tuple(formats), act=act, a_format=a_format)
    return SweepConfig(
        a_format=a_format,
        w_bits=bits,
        a_bits=a_bits,
        weight=QuantSpec(bits=8, symmetric=symmetric_weights, granularity=g, estimator=weight_estimator, convention=convention),
        act=QuantSpec(bits=8, symmetric=False, granularity=PerTensor(), estimator=act_estimator, convention=convention),
    )


class _Unset:
    """A keyword the caller did not give (so that ``config=`` with ``w_bits=`` can be refused)."""

    def __repr__(self) -> str:
        return "<default>"


_UNSET: Any = _Unset()
_SPEC_DEFAULTS = {"w_bits": range(3, 9), "formats": None, "a_bits": 8, "a_format": None, "granularity": "per-tensor", "weight_estimator": "minmax",
                  "act_estimator": "minmax"}
_WORKLOAD_DEFAULTS = {"metric": "top1", "calib": None, "reference": None, "output_key": None}
_OPTION_DEFAULTS = {"device": "cpu", "backend": "serial", "address": None, "cache": None, "fresh": False, "progress": False}


def _given(values: dict) -> dict:
    return {k: v for k, v in values.items() if not isinstance(v, _Unset)}


def analyze(
    model: Union[nn.Module, Workload],
    data: Optional[Iterable[Any]] = None,
    *,
    method: Union[str, Method] = "exact",
    config: Optional[SweepConfig] = None,
    options: Optional[RunOptions] = None,
    layers: Optional[Sequence[str]] = None,
    engine: str = "cone",
    capture: str = "auto",
    model_name: str = "",
    w_bits: Iterable[int] = _UNSET,
    formats: Optional[Sequence[str]] = _UNSET,
    a_bits: Optional[int] = _UNSET,
    a_format: Optional[str] = _UNSET,
    granularity: Union[str, Granularity] = _UNSET,
    weight_estimator: str = _UNSET,
    act_estimator: str = _UNSET,
    metric: MetricSpec = _UNSET,
    calib: Optional[Iterable[Any]] = _UNSET,
    reference: Optional[nn.Module] = _UNSET,
    output_key: Union[str, int, None] = _UNSET,
    device: Union[str, torch.device] = _UNSET,
    backend: Any = _UNSET,
    address: Optional[str] = _UNSET,
    cache: Union[str, "os.PathLike[str]", None] = _UNSET,
    fresh: bool = _UNSET,
    progress: bool = _UNSET,
) -> SweepResult:
    """Quantize one layer at a time and measure what each does to the network's output.

    Three descriptions travel together (each may be given whole, or by its keyword shorthands):

    * *what*: a :class:`~quantlens.core.workload.Workload` as the first argument, or ``model``,
      ``data`` and the shorthands ``metric``, ``calib``, ``reference``, ``output_key``;
    * *the quantization*: ``config`` (a :class:`SweepConfig`), or the shorthands ``w_bits``
      (default 3..8) or ``formats`` (named formats as the sweep's columns: ``["nvfp4", "mxfp4",
      "fp8-e4m3", "int4-g128"]``, :mod:`quantlens.quant.formats`), ``a_bits`` or ``a_format``
      (``int8``, ``fp8-e4m3``, ``mxfp8``, ``mxfp4``, ``nvfp4``, ``none``: the layer's input and its
      output after the activation, :class:`~quantlens.quant.quantizer.ActQuantizer`), ``a_bits`` (8; None keeps activations in float), ``granularity``
      (``per-tensor``, ``per-channel``, ``per-group-N``), ``weight_estimator``,
      ``act_estimator``; giving both is an error that names the conflict;
    * *how it runs*: ``options`` (a :class:`~quantlens.core.workload.RunOptions`), or the
      shorthands ``device``, ``backend`` (``serial``, ``ray`` or an executor), ``address`` (the
      Ray cluster), ``cache`` (a directory; a rerun resumes from it), ``fresh``, ``progress``.

    Args:
        model: any ``nn.Module`` (never modified), or a Workload.
        data: re-iterable batches (a DataLoader works): ``(inputs, labels)``, a tensor, or a
            mapping of keyword arguments (a tokenizer's output; its ``labels`` key is the labels).
        method: ``"exact"`` (default), ``"adaptive"``, ``"estimate"``, or
            :class:`~quantlens.sweep.methods.Exact` / ``Adaptive`` / ``Estimate`` with their
            options (:mod:`quantlens.sweep.methods`).
        layers: restrict the sweep to these layer names.
        engine: ``cone`` (default), ``naive`` (full forward per layer, for benchmarks) or ``hooks``.
        capture: ``auto`` (torch.fx, then torch.export; Hugging Face models go to torch.export
            first), ``fx`` or ``export``.

    Returns:
        a :class:`SweepResult` with one cell per (layer, weight bits).

    Example:
        >>> r = ql.analyze(ql.Workload(model, data, metric="kl"), method=ql.Estimate(k=3),  # doctest: +SKIP
        ...                config=ql.SweepConfig(w_bits=(4, 8)))
    """
    from quantlens.parallel import SweepRecipe, make_executor
    from quantlens.sweep.run import run_sweep

    work = _workload(model, data, _given({"metric": metric, "calib": calib, "reference": reference, "output_key": output_key}))
    opts = _options(options, _given({"device": device, "backend": backend, "address": address, "cache": cache,
                                     "fresh": fresh, "progress": progress}))
    cfg = _config(config, _given({"w_bits": w_bits, "formats": formats, "a_bits": a_bits, "a_format": a_format, "granularity": granularity,
                                  "weight_estimator": weight_estimator, "act_estimator": act_estimator}))
    how = as_method(method)
    model, data, calib = work.model, work.data, work.calib
    check_reiterable(data, "data")
    if calib is not None:
        check_reiterable(calib, "calibration data")
    check_dtype_support(model, opts.device)
    if isinstance(how, Estimate):
        if opts.backend not in ("serial", None):
            raise QuantlensError("--estimate runs alone: drop --backend ray")
        return _estimate(work, cfg, opts.device, layers, engine, model_name, how, capture)
    executor = make_executor(opts.backend, opts.address)
    if isinstance(how, Adaptive):
        executor = _adaptive_executor(opts.backend, opts.cache, work.metric, how.tolerance)
    t0 = time.perf_counter()
    with preserve_model(model):
        sample = next(iter(iterate(data, "data")))
        recipe = SweepRecipe(model, sample, cfg, work.metric, opts.device, work.output_key, work.reference, engine, layers, capture)
        sweep, state, store = run_sweep(
            recipe, data, calib, executor, opts.cache, opts.fresh, bar_factory=lambda n: make_progress(opts.progress, n, "sweep")
        )
        result = collect(sweep, state, time.perf_counter() - t0, model_name or type(model).__name__)
        if isinstance(how, Exact) and how.split_noise:
            from quantlens.sweep.split import split_noise as _split

            result = _split(sweep, data, result)
        if isinstance(how, Adaptive):
            import dataclasses

            result = dataclasses.replace(result, extra={**result.extra, "adaptive": executor.summary()})
    if store is not None:
        store.clear()
    return result


def _workload(model: Any, data: Any, given: dict) -> Workload:
    if isinstance(model, Workload):
        if data is not None or given:
            both = ["data"] * (data is not None) + sorted(given)
            raise QuantlensError(f"analyze got a Workload and also {', '.join(both)}: put them in the Workload instead")
        return model
    if data is None:
        raise QuantlensError("analyze needs data: analyze(model, data, ...) or analyze(quantlens.Workload(model, data, ...))")
    return Workload(model, data, **{**_WORKLOAD_DEFAULTS, **given})


def _options(options: Optional[RunOptions], given: dict) -> RunOptions:
    if options is None:
        return RunOptions(**{**_OPTION_DEFAULTS, **given})
    if not isinstance(options, RunOptions):
        raise QuantlensError(f"options= takes a quantlens.RunOptions, got {type(options).__name__}")
    if given:
        raise QuantlensError(f"analyze got options= and also {', '.join(sorted(given))}: set them in the RunOptions instead")
    return options


def _config(config: Optional[SweepConfig], given: dict) -> SweepConfig:
    if given.get("formats") is not None and ("w_bits" in given or "granularity" in given or "weight_estimator" in given):
        both = sorted(k for k in ("w_bits", "granularity", "weight_estimator") if k in given)
        raise QuantlensError(f"give formats or {', '.join(both)}, not both: a format names its grid and blocks "
                             "(int4-g128 is 4-bit weights in groups of 128)")
    if given.get("a_format") is not None and "a_bits" in given:
        raise QuantlensError("give a_format or a_bits, not both: a_format='int8' is 8-bit integer activations, 'none' float")
    if config is None:
        return make_config(**{**_SPEC_DEFAULTS, **given})
    if not isinstance(config, SweepConfig):
        raise QuantlensError(f"config= takes a quantlens.SweepConfig, got {type(config).__name__}")
    if given:
        raise QuantlensError(f"analyze got config= and also {', '.join(sorted(given))}: the config already says how "
                             "layers are quantized; drop one of them")
    return config


def _adaptive_executor(backend: Any, cache: Any, metric: MetricSpec, tolerance: Union[str, float, None]) -> Any:
    from quantlens.metrics.task import is_fraction, make_metric
    from quantlens.sweep.adaptive import AdaptiveExecutor, check_adaptive_metric, parse_tolerance

    if backend not in ("serial", None):
        raise QuantlensError("--adaptive runs serially: drop --backend ray")
    if cache is not None:
        raise QuantlensError("--adaptive does not resume from a cache yet: add --no-cache")
    probe = make_metric(metric)
    check_adaptive_metric(probe)
    return AdaptiveExecutor(parse_tolerance(tolerance, pct_metric=is_fraction(getattr(probe, "name", ""))))


def _estimate(work: Workload, cfg: SweepConfig, device: Any, layers: Any, engine: str, model_name: str, how: Estimate,
              capture: str = "auto") -> SweepResult:
    import dataclasses

    from quantlens.parallel import SweepRecipe
    from quantlens.sweep.estimate import estimate_sweep

    model = work.model
    t0 = time.perf_counter()
    with preserve_model(model):
        sample = next(iter(iterate(work.data, "data")))
        sweep = SweepRecipe(model, sample, cfg, work.metric, device, work.output_key, work.reference, engine, layers, capture).build()
        if work.calib is not None:  # else the estimate's own pass calibrates on ``data``
            sweep.calibrate(work.calib)
        result = estimate_sweep(sweep, work.data, k=how.k, model_name=model_name or type(model).__name__, budget=how.budget)
    return dataclasses.replace(result, elapsed_s=time.perf_counter() - t0)
