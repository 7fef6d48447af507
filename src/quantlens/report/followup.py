"""What the follow-up commands measured, as summary sentences (``fix.json``, ``additivity.json``, ``plan.json``).

The sweep predicts; ``quantlens fix``, ``additivity`` and ``plan`` measure the whole network.
When their files sit next to ``results.json`` the summary says what they found:

* fix: the naive degradation, the chosen local fixes and the share of it they recover
  (``recovered = (naive - local) / naive``), and the best global fix for comparison;
* additivity: Pearson r and slope of measured on predicted, and whether the sweep can be
  trusted as a planning tool (``r >= 0.9``), naming the layers flagged for mean shift;
* plan: the plan's measured degradation against the uniform configuration of the same size.

The numbers are the owners' (:mod:`quantlens.report.extras` loads them): a fix row's degradation,
the additivity fit (:attr:`AdditivityResult.pearson_r`, ``slope``, ``flagged``), the plan's
``avg_bits`` and ``predicted``.

Example:
    >>> for i in followups(extras, Units.for_metric("top1")): print(i.text)   # doctest: +SKIP
    Measured with the whole network at 8 bits (fix.json): naive costs 1.78%; ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from quantlens.report.extras import Extras, plan_avg_bits
from quantlens.report.fmt import Units, finite
from quantlens.report.insights import Insight
from quantlens.sweep.results import bits_label

if TYPE_CHECKING:
    from quantlens.experiments.additivity import AdditivityResult
    from quantlens.experiments.fixloop import FixResult, FixRow
    from quantlens.experiments.plan import PlanResult

__all__ = ["followups", "RELIABLE_R"]

RELIABLE_R = 0.9


def _deg(row: "Optional[FixRow]") -> Optional[float]:
    """The row's degradation (an older file's missing one is derived by :meth:`FixResult.from_dict`)."""
    return row.degradation if row is not None and finite(row.degradation) else None


def _fix(fix: "FixResult", u: Units) -> Optional[Insight]:
    by = {r.method: r for r in fix.rows}
    naive, local = by.get("naive"), by.get("local")
    if naive is None:
        return None
    nd = _deg(naive)
    if nd is None:
        return None
    bits = " as the plan says" if fix.w_bits == "plan" else f" at {bits_label(fix.w_bits)}" if fix.w_bits else ""
    text = f"Measured with the whole network quantized{bits} (fix.json): naive costs {u.deg(nd)}"
    if local is not None and local.fixes:
        ld = _deg(local)
        chosen = ", ".join(f"{k}: {'+'.join(v)}" for k, v in local.fixes.items())
        if ld is not None:
            rec = f", recovering {(nd - ld) / nd:.0%} of it" if nd > 0 else ""
            text += f"; the local fixes ({chosen}) leave {u.deg(ld)}{rec}"
    elif local is not None or fix.trials:
        text += "; no fix lowered a culprit layer's own degradation, so none was kept"
    glob = [(r.method.split(":", 1)[1], _deg(r)) for r in fix.rows if r.method.startswith("global:")]
    glob = [(m, d) for m, d in glob if d is not None]
    if glob:
        m, d = min(glob, key=lambda t: t[1])
        text += f"; the best fix applied to every layer ({m}) leaves {u.deg(d)}"
    return Insight(text + ".", kind="measured")


def _additivity(a: "AdditivityResult") -> Optional[Insight]:
    if not finite(a.pearson_r):
        return None
    n = len(a.points)
    bits = (f" {a.low}/{a.high}-bit" if isinstance(a.low, int) and isinstance(a.high, int) else f" {a.low}/{a.high}") if a.low and a.high else ""
    if a.pearson_r >= RELIABLE_R:
        verdict = "single-layer degradations add up, so the sweep is a planning tool for this network"
    else:
        verdict = "single-layer degradations do not add up well here: measure mixed-precision plans rather than trust the sum"
    text = f"Additivity over {n}{bits} configurations (additivity.json): Pearson r = {a.pearson_r:.3f}, slope {a.slope:.2f}; {verdict}"
    if a.flagged:
        text += f"; layers whose output mean shifts under quantization (section 4.4): {', '.join(a.flagged)}"
    return Insight(text + ".", kind="measured")


def _plan(p: "PlanResult", u: Units) -> Optional[Insight]:
    if not finite(p.measured):
        return None
    bits = plan_avg_bits(p)
    avg = f"{bits:.2f} average weight bits" if bits is not None else "the plan"
    text = f"Mixed-precision plan (plan.json): {avg}, predicted {u.deg(p.predicted)}, measured {u.deg(p.measured)}"
    if finite(p.uniform_measured) and p.uniform_bits is not None:
        text += f"; uniform {p.uniform_bits:g} bits measured {u.deg(p.uniform_measured)}"
    return Insight(text + ".", kind="measured")


def followups(extras: Extras, units: Units, metric_name: Optional[str] = None) -> list[Insight]:
    """Sentences on what ``fix``, ``additivity`` and ``plan`` measured (those whose metric matches
    ``metric_name``; an additivity file that names no metric is quoted)."""
    out: list[Optional[Insight]] = []
    if extras.fix is not None and (metric_name is None or extras.fix.metric_name == metric_name):
        out.append(_fix(extras.fix, units))
    if extras.additivity is not None and (metric_name is None or extras.additivity.metric_name in ("", metric_name)):
        out.append(_additivity(extras.additivity))
    if extras.plan is not None:
        out.append(_plan(extras.plan, units))
    return [i for i in out if i is not None]
