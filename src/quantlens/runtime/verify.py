"""``quantlens verify``: does the runtime give what the simulation predicted?

Over the same data, three networks are scored with the task metric ``H``: the float model
(``H_f``), quantlens's simulation of the quantized network (``H_s``) and the ONNX model in
onnxruntime (``H_r``). With the sign rule of :mod:`quantlens.metrics.task` (positive is worse)::

    predicted  = H_f - H_s          runtime = H_f - H_r          difference = runtime - predicted

The difference's 95% interval is a seeded paired bootstrap (2,000 resamples of the samples,
the same resample for both networks; per batch for a callable metric). A difference whose
interval excludes 0 is flagged: the runtime does not do what the simulation says, beyond
sampling noise. Also reported:

* ``agreement``: the share of samples whose top-1 (argmax of the flattened output) is the
  same in the runtime and in the simulation;
* ``sqnr_db``: ``10 log10(sum ||y_s||^2 / sum ||y_r - y_s||^2)`` (``inf``: identical);
* ``rounding``: the same comparisons between onnxruntime with all graph optimizations
  (integer kernels) and without (QDQ ops as written), so that the part of the difference
  that comes from onnxruntime's integer kernels is measured, not guessed.

``verify.json`` carries ``"schema": "quantlens/verify-v1"``.

Example:
    >>> r = verify_onnx("run/onnx/model.onnx", model, data, qnet)       # doctest: +SKIP
    >>> r.difference, r.difference_interval, r.agreement                # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from quantlens.core import jsonio
from quantlens.data.batches import extract_output, iterate
from quantlens.errors import QuantlensError
from quantlens.metrics.task import CallableMetric, Metric, SumMetric, make_metric
from quantlens.core.numerics import analysis_mode
from quantlens.runtime.ort import FUSED_OPS, RuntimeSession

__all__ = ["VerifyResult", "Comparison", "verify_onnx", "VERIFY_SCHEMA", "compare_outputs", "paired_bootstrap"]

VERIFY_SCHEMA = "quantlens/verify-v1"
RESAMPLES = 2000


@dataclass(frozen=True)
class Comparison:
    """Two networks' outputs on the same samples: top-1 agreement, SQNR of ``b`` against ``a``, max |b - a|."""

    agreement: float
    sqnr_db: float
    max_abs: float

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "sqnr_db": self.sqnr_db, "max_abs": self.max_abs}

    @classmethod
    def from_dict(cls, d: dict) -> "Comparison":
        return cls(jsonio.num(d["agreement"]), _num_inf(d["sqnr_db"], d.get("identical")), jsonio.num(d["max_abs"]))


def _num_inf(x: Any, identical: Any = None) -> float:
    return float("inf") if x is None and identical else jsonio.num(x)


def compare_outputs(a: Tensor, b: Tensor) -> Comparison:
    """Agreement of argmax, SQNR (dB) of ``b`` against ``a``, and the largest absolute difference."""
    fa, fb = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    agree = float((fa.argmax(1) == fb.argmax(1)).double().mean())
    noise = float(((fb - fa) ** 2).sum())
    sig = float((fa**2).sum())
    sqnr = float("inf") if noise == 0 else (10 * math.log10(sig / noise) if sig > 0 else float("-inf"))
    return Comparison(agree, sqnr, float((fb - fa).abs().max()) if fa.numel() else 0.0)


def _units(metric: Metric, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], batches: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit ``(score sums, counts)``: samples for a per-sample metric, batches otherwise."""
    if isinstance(metric, SumMetric) and not isinstance(metric, CallableMetric):
        if getattr(metric, "needs_labels", False) and labels is None:
            metric.update(y_ref[:1], y[:1], None)  # raises the metric's own one-line error
        s = metric.scores(y_ref.float(), y.float(), labels).double().numpy()
        return s, np.ones_like(s)
    sums, counts, start = [], [], 0
    for n in batches:
        m = make_metric(metric)
        sl = slice(start, start + n)
        m.update(y_ref[sl], y[sl], None if labels is None else labels[sl])
        sums.append(m.compute() * n)
        counts.append(n)
        start += n
    return np.asarray(sums), np.asarray(counts, dtype=float)


def paired_bootstrap(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], seed: int = 0,
                     resamples: int = RESAMPLES) -> tuple[tuple[float, float], tuple[float, float]]:
    """95% percentile intervals of ``mean(b) - mean(a)`` (paired) and of ``mean(a)``, from unit sums and counts."""
    rng = np.random.default_rng(seed)
    n = len(a[0])
    idx = rng.integers(0, n, size=(resamples, n))
    ma = a[0][idx].sum(1) / a[1][idx].sum(1)
    mb = b[0][idx].sum(1) / b[1][idx].sum(1)
    d = mb - ma
    return (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))), (float(np.percentile(ma, 2.5)), float(np.percentile(ma, 97.5)))


@dataclass(frozen=True)
class VerifyResult(jsonio.Artifact):
    """The runtime check (see module docstring). Degradations follow the sign rule (positive is worse)."""

    SCHEMA = VERIFY_SCHEMA
    WHAT = "verify result"
    FILE = "verify.json"

    metric_name: str
    higher_is_better: bool
    num_samples: int
    float_metric: float
    simulated_metric: float
    runtime_metric: float
    simulated_interval: tuple[float, float]
    difference_interval: tuple[float, float]
    runtime_vs_simulation: Comparison
    plain_vs_simulation: Comparison
    runtime_vs_plain: Comparison
    plain_metric: float
    runtime_ops: dict = field(default_factory=dict)
    recorded_metric: Optional[float] = None
    source: str = "export"
    extra: dict = field(default_factory=dict)

    def _deg(self, m: float) -> float:
        return (self.float_metric - m) if self.higher_is_better else (m - self.float_metric)

    @property
    def predicted(self) -> float:
        return self._deg(self.simulated_metric)

    @property
    def runtime(self) -> float:
        return self._deg(self.runtime_metric)

    @property
    def difference(self) -> float:
        return self.runtime - self.predicted + 0.0

    @property
    def flagged(self) -> bool:
        """The runtime differs from the simulation by more than the interval allows (0 outside it)."""
        lo, hi = self.difference_interval
        return not (lo - 1e-12 <= 0.0 <= hi + 1e-12)

    @property
    def within_simulated_interval(self) -> bool:
        lo, hi = self.simulated_interval
        return lo - 1e-12 <= self.runtime_metric <= hi + 1e-12

    @property
    def fused_ops(self) -> dict[str, int]:
        return {k: v for k, v in self.runtime_ops.items() if k in FUSED_OPS}

    def to_dict(self) -> dict:
        def comp(c: Comparison) -> dict:
            return {**c.to_dict(), "identical": c.sqnr_db == float("inf")}

        return jsonio.clean({
            "schema": VERIFY_SCHEMA,
            "metric": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "num_samples": self.num_samples,
            "source": self.source,
            "float": self.float_metric,
            "simulated": self.simulated_metric,
            "runtime": self.runtime_metric,
            "recorded": self.recorded_metric,
            "simulated_interval": list(self.simulated_interval),
            "predicted_degradation": self.predicted,
            "runtime_degradation": self.runtime,
            "difference": self.difference,
            "difference_interval": list(self.difference_interval),
            "interval_method": f"paired bootstrap, {RESAMPLES} resamples, seed 0, 95% percentile",
            "flagged": self.flagged,
            "within_simulated_interval": self.within_simulated_interval,
            "agreement": self.runtime_vs_simulation.agreement,
            "sqnr_db": self.runtime_vs_simulation.sqnr_db,
            "runtime_vs_simulation": comp(self.runtime_vs_simulation),
            "rounding": {
                "plain_metric": self.plain_metric,
                "plain_vs_simulation": comp(self.plain_vs_simulation),
                "runtime_vs_plain": comp(self.runtime_vs_plain),
                "runtime_ops": self.runtime_ops,
                "fused_integer_ops": self.fused_ops,
                "note": self.extra.get("rounding_note", "plain = onnxruntime with graph optimizations off (QDQ ops as written, "
                                       "float); runtime = all optimizations (integer kernels where onnxruntime fuses them)"),
            },
            **self.extra,
        })

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyResult":
        num = jsonio.num
        r = d["rounding"]
        known = {"schema", "metric", "higher_is_better", "num_samples", "source", "float", "simulated", "runtime", "recorded",
                 "simulated_interval", "predicted_degradation", "runtime_degradation", "difference", "difference_interval",
                 "interval_method", "flagged", "within_simulated_interval", "agreement", "sqnr_db", "runtime_vs_simulation", "rounding"}
        return cls(
            str(d["metric"]), bool(d["higher_is_better"]), int(d["num_samples"]), num(d["float"]), num(d["simulated"]), num(d["runtime"]),
            (num(d["simulated_interval"][0]), num(d["simulated_interval"][1])),
            (num(d["difference_interval"][0]), num(d["difference_interval"][1])),
            Comparison.from_dict(d["runtime_vs_simulation"]), Comparison.from_dict(r["plain_vs_simulation"]),
            Comparison.from_dict(r["runtime_vs_plain"]), num(r["plain_metric"]), dict(r.get("runtime_ops", {})),
            None if d.get("recorded") is None else float(d["recorded"]), str(d.get("source", "export")),
            {k: v for k, v in d.items() if k not in known},
        )


def verify_onnx(
    onnx_path: Union[str, os.PathLike],
    reference: Callable[..., Any],
    data: Iterable[Any],
    simulate: Callable[..., Any],
    *,
    feeds: Optional[Callable[[Any], tuple]] = None,
    metric: Union[str, Callable[..., Any], Metric] = "top1",
    output_key: Union[str, int, None] = None,
    recorded_metric: Optional[float] = None,
    source: str = "export",
    extra: Optional[dict] = None,
) -> VerifyResult:
    """Run ``onnx_path`` in onnxruntime (optimized and plain), ``simulate(inputs)`` and the float
    ``reference(inputs)`` over ``data`` (each batch's :class:`~quantlens.core.inputs.Inputs`), and
    compare them (module docstring). ``feeds(inputs)``: the ONNX model's input tensors, in
    order (default: the positional arguments)."""
    runtime, plain = RuntimeSession(onnx_path, optimized=True), RuntimeSession(onnx_path, optimized=False)
    ys: dict[str, list[Tensor]] = {"float": [], "sim": [], "rt": [], "plain": []}
    labels: list[Optional[Tensor]] = []
    batches: list[int] = []
    with analysis_mode():
        for b, (inputs, lab) in enumerate(iterate(data, "data")):
            inputs = inputs.to("cpu")
            args = tuple(feeds(inputs) if feeds is not None else inputs.args)
            runtime.check_inputs(args, b)
            ys["float"].append(extract_output(reference(inputs), output_key).detach().float().cpu())
            ys["sim"].append(extract_output(simulate(inputs), output_key).detach().float().cpu())
            ys["rt"].append(runtime.run(args, b))
            ys["plain"].append(plain.run(args, b))
            labels.append(lab)
            batches.append(int(inputs.batch_size))
    y = {k: torch.cat(v) for k, v in ys.items()}
    if y["rt"].shape != y["sim"].shape:
        raise QuantlensError(f"the ONNX model's output has shape {tuple(y['rt'].shape[1:])} per sample, the model's "
                             f"{tuple(y['sim'].shape[1:])}: give the --output-key the export used")
    lab = None if any(l is None for l in labels) else torch.cat([l.reshape(-1) for l in labels])  # type: ignore[union-attr]
    m = make_metric(metric)
    units = {k: _units(make_metric(metric), y["float"], y[k], lab, batches) for k in ("float", "sim", "rt", "plain")}

    def value(k: str) -> float:
        s, c = units[k]
        return float(s.sum() / c.sum())

    # difference = runtime - predicted = (sign)(H_s - H_r): bootstrap H_r - H_s, then apply the sign rule
    d_int, s_int = paired_bootstrap(units["sim"], units["rt"])
    hib = bool(m.higher_is_better)
    diff_int = (0.0 - d_int[1], 0.0 - d_int[0]) if hib else d_int
    diff_int = (diff_int[0] + 0.0, diff_int[1] + 0.0)  # no -0.0
    return VerifyResult(
        metric_name=str(getattr(m, "name", "custom")), higher_is_better=hib, num_samples=int(y["sim"].shape[0]),
        float_metric=value("float"), simulated_metric=value("sim"), runtime_metric=value("rt"),
        simulated_interval=s_int, difference_interval=diff_int,
        runtime_vs_simulation=compare_outputs(y["sim"], y["rt"]), plain_vs_simulation=compare_outputs(y["sim"], y["plain"]),
        runtime_vs_plain=compare_outputs(y["plain"], y["rt"]), plain_metric=value("plain"), runtime_ops=runtime.op_counts(),
        recorded_metric=recorded_metric, source=source, extra=dict(extra or {}),
    )
