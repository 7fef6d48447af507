"""``--group-by role``: sweep whole roles, one cell per (role, bits).

Every layer of a role (every ``mlp.down_proj`` of the model, see :mod:`quantlens.core.roles`) is
quantized at once, the rest of the network stays float, and the network is measured like a
single-layer cell: noise, SQNR and degradation of the task metric against the float output.
Each cell is one whole-network measurement of that subset
(:func:`~quantlens.network.measure.make_measurer`), so it answers "which kind of layer
can take 4 bits?" in roles x bits cells instead of layers x bits.

The result is a :class:`~quantlens.sweep.results.SweepResult` whose rows are roles
(``params`` summed over the role's layers) with ``extra["group_by"] == "role"`` and
``extra["roles"]`` mapping each role to its layers, so reports and ``plan`` read it as they
read a layer sweep (``plan`` then gives one bit-width per role).

Example:
    >>> r = analyze_roles(model, data, config=make_config([4, 8]), metric="perplexity")  # doctest: +SKIP
    >>> r.worst(bits=4, k=3)                                                              # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from quantlens.core.sweep_config import SweepConfig
from quantlens.core.guard import preserve_model
from quantlens.core.precision import check_dtype_support
from quantlens.core.progress import make_progress
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.data.batches import check_reiterable
from quantlens.core.roles import RoleMap, require_roles
from quantlens.core.workload import RunOptions, Workload, check_workload
from quantlens.sweep.results import Cell, LayerInfo, SweepResult
from quantlens.engine.sweep import MetricSpec

__all__ = ["analyze_roles", "role_members", "GROUP_BY_ROLE"]

GROUP_BY_ROLE = "role"


def role_members(result: SweepResult) -> Optional[dict[str, list[str]]]:
    """``{role: [layers]}`` of a role-grouped sweep, ``None`` for a layer sweep."""
    if result.extra.get("group_by") != GROUP_BY_ROLE:
        return None
    return {k: list(v) for k, v in result.extra.get("roles", {}).items()}


def analyze_roles(
    workload: Workload,
    *,
    config: SweepConfig,
    options: RunOptions = RunOptions(),
    model_name: str = "",
) -> SweepResult:
    """The roles x bits sweep of ``workload`` (see module docstring); one line if the model has
    no repeated blocks. ``options``: device, and ``progress`` (a bar with an ETA on stderr)."""
    from quantlens.network.measure import make_measurer

    check_workload(workload, "analyze_roles")
    model, progress = workload.model, options.progress
    check_reiterable(workload.data, "data")
    check_dtype_support(model, options.device)
    t0 = time.perf_counter()
    with preserve_model(model):
        measurer = make_measurer(workload, options)
    roles = require_roles(measurer.names)
    cells: list[Cell] = []
    baseline, hib, name, n = float("nan"), True, "custom", 0
    bar = make_progress(progress, len(roles.roles) * len(config.columns), "roles")
    for role in roles.roles:
        for b in config.columns:
            lq = LayerQuant(weight=config.weight_spec(b), act=config.act_spec())
            qc = QuantConfig(tuple((n, lq) for n in roles.layers(role)), config.act.estimator)
            r = measurer(qc)
            baseline, hib, name, n = r.baseline, r.higher_is_better, r.metric_name, r.num_samples
            cells.append(Cell(role, lq.weight.bits, config.a_bits, r.noise, r.sqnr_db, r.metric, r.degradation,
                              ci_low=r.ci_low, ci_high=r.ci_high, samples=r.num_samples, format=lq.weight.format_name))
            bar.advance(1)
    bar.close()
    return SweepResult(
        metric_name=name,
        higher_is_better=hib,
        baseline=baseline,
        num_samples=n,
        layers=_role_infos(roles, measurer.layers),
        cells=tuple(cells),
        config=config.to_dict(),
        model=model_name or type(model).__name__,
        engine="network",
        elapsed_s=time.perf_counter() - t0,
        extra={"group_by": GROUP_BY_ROLE, "roles": {r: roles.layers(r) for r in roles.roles}, "loose_layers": list(roles.loose)},
    )


def _role_infos(roles: RoleMap, layers: list) -> tuple[LayerInfo, ...]:
    by_name = {l.name: l for l in layers}
    out = []
    for i, role in enumerate(roles.roles):
        members = [by_name[n] for n in roles.layers(role)]
        ops = sorted({m.op for m in members})
        kinds = sorted({m.kind for m in members})
        out.append(LayerInfo(index=i, name=role, op="/".join(ops), params=sum(m.params for m in members),
                             kind=kinds[0] if len(kinds) == 1 else "mixed", activation=members[0].act))
    return tuple(out)
