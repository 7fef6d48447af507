"""Graph capture (fx trace, BN folding, layers), downstream cones, and eager capture for untraceable models."""

from quantlens.graph.capture import Layer, LayerGraph, capture
from quantlens.engine.cone import Cone, build_cache_module, build_cone, cone_nodes

__all__ = ["Layer", "LayerGraph", "capture", "Cone", "build_cone", "build_cache_module", "cone_nodes"]
