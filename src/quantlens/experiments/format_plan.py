"""Mixed formats on the additive table: one number format per layer under an effective-bits budget.

Given the sweep over formats, ``d(l, f)`` (the degradation when only layer ``l`` is in format
``f``), choose one format per *group* ``G`` of layers that read the same tensor (q/k/v, gate/up:
:func:`~quantlens.graph.layers.sibling_groups`; fused kernels need one format per group; every
layer its own group with ``fuse_siblings=False``)::

    minimise  sum_G sum_{l in G} d(l, f_G)   subject to   sum_G sum_{l in G} params_l * bits(f_G) <= B * sum_l params_l

with ``bits(f)`` the format's effective bits per weight, scales included (``nvfp4`` 4.5,
``mxfp4`` 4.25, FP8 8, ``bf16`` 16) and ``B`` the average budget. The same exact
multiple-choice knapsack as the bit-width plan (:func:`quantlens.experiments.plan.mckp`); a
negative cell counts as 0, ties are broken by the summed output noise. The plan is measured with
the whole network quantized, and so is every format alone (``uniform`` in ``plan.json``), each
with its paired 95% interval.

Example:
    >>> plan = run_format_plan(Workload(model, data, metric="perplexity", output_key="logits"),  # doctest: +SKIP
    ...                        budget=6.0, formats=["nvfp4", "fp8-e4m3", "bf16"])
    >>> plan.avg_bits, plan.extra["uniform_formats"]["nvfp4"]["measured"]                      # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

from quantlens.core.experiment import ExperimentSpec
from quantlens.core.layer_config import QuantConfig
from quantlens.core.progress import make_progress
from quantlens.core.workload import RunOptions, Workload, check_workload
from quantlens.errors import QuantlensError, QuantlensWarning
from quantlens.experiments.group_sweep import group_members
from quantlens.experiments.plan import LayerPlan, PlanResult, cell_score, mckp
from quantlens.quant.formats import get_format
from quantlens.stats.degradation import positive_part
from quantlens.sweep.results import SweepResult

__all__ = ["plan_formats", "run_format_plan"]


def _check_budget(budget: float, formats: Sequence[str]) -> None:
    bits = {f: get_format(f).effective_bits for f in formats}
    cheap, dear = min(bits, key=bits.get), max(bits, key=bits.get)  # type: ignore[arg-type]
    if not math.isfinite(budget) or budget < bits[cheap]:
        raise QuantlensError(f"--budget {budget:g} is below the cheapest format ({cheap}, {bits[cheap]:g} bits per weight): "
                             f"give at least {bits[cheap]:g}")
    if budget > bits[dear]:
        raise QuantlensError(f"--budget {budget:g} is above the dearest format ({dear}, {bits[dear]:g} bits per weight): "
                             "every layer fits in it; give at most that")


def plan_formats(sweep: SweepResult, budget: float, groups: Optional[Sequence[Sequence[str]]] = None,
                 formats: Optional[Sequence[str]] = None) -> list[LayerPlan]:
    """The exact minimum-predicted-degradation format per group (module docstring)."""
    if not sweep.is_format_sweep:
        raise QuantlensError("a plan over formats needs a sweep over formats (analyze --formats ...)")
    fmts = list(formats or sweep.w_bits)
    missing = [f for f in fmts if f not in sweep.w_bits]
    if missing:
        raise QuantlensError(f"the sweep has no cells in {', '.join(missing)} (it has {', '.join(sweep.w_bits)})")
    _check_budget(budget, fmts)
    params = {l.name: l.params for l in sweep.layers}
    score = cell_score(sweep)
    groups = [list(g) for g in (groups or [[n] for n in sweep.layer_names]) if any(n in params for n in g)]
    groups = [[n for n in g if n in params] for g in groups]
    options = []
    for g in groups:
        row = []
        for f in fmts:
            cells = [sweep.cell(n, f) for n in g]
            cost = sum(params[n] for n in g) * get_format(f).effective_bits
            deg = round(sum(positive_part(score(c)) for c in cells), 9)
            noise = sum(0.0 if math.isnan(c.noise) else c.noise for c in cells)
            row.append((cost, (deg, noise)))
        options.append(row)
    choice, _ = mckp(options, budget * sum(params[n] for g in groups for n in g) + 1e-6)
    out = []
    for g, i in zip(groups, choice):
        f = get_format(fmts[i])
        for n in g:
            c = sweep.cell(n, f.name)
            out.append(LayerPlan(n, params[n], f.bits, score(c), c.noise, f.name, f.effective_bits))
    order = {n: k for k, n in enumerate(sweep.layer_names)}
    return sorted(out, key=lambda p: order[p.layer])


def run_format_plan(
    workload: Workload,
    *,
    budget: float,
    formats: Sequence[str],
    options: RunOptions = RunOptions(),
    spec: ExperimentSpec = ExperimentSpec(),
    sweep: Optional[SweepResult] = None,
    fuse_siblings: bool = True,
    group_by: str = "layer",
) -> PlanResult:
    """Sweep the formats (unless ``sweep`` is given), plan under ``budget`` average effective bits
    with fused siblings sharing a format, then measure the plan and every format alone.

    ``group_by="siblings"`` (or a ``sweep`` from :func:`~quantlens.experiments.group_sweep.analyze_siblings`):
    each group of fused siblings is one row of the sweep, its cell measured with the whole group
    quantized at once (what the fused kernel computes), instead of the sum of its layers' cells;
    ``extra["layer_formats"]`` then gives every layer its group's format."""
    from quantlens.graph.layers import sibling_groups
    from quantlens.network.measure import make_measurer
    from quantlens.sweep.api import analyze

    check_workload(workload, "run_format_plan")
    fmts = [get_format(f).name for f in formats]
    if not fmts:
        raise QuantlensError("--formats is empty: give the formats to choose from, e.g. nvfp4,fp8-e4m3,bf16")
    _check_budget(budget, fmts)
    w = workload
    if group_by not in ("layer", "siblings"):
        raise QuantlensError(f"a plan over formats groups by layer or siblings, not {group_by!r}")
    if sweep is None and group_by == "siblings":
        from quantlens.experiments.group_sweep import analyze_siblings

        sweep = analyze_siblings(w, config=spec.sweep_config(fmts), options=options)
    elif sweep is None:
        cfg = spec.sweep_config(fmts)
        sweep = analyze(w, config=cfg, device=options.device, progress=options.progress)
    else:
        spec.check_sweep(sweep, fmts, where="the plan's sweep")
    members = group_members(sweep)
    if members is not None and sweep.extra.get("group_by") != "siblings":
        raise QuantlensError("a plan over formats takes a layer sweep or a --group-by siblings sweep, not a role sweep")
    measurer = make_measurer(w, options)
    graph = getattr(measurer, "graph", None)
    if members is not None:  # the rows are the fused groups already
        fuse_siblings = False
    if fuse_siblings and graph is None:
        warnings.warn("the model is measured through forward hooks: no graph to find fused siblings in, each layer plans alone",
                      QuantlensWarning, stacklevel=2)
    groups = sibling_groups(graph) if fuse_siblings and graph is not None else None
    plan = plan_formats(sweep, budget, groups, fmts)
    score = cell_score(sweep)
    def config(fmt_of: dict[str, str]) -> QuantConfig:
        return QuantConfig(tuple((m, spec.layer(f)) for n, f in fmt_of.items() for m in (members[n] if members else [n])))

    bar = make_progress(options.progress, 1 + len(fmts), "plan")
    try:
        res = measurer(config({p.layer: p.format for p in plan}))
        bar.advance()
        uniform = {}
        for f in fmts:
            u = measurer(config({n: f for n in sweep.layer_names}))
            uniform[f] = {"effective_bits": get_format(f).effective_bits, "measured": u.degradation, "metric": u.metric,
                          "ci": [u.ci_low, u.ci_high], "predicted": sum(positive_part(score(sweep.cell(n, f))) for n in sweep.layer_names)}
            bar.advance()
    finally:
        bar.close()
    total = sum(p.params for p in plan)
    extra = {"uniform_formats": uniform, "fuse_siblings": bool(groups is not None or members is not None),
             "groups": [g for g in (groups or []) if len(g) > 1] if members is None else [m for m in members.values() if len(m) > 1]}
    if members is not None:
        extra.update(group_by="siblings", layer_formats={m: p.format for p in plan for m in members[p.layer]})
    nan = float("nan")
    return PlanResult(
        sweep.metric_name, sweep.baseline, budget, int(math.floor(budget * total)), spec.a_bits, tuple(plan), res.degradation,
        res.metric, None, nan, nan, nan, extra, measured_ci=(res.ci_low, res.ci_high), num_samples=res.num_samples,
    )
