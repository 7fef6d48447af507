"""Mixed precision on the additive table: per-layer weight bits under a size budget.

A role sweep (``--group-by role``) plans one bit-width per role: its rows are roles, and the
plan is measured with every layer of a role at the role's bits.

Given the sweep cells ``d(l, b)`` (degradation of the network when only layer ``l`` is at ``b``
bits) and the additivity of Figure 2, choose one ``b_l`` per layer to::

    minimise  sum_l d(l, b_l)     subject to   sum_l params_l * b_l <= budget

(the budget is ``avg_bits * sum_l params_l`` bits, or ``8 * bytes``). This is a multiple-choice
knapsack; :func:`mckp` solves it exactly by dynamic programming over the Pareto frontier of
``(cost, value)`` states, layer by layer (a state survives only if no cheaper state has a value
as low). A negative cell (the layer quantized scores better than float: sampling noise on
small data) counts as 0 in the objective, and ties in degradation (common for top-1 on small
data) are broken by the summed output noise, then by size. ``predicted`` reports the plain sum.
A checked-estimate sweep (``--estimate``) plans on its estimates, in the metric's units where
they convert (:func:`cell_score`). The plan is then measured with every layer quantized at once and compared
with the uniform bit-width of the same size (the largest ``b`` with ``b * params <= budget``).

``plan.json`` carries ``"schema": "quantlens/plan-v1"``.

Example:
    >>> mckp([[(1, 5.0), (2, 1.0)], [(1, 3.0), (2, 0.0)]], capacity=3)
    ([1, 0], 4.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from quantlens.core.experiment import ExperimentSpec
from quantlens.core import jsonio
from quantlens.stats.degradation import positive_part
from quantlens.errors import QuantlensError
from quantlens.core.workload import RunOptions, Workload, check_workload
from quantlens.sweep.predicted import in_metric_units, predicted
from quantlens.sweep.results import Cell, SweepResult

__all__ = ["PLAN_SCHEMA", "cell_score", "mckp", "LayerPlan", "PlanResult", "plan_bits", "budget_capacity", "run_plan"]

PLAN_SCHEMA = "quantlens/plan-v1"

Value = Union[float, tuple]


def cell_score(sweep: SweepResult) -> Callable[[Cell], float]:
    """What the plan minimises per cell: the measured degradation; in a checked-estimate sweep
    (``--estimate``), the measured one where the check measured it and elsewhere the estimate in
    the metric's units (:func:`~quantlens.sweep.predicted.predicted`: perplexity
    ``ppl * (exp(delta) - 1)``); for a metric the estimate does not convert to (top-1, say),
    the estimate of every cell, a score in its own units (nats) that ranks layers."""
    if sweep.engine != "estimate":
        return lambda c: c.degradation
    if in_metric_units(sweep.metric_name):
        return lambda c: c.degradation if math.isfinite(c.degradation) else _or_nan(predicted(sweep, c))
    return lambda c: c.estimate


def _or_nan(x: Optional[float]) -> float:
    return float("nan") if x is None else x


def mckp(options: Sequence[Sequence[tuple[int, Value]]], capacity: int) -> tuple[list[int], Value]:
    """Exact multiple-choice knapsack: one option ``(cost, value)`` per group, least total value.

    Returns ``(chosen option index per group, total value)``; raises if nothing fits.
    Values may be floats or tuples (compared lexicographically and summed element-wise).
    """

    def add(a: Value, b: Value) -> Value:
        return tuple(x + y for x, y in zip(a, b)) if isinstance(a, tuple) else a + b  # type: ignore[operator,arg-type]

    zero: Value = tuple(0.0 for _ in options[0][0][1]) if options and isinstance(options[0][0][1], tuple) else 0.0
    states: list[tuple[int, Value, tuple[int, ...]]] = [(0, zero, ())]
    for group in options:
        cand = [(c + oc, add(v, ov), ch + (i,)) for c, v, ch in states for i, (oc, ov) in enumerate(group) if c + oc <= capacity]
        cand.sort(key=lambda s: (s[0], s[1]))
        states = []
        for s in cand:
            if not states or s[1] < states[-1][1]:
                states.append(s)
        if not states:
            raise QuantlensError("the budget is too small: even the lowest bit-width of every layer does not fit")
    best = min(states, key=lambda s: (s[1], s[0]))
    return list(best[2]), best[1]


def budget_capacity(params: int, budget_bits: Optional[float], budget_bytes: Optional[float]) -> int:
    """The budget in bits of weights, from an average bit-width or a byte count."""
    if (budget_bits is None) == (budget_bytes is None):
        raise QuantlensError("give exactly one of --budget (average weight bits) or --budget-bytes")
    if budget_bits is not None:
        if not math.isfinite(budget_bits) or budget_bits <= 0:
            raise QuantlensError(f"--budget must be a positive number of bits, got {budget_bits}")
        return int(math.floor(budget_bits * params + 1e-9))
    assert budget_bytes is not None
    if not math.isfinite(budget_bytes) or budget_bytes <= 0:
        raise QuantlensError(f"--budget-bytes must be positive, got {budget_bytes}")
    return int(math.floor(budget_bytes * 8 + 1e-9))


@dataclass(frozen=True)
class LayerPlan:
    """One layer's chosen bit-width and its sweep cell."""

    layer: str
    params: int
    w_bits: int
    predicted: float
    noise: float
    format: str = ""  # a plan over formats: the layer's format (``w_bits`` its element bits)
    effective_bits: float = 0.0  # storage bits per weight of that format, scales included (0: a plan over bit-widths)


def plan_bits(sweep: SweepResult, capacity: int, bits: Optional[Sequence[int]] = None) -> list[LayerPlan]:
    """The exact minimum-predicted-degradation choice of bits per layer (module docstring)."""
    bits = sorted(bits or sweep.w_bits)
    params = {l.name: l.params for l in sweep.layers}
    score = cell_score(sweep)
    options = []
    for n in sweep.layer_names:
        group = []
        for b in bits:
            c = sweep.cell(n, b)
            deg = round(positive_part(score(c)), 9)
            group.append((params[n] * b, (deg, 0.0 if math.isnan(c.noise) else c.noise)))
        options.append(group)
    lowest = sum(params[n] * bits[0] for n in sweep.layer_names)
    if lowest > capacity:
        total = sum(params.values())
        raise QuantlensError(
            f"the budget ({capacity / total:.3f} average bits, {capacity / 8:,.0f} bytes) is below the smallest plan "
            f"({bits[0]} bits everywhere = {lowest / 8:,.0f} bytes)"
        )
    choice, _ = mckp(options, capacity)
    out = []
    for n, i in zip(sweep.layer_names, choice):
        c = sweep.cell(n, bits[i])
        out.append(LayerPlan(n, params[n], bits[i], score(c), c.noise))
    return out


@dataclass(frozen=True)
class PlanResult(jsonio.Artifact):
    """A mixed-precision plan, measured, with the uniform plan of the same size."""

    SCHEMA = PLAN_SCHEMA
    WHAT = "plan"
    FILE = "plan.json"

    metric_name: str
    baseline: float
    budget_bits: float
    capacity_bits: int
    a_bits: Optional[int]
    layers: tuple[LayerPlan, ...]
    measured: float
    measured_metric: float
    uniform_bits: Optional[int]
    uniform_predicted: float
    uniform_measured: float
    uniform_metric: float
    extra: dict = field(default_factory=dict)
    measured_ci: tuple = (jsonio.NAN, jsonio.NAN)  # paired 95% interval on ``measured``
    uniform_ci: tuple = (jsonio.NAN, jsonio.NAN)  # and on ``uniform_measured``
    num_samples: int = 0

    def vs_uniform(self) -> Optional[dict]:
        """Plan vs uniform: ``gain`` (uniform minus plan degradation), whether it is ``significant``
        (:func:`quantlens.stats.resolve.separated`) and the samples that would resolve it; None
        without intervals or a uniform plan."""
        from quantlens.stats.intervals import Interval
        from quantlens.stats.resolve import samples_to_resolve, separated

        if self.uniform_bits is None or any(math.isnan(x) for x in (*self.measured_ci, *self.uniform_ci)) or self.num_samples < 2:
            return None
        a = Interval(self.measured_ci[0], self.measured_ci[1], "stored", self.num_samples)
        b = Interval(self.uniform_ci[0], self.uniform_ci[1], "stored", self.num_samples)
        gain = self.uniform_measured - self.measured
        sig = separated(a, self.measured, b, self.uniform_measured)
        return {"gain": gain, "significant": sig, "samples_to_resolve": 0 if sig else samples_to_resolve(gain, a, b)}

    @property
    def params(self) -> int:
        return sum(l.params for l in self.layers)

    @property
    def avg_bits(self) -> float:
        """Average bits per weight: the formats' effective bits in a plan over formats."""
        if self.layers and self.layers[0].format:
            return sum(l.params * l.effective_bits for l in self.layers) / self.params
        return sum(l.params * l.w_bits for l in self.layers) / self.params

    @property
    def predicted(self) -> float:
        return sum(l.predicted for l in self.layers)

    def to_dict(self) -> dict:
        p = self.params
        return jsonio.clean(
            {
                "schema": PLAN_SCHEMA,
                "metric": self.metric_name,
                "baseline": self.baseline,
                "budget": {"avg_bits": self.budget_bits, "bits": self.capacity_bits, "bytes": self.capacity_bits / 8},
                "a_bits": self.a_bits,
                "params": p,
                "avg_bits": self.avg_bits,
                "bytes": self.avg_bits * p / 8,
                "layers": [asdict(l) for l in self.layers],
                "w_bits": {l.layer: l.w_bits for l in self.layers},
                **({"formats": {l.layer: l.format for l in self.layers}, "effective_bits": self.avg_bits}
                   if self.layers and self.layers[0].format else {}),
                "predicted": self.predicted,
                "measured": self.measured,
                "measured_metric": self.measured_metric,
                "uniform": {
                    "w_bits": self.uniform_bits,
                    "avg_bits": self.uniform_bits,
                    "bytes": None if self.uniform_bits is None else self.uniform_bits * p / 8,
                    "predicted": self.uniform_predicted,
                    "measured": self.uniform_measured,
                    "metric": self.uniform_metric,
                    "ci": list(self.uniform_ci),
                },
                "measured_ci": list(self.measured_ci),
                "num_samples": self.num_samples,
                "vs_uniform": self.vs_uniform(),
                **self.extra,
            }
        )

    @classmethod
    def from_dict(cls, d: dict) -> "PlanResult":
        """From the dict of ``plan.json`` (schema not checked here), tolerant of older files.

        ``predicted``, ``avg_bits``, ``params`` and ``vs_uniform`` are not read: they are derived
        from the layers and the intervals. Older shapes: per-layer bits as ``layers: [{layer|name,
        w_bits|bits}]`` or as a dict ``w_bits|bits: {layer: b}`` (``params`` then 0 and the layer's
        ``predicted`` and ``noise`` NaN), ``budget`` as a number or ``{avg_bits}``, the uniform bits
        as ``uniform: {w_bits|bits|avg_bits}`` or ``uniform_bits``. Other missing numbers read as
        NaN, intervals as ``(NaN, NaN)``, ``num_samples`` 0. Keys the owner does not know
        (``group_by``, ``layer_bits`` of a role plan) are kept in ``extra``.
        """
        num = jsonio.num
        layers = [_layer_plan(r) for r in d["layers"] if isinstance(r, dict)] if isinstance(d.get("layers"), list) else []
        layers = [l for l in layers if l is not None]
        table = d.get("bits") if isinstance(d.get("bits"), dict) else d.get("w_bits")
        if not layers and isinstance(table, dict):
            layers = [LayerPlan(str(k), 0, int(v), jsonio.NAN, jsonio.NAN) for k, v in table.items() if _is_num(v)]
        budget = d.get("budget")
        avg, cap = (budget.get("avg_bits"), budget.get("bits")) if isinstance(budget, dict) else (budget, None)
        u: dict = d["uniform"] if isinstance(d.get("uniform"), dict) else {}
        ub = next((u[k] for k in ("w_bits", "bits", "avg_bits") if u.get(k) is not None), d.get("uniform_bits"))
        extra = {k: v for k, v in d.items() if k not in _PLAN_KEYS}
        return cls(
            str(d.get("metric") or ""), num(d.get("baseline")), num(avg), int(cap) if _is_num(cap) else 0, d.get("a_bits"), tuple(layers),
            num(d.get("measured")), num(d.get("measured_metric")), _bits(ub),
            num(u.get("predicted")), num(u.get("measured")), num(u.get("metric")), extra,
            measured_ci=_pair(d.get("measured_ci")), uniform_ci=_pair(u.get("ci")),
            num_samples=int(d["num_samples"]) if _is_num(d.get("num_samples")) and d["num_samples"] > 0 else 0,
        )


_PLAN_KEYS = frozenset({"schema", "metric", "baseline", "budget", "a_bits", "params", "avg_bits", "bytes", "layers", "w_bits", "bits", "predicted",
                        "measured", "measured_metric", "uniform", "uniform_bits", "measured_ci", "num_samples", "vs_uniform", "formats",
                        "effective_bits"})


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _bits(x: Any) -> Any:
    """A stored bit-width: an int when whole (a hand-written ``5.0``), None when absent."""
    if not _is_num(x):
        return None
    return int(x) if float(x).is_integer() else float(x)


def _pair(x: Any) -> tuple:
    """A stored ``[low, high]`` interval; ``(NaN, NaN)`` when absent."""
    if isinstance(x, (list, tuple)) and len(x) == 2:
        return (jsonio.num(x[0]), jsonio.num(x[1]))
    return (jsonio.NAN, jsonio.NAN)


def _layer_plan(r: dict) -> Optional[LayerPlan]:
    """One entry of ``layers``; older files may name it ``name`` and its bits ``bits``, without params or cells."""
    b = r.get("w_bits", r.get("bits"))
    if not _is_num(b):
        return None
    p = r.get("params")
    return LayerPlan(str(r.get("layer", r.get("name", "?"))), int(p) if _is_num(p) else 0, int(b), jsonio.num(r.get("predicted")),
                     jsonio.num(r.get("noise")), str(r.get("format") or ""),
                     float(r["effective_bits"]) if _is_num(r.get("effective_bits")) else 0.0)


def run_plan(
    workload: Workload,
    *,
    options: RunOptions = RunOptions(),
    budget: Optional[float] = None,
    budget_bytes: Optional[float] = None,
    w_bits: Sequence[int] = (3, 4, 5, 6, 7, 8),
    spec: ExperimentSpec = ExperimentSpec(),
    sweep: Optional[SweepResult] = None,
) -> PlanResult:
    """Sweep (unless given), plan under the budget, and measure the plan and the uniform baseline
    (``options.progress``: bars with an ETA on stderr, for the sweep and the two measurements).

    Example:
        >>> from quantlens import Workload, demo                                     # doctest: +SKIP
        >>> run_plan(Workload(demo.model(), demo.data()), budget=5.0).measured         # doctest: +SKIP
    """
    from quantlens.sweep.api import analyze
    from quantlens.network.measure import make_measurer
    from quantlens.experiments.role_sweep import role_members
    from quantlens.core.progress import make_progress
    from quantlens.core.layer_config import QuantConfig

    check_workload(workload, "run_plan")
    w, progress = workload, options.progress
    if sweep is None:
        sweep = analyze(w, config=spec.sweep_config(w_bits), device=options.device, progress=progress)
    else:
        spec.check_sweep(sweep, (), w.metric)
    bits = [b for b in sweep.w_bits if b in set(w_bits)]
    if not bits:
        raise QuantlensError(f"the sweep has none of the bit-widths {list(w_bits)} (it has {sweep.w_bits})")
    total = sum(l.params for l in sweep.layers)
    cap = budget_capacity(total, budget, budget_bytes)
    plan = plan_bits(sweep, cap, bits)
    members = role_members(sweep)

    def config(bits_of: Sequence[tuple[str, int]]) -> QuantConfig:
        """Per-layer settings; a role's bits go to every layer of the role."""
        return QuantConfig(tuple((l, spec.layer(b)) for n, b in bits_of for l in (members[n] if members else [n])))

    measurer = make_measurer(w, options)
    fits = [b for b in bits if b * total <= cap]
    ub = max(fits) if fits else None
    bar = make_progress(progress, 1 + (ub is not None), "plan")
    try:
        res = measurer(config([(p.layer, p.w_bits) for p in plan]))
        bar.advance()
        if ub is not None:
            uni = measurer(config([(n, ub) for n in sweep.layer_names]))
            u_pred, u_meas, u_metric = sum(cell_score(sweep)(sweep.cell(n, ub)) for n in sweep.layer_names), uni.degradation, uni.metric
            u_ci = (uni.ci_low, uni.ci_high)
            bar.advance()
        else:
            u_pred = u_meas = u_metric = float("nan")
            u_ci = (jsonio.NAN, jsonio.NAN)
    finally:
        bar.close()
    extra = {}
    if members:
        extra = {"group_by": "role", "layer_bits": {l: p.w_bits for p in plan for l in members[p.layer]}}
    return PlanResult(
        sweep.metric_name, sweep.baseline, cap / total, cap, spec.a_bits, tuple(plan), res.degradation, res.metric, ub, u_pred, u_meas, u_metric,
        extra, measured_ci=(res.ci_low, res.ci_high), uniform_ci=u_ci, num_samples=res.num_samples,
    )
