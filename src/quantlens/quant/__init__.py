"""Fake quantization: primitives, observers, range estimators, quantizers."""

from .observers import HistogramObserver, MinMaxObserver
from .primitives import fake_quantize, qparams_from_range
from .quantizer import (
    ActQuantizer,
    QuantizedWeight,
    make_observer,
    quantize_weight,
    weight_rows,
)
from .ranges import (
    estimate_activation,
    estimate_weight_rows,
    estimators,
    register_estimator,
)

__all__ = [
    "fake_quantize",
    "qparams_from_range",
    "MinMaxObserver",
    "HistogramObserver",
    "estimators",
    "register_estimator",
    "estimate_weight_rows",
    "estimate_activation",
    "quantize_weight",
    "weight_rows",
    "QuantizedWeight",
    "ActQuantizer",
    "make_observer",
]
