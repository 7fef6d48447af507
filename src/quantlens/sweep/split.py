"""Where a cell's output noise comes from: the layer's weights, its input quantizer, its output quantizer.

For layer ``i`` at weight bits ``b`` the sweep's cell quantizes three things at once. The split
re-runs the layer's cone three times per batch, each with one source alone (the others float)::

    weights  y_w,n = f(x_n; Q_b(W_i))                         (per bit-width)
    input    y_in,n = f(x_n; W_i, Q_a(input of i))             (one per layer: a_bits is fixed)
    output   y_out,n = f(x_n; W_i, Q_a(output of i))           (one per layer)
    noise_s  = mean_n ||y_n - y_s,n||^2

When the three errors are uncorrelated their noises add up to the cell's noise (as the paper's
single-layer noises add up across layers); :attr:`Cell.noise_source` names the largest part.
With float activations the input and output parts are NaN and the weights part is the cell.

The split is opt-in (``--split-noise``): it costs ``bits + 2`` cone passes per layer and batch
on top of the sweep's ``bits``.

Example:
    >>> r = ql.analyze(model, data, method=ql.Exact(split_noise=True))                # doctest: +SKIP
    >>> c = r.cell("conv2", 4); c.noise_source, c.noise_output       # doctest: +SKIP
    ('output', 0.031)
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional

from torch import Tensor

from quantlens.core import jsonio
from quantlens.engine.memory import trim_heap
from quantlens.metrics.task import make_metric
from quantlens.core.numerics import analysis_mode
from quantlens.engine.accumulate import CellAccumulator, per_sample_sq
from quantlens.data.batches import extract_output, iterate
from quantlens.sweep.results import SweepResult
from quantlens.engine.runner import ConeRunner, HookRunner

__all__ = ["PARTS", "split_noise", "evaluate_part"]

PARTS = ("weights", "input", "output")


@contextmanager
def _only(q_in: Any, q_out: Any, part: str) -> Iterator[None]:
    """Enable only the quantizer of ``part`` (weights: neither), restoring both on exit."""
    saved = (q_in.enabled, q_out.enabled)
    try:
        q_in.enabled = saved[0] and part == "input"
        q_out.enabled = saved[1] and part == "output"
        yield
    finally:
        q_in.enabled, q_out.enabled = saved


def evaluate_part(runner: Any, cache: dict[str, Any], i: int, part: str, weight: Optional[Tensor]) -> Any:
    """The network output with only ``part`` of layer ``i`` quantized (``weight``: its weight, for ``weights``)."""
    w = weight if part == "weights" else runner.float_weight(i)
    if isinstance(runner, HookRunner):
        plan = {i: (w, runner.in_q[i] if part == "input" else None, runner.out_q[i] if part == "output" else None)}
        out, _ = runner.run_quantized(cache["__inputs__"], plan)
        return out
    assert isinstance(runner, ConeRunner)
    with _only(runner.in_q[i], runner.out_q[i], part):
        ev = runner.run(cache, i, w)
        runner.cones[i].qlayer.set_weight(runner.float_weight(i))
    return ev.output


def split_noise(sweep: Any, data: Iterable[Any], result: SweepResult) -> SweepResult:
    """``result`` with ``noise_weights`` / ``noise_input`` / ``noise_output`` filled in (see module docstring)."""
    a_on = sweep.config.a_bits is not None
    parts: dict[tuple[int, Any], CellAccumulator] = {}
    for i in sweep.layer_ids:
        for b in sweep.config.columns:
            parts[(i, b)] = CellAccumulator(make_metric(sweep.metric_spec))
        if a_on:
            for p in ("input", "output"):
                parts[(i, p)] = CellAccumulator(make_metric(sweep.metric_spec))
    with analysis_mode():
        for inputs, labels in iterate(data, "data"):
            inputs = inputs.to(sweep.device)
            labels = None if labels is None else labels.to(sweep.device)
            out, cache = sweep.runner.float_pass(inputs)
            y_ref = extract_output(out if sweep.reference is None else inputs.call(sweep.reference), sweep.output_key)
            signal = per_sample_sq(y_ref)
            for i in sweep.layer_ids:
                for b in sweep.config.columns:
                    y = extract_output(evaluate_part(sweep.runner, cache, i, "weights", sweep.qweights[(i, b)].weight), sweep.output_key)
                    parts[(i, b)].update(y_ref, y, labels, signal)
                if a_on:
                    for p in ("input", "output"):
                        y = extract_output(evaluate_part(sweep.runner, cache, i, p, None), sweep.output_key)
                        parts[(i, p)].update(y_ref, y, labels, signal)
            del cache, out
            trim_heap()
    nan = jsonio.NAN
    by_name = {sweep.runner.layers[i].name: i for i in sweep.layer_ids}
    cells = []
    for c in result.cells:
        i = by_name[c.layer]
        cells.append(dataclasses.replace(
            c,
            noise_weights=parts[(i, result.key_of(c))].noise_mean,
            noise_input=parts[(i, "input")].noise_mean if a_on else nan,
            noise_output=parts[(i, "output")].noise_mean if a_on else nan,
        ))
    extra = {**result.extra, "split_noise": {"cone_passes_per_batch": len(parts)}}
    return dataclasses.replace(result, cells=tuple(cells), extra=extra)
