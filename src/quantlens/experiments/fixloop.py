"""Close the loop (section 4.2, Table 1): culprit layers, local fixes, whole-network table.

1. Rank culprits: layers of the sweep at ``w_bits`` with positive degradation, worst first.
2. For each culprit ``l`` and each candidate fix ``f``: apply ``f`` to ``l`` alone (a copy),
   re-measure the single-layer cell with the cone engine against the same reference, and keep
   the best fix only if its degradation is lower than the naive cell's (ties between fixes:
   lower output noise). ``significant`` says whether the gain is larger than the two cells'
   95% intervals allow by chance (:func:`quantlens.stats.resolve.separated`); a kept fix that
   is not significant is reported as such.
   Each culprit's symptoms are measured too (:mod:`.diagnosis`: weight and activation
   outliers, weights and blocks that round to zero), to say why it broke.
3. Measure, each with every layer quantized at once on the evaluation data: the float network,
   naive quantization, each fix applied to every layer (``global:sawb``, ``global:mse``,
   ``global:equalize+bias_correction``, plus ``global:<f>`` for any fix chosen locally), and
   the chosen local fixes (``local``), and the local fixes on top of the best global row
   (``local+global:<fix>``: the culprits keep their local fix, every other layer takes the
   global fix of least degradation; only when some fix was kept locally; when that is the
   global row's own network, its figures are that row's, with 0 seconds).

``fix.json`` carries ``"schema": "quantlens/fix-v1"``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional, Sequence, Union

from quantlens.core.experiment import Column, ExperimentSpec, parse_column
from quantlens.experiments.diagnosis import LayerDiagnosis, diagnose
from quantlens.core import jsonio
from quantlens.stats.degradation import degradation as _degradation
from quantlens.errors import QuantlensError
from quantlens.fixes import FixContext, check_fix, make_fix, not_applicable
from quantlens.fixes.base import FixRefused
from quantlens.core.jsonio import num as _num
from quantlens.core.progress import make_progress
from quantlens.core.layer_config import QuantConfig
from quantlens.core.workload import RunOptions, Workload, check_workload
from quantlens.network.measure import NetworkMeasurer
from quantlens.network.trials import TrialCell, TrialRunner
from quantlens.sweep.results import SweepResult, weights_label

__all__ = ["fix", "applicable_fixes", "FIX_SCHEMA", "DEFAULT_FIXES", "GLOBAL_ROWS", "FixRow", "LocalTrial", "FixResult", "rank_culprits", "fix_loop", "local_over"]

FIX_SCHEMA = "quantlens/fix-v1"
DEFAULT_FIXES = ("sawb", "mse", "mse_output", "percentile", "equalize", "bias_correction")
GLOBAL_ROWS: tuple[tuple[str, ...], ...] = (("sawb",), ("mse",), ("equalize", "bias_correction"))


@dataclass(frozen=True)
class FixRow:
    """One row of Table 1: a method measured with the whole network quantized."""

    method: str
    metric: float
    degradation: float
    noise: float
    sqnr_db: float
    fixes: dict = field(default_factory=dict)
    ci_low: float = jsonio.NAN
    ci_high: float = jsonio.NAN
    seconds: float = jsonio.NAN  # wall time to apply the row's fixes, build and measure the network


@dataclass(frozen=True)
class LocalTrial:
    """One fix tried on one culprit, measured as a single-layer cell."""

    layer: str
    fix: str
    degradation: float
    noise: float
    naive_degradation: float
    kept: bool = False
    ci_low: float = jsonio.NAN
    ci_high: float = jsonio.NAN
    significant: Optional[bool] = None  # the gain over the naive cell; None without intervals


@dataclass(frozen=True)
class FixResult(jsonio.Artifact):
    """Table 1 for the user's network, the local trials, and the chosen configuration."""

    SCHEMA = FIX_SCHEMA
    WHAT = "fix result"
    FILE = "fix.json"

    metric_name: str
    higher_is_better: bool
    w_bits: Union[int, str]  # the weights' bit-width, or their format's name
    a_bits: Optional[int]
    culprits: tuple[str, ...]
    trials: tuple[LocalTrial, ...]
    rows: tuple[FixRow, ...]
    config: QuantConfig
    num_samples: int = 0
    model: str = ""
    skipped: tuple[tuple[str, str], ...] = ()  # (fix, or "fix on layer", or "global:fix"; why it was not tried)
    a_format: Optional[str] = None
    diagnosis: tuple[tuple[str, LayerDiagnosis], ...] = ()  # per culprit: why it broke (:mod:`.diagnosis`)

    def row(self, method: str) -> FixRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise QuantlensError(f"no row {method!r} in the fix table")

    def vs_naive(self, method: str) -> Optional[dict]:
        """Row ``method`` against naive quantization: ``gain`` (naive minus its degradation),
        whether it is ``significant`` (:func:`quantlens.stats.resolve.separated`) and the samples
        that would resolve it; None for the naive row itself, without intervals or either row."""
        return self.versus(method, "naive")

    def versus(self, method: str, base: str) -> Optional[dict]:
        """Row ``method`` against row ``base`` (``vs_naive``'s fields; ``gain`` is ``base``'s
        degradation minus ``method``'s); None for the same row, without intervals or either row."""
        import math

        from quantlens.stats.intervals import Interval
        from quantlens.stats.resolve import samples_to_resolve, separated

        rows = {r.method: r for r in self.rows}
        naive, row = rows.get(base), rows.get(method)
        if naive is None or row is None or row is naive:
            return None
        vals = (naive.ci_low, naive.ci_high, row.ci_low, row.ci_high, naive.degradation, row.degradation)
        if any(not math.isfinite(x) for x in vals) or self.num_samples < 2:
            return None
        a = Interval(naive.ci_low, naive.ci_high, "stored", self.num_samples)
        b = Interval(row.ci_low, row.ci_high, "stored", self.num_samples)
        gain = naive.degradation - row.degradation
        sig = separated(a, naive.degradation, b, row.degradation)
        return {"gain": gain, "significant": sig, "samples_to_resolve": 0 if sig else samples_to_resolve(gain, a, b)}

    def best_global(self) -> Optional[FixRow]:
        """The ``global:...`` row of least degradation (None without one)."""
        return _best_global(self.rows)

    @property
    def local_fixes(self) -> dict[str, list[str]]:
        return {n: list(lq.fixes) for n, lq in self.config.layers if lq.fixes}

    def to_dict(self) -> dict:
        return jsonio.clean(
            {
                "schema": FIX_SCHEMA,
                "model": self.model,
                "metric": self.metric_name,
                "higher_is_better": self.higher_is_better,
                "w_bits": self.w_bits,
                **({"format": self.w_bits} if isinstance(self.w_bits, str) else {}),
                "a_bits": self.a_bits,
                **({"a_format": self.a_format} if self.a_format else {}),
                "num_samples": self.num_samples,
                "skipped": {f: why for f, why in self.skipped},
                "culprits": list(self.culprits),
                "rows": [asdict(r) for r in self.rows],
                "trials": [asdict(t) for t in self.trials],
                "config": self.config.to_dict(),
                "diagnosis": {n: d.to_dict() for n, d in self.diagnosis},
            }
        )

    @classmethod
    def from_dict(cls, d: dict) -> "FixResult":
        """From the dict of ``fix.json`` (schema not checked here), tolerant of older files.

        Missing fields read as: intervals, noise, SQNR and degradations NaN (a row's missing
        degradation is derived from the ``float`` row's metric, :func:`quantlens.stats.degradation.degradation`);
        ``significant`` None; ``w_bits`` 0 (unknown); ``culprits`` (); ``config`` float
        everywhere; ``metric`` ``"metric"``; ``higher_is_better`` True; ``num_samples`` 0.
        A row's ``fixes`` value may be one name or a list of names.
        """
        hib = d.get("higher_is_better") is not False
        raw = [r for r in d.get("rows") or [] if isinstance(r, dict)]
        base = next((_num(r.get("metric")) for r in raw if r.get("method") == "float"), None)
        rows = tuple(
            FixRow(str(r.get("method", "?")), _num(r.get("metric")), _row_degradation(r, base, hib), _num(r.get("noise")), _sqnr(r),
                   _fix_names(r.get("fixes")), _num(r.get("ci_low")), _num(r.get("ci_high")), _num(r.get("seconds")))
            for r in raw
        )
        trials = tuple(
            LocalTrial(str(t.get("layer", "?")), str(t.get("fix", "?")), _num(t.get("degradation")), _num(t.get("noise")),
                       _num(t.get("naive_degradation")), bool(t.get("kept")), _num(t.get("ci_low")), _num(t.get("ci_high")),
                       t["significant"] if isinstance(t.get("significant"), bool) else None)
            for t in d.get("trials") or [] if isinstance(t, dict)
        )
        config = QuantConfig.from_dict(d["config"]) if isinstance(d.get("config"), dict) else QuantConfig()
        w = d.get("w_bits")
        skipped = d.get("skipped") if isinstance(d.get("skipped"), dict) else {}
        a_format = d.get("a_format")
        diag = d.get("diagnosis") if isinstance(d.get("diagnosis"), dict) else {}
        return cls(str(d.get("metric", "metric")), hib, w if isinstance(w, str) and w else _count_field(w), d.get("a_bits"),
                   tuple(str(c) for c in d.get("culprits") or ()), trials, rows, config, _count_field(d.get("num_samples")),
                   str(d.get("model") or ""), tuple((str(k), str(v)) for k, v in skipped.items()),
                   a_format if isinstance(a_format, str) else None,
                   tuple((str(n), LayerDiagnosis.from_dict(v)) for n, v in diag.items() if isinstance(v, dict)))


def _count_field(x: Any) -> int:
    """A positive integer field of an older file; 0 when missing or not a positive integer."""
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 else 0


def _row_degradation(r: dict, float_metric: Optional[float], higher_is_better: bool) -> float:
    """The row's stored degradation; for an older file without one, from the ``float`` row's metric."""
    if r.get("degradation") is not None or float_metric is None:
        return _num(r.get("degradation"))
    return _degradation(float_metric, _num(r.get("metric")), higher_is_better)


def _fix_names(fx: Any) -> dict:
    """``{layer: [fix, ...]}`` from a row's ``fixes`` (a value may be a single name)."""
    if not isinstance(fx, dict):
        return {}
    return {str(k): [str(x) for x in (v if isinstance(v, (list, tuple)) else [v])] for k, v in fx.items()}


def _sqnr(r: dict) -> float:
    """JSON has no Inf: a null SQNR with zero noise is +Inf (the float row)."""
    if r.get("sqnr_db") is None and r.get("noise") == 0:
        return float("inf")
    return _num(r.get("sqnr_db"))


def rank_culprits(sweep: SweepResult, bits: Column, k: int = 3) -> list[str]:
    """Up to ``k`` layers with positive degradation at ``bits``, worst first."""
    return [c.layer for c in sweep.worst(bits, k=len(sweep.layers)) if c.degradation > 0][:k]


def _gain_significant(naive: Any, fixed: Any) -> Optional[bool]:
    """Whether ``fixed`` (a cell) is significantly better than ``naive`` (None without intervals)."""
    from quantlens.stats.resolve import separated

    a, b = naive.interval, fixed.interval
    if a is None or b is None:
        return None
    return fixed.degradation < naive.degradation and separated(a, naive.degradation, b, fixed.degradation)


def fix_loop(
    workload: Workload,
    sweep: SweepResult,
    *,
    options: RunOptions = RunOptions(),
    w_bits: Column = 8,
    spec: ExperimentSpec = ExperimentSpec(),
    candidates: Sequence[str] = DEFAULT_FIXES,
    top: int = 3,
    global_rows: Sequence[Sequence[str]] = GLOBAL_ROWS,
    model_name: str = "",
    config: Optional[QuantConfig] = None,
) -> tuple[FixResult, NetworkMeasurer]:
    """Run steps 1-3 of the module docstring on ``workload`` (model, data, calibration data,
    metric, reference, output key); returns the result and the measurer used.

    ``candidates``: fixes tried on each culprit, all measured together by a
    :class:`~quantlens.network.trials.TrialRunner` (one float pass per batch, each trial's cone
    only); ``top``: at most this many culprits; ``options``: device, and ``progress`` (a bar with
    an ETA on stderr);
    ``global_rows``: the fix sets applied to every layer for the ``global:...`` rows (the
    contract's three by default; each fix chosen locally is added as ``global:<fix>``).
    ``config``: a plan (each layer at its own bits or format, :meth:`ExperimentSpec.plan_columns`)
    as the naive network instead of every layer at ``w_bits``; culprits are ranked by each layer's
    cell at its planned column, and a fix is tried (or applied globally) only where it applies to
    the layer's format; ``w_bits`` of the result is ``"plan"``.
    """
    check_workload(workload, "fix_loop")
    for f in candidates:
        check_fix(f)
    measurer = NetworkMeasurer(workload, options)
    names = measurer.names
    if config is None:
        col = parse_column(w_bits, "--w-bits")
        spec.check_sweep(sweep, (col,), workload.metric)
        column: Column = spec.sweep_column(sweep, col)  # in a sweep over formats, a bit-width is the integer format
        key = {n: column for n in names}
        naive = QuantConfig(tuple((n, spec.layer(column)) for n in names))
    else:  # a plan: each layer at its own bits or format
        cols = spec.plan_columns(config, names)
        spec.check_sweep(sweep, list(dict.fromkeys(cols.values())), workload.metric)
        key = {n: spec.sweep_column(sweep, c) for n, c in cols.items()}
        naive = QuantConfig(tuple((n, spec.layer(k)) for n, k in key.items()), config.act_estimator)
        column = "plan"
    candidates, skipped = applicable_fixes(candidates, list(dict.fromkeys(key.values())), spec, global_rows)
    applies = {(n, f): not_applicable(f, naive.layer(n).weight_spec()) is None for n in key for f in {*candidates, *(f for fs in global_rows for f in fs)}}
    if config is None:
        culprits = rank_culprits(sweep, column, top)
    else:
        ranked = sorted((sweep.cell(n, k) for n, k in key.items()), key=lambda c: -c.degradation)
        culprits = [c.layer for c in ranked if c.degradation > 0][:top]
    global_sets = [tuple(fs) for fs in global_rows if not all(f in skipped for f in fs)]
    why = diagnose(measurer.graph, culprits, naive, measurer.calib, measurer.device)
    bar = make_progress(options.progress, _batches(measurer, len(culprits) * len(candidates) > 0) + _row_steps(global_sets, candidates), "fix")
    try:
        pairs = [(layer, f) for layer in culprits for f in candidates if applies[(layer, f)]]
        refused: dict[tuple[str, str], str] = {}
        cells = _local_cells(measurer, naive, pairs, bar.advance, refused)
        skipped.update({f"{f} on {layer}": why for (layer, f), why in refused.items()})
        trials: list[LocalTrial] = []
        chosen = naive
        for layer in culprits:
            naive_cell = sweep.cell(layer, key[layer])
            base = naive_cell.degradation
            results = [(cells[(layer, f)].degradation, cells[(layer, f)].noise, f) for f in candidates if (layer, f) in cells]
            best = min(results) if results else None
            keep = best is not None and best[0] < base
            for deg, noise, f in results:
                c = cells[(layer, f)]
                trials.append(LocalTrial(layer, f, deg, noise, base, keep and f == best[2], c.ci_low, c.ci_high,  # type: ignore[index]
                                         _gain_significant(naive_cell, c)))
            if keep:
                chosen = chosen.with_fix(best[2], [layer])  # type: ignore[index]
        rows = [_timed("float", measurer, QuantConfig()), _timed("naive", measurer, naive)]
        bar.advance(2)
        for fs in chosen.fix_layers():
            if (fs,) not in global_sets:
                global_sets.append((fs,))
        bar.set_total(_batches(measurer, bool(cells)) + 3 + len(global_sets) + bool(chosen.fix_layers()))
        global_cfgs: dict[str, QuantConfig] = {}
        for fs in global_sets:
            cfg = naive
            for f in fs:
                cfg = cfg.with_fix(f, [n for n in key if applies[(n, f)]])  # every candidate and global fix is in applies
            try:
                rows.append(_timed("global:" + "+".join(fs), measurer, cfg))
                global_cfgs["global:" + "+".join(fs)] = cfg
            except FixRefused as e:  # e.g. awq where a plan gives siblings formats it does not all apply to
                skipped["global:" + "+".join(fs)] = str(e)
            bar.advance()
        local_fixes = {n: list(lq.fixes) for n, lq in chosen.layers if lq.fixes}
        rows.append(_timed("local", measurer, chosen, local_fixes))
        bar.advance()
        best = _best_global(rows)
        if best is not None and local_fixes:
            both = local_over(global_cfgs[best.method], chosen)
            if both == global_cfgs[best.method]:  # every culprit kept the global fix itself: the same network, not measured twice
                rows.append(replace(best, method="local+" + best.method, fixes=local_fixes, seconds=0.0))
            else:
                rows.append(_timed("local+" + best.method, measurer, both, local_fixes))
            bar.advance()
    finally:
        bar.close()
    return (
        FixResult(sweep.metric_name, sweep.higher_is_better, column, spec.a_bits, tuple(culprits), tuple(trials), tuple(rows), chosen,
                  sweep.num_samples, model_name, tuple(skipped.items()), spec.a_format, tuple(why.items())),
        measurer,
    )


def applicable_fixes(candidates: Sequence[str], column: Union[Column, Sequence[Column]], spec: ExperimentSpec = ExperimentSpec(),
                     global_rows: Sequence[Sequence[str]] = ()) -> tuple[list[str], dict[str, str]]:
    """``(candidates that apply to weights at column, {fix: why not})``: ``why not`` for each
    candidate or global rows' fix that applies to none of the columns (a plan has several); one
    line when no candidate applies to any."""
    columns = [column] if isinstance(column, (int, str)) else list(column)
    specs = [spec.layer(c).weight_spec() for c in columns]
    skipped = {}
    for f in dict.fromkeys([*candidates, *(f for fs in global_rows for f in fs)]):
        whys = [not_applicable(f, s) for s in specs]
        if all(w is not None for w in whys):
            skipped[f] = "; ".join(dict.fromkeys(w for w in whys if w is not None))
    kept = [f for f in candidates if f not in skipped]
    if not kept:
        what = weights_label(columns[0]) if len(columns) == 1 else "the plan's"
        raise QuantlensError(f"none of the fixes applies to {what} weights: " + "; ".join(f"{f}: {why}" for f, why in skipped.items()))
    return kept, skipped


def _best_global(rows: Sequence[FixRow]) -> Optional[FixRow]:
    """The ``global:...`` row of least finite degradation, or None."""
    cands = [r for r in rows if r.method.startswith("global:") and math.isfinite(r.degradation)]
    return min(cands, key=lambda r: r.degradation) if cands else None


def local_over(global_cfg: QuantConfig, local: QuantConfig) -> QuantConfig:
    """The row ``local+global:<fix>``: every layer as in ``global_cfg`` (the best global fix
    applied everywhere it applies), except the culprits that kept a local fix, which carry
    their local fixes *instead of* the global one (each was chosen against the naive layer, so
    stacking both would be a configuration nobody measured on that layer)."""
    out = global_cfg
    for n, lq in local.layers:
        if lq.fixes:
            out = out.with_layer(n, fixes=lq.fixes)
    return out


def _timed(method: str, measurer: NetworkMeasurer, cfg: QuantConfig, fixes: Optional[dict] = None) -> FixRow:
    """The row of ``cfg``: its fixes applied, the network built and measured, and the seconds that took."""
    t0 = time.perf_counter()
    r = measurer(cfg)
    return FixRow(method, r.metric, r.degradation, r.noise, r.sqnr_db, fixes or {}, r.ci_low, r.ci_high, time.perf_counter() - t0)


def _local_cells(measurer: NetworkMeasurer, naive: QuantConfig, pairs: Sequence[tuple[str, str]],
                 advance: Any, refused: dict[tuple[str, str], str]) -> dict[tuple[str, str], TrialCell]:
    """Each ``(culprit, fix)``'s single-layer cell: the fix applied to the culprit alone, the
    culprit quantized as ``naive`` says, every other layer float. Culprits quantized alike share
    one :class:`~quantlens.network.trials.TrialRunner` pass (a plan's culprits may differ).
    A pair the fix refuses where the layer stands (:class:`~quantlens.fixes.base.FixRefused`)
    goes into ``refused`` with its line instead."""
    by_quant: dict[tuple, list[tuple[str, str]]] = {}
    for layer, f in pairs:
        lq = naive.layer(layer)
        by_quant.setdefault((lq.weight_spec(), lq.act_spec(naive.act_estimator)), []).append((layer, f))
    ref = measurer.cached_reference
    out: dict[tuple[str, str], TrialCell] = {}
    for (wspec, aspec), group in by_quant.items():
        assert wspec is not None
        trials, tried = [], []
        for layer, f in group:
            ctx = FixContext(QuantConfig(((layer, naive.layer(layer)),)), measurer.calib, measurer.device)  # the cell's network
            try:
                trials.append((layer, make_fix(f, ctx).apply(measurer.graph, [layer])))
                tried.append((layer, f))
            except FixRefused as e:  # not where this layer stands (awq on one of q/k/v): named, not tried
                refused[(layer, f)] = str(e)
        if not trials:
            continue
        runner = TrialRunner(measurer.graph, lambda b, inputs: ref.get(b, inputs, measurer.output_key), wspec, aspec, measurer.device,
                             measurer.output_key)
        out.update(zip(tried, runner.run(trials, measurer.data, measurer.calib, measurer.metric, on_batch=advance)))
    return out


def _batches(measurer: NetworkMeasurer, trials: bool) -> int:
    """Progress steps of the local trials: one per calibration batch and one per data batch."""
    if not trials:
        return 0
    return _count(measurer.calib) + _count(measurer.data)


def _count(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        return 0


def _row_steps(global_sets: Sequence[tuple[str, ...]], candidates: Sequence[str]) -> int:
    """Whole-network rows: float, naive, each global set, one per fix that may be chosen locally,
    local, local plus the best global fix."""
    return 4 + len(global_sets) + len({f for f in candidates if (f,) not in global_sets})


def fix(
    workload: Workload,
    sweep: Optional[SweepResult] = None,
    *,
    options: RunOptions = RunOptions(),
    w_bits: Column = 8,
    spec: ExperimentSpec = ExperimentSpec(),
    candidates: Sequence[str] = DEFAULT_FIXES,
    top: int = 3,
    global_rows: Sequence[Sequence[str]] = GLOBAL_ROWS,
    model_name: str = "",
    config: Optional[QuantConfig] = None,
) -> FixResult:
    """``quantlens.fix``: sweep at ``w_bits`` (or at the columns of a plan's ``config``) unless
    ``sweep`` is given (which must match the spec), then :func:`fix_loop`; the paper's Table 1 for
    the workload's model.

    Example:
        >>> r = fix(Workload(model, data, calib), w_bits=6)          # doctest: +SKIP
        >>> r.row("local").degradation, r.row("naive").degradation    # doctest: +SKIP
    """
    check_workload(workload, "fix")
    if "gptq" in candidates:  # its Hessian's size, before the sweep
        from quantlens.fixes.gptq import check_calibration_rows

        check_calibration_rows(workload.model, workload.calib_data)
    if sweep is None:
        from quantlens.sweep.api import analyze

        cols = [w_bits] if config is None else spec.config_columns(config)
        sweep = analyze(workload, config=spec.sweep_config(cols), device=options.device, progress=options.progress,
                        model_name=model_name)
    return fix_loop(workload, sweep, options=options, w_bits=w_bits, spec=spec, candidates=candidates, top=top,
                    global_rows=global_rows, model_name=model_name, config=config)[0]
