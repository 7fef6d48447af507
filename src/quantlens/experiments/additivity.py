"""Additivity (the paper's Figure 2): do single-layer degradations add up?

For ``K`` random configurations, a random subset of layers gets ``low``-bit weights and the rest
``high``-bit weights (activations ``a_bits``). For each configuration::

    predicted = sum_l cell(l, bits_l).degradation      (single-layer sweep cells)
    measured  = degradation of the configuration quantized jointly

and the same for the output noise (``sum_l cell.noise`` against the joint ``noise``), which is
what the additivity argument is about (independent, zero-mean, small noises add). Reported:
Pearson ``r`` and the least-squares slope of measured on predicted, for both.

Subsets: with a seeded RNG, each configuration draws a size ``m`` uniformly in ``1..n`` and
then ``m`` distinct layers. Per layer, the relative mean shift of its output (``mean_c |E[o_q -
o]_c| / std_c``) is reported alone (the sweep cell at ``low`` bits) and with every layer at
``low`` bits; a layer whose own shift exceeds ``shift_threshold`` is flagged as the likely
reason when measured exceeds predicted (section 4.4: small-kernel, e.g. depthwise, layers).

``additivity.json`` carries ``"schema": "quantlens/additivity-v1"``.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence, Union


from quantlens.core.experiment import Column, ExperimentSpec, parse_column
from quantlens.core import jsonio
from quantlens.errors import QuantlensError
from quantlens.core.jsonio import num as _num
from quantlens.core.progress import make_progress
from quantlens.core.layer_config import QuantConfig
from quantlens.core.workload import RunOptions, Workload, check_workload
from quantlens.sweep.results import SweepResult

__all__ = [
    "ADDITIVITY_SCHEMA",
    "AdditivityPoint",
    "LayerShift",
    "AdditivityResult",
    "random_subsets",
    "pearson",
    "fit_line",
    "additivity",
    "run_additivity",
    "check_columns",
    "sweep_columns",
]

ADDITIVITY_SCHEMA = "quantlens/additivity-v1"


@dataclass(frozen=True)
class AdditivityPoint:
    """One configuration: which layers were at low bits, predicted and measured values."""

    low_bit_layers: list[str]
    predicted: float
    measured: float
    predicted_noise: float = float("nan")
    measured_noise: float = float("nan")
    measured_ci_low: float = jsonio.NAN  # paired 95% interval on ``measured``
    measured_ci_high: float = jsonio.NAN


@dataclass(frozen=True)
class LayerShift:
    """A layer's relative output mean shift, alone and with every layer at low bits."""

    layer: str
    kind: str
    mean_shift: float
    joint_mean_shift: float
    flagged: bool


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side has no spread."""
    n = len(x)
    if n < 2:
        return float("nan")
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y = slope * x + intercept``."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx <= 0:
        return float("nan"), float("nan")
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    return slope, my - slope * mx


@dataclass(frozen=True)
class AdditivityResult(jsonio.Artifact):
    """Predicted against measured degradation (and noise) over random configurations."""

    SCHEMA = ADDITIVITY_SCHEMA
    WHAT = "additivity result"
    FILE = "additivity.json"

    metric_name: str
    baseline: float
    low: Union[int, str]  # a weight bit-width or a format name
    high: Union[int, str]
    a_bits: Optional[int]
    seed: int
    points: tuple[AdditivityPoint, ...]
    layers: tuple[LayerShift, ...] = ()
    shift_threshold: float = 0.1
    num_samples: int = 0
    model: str = ""
    a_format: Optional[str] = None

    def _xy(self, noise: bool = False) -> tuple[list[float], list[float]]:
        """``(predicted, measured)`` over the points: degradations, or output noises."""
        if noise:
            return [p.predicted_noise for p in self.points], [p.measured_noise for p in self.points]
        return [p.predicted for p in self.points], [p.measured for p in self.points]

    @property
    def pearson_r(self) -> float:
        return pearson(*self._xy())

    @property
    def slope(self) -> float:
        return fit_line(*self._xy())[0]

    @property
    def noise_pearson_r(self) -> float:
        return pearson(*self._xy(noise=True))

    @property
    def noise_slope(self) -> float:
        return fit_line(*self._xy(noise=True))[0]

    @property
    def flagged(self) -> list[str]:
        return [l.layer for l in self.layers if l.flagged]

    def to_dict(self) -> dict:
        return jsonio.clean(
            {
                "schema": ADDITIVITY_SCHEMA,
                "model": self.model,
                "metric": self.metric_name,
                "baseline": self.baseline,
                "low": self.low,
                "high": self.high,
                "a_bits": self.a_bits,
                **({"a_format": self.a_format} if self.a_format else {}),
                "seed": self.seed,
                "num_samples": self.num_samples,
                "pearson_r": self.pearson_r,
                "slope": self.slope,
                "intercept": fit_line(*self._xy())[1],
                "noise_pearson_r": self.noise_pearson_r,
                "noise_slope": self.noise_slope,
                "points": [asdict(p) for p in self.points],
                "shift_threshold": self.shift_threshold,
                "layers": [asdict(l) for l in self.layers],
                "flagged": self.flagged,
            }
        )

    @classmethod
    def from_dict(cls, d: dict) -> "AdditivityResult":
        """From the dict of ``additivity.json`` (schema not checked here), tolerant of older files.

        ``pearson_r``, ``slope`` and ``flagged`` are not read: they are derived from the points
        and the layers. Missing fields read as: numbers NaN, ``low``/``high``/``seed``/``num_samples``
        0, ``metric`` and ``model`` ``""``, ``shift_threshold`` 0.1. A file with a ``flagged`` list but
        no ``layers`` gives one flagged :class:`LayerShift` per name (kind ``""``, shifts NaN).
        """
        pts = tuple(
            AdditivityPoint([str(n) for n in p.get("low_bit_layers") or []], _num(p.get("predicted")), _num(p.get("measured")),
                            _num(p.get("predicted_noise")), _num(p.get("measured_noise")), _num(p.get("measured_ci_low")),
                            _num(p.get("measured_ci_high")))
            for p in d.get("points") or [] if isinstance(p, dict)
        )
        if isinstance(d.get("layers"), list):
            lays = tuple(LayerShift(str(l["layer"]), str(l.get("kind", "")), _num(l.get("mean_shift")), _num(l.get("joint_mean_shift")),
                                    bool(l.get("flagged"))) for l in d["layers"] if isinstance(l, dict))
        else:
            lays = tuple(LayerShift(n, "", jsonio.NAN, jsonio.NAN, True) for n in d.get("flagged") or [] if isinstance(n, str))
        metric = d.get("metric")
        a_format = d.get("a_format")
        return cls(metric if isinstance(metric, str) else "", _num(d.get("baseline")), _col_field(d.get("low")), _col_field(d.get("high")),
                   d.get("a_bits"), _int(d.get("seed")), pts, lays, float(d.get("shift_threshold", 0.1)), _int(d.get("num_samples")),
                   str(d.get("model") or ""), a_format if isinstance(a_format, str) else None)


def _col_field(x: Any) -> Union[int, str]:
    """``low``/``high`` of a file: a bit-width, a format name; 0 when missing."""
    return x if isinstance(x, str) and x else _int(x)


def _int(x: Any) -> int:
    """An integer field of an older file; 0 when missing or not an integer."""
    return x if isinstance(x, int) and not isinstance(x, bool) else 0


def random_subsets(names: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """``k`` subsets: size uniform in ``1..n``, then that many distinct layers (topological order kept)."""
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        m = rng.randint(1, len(names))
        chosen = set(rng.sample(list(names), m))
        out.append([n for n in names if n in chosen])
    return out


def additivity(
    sweep: SweepResult,
    measure: Callable[[QuantConfig, bool], Any],
    *,
    low: Union[Column, QuantConfig] = 4,
    high: Column = 8,
    configs: int = 20,
    seed: int = 0,
    spec: ExperimentSpec = ExperimentSpec(),
    shift_threshold: float = 0.1,
    model_name: str = "",
    progress: bool = False,
) -> AdditivityResult:
    """Run the additivity experiment given a sweep at ``low`` and ``high`` (``progress``: a
    bar with an ETA on stderr, one step per whole-network measurement).

    ``low`` and ``high`` are weight bit-widths or format names (``low="nvfp4", high="fp8-e4m3"``);
    in a sweep over formats a bit-width stands for the integer format of the spec's granularity.
    ``low`` may also be a plan's :class:`~quantlens.core.layer_config.QuantConfig`: the random
    subsets are drawn among its layers, each at its planned bits or format (the rest at ``high``).
    ``measure(config, mean_shift)`` quantizes the network with ``config`` and returns a
    :class:`~quantlens.network.measure.NetworkResult` (a
    :class:`~quantlens.network.measure.NetworkMeasurer` does; see :func:`run_additivity`).
    """
    high = parse_column(high, "--high")
    if configs < 2:
        raise QuantlensError(f"--configs must be at least 2 to compute a correlation, got {configs}")
    if isinstance(low, QuantConfig):
        lows = spec.plan_columns(low, sweep.layer_names)
        spec.check_sweep(sweep, [*dict.fromkeys(lows.values()), high])
        label: Column = "plan"
    else:
        low, high = check_columns(low, high)
        spec.check_sweep(sweep, (low, high))
        lows = {n: low for n in sweep.layer_names}
        label = low
    lo_key = {n: spec.sweep_column(sweep, c) for n, c in lows.items()}
    hi_key = spec.sweep_column(sweep, high)
    names = sweep.layer_names

    def key(n: str, low_set: set) -> Column:
        return lo_key[n] if n in low_set else hi_key

    points = []
    bar = make_progress(progress, configs + 1, "additivity")
    try:
        for subset in random_subsets([n for n in names if n in lo_key], configs, seed):
            low_set = set(subset)
            cfg = QuantConfig(tuple((n, spec.layer(key(n, low_set))) for n in names))
            res = measure(cfg, False)
            cells = [sweep.cell(n, key(n, low_set)) for n in names]
            points.append(
                AdditivityPoint(subset, sum(c.degradation for c in cells), res.degradation, sum(c.noise for c in cells), res.noise,
                                res.ci_low, res.ci_high)
            )
            bar.advance()
        joint = measure(QuantConfig(tuple((n, spec.layer(key(n, set(lo_key)))) for n in names)), True)
        bar.advance()
    finally:
        bar.close()
    kinds = {l.name: l.kind for l in sweep.layers}
    shifts = []
    for n in names:
        own = sweep.cell(n, key(n, set(lo_key))).mean_shift
        shifts.append(LayerShift(n, kinds.get(n, ""), own, joint.mean_shift.get(n, float("nan")), bool(own > shift_threshold)))
    return AdditivityResult(
        sweep.metric_name, sweep.baseline, label, high, spec.a_bits, seed, tuple(points), tuple(shifts), shift_threshold, sweep.num_samples,
        model_name, spec.a_format,
    )


def sweep_columns(low: Union[Column, QuantConfig], high: Column, spec: ExperimentSpec) -> tuple[Union[Column, QuantConfig], Column, list[Column]]:
    """``(low, high, the columns the sweep needs)``: ``low`` a column (checked against ``high``) or a plan's config."""
    if isinstance(low, QuantConfig):
        high = parse_column(high, "--high")
        return low, high, [*spec.config_columns(low), high]
    low, high = check_columns(low, high)
    return low, high, [low, high]


def check_columns(low: Column, high: Column) -> tuple[Column, Column]:
    """``(low, high)`` parsed (bit-widths or format names); one line when they are the same."""
    lo, hi = parse_column(low, "--low"), parse_column(high, "--high")
    if lo == hi:
        what = "bit-widths" if isinstance(lo, int) else "formats"
        raise QuantlensError(f"--low and --high are both {lo}: give two different {what}")
    return lo, hi


def run_additivity(
    workload: "Workload",
    *,
    options: "RunOptions" = RunOptions(),
    low: Union[Column, QuantConfig] = 4,
    high: Column = 8,
    configs: int = 20,
    seed: int = 0,
    spec: ExperimentSpec = ExperimentSpec(),
    shift_threshold: float = 0.1,
    sweep: Optional[SweepResult] = None,
    model_name: str = "",
) -> AdditivityResult:
    """Sweep the workload's model at ``low`` and ``high`` (unless ``sweep`` is given; ``low`` may be a
    plan's config, see :func:`additivity`), then :func:`additivity` (``options``: device, and ``progress`` bars with an ETA on stderr).

    Example:
        >>> from quantlens import Workload, demo                                     # doctest: +SKIP
        >>> r = run_additivity(Workload(demo.model(), demo.data(), demo.calib()))      # doctest: +SKIP
        >>> r.pearson_r, r.slope                                                       # doctest: +SKIP
    """
    from quantlens.network.measure import make_measurer
    from quantlens.sweep.api import analyze

    check_workload(workload, "run_additivity")
    low, high, columns = sweep_columns(low, high, spec)
    w = workload
    if sweep is None:
        sweep = analyze(w, config=spec.sweep_config(columns), device=options.device, model_name=model_name,
                        progress=options.progress)
    else:
        spec.check_sweep(sweep, columns, w.metric)
    measurer = make_measurer(w, options)
    return additivity(
        sweep, measurer, low=low, high=high, configs=configs, seed=seed, spec=spec,
        shift_threshold=shift_threshold, model_name=model_name or type(w.model).__name__, progress=options.progress,
    )
