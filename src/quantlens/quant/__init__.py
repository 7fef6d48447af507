"""Fake quantization: primitives, observers, range estimators, quantizers."""

from quantlens.quant.observers import HistogramObserver, MinMaxObserver
from quantlens.quant.primitives import fake_quantize, qparams_from_range
from quantlens.quant.quantizer import (
    ActQuantizer,
    QuantizedWeight,
    make_observer,
    quantize_weight,
    weight_rows,
)
from quantlens.quant.ranges import (
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
