"""The range-estimator registry: names -> estimators (``@register_estimator("name")``).

A spec names its estimator; this registry says whether the name exists and whether it may
range activations. The estimators themselves live in :mod:`quantlens.quant.ranges`, which
registers them when :mod:`quantlens.quant` loads.
"""

from __future__ import annotations

from typing import Any, Callable, Union

from quantlens.errors import QuantlensError
from quantlens.quant.observers import HistogramObserver, MinMaxObserver

__all__ = ["Observer", "register_estimator", "estimators", "check_estimator", "get_estimator"]

Observer = Union[HistogramObserver, MinMaxObserver]


_REGISTRY: dict[str, Any] = {}  # name -> a RangeEstimator (quantlens.quant.ranges)


def register_estimator(name: str) -> Callable[[type], type]:
    """Class decorator: register an estimator (instantiated with no arguments) under ``name``."""

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls()
        return cls

    return deco


def estimators() -> list[str]:
    """Names of the registered range estimators."""
    return sorted(_REGISTRY)


def check_estimator(name: str, activations: bool = False) -> None:
    """Raise a one-line error if ``name`` is not registered (or, for ``activations``, is weights-only)."""
    if name not in _REGISTRY:
        raise QuantlensError(f"unknown range estimator {name!r}: choose one of {', '.join(estimators())}")
    if activations and not getattr(_REGISTRY[name], "for_activations", True):
        act = ", ".join(n for n in estimators() if getattr(_REGISTRY[n], "for_activations", True))
        raise QuantlensError(f"range estimator {name!r} is for weights; use {act} for activations")


def get_estimator(name: str) -> Any:
    """The registered estimator ``name`` (one-line error if unknown)."""
    check_estimator(name)
    return _REGISTRY[name]
