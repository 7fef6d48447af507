"""Graph capture (fx trace, BN folding, layers) and downstream cones."""

from .capture import Layer, LayerGraph, capture
from .cone import Cone, build_cache_module, build_cone, cone_nodes

__all__ = ["Layer", "LayerGraph", "capture", "Cone", "build_cone", "build_cache_module", "cone_nodes"]
