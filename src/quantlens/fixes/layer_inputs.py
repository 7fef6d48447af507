"""What the fixes that read a layer's calibration inputs share: its input as rows, and their sums.

A layer computes ``y = W x`` on rows ``x`` of its *reduction axis* ``K`` (the matrix view of its
weight, :func:`~quantlens.quant.formats.tiles.weight_matrix`): a Linear's tokens
(``x.reshape(-1, K)``), a convolution's output positions (``unfold``: ``C * kh * kw`` values in
the weight's own order). :func:`input_stats` makes one pass of the float network over the
calibration data and, per layer, sums over those rows (float64)::

    n = number of rows,  S = sum_n x x^T  [K, K],  A = sum_n |x|  [K],  M = max_n |x|  [K]

(GPTQ's Hessian is ``H = 2 S / n``; AWQ's and SmoothQuant's activation statistics are ``A / n``
and ``M``). The inputs are those the layer reads in the graph given: after any fix's input op
(:attr:`~quantlens.graph.layers.LayerGraph.input_ops`), before its input quantizer.

Example:
    >>> stats = input_stats(graph, ["fc"], calib, torch.device("cpu"))   # doctest: +SKIP
    >>> h = 2 * stats["fc"].xx / stats["fc"].n                          # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantlens.core.numerics import analysis_mode
from quantlens.data.batches import iterate
from quantlens.engine.cone import build_cache_module, input_node
from quantlens.errors import QuantlensError
from quantlens.graph.layers import LayerGraph, transposed_linear

__all__ = ["InputStats", "input_rows", "input_stats", "check_layer_kind"]


@dataclass(frozen=True)
class InputStats:
    """Sums over a layer's calibration input rows (module docstring)."""

    n: int
    xx: Tensor
    abs_sum: Tensor
    abs_max: Tensor


def check_layer_kind(fix: str, name: str, module: nn.Module) -> None:
    """One line when ``module`` is not a layer the row view covers (a grouped convolution, GPT-2's ``Conv1D``)."""
    if transposed_linear(module):
        raise QuantlensError(f"fix {fix!r} on layer {name}: a transposed Linear (GPT-2's Conv1D) is not supported")
    if int(getattr(module, "groups", 1)) != 1:
        raise QuantlensError(f"fix {fix!r} on layer {name}: a grouped or depthwise convolution is not supported (its reduction axis differs per group)")


def input_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The rows ``[n, K]`` the layer multiplies by its weight's matrix view."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        two_d = isinstance(module, nn.Conv2d)
        x4 = x if two_d else x.unsqueeze(2)
        k = module.kernel_size if two_d else (1, module.kernel_size[0])
        pad = module.padding if two_d else (0, module.padding[0])
        if isinstance(pad, str) or getattr(module, "padding_mode", "zeros") != "zeros":
            raise QuantlensError(f"a convolution with padding {module.padding!r} / mode {module.padding_mode!r} is not supported here")
        st = module.stride if two_d else (1, module.stride[0])
        dil = module.dilation if two_d else (1, module.dilation[0])
        cols = F.unfold(x4, k, dilation=dil, padding=pad, stride=st)  # [N, C*kh*kw, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise QuantlensError(f"{type(module).__name__} is not a layer with a matrix view")


def input_stats(graph: LayerGraph, names: Sequence[str], calib: Iterable[Any], device: torch.device,
                second_moment: bool = True) -> dict[str, InputStats]:
    """One float pass over ``calib``: per layer of ``names``, the sums of the module docstring
    (``second_moment=False`` leaves ``xx`` empty, for fixes that need only ``A`` and ``M``)."""
    layers = [graph.layer(n) for n in names]
    nodes = [input_node(graph, l) for l in layers]
    gm, keep = build_cache_module(graph, nodes)
    gm.to(device)
    pos = {k: i for i, k in enumerate(keep)}
    acc: dict[str, list[Any]] = {}
    with analysis_mode():
        for inputs, _ in iterate(calib, "calibration data"):
            _, values = gm(*graph.flat(inputs.to(device)))
            for l, node in zip(layers, nodes):
                rows = input_rows(graph.module(l), values[pos[node]]).double()
                a = acc.setdefault(l.name, [0, None, None, None])
                a[0] += rows.shape[0]
                xx = rows.T @ rows if second_moment else rows.new_zeros(0)
                s, m = rows.abs().sum(0), rows.abs().amax(0) if rows.shape[0] else rows.new_zeros(rows.shape[1])
                a[1] = xx if a[1] is None else a[1] + xx
                a[2] = s if a[2] is None else a[2] + s
                a[3] = m if a[3] is None else torch.maximum(a[3], m)
            del values
    missing = [l.name for l in layers if l.name not in acc]
    if missing:
        raise QuantlensError("the calibration data is empty: the fix needs at least one batch")
    return {n: InputStats(a[0], a[1], a[2], a[3]) for n, a in acc.items()}
