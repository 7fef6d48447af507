"""What to do next: plain sentences derived from a :class:`SweepResult` (no recomputation).

Each culprit layer gets a share of the summed degradation and, when its stored statistics point
at one, a reason and a remedy:

* weight outliers -- ``max|w| / std`` above :data:`OUTLIER_RATIO` or more than
  :data:`OUTLIER_FRACTION` of the weights beyond 3 sigma: clip the range or go per-channel;
* bias shift -- ``mean_shift`` (in output std) above :data:`DW_SHIFT` on a depthwise layer, or
  :data:`SHIFT` elsewhere (the paper's section 4.4): bias correction;
* wide activations -- an input/output range :data:`WIDE_RANGE` times the median layer's: a
  clipping activation estimator.

Example:
    >>> for i in insights(result, bits=4): print(i.text)          # doctest: +SKIP
    conv1 accounts for 78% of the summed 4-bit degradation (1.56% of 2.00%). ...
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Optional

from quantlens.sweep.check import coverage
from quantlens.sweep.results import bits_label, weights_label
from quantlens.sweep.results import Cell, LayerInfo, SweepResult
from quantlens.stats.degradation import shares, summed_degradation
from quantlens.sweep.predicted import in_metric_units, predicted
from quantlens.report.fmt import Units, finite
from quantlens.report.noise import has_intervals, names as layer_list, noise_sentences, top_tier, verdict

__all__ = ["grid_sentence", "Insight", "insights", "worst_by_bits", "safe_bits", "OUTLIER_RATIO", "OUTLIER_FRACTION", "DW_SHIFT", "SHIFT", "WIDE_RANGE"]

OUTLIER_RATIO = 5.0
OUTLIER_FRACTION = 0.01
DW_SHIFT = 0.05
SHIFT = 0.2
WIDE_RANGE = 4.0
CULPRIT_SHARE = 0.10


@dataclass(frozen=True)
class Insight:
    """One sentence of advice; ``layer`` names the layer it is about, if any."""

    text: str
    layer: Optional[str] = None
    kind: str = "info"  # share | cause | safe | info | noise


def worst_by_bits(result: SweepResult, k: int = 3) -> dict[int, list[Cell]]:
    """The ``k`` worst layers at every swept bit-width."""
    return {b: result.worst(b, k) for b in result.w_bits}


def _adj(key: "int | str") -> str:
    """A column as an adjective: ``4-bit``, or the format's name."""
    return weights_label(key)


def safe_bits(result: SweepResult, layer: str, tol: float) -> Optional[int]:
    """The lowest swept bit-width from which ``layer`` stays within ``tol`` degradation."""
    ok: Optional[int] = None
    for b in reversed(result.w_bits):  # columns ascend (bits, or formats by effective bits)
        d = _deg(result, layer, b)
        if finite(d) and d <= tol:
            ok = b
        else:
            break
    return ok


def _deg(result: SweepResult, layer: str, bits: int) -> float:
    c = result.find(layer, bits)
    return c.degradation if c is not None else float("nan")


def _width(r: Optional[tuple[float, float]]) -> Optional[float]:
    if not r or not all(finite(x) for x in r):
        return None
    return float(r[1]) - float(r[0])


def _median_width(layers: tuple[LayerInfo, ...], attr: str) -> Optional[float]:
    ws = [w for w in (_width(getattr(l, attr)) for l in layers) if w and w > 0]
    return statistics.median(ws) if len(ws) >= 3 else None


_SOURCE_ADVICE = {
    "weights": "the noise comes from its weights{frac}, not its activations: clip its weight range or go per-channel",
    "input": "the noise comes from its input activation range{frac}, not its weights: clip that range "
             "(--act-estimator percentile or mse) or keep its input at higher precision",
    "output": "the noise comes from its output activation range{frac}, not its weights: widen or clip that range",
}



def grid_sentence(result: SweepResult) -> Optional[str]:
    """One sentence when layers' weights already sit on a quantization grid (a dequantized checkpoint):
    which grid, on how many layers, and that formats at or above it will look lossless there."""
    from collections import Counter

    from quantlens.quant.grids import Grid

    grids = Counter(l.weight.grid for l in result.layers if l.weight is not None and l.weight.grid)
    if not grids:
        return None
    parts = []
    for name, n in grids.most_common():
        g = Grid.from_name(name)
        parts.append(f"{n} on {name}" + (f" ({g.describe()})" if g is not None else ""))
    return (f"{sum(grids.values())} of {len(result.layers)} layers' weights already sit on a quantization grid: {'; '.join(parts)}. "
            "The model was loaded from quantized weights (a GGUF or GPTQ file, say): formats at or above that grid will look "
            "(nearly) lossless on those layers, which says more about the file than about the format.")

def causes(result: SweepResult, layer: LayerInfo, cell: Cell, a_quantized: bool) -> list[str]:
    """Reasons the stored statistics give for ``layer``'s degradation, each with a remedy."""
    out: list[str] = []
    w = layer.weight
    if w is not None and w.std > 0:
        n = max(1, sum(w.hist_counts) or layer.params)
        ratio, frac = w.absmax_over_std, w.outliers_3sigma / n
        if ratio >= OUTLIER_RATIO or frac >= OUTLIER_FRACTION:
            clipped = finite(cell.w_clip) and cell.w_clip < 0.999 * w.absmax
            out.append(
                f"its weights have outliers (max|w| = {ratio:.1f} std, {w.outliers_3sigma} of {n} weights beyond 3 sigma), "
                f"so the {weights_label(result.key_of(cell))} grid spends its levels on a few weights: "
                + ("the range is already clipped, try a tighter clip or per-channel granularity"
                   if clipped else "clip this layer's range (SAWB, MSE or percentile via --weight-estimator) or use per-channel granularity")
            )
    src = cell.noise_source
    if src is not None:
        parts = cell.noise_parts
        tot = sum(parts.values())
        frac = f" ({parts[src] / tot:.0%} of the split noise)" if tot > 0 else ""
        out.append(_SOURCE_ADVICE[src].format(frac=frac))
    ms = cell.mean_shift
    if finite(ms) and ((layer.kind == "depthwise" and ms >= DW_SHIFT) or ms >= SHIFT):
        out.append(
            f"quantization shifts the mean of its output by {ms:.2f} std"
            + (" (a depthwise layer: the bias shift of section 4.4)" if layer.kind == "depthwise" else "")
            + ": bias correction should recover it, and the sum of single-layer degradations will under-estimate the joint one"
        )
    if a_quantized:
        for attr, what in (("input_range", "input"), ("output_range", "output")):
            med, wd = _median_width(result.layers, attr), _width(getattr(layer, attr))
            if med and wd and wd >= WIDE_RANGE * med:
                lo, hi = getattr(layer, attr)
                out.append(
                    f"its {what} range [{lo:.3g}, {hi:.3g}] is {wd / med:.0f}x the median layer's, so the activation steps are coarse: "
                    "try --act-estimator percentile or mse"
                )
    return out


def insights(result: SweepResult, bits: int, units: Optional[Units] = None, tol: Optional[float] = None) -> list[Insight]:
    """Sentences for the summary at ``bits`` (``tol``: a negligible degradation, default 0.1% of top-1)."""
    u = units or Units.for_metric(result.metric_name)
    if tol is None:  # negligible: 1/50 of the heatmap's default saturation (0.1% of top-1)
        from quantlens.report.options import ReportOptions

        tol = ReportOptions().saturation(result.metric_name, result.baseline, [c.degradation for c in result.cells]) / 50
    cells = result.at(bits)
    info = {l.name: l for l in result.layers}
    check = result.extra.get("estimate")
    est_note: list[Insight] = []
    if check:
        rho = check.get("spearman")
        head = (f"These cells are a first-order estimate, checked on {coverage(check)}, measured exactly at "
                f"{bits_label(check.get('check_bits'))}: Spearman {rho:.2f}" if finite(rho) else
                f"These cells are a first-order estimate; its check measured {coverage(check)}, too few for a Spearman "
                "correlation (raise --check-budget)")
        if finite(rho) and rho >= 0.7:
            est_note.append(Insight(head + "; where a cell was not measured, the sentences below use its estimate (marked est.).", kind="noise"))
        else:
            est_note.append(Insight(head + ": the estimate cannot be trusted for this model; run the exact sweep (drop --estimate).",
                                    kind="noise"))
    # under --estimate a cell is measured (the check's) or estimated: the estimate in the metric's units where it
    # converts (nll, perplexity, token_kl), else the estimate itself, a score that only ranks (no sums in the metric's units)
    in_units = not check or in_metric_units(result.metric_name)
    estimated: set[str] = set()
    if check:
        cells, estimated = estimated_view(result, cells)
    total = summed_degradation(c.degradation for c in cells)
    out: list[Insight] = list(est_note)
    uniform: Optional[int] = None
    for b in reversed(result.w_bits) if in_units else ():  # columns ascend (bits, or formats by effective bits)
        if not all(finite(c.degradation) and c.degradation <= tol for c in (estimated_view(result, result.at(b))[0] if check else result.at(b))):
            break
        uniform = b
    by_est = f"; by the estimate: {len(estimated)} of {len(cells)} cells estimated, the rest measured" if estimated and in_units else ""

    def deg(c: Cell) -> str:  # a cell's degradation, marked where it is an estimate
        return (u.deg(c.degradation) if in_units else f"{c.degradation:.3g}") + (" est." if c.layer in estimated else "")

    if in_units and total <= tol:  # an estimate in KL units says nothing about a tolerance in the metric's
        out.append(Insight(f"At {bits_label(bits)} no layer alone costs more than {u.deg(tol)} of {result.metric_name}: "
                           f"quantize every layer's weights to {bits_label(bits)}.", kind="safe"))
    else:
        share = shares({c.layer: c.degradation for c in cells})
        ranked = sorted((c for c in cells if finite(c.degradation) and c.degradation > 0), key=lambda c: -c.degradation)
        noisy = has_intervals(cells) and not check  # an estimate ranks by its own numbers: its check says how sure
        out += [Insight(t, kind="noise") for t in noise_sentences(result, bits, u)]
        if noisy:  # rank only what the data can tell from zero, and name what it cannot rank
            ranked = [c for c in ranked if verdict(c) == "worse"]
        tier = top_tier(ranked) if noisy else ranked[:1]
        what = f"summed {_adj(bits)} degradation" if in_units else f"summed {_adj(bits)} estimate (a first-order score that ranks layers, not a {result.metric_name} figure)"
        if len(tier) == 1:
            top = tier[0]
            out.append(Insight(f"{top.layer} accounts for {'about ' if estimated else ''}{share[top.layer]:.0%} of the {what} "
                               f"({deg(top)} of {u.deg(total) if in_units else f'{total:.3g}'}{by_est})"
                               + (", significantly more than any other layer." if noisy and len(ranked) > 1 else "."), top.layer, "share"))
        elif tier:
            together = sum(share[c.layer] for c in tier)
            out.append(Insight(f"{layer_list(tier)} together account for {together:.0%} of the summed {_adj(bits)} degradation "
                               f"({u.deg(sum(c.degradation for c in tier))} of {u.deg(total)}); the data cannot rank them.",
                               tier[0].layer, "share"))
        cum, group = 0.0, []
        for c in ranked:
            group.append(c)
            cum += share[c.layer]
            if cum >= 0.8:
                break
        if group and 1 < len(group) < len(cells) and len(group) <= max(3, len(cells) // 4) and len(group) != len(tier):
            names = ", ".join(c.layer for c in group)
            out.append(Insight(f"{len(group)} of {len(cells)} layers ({names}) carry {cum:.0%} of it: keep those at higher "
                               f"precision and quantize the rest to {bits_label(bits)}.", kind="share"))
        a_quantized = any(c.a_bits for c in cells)
        for c in ranked:
            if share[c.layer] < CULPRIT_SHARE:
                break
            layer = info[c.layer]
            sb = safe_bits(result, c.layer, tol)
            keep = (f" It stays within {u.deg(tol)} from {bits_label(sb)} up." if sb is not None and result.w_bits.index(sb) > result.w_bits.index(bits)
                    else "")
            why = causes(result, layer, c, a_quantized)
            if why:
                text = f"{c.layer} ({deg(c)} at {bits_label(bits)}): " + "; ".join(why) + "." + keep
            else:
                w = layer.weight
                stats = f"max|w| = {w.absmax_over_std:.1f} std, {w.outliers_3sigma} weights beyond 3 sigma, " if w else ""
                text = (f"{c.layer} ({deg(c)} at {bits_label(bits)}): no stored statistic flags it ({stats}"
                        + (f"mean shift {c.mean_shift:.2f} std" if finite(c.mean_shift) else "mean shift not measured") + "); its sensitivity comes from its place in the network"
                        + (f" and its size ({layer.params:,} parameters)" if layer.params < 1000 else "")
                        + ": keep it at higher precision." + keep)
            out.append(Insight(text, c.layer, "cause"))
    if has_intervals(cells):
        clean: Optional[int] = None
        for b in reversed(result.w_bits):  # columns ascend (bits, or formats by effective bits)
            if any(c.interval is None or verdict(c) == "worse" for c in result.at(b)):  # every cell measured, none worse
                break
            clean = b
        if clean is not None:
            out.append(Insight(f"From {bits_label(clean)} up no layer is significantly worse than float on {result.num_samples:,} samples.",
                               kind="noise"))
    grid = grid_sentence(result)
    if grid is not None:
        out.append(Insight(grid, kind="info"))
    if not in_units:
        return out
    if uniform is not None:
        out.append(Insight(f"Every layer stays within {u.deg(tol)} from {bits_label(uniform)} up{' by the estimate' if check else ''}: "
                           "the lowest safe uniform weight " + ("bit-width." if isinstance(uniform, int) else "format."), kind="safe"))
    else:
        out.append(Insight(f"No swept bit-width keeps every layer within {u.deg(tol)}{' by the estimate' if check else ''}: "
                           "plan mixed precision or fix the culprit layers.", kind="info"))
    out.append(Insight(f"By the paper's additivity (Figure 2), quantizing every layer to {bits_label(bits)} should cost about the sum, "
                       f"{'about ' if estimated else ''}{u.deg(total)}{f' ({by_est[2:]})' if by_est else ''}; depthwise layers with a mean shift make the real figure larger.",
                       kind="info"))
    return out


def estimated_view(result: SweepResult, cells: list[Cell]) -> tuple[list[Cell], set[str]]:
    """``cells`` of an ``--estimate`` result as the summary reads them: a measured cell (the check's)
    as measured; any other with its estimate in the metric's units as its degradation
    (:func:`~quantlens.sweep.predicted.predicted`), or, for a metric the estimate does not convert
    to, every cell with its estimate (a score that ranks). Also the names of the estimated cells."""
    if not in_metric_units(result.metric_name):
        return [replace(c, degradation=c.estimate) for c in cells], {c.layer for c in cells}
    out, estimated = [], set()
    for c in cells:
        p = None if finite(c.degradation) else predicted(result, c)
        if p is None:
            out.append(c)
        else:
            out.append(replace(c, degradation=p))
            estimated.add(c.layer)
    return out, estimated
