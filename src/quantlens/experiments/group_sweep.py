"""Sweeps whose rows are groups of layers: one cell per (group, column), the group quantized at once.

Every layer of a group is quantized at once (weights in the column's bits or format, activations
as the config says), the rest of the network stays float, and the network is measured like a
single-layer cell (noise, SQNR, degradation with its interval), as one whole-network measurement
(:func:`~quantlens.network.measure.make_measurer`) would; by default on the cone engine
(:func:`~quantlens.network.group_cells.measure_groups`: one float pass per batch, then only the
union of each group's cones, the same cells). Two groupings:

* ``role`` (:mod:`.role_sweep`): every layer of a role across the blocks (every ``mlp.down_proj``);
* ``siblings``: the layers that read the same tensor (q/k/v after one norm, gate/up after
  another; :func:`~quantlens.graph.layers.sibling_groups`, found from the graph), which fused
  kernels (vLLM, TensorRT-LLM) run as one matrix in one format; a layer alone is a group of
  one. SmolLM2-135M: 121 groups for 211 layers.

The result is a :class:`~quantlens.sweep.results.SweepResult` whose rows are groups (``params``
summed), with ``extra["group_by"]`` and the members (:func:`group_members`), so reports and
``plan`` read it as they read a layer sweep.

Example:
    >>> r = analyze_siblings(Workload(model, data, metric="perplexity", output_key="logits"),  # doctest: +SKIP
    ...                      config=SweepConfig(w_bits=(), formats=("nvfp4", "fp8-e4m3")))
    >>> group_members(r)["model.layers.0.self_attn.q_proj+k_proj+v_proj"]                       # doctest: +SKIP
    ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj', 'model.layers.0.self_attn.v_proj']
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

from quantlens.core.guard import preserve_model
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.core.precision import check_dtype_support
from quantlens.core.progress import make_progress
from quantlens.core.sweep_config import SweepConfig
from quantlens.core.workload import RunOptions, Workload, check_workload
from quantlens.data.batches import check_reiterable, count_batches
from quantlens.errors import QuantlensError
from quantlens.sweep.results import Cell, LayerInfo, SweepResult

__all__ = ["sweep_groups", "analyze_siblings", "group_members", "sibling_name", "GROUP_KEYS"]

#: ``extra`` key holding the members, per kind of grouping.
GROUP_KEYS = {"role": "roles", "siblings": "groups"}


def group_members(result: SweepResult) -> Optional[dict[str, list[str]]]:
    """``{group: [layers]}`` of a group sweep (roles or siblings), ``None`` for a layer sweep."""
    key = GROUP_KEYS.get(str(result.extra.get("group_by")))
    if key is None:
        return None
    return {k: list(v) for k, v in result.extra.get(key, {}).items()}


def sibling_name(members: Sequence[str]) -> str:
    """A group's row name: the layer for a group of one, else the common prefix and the members'
    last components (``model.layers.0.self_attn.q_proj+k_proj+v_proj``)."""
    if len(members) == 1:
        return members[0]
    heads = [m.rsplit(".", 1) for m in members]
    if all(len(h) == 2 and h[0] == heads[0][0] for h in heads):
        return heads[0][0] + "." + "+".join(h[1] for h in heads)
    return "+".join(members)


def sweep_groups(
    workload: Workload,
    *,
    config: SweepConfig,
    group_by: str,
    groups_of: Callable[[Any], dict[str, list[str]]],
    options: RunOptions = RunOptions(),
    model_name: str = "",
    extra: Optional[dict] = None,
    engine: str = "cone",
) -> SweepResult:
    """The groups x columns sweep (module docstring); ``groups_of(measurer)`` names each group's layers.

    ``engine``: ``"cone"`` (default) measures every cell batch-outer, recomputing only the union of
    the group's cones (:func:`~quantlens.network.group_cells.measure_groups`); ``"network"`` one
    whole-network pass per cell. Both give the same cells; ``"cone"`` falls back to ``"network"``
    when the model has no graph (forward hooks)."""
    from quantlens.network.group_cells import cone_unsupported, measure_groups
    from quantlens.network.measure import make_measurer

    if engine not in ("cone", "network"):
        raise QuantlensError(f"group sweep engine {engine!r}: use 'cone' or 'network'")
    check_workload(workload, f"--group-by {group_by}")
    model = workload.model
    check_reiterable(workload.data, "data")
    check_dtype_support(model, options.device)
    t0 = time.perf_counter()
    with preserve_model(model):
        measurer = make_measurer(workload, options)
    groups = groups_of(measurer)
    keys: list[tuple[str, Any]] = []
    configs: list[QuantConfig] = []
    for group, members in groups.items():
        for b in config.columns:
            lq = LayerQuant(weight=config.weight_spec(b), act=config.act_spec())
            keys.append((group, lq))
            configs.append(QuantConfig(tuple((m, lq) for m in members), config.act.estimator))
    if engine == "cone" and cone_unsupported(measurer, configs) is not None:
        engine = "network"
    label = "roles" if group_by == "role" else group_by
    if engine == "cone":
        batches = count_batches(workload.data)
        bar = make_progress(options.progress, batches, f"{label} (batches)")
        try:
            results = measure_groups(measurer, configs, on_batch=lambda _b: bar.advance(1))
        finally:
            bar.close()
    else:
        bar = make_progress(options.progress, len(configs), label)
        results = []
        try:
            for c in configs:
                results.append(measurer(c))
                bar.advance(1)
        finally:
            bar.close()
    cells: list[Cell] = []
    baseline, hib, name, n = float("nan"), True, "custom", 0
    for (group, lq), r in zip(keys, results):
        baseline, hib, name, n = r.baseline, r.higher_is_better, r.metric_name, r.num_samples
        cells.append(Cell(group, lq.weight.bits, config.a_bits, r.noise, r.sqnr_db, r.metric, r.degradation,  # type: ignore[union-attr]
                          ci_low=r.ci_low, ci_high=r.ci_high, samples=r.num_samples, format=lq.weight.format_name))  # type: ignore[union-attr]
    return SweepResult(
        metric_name=name, higher_is_better=hib, baseline=baseline, num_samples=n, layers=_group_infos(groups, measurer.layers),
        cells=tuple(cells), config=config.to_dict(), model=model_name or type(model).__name__, engine=engine,
        elapsed_s=time.perf_counter() - t0, extra={"group_by": group_by, GROUP_KEYS[group_by]: groups, **(extra or {})},
    )


def _group_infos(groups: dict[str, list[str]], layers: list) -> tuple[LayerInfo, ...]:
    by_name = {l.name: l for l in layers}
    out = []
    for i, (group, names) in enumerate(groups.items()):
        members = [by_name[n] for n in names]
        ops = sorted({m.op for m in members})
        kinds = sorted({m.kind for m in members})
        out.append(LayerInfo(index=i, name=group, op="/".join(ops), params=sum(m.params for m in members),
                             kind=kinds[0] if len(kinds) == 1 else "mixed", activation=members[0].act))
    return tuple(out)


def _siblings(measurer: Any) -> dict[str, list[str]]:
    from quantlens.graph.layers import sibling_groups

    graph = getattr(measurer, "graph", None)
    if graph is None:
        raise QuantlensError("--group-by siblings needs the model's graph (torch.fx or torch.export) to find the layers that read "
                             "one tensor; this model is measured through forward hooks: drop --group-by siblings")
    return {sibling_name(g): list(g) for g in sibling_groups(graph)}


def analyze_siblings(workload: Workload, *, config: SweepConfig, options: RunOptions = RunOptions(), model_name: str = "",
                     engine: str = "cone") -> SweepResult:
    """The fused-sibling groups x columns sweep of ``workload`` (module docstring; ``engine``: :func:`sweep_groups`)."""
    return sweep_groups(workload, config=config, group_by="siblings", groups_of=_siblings, options=options, model_name=model_name,
                        engine=engine)
