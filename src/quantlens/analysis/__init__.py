"""The layer-wise analysis: sweep engine, results."""

from .sweep.api import analyze, make_config
from .sweep.results import Cell, LayerInfo, SweepResult, WeightStats
from .sweep.state import SweepState
from .sweep.engine import QuantlensWarning, Sweep

__all__ = ["analyze", "Sweep", "SweepState", "SweepResult", "Cell", "LayerInfo", "WeightStats", "QuantlensWarning", "make_config"]
