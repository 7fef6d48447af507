"""Algorithm 1 of the paper: every layer x every weight bit-width, batch-outer.

For each batch: one float pass fills the activation cache (this batch only); then for each
layer ``i`` and weight bit-width ``b`` the layer's cone is recomputed with ``i``'s weight,
input and output quantized, and the cell's accumulators are updated. Memory is one batch of
activations plus the quantized weights, whatever the size of the data.

The pieces are separate so that other executors (resumable, Ray) reuse them:
:class:`Sweep` holds the prepared network; :class:`SweepState` holds mergeable sums;
``Sweep.process_batch(state, batch)`` adds one batch; :func:`quantlens.sweep.collect.collect`
turns the state into a :class:`~quantlens.sweep.results.SweepResult`.

Example:
    >>> import quantlens as ql                                       # doctest: +SKIP
    >>> r = ql.analyze(model, loader, w_bits=range(3, 9), a_bits=8)  # doctest: +SKIP
    >>> r.worst(bits=4, k=5)                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from quantlens.core.inputs import as_inputs
from quantlens.core.sweep_config import SweepConfig
from quantlens.errors import QuantlensError, QuantlensWarning
from quantlens.graph.capture import CAPTURE_METHODS, CaptureError, capture
from quantlens.engine.memory import check_fits, trim_heap
from quantlens.metrics.task import Metric, make_metric, update_metric
from quantlens.core.numerics import analysis_mode
from quantlens.quant.observers import MinMaxObserver
from quantlens.quant.padded import padding_note, warn_padded
from quantlens.quant.quantizer import QuantizedWeight, quantize_weight
from quantlens.engine.accumulate import CellAccumulator, ChannelStats, channel_axis, per_sample_sq
from quantlens.data.batches import Batch, extract_output, input_ids
from quantlens.engine.runner import ConeRunner, HookRunner, Runner
from quantlens.engine.state import SweepState

__all__ = ["Sweep", "SweepState", "QuantlensWarning", "MetricSpec", "QuantizedWeights", "KEEP_QUANTIZED_BYTES",
           "keep_quantized_bytes"]


MetricSpec = Union[str, Callable[..., Any], Metric]


class Sweep:
    """A prepared layer-wise sweep of one model (see module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        sample: Batch,
        config: SweepConfig,
        metric: MetricSpec = "top1",
        device: Union[str, torch.device] = "cpu",
        output_key: Union[str, int, None] = None,
        reference: Optional[nn.Module] = None,
        engine: str = "cone",
        layers: Optional[Sequence[str]] = None,
        capture: str = "auto",
    ) -> None:
        self.config = config
        self.metric_spec = metric
        self.output_key = output_key
        self.device = _device(device)
        probe = make_metric(metric)
        self.metric_name = str(getattr(probe, "name", "custom"))
        self.higher_is_better = bool(probe.higher_is_better)
        if engine not in ("cone", "naive", "hooks", "cone-lowmem"):
            raise QuantlensError(f"unknown engine {engine!r}: use cone, naive, hooks or cone-lowmem")
        if capture not in CAPTURE_METHODS:
            raise QuantlensError(f"unknown capture {capture!r}: use {', '.join(CAPTURE_METHODS)}")
        self.runner = self._make_runner(model, sample, engine, capture)
        self.engine = self.runner.engine
        all_layers = self.runner.layers
        if layers is not None:
            if len(layers) == 0:
                raise QuantlensError("the layer selection is empty: name at least one layer, or pass layers=None for all")
            known = {l.name for l in all_layers}
            missing = [n for n in layers if n not in known]
            if missing:
                raise QuantlensError(f"unknown layer(s) {', '.join(missing)}; layers are: {', '.join(sorted(known))}")
        self.layer_ids = [l.index for l in all_layers if layers is None or l.name in layers]
        if layers is not None and isinstance(self.runner, ConeRunner):
            self.runner.select(self.layer_ids)  # the cache holds what these layers read, not every layer's
        self.reference = None
        if reference is not None:
            import copy

            self.reference = copy.deepcopy(reference).eval().to(self.device)
        self._check_memory(sample[0])
        self.qweights: QuantizedWeights = QuantizedWeights(self.quantize)
        padded: dict[str, list[str]] = {}
        for i in self.layer_ids:
            w = self.runner.float_weight(i)
            for b in config.columns:
                spec = config.weight_spec(b)
                self.qweights[(i, b)]  # quantized once, here: a format that does not apply fails now
                note = padding_note(tuple(w.shape), spec.format, "weight") if spec.format else None
                if note:
                    padded.setdefault(spec.format, []).append(f"{self.runner.layers[i].name} ({note})")
        warn_padded(padded)

    # ---- preparation -----------------------------------------------------------------------
    def quantize(self, i: int, b: Any) -> QuantizedWeight:
        """Layer ``i``'s weight in column ``b`` (not kept: :attr:`qweights` keeps what it is asked for)."""
        try:
            return quantize_weight(self.runner.float_weight(i), self.config.weight_spec(b))
        except QuantlensError as e:
            raise QuantlensError(f"layer {self.runner.layers[i].name}: {e}") from None

    def _check_memory(self, inputs: Any) -> None:
        """One line before the run if one batch would not fit in memory (:func:`check_fits`):
        the quantized weights (one copy per layer and column, at most the kept budget) and one batch of what the float
        pass keeps, measured on one sample of the first batch."""
        self.sample_bytes = 0  # what one sample keeps alive in the float pass (the estimate's check reads it too)
        if not isinstance(self.runner, ConeRunner):
            return
        inputs = as_inputs(inputs).to(self.device)  # a Ray worker's sample is the raw first argument
        sizes = [self.runner.float_weight(i) for i in self.layer_ids]
        sizes = [w.numel() * w.element_size() for w in sizes]
        # kept: at most the budget; beyond it one weight at a time (and the cone's one)
        fixed = min(sum(sizes) * len(self.config.columns), keep_quantized_bytes() + 2 * max(sizes, default=0))
        ids = input_ids(inputs)
        tokens = int(ids.shape[-1]) if ids is not None and ids.dim() == 2 else 0
        self.sample_bytes = self.runner.per_sample_bytes(inputs)
        check_fits(fixed, self.sample_bytes, inputs.batch_size, "the sweep", tokens)

    def _make_runner(self, model: nn.Module, sample: Batch, engine: str, method: str = "auto") -> Runner:
        if engine == "hooks":
            return self._hook_runner(model, sample)
        try:
            # the sweep reads its weights only: its graph shares the capture cache's (no copy of the weights)
            graph = capture(model, sample[0].to(self.device), method, share_weights=True)
        except QuantlensError:
            raise
        except CaptureError as e:  # no graph capture: fall back to hooks
            warnings.warn(
                f"{e.describe()}; using forward hooks "
                "instead: the same quantization (BatchNorm folded, activations fused), a full forward pass per layer",
                QuantlensWarning,
                stacklevel=3,
            )
            try:
                return self._hook_runner(model, sample)
            except QuantlensError:
                raise
            except Exception as e2:
                raise QuantlensError(
                    f"cannot analyse the model: {e.describe()}, and a plain forward pass failed too "
                    f"({type(e2).__name__}: {str(e2).splitlines()[0] if str(e2) else ''})"
                ) from None
        return ConeRunner(graph, self.device, full=(engine == "naive"), low_memory=(engine == "cone-lowmem"))

    def _hook_runner(self, model: nn.Module, sample: Batch) -> HookRunner:
        runner = HookRunner(model, sample[0].to(self.device), self.device)
        for note in runner.notes:
            warnings.warn(note, QuantlensWarning, stacklevel=4)
        return runner

    @property
    def layers(self):
        return [self.runner.layers[i] for i in self.layer_ids]

    def calibrate(self, data: Iterable[Any]) -> int:
        """Set every layer's input/output quantizer from min/max (or histograms) over ``data``."""
        spec = self.config.act_spec()
        if spec is None:
            return 0
        ins, outs, n = self.runner.observe(data, self.layer_ids, spec, self.device)
        for i in self.layer_ids:
            axis = channel_axis(self.runner.layers[i].op)
            self.runner.in_q[i].set(spec, ins[i], axis)
            self.runner.out_q[i].set(spec, outs[i], axis)
        return n

    # ---- accumulation ----------------------------------------------------------------------
    def new_state(self, layer_ids: Optional[Sequence[int]] = None) -> SweepState:
        ids = self.layer_ids if layer_ids is None else list(layer_ids)
        return SweepState(
            cells={(i, b): CellAccumulator(make_metric(self.metric_spec)) for i in ids for b in self.config.columns},
            baseline=make_metric(self.metric_spec),
            channels={i: ChannelStats() for i in ids},
            in_range={i: MinMaxObserver() for i in ids},
            out_range={i: MinMaxObserver() for i in ids},
        )

    def process_batch(
        self, state: SweepState, batch: Batch, on_layer: Optional[Callable[[], None]] = None,
        active: Optional[set] = None,
    ) -> None:
        """Add one batch to ``state`` for the layers it holds (only the ``(layer, bits)`` cells in
        ``active`` if given: an adaptive sweep's cells that still need data)."""
        inputs, labels = batch
        inputs = inputs.to(self.device)
        if labels is not None:
            labels = labels.to(self.device)
        layer_ids = sorted(state.channels)
        with analysis_mode():
            out, cache = self.runner.float_pass(inputs)
            y_model = extract_output(out, self.output_key)
            y_ref = y_model if self.reference is None else extract_output(inputs.call(self.reference), self.output_key)
            if not bool(torch.isfinite(y_model).all()) or not bool(torch.isfinite(y_ref).all()):
                raise QuantlensError(
                    f"the float model's output has NaN or Inf on batch {state.batches}: fix the model or its inputs "
                    "before analysing quantization"
                )
            update_metric(state.baseline, y_ref, y_ref, labels, inputs)
            signal = per_sample_sq(y_ref)
            for i in layer_ids:
                layer = self.runner.layers[i]
                axis = channel_axis(layer.op)
                x, o = self.runner.layer_io(cache, i)
                state.in_range[i].update(x)
                state.out_range[i].update(o)
                state.channels[i].update(o, axis)
                bits = [b for b in self.config.columns if active is None or (i, b) in active]
                weights = [self.qweights[(i, b)].weight for b in bits]
                for b, ev in zip(bits, self.runner.evaluations(cache, i, weights) if bits else ()):
                    y = extract_output(ev.output, self.output_key)
                    state.cells[(i, b)].update(y_ref, y, labels, signal, ev.layer_output, o, axis, inputs=inputs)
                    del ev, y  # not alive during the next cone pass
                if on_layer is not None:
                    on_layer()
        state.num_samples += int(y_ref.shape[0])
        state.batches += 1
        del cache, out
        trim_heap()  # resident memory stays one batch's, however many batches

KEEP_QUANTIZED_BYTES = 256 * 2**20
"""What :class:`QuantizedWeights` keeps at most (``QUANTLENS_KEEP_QUANTIZED_MB`` overrides it)."""


def keep_quantized_bytes() -> int:
    """The byte budget of the kept quantized weights: ``QUANTLENS_KEEP_QUANTIZED_MB`` (MB) if set,
    else :data:`KEEP_QUANTIZED_BYTES`."""
    env = os.environ.get("QUANTLENS_KEEP_QUANTIZED_MB")
    if env is None or env == "":
        return KEEP_QUANTIZED_BYTES
    try:
        mb = float(env)
    except ValueError:
        raise QuantlensError(f"QUANTLENS_KEEP_QUANTIZED_MB={env!r}: give a number of megabytes (e.g. 256)") from None
    return max(0, int(mb * 2**20))


def _nbytes(q: QuantizedWeight) -> int:
    return sum(t.numel() * t.element_size() for t in (q.weight, q.scale, q.zero_point, q.lo, q.hi)
               if isinstance(t, torch.Tensor))


class QuantizedWeights(dict):
    """``(layer, column) -> QuantizedWeight``, quantized on first use and kept while the kept ones
    take at most ``budget`` bytes (``sum of weight, scale, zero point, lo, hi``); beyond it a weight
    is quantized again on each use and not kept. Quantization is deterministic, so a weight
    quantized again is the kept one bit for bit; the first ones asked for stay (a sweep asks in
    the same order every batch, where a least-recently-used policy would keep none). A sweep that
    drops them (the estimate, during its gradient pass) gets them back on demand.

    Example:
        >>> q = QuantizedWeights(lambda i, b: quantize_weight(torch.ones(2, 2), spec), budget=0)  # doctest: +SKIP
        >>> q[(0, 4)] is q[(0, 4)], len(q)                                                        # doctest: +SKIP
        (False, 0)
    """

    def __init__(self, make: Callable[[int, Any], QuantizedWeight], budget: Optional[int] = None) -> None:
        super().__init__()
        self._make = make
        self.budget = keep_quantized_bytes() if budget is None else int(budget)
        self.kept_bytes = 0
        self.remade = 0  # quantized again (not kept: over the budget)

    def __missing__(self, key: tuple[int, Any]) -> QuantizedWeight:
        value = self._make(*key)
        size = _nbytes(value)
        if self.kept_bytes + size <= self.budget:
            self[key] = value
        else:
            self.remade += 1
        return value

    def __setitem__(self, key: tuple[int, Any], value: QuantizedWeight) -> None:
        old = dict.get(self, key)
        if old is not None:
            self.kept_bytes -= _nbytes(old)
        super().__setitem__(key, value)
        self.kept_bytes += _nbytes(value)

    def __delitem__(self, key: tuple[int, Any]) -> None:
        self.kept_bytes -= _nbytes(dict.__getitem__(self, key))
        super().__delitem__(key)

    def pop(self, key, *default):  # type: ignore[override]
        if key in self:
            self.kept_bytes -= _nbytes(dict.__getitem__(self, key))
        return super().pop(key, *default)

    def clear(self) -> None:
        super().clear()
        self.kept_bytes = 0


def _device(device: Union[str, torch.device]) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise QuantlensError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return d
