"""How a sweep measures its cells: one choice, a small typed object (picked by type, as torchao
picks a config), or its name.

* :class:`Exact` (``"exact"``, the default): every cell measured on all the data by its cone;
  ``split_noise=True`` also measures each cell's noise from its weights, input quantizer and
  output quantizer alone (:mod:`quantlens.sweep.split`).
* :class:`Adaptive` (``"adaptive"``): a cell stops taking batches once its 95% interval is on
  one side of ``tolerance`` and of 0 and its rank at its bit-width is settled
  (:mod:`quantlens.sweep.adaptive`); serial, no cache.
* :class:`Estimate` (``"estimate"``): a first-order estimate of every cell from one forward and
  backward pass per batch (:mod:`quantlens.sweep.estimate`), checked by measuring exactly,
  within ``budget`` (a share of the estimate's time), candidates among its top ``k``, the ``k``
  below them and ``k`` random layers, cheapest cones first (:mod:`quantlens.sweep.check`); serial.

Example:
    >>> as_method("adaptive"), as_method(Estimate(k=3)).k
    (Adaptive(tolerance=None), 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from quantlens.errors import QuantlensError

__all__ = ["Exact", "Adaptive", "Estimate", "Method", "METHODS", "as_method"]


@dataclass(frozen=True)
class Exact:
    """Every cell on all the data (module docstring)."""

    split_noise: bool = False


@dataclass(frozen=True)
class Adaptive:
    """Stop a cell once its interval has decided it (module docstring). ``tolerance``: the
    degradation that matters (``"0.5%"`` or 0.005; default 0.5% for fraction metrics)."""

    tolerance: Union[str, float, None] = None


@dataclass(frozen=True)
class Estimate:
    """A checked first-order estimate (module docstring). ``k``: the check's candidates are the
    estimate's top ``k``, the ``k`` below them and ``k`` random layers; ``budget``: the check's
    time, a share of the estimate's own (0.25: a quarter; ``math.inf``: every candidate), within
    which it measures the candidates of cheapest cones first (:mod:`quantlens.sweep.check`)."""

    k: int = 5
    budget: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise QuantlensError(f"Estimate(k=...) must be at least 1, got {self.k!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not self.budget > 0:
            raise QuantlensError(f"Estimate(budget=...) is the check's share of the estimate's time and must be above 0 "
                                 f"(0.25: a quarter; math.inf: every candidate), got {self.budget!r}")


Method = Union[Exact, Adaptive, Estimate]
METHODS = {"exact": Exact, "adaptive": Adaptive, "estimate": Estimate}


def as_method(method: Union[str, Method]) -> Method:
    """The method object of ``method`` (a name takes its defaults); one line if unknown."""
    if isinstance(method, (Exact, Adaptive, Estimate)):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]()
    raise QuantlensError(f"unknown sweep method {method!r}: use {', '.join(METHODS)}, "
                         "or quantlens.Exact(...), Adaptive(...), Estimate(...)")
