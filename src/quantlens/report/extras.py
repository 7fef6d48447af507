"""Optional result files written next to ``results.json`` by other commands, found and loaded.

Each file is read by its owner's ``from_dict`` (one reader per artifact, no second declaration):

* ``additivity.json`` (``quantlens/additivity-v1``):
  :meth:`quantlens.experiments.additivity.AdditivityResult.from_dict` -- the paper's Figure 2;
* ``fix.json`` (``quantlens/fix-v1``):
  :meth:`quantlens.experiments.fixloop.FixResult.from_dict` -- Table 1 and the local trials;
* ``plan.json`` (``quantlens/plan-v1``):
  :meth:`quantlens.experiments.plan.PlanResult.from_dict` -- the mixed-precision plan;
* ``verify.json`` (``quantlens/verify-v1``): :meth:`quantlens.runtime.verify.VerifyResult.from_dict`.

The owners read older files too (missing newer fields get defaults). A file without a
``schema`` is read as the one its name says; another schema is refused.

A missing file is ``None`` (its section is left out); an unreadable one is ``None`` plus a note
that the page shows, so one bad file never costs the whole report.

Example:
    >>> ex = load_extras("quantlens-demo")            # doctest: +SKIP
    >>> ex.additivity.pearson_r if ex.additivity else None   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from quantlens.errors import QuantlensError

if TYPE_CHECKING:
    from quantlens.experiments.additivity import AdditivityResult
    from quantlens.experiments.fixloop import FixResult
    from quantlens.experiments.plan import PlanResult
    from quantlens.runtime.verify import VerifyResult

__all__ = ["Extras", "load_extras", "plan_avg_bits"]


@dataclass(frozen=True)
class Extras:
    """The optional files found next to a ``results.json`` (the owners' objects), and notes on those
    that could not be read."""

    additivity: Optional["AdditivityResult"] = None
    fix: Optional["FixResult"] = None
    plan: Optional["PlanResult"] = None
    verify: Optional["VerifyResult"] = None
    notes: tuple[str, ...] = ()


def plan_avg_bits(p: "PlanResult") -> Optional[float]:
    """The plan's average weight bits (:attr:`PlanResult.avg_bits`); None for an older file that gives
    no parameter counts (its bits as a ``{layer: b}`` dict)."""
    return p.avg_bits if p.params > 0 else None


def _owners() -> dict[str, Any]:
    """``key -> the owner's class`` (a :class:`~quantlens.core.jsonio.Artifact`: its ``FILE``, ``SCHEMA``
    and ``from_dict``); imported on use (the owners pull in torch)."""
    from quantlens.experiments.additivity import AdditivityResult
    from quantlens.experiments.fixloop import FixResult
    from quantlens.experiments.plan import PlanResult
    from quantlens.runtime.verify import VerifyResult

    return {"additivity": AdditivityResult, "fix": FixResult, "plan": PlanResult, "verify": VerifyResult}


def load_extras(directory: Union[str, os.PathLike]) -> Extras:
    """Read ``additivity.json``, ``fix.json``, ``plan.json`` and ``verify.json`` from ``directory`` when present."""
    found: dict[str, Any] = {}
    notes: list[str] = []
    for key, owner in _owners().items():
        fname, schema = owner.FILE, owner.SCHEMA
        p = Path(directory) / fname
        if not p.is_file():
            continue
        try:
            d = json.loads(p.read_text())
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            if d.get("schema") not in (schema, None):
                raise ValueError(f"schema {d.get('schema')!r}, expected {schema!r}")
            found[key] = owner.from_dict(d)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, QuantlensError) as e:
            notes.append(f"{fname} could not be read ({e}); its section is left out")
    return Extras(notes=tuple(notes), **found)
