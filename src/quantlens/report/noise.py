"""What the sweep's data can and cannot tell at one bit-width, from the cells' 95% intervals.

* :func:`verdict` -- a cell is ``worse`` (interval above 0), ``better`` (below), ``zero``
  (contains 0: not distinguishable from float) or ``unknown`` (no interval: a custom metric);
* :func:`top_tier` -- the worst layers that cannot be told apart from the worst one
  (:func:`quantlens.stats.resolve.separated`);
* :func:`noise_sentences` -- the plain sentences the summary, the CLI and the report share,
  e.g. ``conv1 and conv2 cannot be told apart on 450 samples; about 2,800 would resolve +0.67%.``

Example:
    >>> for s in noise_sentences(result, 4): print(s)                  # doctest: +SKIP
    At 4 bits 2 of 4 layers are significantly worse than float (95% interval above 0): ...
"""

from __future__ import annotations

from typing import Optional

from quantlens.sweep.results import bits_label
from quantlens.sweep.results import Cell, SweepResult
from quantlens.stats.resolve import Verdict, samples_to_resolve, separated, significance
from quantlens.report.fmt import Units, finite

__all__ = ["verdict", "ci_text", "top_tier", "noise_sentences", "has_intervals", "names"]


def verdict(c: Cell) -> Verdict:
    return significance(c.interval)


def has_intervals(cells: list[Cell]) -> bool:
    return any(c.interval is not None for c in cells)


def ci_text(c: Cell, u: Units) -> str:
    """``+1.56% [+0.70%, +3.18%]`` (the degradation and its 95% interval), or the bare value."""
    if c.interval is None:
        return u.deg(c.degradation, signed=True)
    return f"{u.deg(c.degradation, signed=True)} [{u.deg(c.ci_low, signed=True)}, {u.deg(c.ci_high, signed=True)}]"


def names(cells: list[Cell]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    n = [c.layer for c in cells]
    return n[0] if len(n) == 1 else ", ".join(n[:-1]) + " and " + n[-1]


def top_tier(ranked: list[Cell]) -> list[Cell]:
    """The leading cells of ``ranked`` (worst first) whose difference from the worst is not significant."""
    if not ranked or ranked[0].interval is None:
        return ranked[:1]
    lead = ranked[0]
    tier = [lead]
    for c in ranked[1:]:
        if c.interval is None or separated(lead.interval, lead.degradation, c.interval, c.degradation):  # type: ignore[arg-type]
            break
        tier.append(c)
    return tier


def resolve_text(a: Cell, b: Cell, n: int, u: Units) -> str:
    """``a and b cannot be told apart on n samples; about N would resolve +x``."""
    diff = a.degradation - b.degradation
    need = samples_to_resolve(diff, a.interval, b.interval) if a.interval and b.interval else 0  # type: ignore[arg-type]
    tail = f"; about {need:,} would resolve {u.deg(diff, signed=True)}" if need else " (their degradations are equal)"
    return f"{a.layer} and {b.layer} cannot be told apart on {n:,} samples{tail}"


def noise_sentences(result: SweepResult, bits: int, u: Optional[Units] = None) -> list[str]:
    """What is significant at ``bits`` and which rankings the data cannot resolve (empty without intervals)."""
    u = u or Units.for_metric(result.metric_name)
    cells = result.at(bits)
    if not has_intervals(cells):
        return []
    n = result.num_samples
    worse = [c for c in result.worst(bits, len(cells)) if verdict(c) == "worse"]
    zero = [c for c in cells if verdict(c) == "zero"]
    better = [c for c in cells if verdict(c) == "better"]
    out = []
    measured = sum(c.interval is not None for c in cells)
    of = f"{len(cells)} layers" if measured == len(cells) else f"the {measured} measured layers (of {len(cells)})"
    if worse:
        out.append(f"At {bits_label(bits)} {len(worse)} of {of} are significantly worse than float (95% interval above 0): "
                   + ", ".join(f"{c.layer} {ci_text(c, u)}" for c in worse[:6]) + ("" if len(worse) <= 6 else ", ...") + ".")
    elif measured == len(cells):
        out.append(f"At {bits_label(bits)} no layer is significantly worse than float on {n:,} samples (every 95% interval contains 0).")
    else:
        out.append(f"At {bits_label(bits)} none of {of} is significantly worse than float on {n:,} samples (every 95% interval contains 0).")
    if zero:
        lead = max(zero, key=lambda c: c.degradation if finite(c.degradation) else float("-inf"))
        need = samples_to_resolve(lead.degradation, lead.interval) if lead.interval and lead.degradation > 0 else 0  # type: ignore[arg-type]
        more = (f"; about {need:,} samples would tell whether {lead.layer}'s {u.deg(lead.degradation, signed=True)} is real"
                if need else "")
        out.append(f"{names(zero[:6])}{' and others' if len(zero) > 6 else ''} cannot be told from zero on {n:,} samples{more}.")
    if better:
        out.append(f"{names(better)} {'is' if len(better) == 1 else 'are'} significantly better than float (a regularising effect, "
                   "or a reference that is not the model).")
    tier = top_tier(worse)
    if len(tier) > 1:
        out.append(resolve_text(tier[0], tier[1], n, u) + "." + (f" Neither can {names(tier[2:])}." if len(tier) > 2 else ""))
    return out
