"""Fixes: graph transforms ``apply(graph, layers) -> graph`` that make quantization hurt less.

Registered by name (``quantlens.fixes.fixes()`` lists them):

* ``sawb``, ``mse``, ``mse_output``, ``percentile``: weight clipping (:mod:`.clipping`)
* ``equalize``: cross-layer equalization (:mod:`.equalize`)
* ``bias_correction``: empirical bias correction (:mod:`.bias_correction`)
* ``hadamard`` (``-16``, ``-32``, ``-128``): a block Hadamard rotation of a Linear's input (:mod:`.hadamard`)
* ``awq``, ``smoothquant``: a per-input-channel scale moved into the weights, folded into the norm where it can be (:mod:`.awq`)
* ``gptq``: Hessian-based rounding from the layer's calibration inputs, any format (:mod:`.gptq`)
* ``four-over-six`` (NVFP4), ``mx-scale`` (MX): the format's own scale choices (:mod:`.format_scales`)
* ``keep-outliers`` (0.1% of the weights), ``keep-outliers-1``: the largest weights kept in BF16 (:mod:`.outliers`)

A :class:`~quantlens.core.layer_config.QuantConfig` records which fixes each layer gets;
:func:`apply_fixes` applies them all in fix order to a copy of the graph.

Example:
    >>> from quantlens.fixes import fixes
    >>> "sawb" in fixes() and "equalize" in fixes()
    True
"""

from quantlens.fixes import awq, bias_correction, clipping, equalize, format_scales, gptq, hadamard, outliers  # noqa: F401  (register the fixes)
from quantlens.fixes.base import (
    Fix,
    FixContext,
    apply_fixes,
    check_fix,
    copy_graph,
    fixes,
    make_fix,
    not_applicable,
    register_fix,
)

__all__ = ["Fix", "FixContext", "apply_fixes", "check_fix", "copy_graph", "fixes", "make_fix", "not_applicable", "register_fix"]
