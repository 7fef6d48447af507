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

__all__ = ["analyze", "make_config"]


def make_config(
    w_bits: Iterable[int] = range(3, 9),
    a_bits: Optional[int] = 8,
    granularity: Union[str, Granularity] = "per-tensor",
    weight_estimator: str = "minmax",
    act_estimator: str = "minmax",
    symmetric_weights: bool = True,
    convention: str = "quantlens",
) -> SweepConfig:
    """A :class:`SweepConfig` from the plain options of :func:`analyze` (``convention``: a tool's
    quantizer grid and scale rule, :mod:`quantlens.quant.conventions`)."""
    g = parse_granularity(granularity) if isinstance(granularity, str) else granularity
    try:
        bits = tuple(int(b) if not isinstance(b, bool) else b for b in w_bits)  # type: ignore[misc]
    except (TypeError, ValueError):
        raise QuantlensError(f"w_bits must be integers, got {w_bits!r}") from None
    return SweepConfig(
        w_bits=bits,
        a_bits=a_bits,
        weight=QuantSpec(bits=8, symmetric=symmetric_weights, granularity=g, estimator=weight_estimator, convention=convention),
        act=QuantSpec(bits=8, symmetric=False, granularity=PerTensor(), estimator=act_estimator, convention=convention),
    )


def analyze(
    model: nn.Module,
    data: Iterable[Any],
    *,
    w_bits: Iterable[int] = range(3, 9),
    a_bits: Optional[int] = 8,
    metric: MetricSpec = "top1",
    calib: Optional[Iterable[Any]] = None,
    granularity: Union[str, Granularity] = "per-tensor",
    weight_estimator: str = "minmax",
    act_estimator: str = "minmax",
    config: Optional[SweepConfig] = None,
    device: Union[str, torch.device] = "cpu",
    output_key: Union[str, int, None] = None,
    reference: Optional[nn.Module] = None,
    layers: Optional[Sequence[str]] = None,
    engine: str = "cone",
    capture: str = "auto",
    progress: bool = False,
    model_name: str = "",
    backend: Any = "serial",
    address: Optional[str] = None,
    cache: Union[str, "os.PathLike[str]", None] = None,
    fresh: bool = False,
    split_noise: bool = False,
    adaptive: bool = False,
    tolerance: Union[str, float, None] = None,
    estimate: bool = False,
    estimate_k: int = 5,
) -> SweepResult:
    """Quantize one layer at a time and measure what each does to the network's output.

    Args:
        model: any ``nn.Module``; never modified.
        data: re-iterable batches (a DataLoader works): ``(inputs, labels)``, a tensor, or a
            mapping of keyword arguments (a tokenizer's output; its ``labels`` key is the labels).
            ``inputs`` may be a tensor, a tuple of tensors or a mapping; labels may be None for
            label-free metrics.
        w_bits: weight bit-widths to sweep. a_bits: activation bits, or None for float activations.
        metric: a registered metric name, a callable ``fn(y_ref, y, labels) -> float``, or a Metric.
        calib: calibration data for activation ranges (default: ``data``).
        granularity: ``per-tensor``, ``per-channel`` or ``per-group-N`` for weights.
        reference: the float model the noise and degradation are measured against (for a
            fine-tuned model, section 4.3 of the paper); default: the model itself.
        layers: restrict the sweep to these layer names.
        engine: ``cone`` (default), ``naive`` (full forward per layer, for benchmarks) or ``hooks``.
        capture: how the cone and naive engines get the graph: ``auto`` (torch.fx, then
            torch.export; Hugging Face models go to torch.export first), ``fx`` or ``export``.
        backend: ``serial`` (default), ``ray`` (tasks over layer groups x data shards; needs
            ``quantlens[ray]``), or an executor from :mod:`quantlens.parallel`.
        address: the Ray cluster to join (``auto``, ``HOST:PORT`` or ``ray://HOST:10001``);
            default: the running Ray instance, else a new local one.
        cache: a directory where progress is saved atomically after each batch (each task
            with Ray); a rerun resumes from it. Refused if made by a different run. Removed
            when the sweep finishes. Default: no cache.
        fresh: discard an existing cache first.
        split_noise: also measure each cell's output noise from its weights, its input
            quantizer and its output quantizer alone (:mod:`quantlens.sweep.split`).
        adaptive: stop adding batches to a cell once its 95% interval is on one side of
            ``tolerance`` and of 0 and its rank among the layers at its bit-width is settled
            (:mod:`quantlens.sweep.adaptive`); serial, no cache.
        tolerance: the degradation that matters for ``adaptive`` (``"0.5%"`` or 0.005, the default).
        estimate: a first-order estimate of every cell from one forward and backward pass per
            batch, checked by measuring the estimate's ``estimate_k`` top and ``estimate_k`` random
            layers exactly at one bit-width (4 if swept, else the lowest; :mod:`quantlens.sweep.estimate`).

    Returns:
        a :class:`SweepResult` with one cell per (layer, weight bits).
    """
    from quantlens.parallel import SweepRecipe, make_executor
    from quantlens.sweep.run import run_sweep

    cfg = config or make_config(w_bits, a_bits, granularity, weight_estimator, act_estimator)
    check_reiterable(data, "data")
    if calib is not None:
        check_reiterable(calib, "calibration data")
    check_dtype_support(model, device)
    if estimate:
        return _estimate(model, data, cfg, metric, calib, device, output_key, reference, layers, engine, model_name,
                         estimate_k, adaptive or split_noise or backend not in ("serial", None), capture)
    executor = make_executor(backend, address)
    if adaptive:
        executor = _adaptive_executor(backend, cache, metric, tolerance)
    elif tolerance is not None:
        raise QuantlensError("--tolerance is for --adaptive (or --estimate): add --adaptive or drop --tolerance")
    t0 = time.perf_counter()
    with preserve_model(model):
        sample = next(iter(iterate(data, "data")))
        recipe = SweepRecipe(model, sample, cfg, metric, device, output_key, reference, engine, layers, capture)
        sweep, state, store = run_sweep(
            recipe, data, calib, executor, cache, fresh, bar_factory=lambda n: make_progress(progress, n, "sweep")
        )
        result = collect(sweep, state, time.perf_counter() - t0, model_name or type(model).__name__)
        if split_noise:
            from quantlens.sweep.split import split_noise as _split

            result = _split(sweep, data, result)
        if adaptive:
            import dataclasses

            result = dataclasses.replace(result, extra={**result.extra, "adaptive": executor.summary()})
    if store is not None:
        store.clear()
    return result


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


def _estimate(model: nn.Module, data: Any, cfg: SweepConfig, metric: MetricSpec, calib: Any, device: Any, output_key: Any,
              reference: Any, layers: Any, engine: str, model_name: str, k: int, other: bool, capture: str = "auto") -> SweepResult:
    from quantlens.sweep.estimate import estimate_sweep

    if other:
        raise QuantlensError("--estimate runs alone: drop --adaptive, --split-noise and --backend ray")
    if k < 1:
        raise QuantlensError(f"--estimate-k must be at least 1, got {k}")
    import dataclasses

    from quantlens.parallel import SweepRecipe

    t0 = time.perf_counter()
    with preserve_model(model):
        sample = next(iter(iterate(data, "data")))
        sweep = SweepRecipe(model, sample, cfg, metric, device, output_key, reference, engine, layers, capture).build()
        if calib is not None:  # else the estimate's own pass calibrates on ``data``
            sweep.calibrate(calib)
        result = estimate_sweep(sweep, data, k=k, model_name=model_name or type(model).__name__)
    return dataclasses.replace(result, elapsed_s=time.perf_counter() - t0)
