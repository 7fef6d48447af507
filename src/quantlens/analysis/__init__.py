"""The layer-wise analysis: sweep engine, results."""

from .api import analyze, make_config
from .results import Cell, LayerInfo, SweepResult, WeightStats
from .state import SweepState
from .sweep import QuantlensWarning, Sweep

__all__ = ["analyze", "Sweep", "SweepState", "SweepResult", "Cell", "LayerInfo", "WeightStats", "QuantlensWarning", "make_config"]
