"""Optional result files written next to ``results.json`` by other commands, read defensively.

* ``additivity.json`` (``quantlens/additivity-v1``): ``pearson_r``, ``slope``,
  ``points[{low_bit_layers, predicted, measured}]`` -- the paper's Figure 2.
* ``fix.json`` (``quantlens/fix-v1``): ``metric``, ``rows[{method, metric, fixes?, ci_low?, ci_high?}]``
  -- Table 1 -- and ``trials[{layer, fix, degradation, naive_degradation, kept, ci_low?, ci_high?,
  significant?}]``, ``num_samples``.
* ``verify.json`` (``quantlens/verify-v1``): the runtime check, read by
  :meth:`quantlens.runtime.verify.VerifyResult.from_dict`.
* ``plan.json`` (``quantlens/plan-v1``): per-layer bits (``layers: [{layer, w_bits|bits}]`` or
  ``w_bits|bits: {layer: b}``), ``predicted``, ``measured``, ``avg_bits``, ``budget`` (a number or
  ``{avg_bits}``) and the uniform baseline (``uniform: {w_bits|bits, predicted, measured, ci?}``);
  ``measured_ci``, ``num_samples`` and ``vs_uniform: {gain, significant, samples_to_resolve}`` when
  the metric has intervals.

Intervals are the owners' (``ci_low``/``ci_high`` and ``significant`` as written by ``fix`` and
``plan``); a missing or null one reads as ``None`` and the report shows ``-``.

A missing file is ``None`` (its section is left out); an unreadable one is ``None`` plus a note
that the page shows, so one bad file never costs the whole report.

Example:
    >>> ex = load_extras("quantlens-demo")            # doctest: +SKIP
    >>> ex.additivity.pearson_r if ex.additivity else None   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["AdditivityPoint", "Additivity", "FixRow", "FixTrial", "FixTable", "PlanLayer", "PlanChange", "Plan", "Extras", "load_extras"]


def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v if math.isfinite(v) else float("nan")


def _opt_f(x: Any) -> Optional[float]:
    v = _f(x)
    return None if math.isnan(v) else v


def _ci(lo: Any, hi: Any) -> Optional[tuple[float, float]]:
    """A stored 95% interval ``(low, high)``, None when either end is missing or not a number."""
    a, b = _opt_f(lo), _opt_f(hi)
    return None if a is None or b is None else (a, b)


def _pair(x: Any) -> Optional[tuple[float, float]]:
    return _ci(x[0], x[1]) if isinstance(x, (list, tuple)) and len(x) == 2 else None


def _int(x: Any) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 else 0


@dataclass(frozen=True)
class AdditivityPoint:
    """One random mixed-precision configuration: predicted (sum of cells) and measured degradation."""

    low_bit_layers: tuple[str, ...]
    predicted: float
    measured: float


@dataclass(frozen=True)
class Additivity:
    """``additivity.json``: the paper's Figure 2."""

    pearson_r: float
    slope: float
    points: tuple[AdditivityPoint, ...]
    low: Optional[int] = None
    high: Optional[int] = None
    metric: Optional[str] = None
    flagged: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict) -> "Additivity":
        pts = tuple(
            AdditivityPoint(tuple(str(n) for n in (p.get("low_bit_layers") or [])), _f(p.get("predicted")), _f(p.get("measured")))
            for p in d.get("points") or [] if isinstance(p, dict)
        )
        low, high = d.get("low"), d.get("high")
        flagged = tuple(str(n) for n in d.get("flagged") or [] if isinstance(n, str))
        return cls(_f(d.get("pearson_r")), _f(d.get("slope")), pts, low if isinstance(low, int) else None,
                   high if isinstance(high, int) else None, str(d["metric"]) if isinstance(d.get("metric"), str) else None, flagged)


@dataclass(frozen=True)
class FixRow:
    """One row of the Table 1 analogue: a method and the metric of the fully quantized network."""

    method: str
    metric: float
    fixes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    degradation: Optional[float] = None
    sqnr_db: Optional[float] = None
    ci: Optional[tuple[float, float]] = None  # 95% interval on ``degradation``


@dataclass(frozen=True)
class FixTrial:
    """One fix tried on one culprit layer alone: its degradation against the naive one, kept or not."""

    layer: str
    fix: str
    degradation: float
    naive_degradation: float
    kept: bool
    ci: Optional[tuple[float, float]] = None  # 95% interval on ``degradation``
    significant: Optional[bool] = None  # the gain over the naive cell (None: no intervals)


@dataclass(frozen=True)
class FixTable:
    """``fix.json``: float, naive, each fix applied globally, and the chosen local fixes."""

    metric: str
    rows: tuple[FixRow, ...]
    w_bits: Optional[int] = None
    trials: tuple[FixTrial, ...] = ()
    higher_is_better: bool = True
    num_samples: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "FixTable":
        rows = []
        for r in d.get("rows") or []:
            if not isinstance(r, dict):
                continue
            fx: dict = r["fixes"] if isinstance(r.get("fixes"), dict) else {}
            fixes = {str(k): tuple(str(x) for x in (v if isinstance(v, (list, tuple)) else [v])) for k, v in fx.items()}
            rows.append(FixRow(str(r.get("method", "?")), _f(r.get("metric")), fixes, _opt_f(r.get("degradation")), _opt_f(r.get("sqnr_db")),
                               _ci(r.get("ci_low"), r.get("ci_high"))))
        trials = tuple(FixTrial(str(t.get("layer", "?")), str(t.get("fix", "?")), _f(t.get("degradation")), _f(t.get("naive_degradation")),
                                bool(t.get("kept")), _ci(t.get("ci_low"), t.get("ci_high")),
                                t["significant"] if isinstance(t.get("significant"), bool) else None)
                       for t in d.get("trials") or [] if isinstance(t, dict))
        wb = d.get("w_bits")
        return cls(str(d.get("metric", "metric")), tuple(rows), wb if isinstance(wb, int) else None, trials,
                   d.get("higher_is_better") is not False, _int(d.get("num_samples")))


@dataclass(frozen=True)
class PlanLayer:
    """One layer's chosen weight bit-width."""

    layer: str
    bits: int
    params: Optional[int] = None


@dataclass(frozen=True)
class PlanChange:
    """Plan vs uniform as ``plan`` judged it: ``gain`` (uniform minus plan degradation), whether it is
    ``significant``, and the samples that would resolve it (0 when significant or unknown)."""

    gain: float
    significant: bool
    samples_to_resolve: int = 0

    @classmethod
    def from_dict(cls, d: Any) -> "Optional[PlanChange]":
        if not isinstance(d, dict) or not isinstance(d.get("significant"), bool) or _opt_f(d.get("gain")) is None:
            return None
        return cls(_f(d["gain"]), d["significant"], _int(d.get("samples_to_resolve")))


@dataclass(frozen=True)
class Plan:
    """``plan.json``: the mixed-precision plan, its predicted and measured degradation, and the uniform baseline."""

    layers: tuple[PlanLayer, ...]
    predicted: Optional[float]
    measured: Optional[float]
    budget: Optional[float] = None
    uniform_bits: Optional[float] = None
    uniform_predicted: Optional[float] = None
    uniform_measured: Optional[float] = None
    avg_bits: Optional[float] = None
    measured_ci: Optional[tuple[float, float]] = None  # 95% intervals on the measured degradations
    uniform_ci: Optional[tuple[float, float]] = None
    vs_uniform: Optional[PlanChange] = None
    num_samples: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        layers: list[PlanLayer] = []
        table = d.get("bits") if isinstance(d.get("bits"), dict) else d.get("w_bits")
        if isinstance(d.get("layers"), list):
            for r in d["layers"]:
                b = r.get("bits", r.get("w_bits")) if isinstance(r, dict) else None
                if isinstance(b, (int, float)):
                    p = r.get("params")
                    layers.append(PlanLayer(str(r.get("layer", r.get("name", "?"))), int(b), int(p) if isinstance(p, (int, float)) else None))
        if not layers and isinstance(table, dict):
            layers = [PlanLayer(str(k), int(v)) for k, v in table.items() if isinstance(v, (int, float))]
        u: dict = d["uniform"] if isinstance(d.get("uniform"), dict) else {}
        budget = d.get("budget")
        budget = budget.get("avg_bits") if isinstance(budget, dict) else budget
        ubits = next((u[k] for k in ("bits", "w_bits", "avg_bits") if u.get(k) is not None), d.get("uniform_bits"))
        return cls(tuple(layers), _opt_f(d.get("predicted")), _opt_f(d.get("measured")), _opt_f(budget),
                   _opt_f(ubits), _opt_f(u.get("predicted")), _opt_f(u.get("measured")), _opt_f(d.get("avg_bits")),
                   _pair(d.get("measured_ci")), _pair(u.get("ci")), PlanChange.from_dict(d.get("vs_uniform")), _int(d.get("num_samples")))


@dataclass(frozen=True)
class Extras:
    """The optional files found next to a ``results.json``, and notes on those that could not be read."""

    additivity: Optional[Additivity] = None
    fix: Optional[FixTable] = None
    plan: Optional[Plan] = None
    verify: Optional[Any] = None  # quantlens.runtime.verify.VerifyResult
    notes: tuple[str, ...] = ()


_FILES: dict[str, tuple[str, Any, Optional[str]]] = {
    "additivity": ("additivity.json", Additivity, "quantlens/additivity-v1"),
    "fix": ("fix.json", FixTable, "quantlens/fix-v1"),
    "plan": ("plan.json", Plan, "quantlens/plan-v1"),
    "verify": ("verify.json", None, "quantlens/verify-v1"),  # read by its owner, VerifyResult.from_dict
}


def load_extras(directory: Union[str, os.PathLike]) -> Extras:
    """Read ``additivity.json``, ``fix.json`` and ``plan.json`` from ``directory`` when present."""
    found: dict[str, Any] = {}
    notes: list[str] = []
    for key, (fname, cls, schema) in _FILES.items():
        p = Path(directory) / fname
        if not p.is_file():
            continue
        try:
            d = json.loads(p.read_text())
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            if schema and d.get("schema") not in (schema, None):
                raise ValueError(f"schema {d.get('schema')!r}, expected {schema!r}")
            if cls is None:
                from ..runtime.verify import VerifyResult

                cls = VerifyResult
            found[key] = cls.from_dict(d)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            notes.append(f"{fname} could not be read ({e}); its section is left out")
    return Extras(notes=tuple(notes), **found)
