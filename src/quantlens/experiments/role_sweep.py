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

import dataclasses
from typing import Any, Optional

from quantlens.core.roles import require_roles
from quantlens.core.sweep_config import SweepConfig
from quantlens.core.workload import RunOptions, Workload
from quantlens.experiments.group_sweep import sweep_groups
from quantlens.sweep.results import SweepResult

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
    engine: str = "cone",
) -> SweepResult:
    """The roles x bits sweep of ``workload`` (see module docstring); one line if the model has
    no repeated blocks. ``options``: device, and ``progress`` (a bar with an ETA on stderr)."""
    loose: list[str] = []

    def roles_of(measurer: Any) -> dict[str, list[str]]:
        roles = require_roles(measurer.names)
        loose.extend(roles.loose)
        return {r: roles.layers(r) for r in roles.roles}

    result = sweep_groups(workload, config=config, group_by=GROUP_BY_ROLE, groups_of=roles_of, options=options, model_name=model_name,
                          engine=engine)
    return dataclasses.replace(result, extra={**result.extra, "loose_layers": loose})
