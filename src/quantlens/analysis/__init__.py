"""The layer-wise analysis: sweep engine, results."""

from .results import Cell, LayerInfo, SweepResult, WeightStats
from .sweep import QuantlensWarning, Sweep, SweepState, analyze, make_config

__all__ = ["analyze", "Sweep", "SweepState", "SweepResult", "Cell", "LayerInfo", "WeightStats", "QuantlensWarning", "make_config"]
