"""Graph capture: a model -> :class:`LayerGraph` (fx trace, torch.export, or eager hooks), BN folded, layers found.

The cones that recompute part of a captured graph are the engine's (:mod:`quantlens.engine.cone`).
"""

from quantlens.graph.capture import capture
from quantlens.graph.layers import Layer, LayerGraph

__all__ = ["Layer", "LayerGraph", "capture"]
