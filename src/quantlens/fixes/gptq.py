"""GPTQ (Frantar et al. 2022, arXiv 2210.17323), fix ``gptq``: a layer's rounding error compensated inside the layer.

For a layer with weight matrix ``W [R, K]`` (:func:`~quantlens.quant.formats.tiles.weight_matrix`)
and calibration input rows ``x`` (:mod:`.layer_inputs`; ``n`` of them)::

    H    = 2 X X^T / n                      (X = [x_1 .. x_n], K x K)
    dead = {k : H_kk = 0}:  H_kk <- 1, W[:, k] <- 0   (inputs that are always zero)
    perm = argsort(-diag H)                 (act-order; identity without it)
    H   <- H + 0.01 mean(diag H) I          (damping)
    U    = chol(H^-1)^T (upper)             (Hinv)
    for each column j in perm order:
        q_j  = Q(w_j)                       (the format's quantizer, scales of j's scope)
        e_j  = (w_j - q_j) / U_jj
        w_l -= e_j U_jl   for every later column l

computed as the published code (IST-DASLab/gptq ``fasterquant``) does: lazy blocks of 128
columns, the updates inside a block applied column by column and those to later columns once per
block (``W[:, i2:] -= E U[i1:i2, i2:]``); the result is the column-by-column algorithm's.

Scales: the quantizer is the layer's format (any of :mod:`quantlens.quant.formats`) or integer
grid, split into scopes by :class:`~.scoped.ScopedQuantizer`. **The scale of a scope is set
when the first of its columns is quantized, in processing (act) order, from the current,
error-updated values of all its columns** (none of which is quantized yet; columns in a later
lazy block get the pending updates of the current block first, so the values are exactly the
column-by-column algorithm's). Without act-order this is the published rule
(``find_params(W[:, j:j+g])`` when ``j % g == 0``); with act-order a format's blocks stay the
format's contiguous blocks of the original column order (what a kernel reads), unlike the
published code without ``static_groups``, which groups columns in permuted order, and unlike
``static_groups``, which sets every group from the weights before any update. A per-tensor or
per-row scale is set at the first column, from ``W`` itself; NVFP4's tensor scale ``s2`` from
the whole weight before any update.

The inputs are those of the float network given (earlier layers not quantized: each layer's
Hessian is its own, so the fix is local to the layer, as the paper's fixes are). The result is
the quantized weight itself: the layer is marked prequantized (no engine rounds it again).

Example:
    >>> from quantlens.fixes import FixContext, make_fix                          # doctest: +SKIP
    >>> g2 = make_fix("gptq", FixContext(cfg, calib)).apply(g, ["layers.0.mlp.down_proj"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from quantlens.core.guard import preserve_model
from quantlens.data.batches import iterate
from quantlens.errors import QuantlensError
from quantlens.fixes.base import FixContext, layer_weight_spec, mark_prequantized, prequantize, register_fix, weight_of
from quantlens.fixes.layer_inputs import check_layer_kind, input_stats
from quantlens.fixes.scoped import ScopedQuantizer
from quantlens.graph.layers import LayerGraph
from quantlens.quant.formats.tiles import weight_matrix
from quantlens.quant.spec import QuantSpec

__all__ = ["GPTQ", "gptq_quantize", "GPTQ_BLOCK", "GPTQ_DAMP", "check_calibration_rows"]

GPTQ_BLOCK = 128
GPTQ_DAMP = 0.01


def _rows_and_width(module: nn.Module, x: Tensor, y: Tensor) -> Optional[tuple[int, int]]:
    """``(rows, K)`` of one call of a Linear or ungrouped convolution (the rows its Hessian sums,
    and its input width ``K``: ``in_features``, or ``C_in x kernel``); None for other modules."""
    if isinstance(module, nn.Linear):
        return x.numel() // module.in_features, module.in_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1:
        k = module.in_channels * int(torch.tensor(module.kernel_size).prod())
        return y.numel() // module.out_channels, k  # one row per output position
    return None


def check_calibration_rows(model: nn.Module, calib: Iterable[Any]) -> None:
    """One line, before any sweep, when the calibration data gives a Linear or convolution of
    ``model`` fewer input rows ``n`` than its input width ``K``: GPTQ's Hessian ``2 X X^T / n``
    (``K x K``) then has rank ``<= n < K``. Rows are counted with forward hooks over as few
    calibration batches as it takes for every layer to reach its width (the user's model is
    unchanged: hooks removed and training flags restored on exit)."""
    need: dict[str, list[int]] = {}  # name -> [rows so far, K]
    hooks = []

    def hook(name: str) -> Any:
        def count(module: nn.Module, args: tuple, out: Any) -> None:
            if args and isinstance(args[0], Tensor) and isinstance(out, Tensor):
                rk = _rows_and_width(module, args[0], out)
                if rk is not None:
                    need.setdefault(name, [0, rk[1]])[0] += rk[0]
        return count

    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            hooks.append(m.register_forward_hook(hook(name)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with preserve_model(model), torch.inference_mode():
            model.eval()
            for inputs, _ in iterate(calib, "calibration data"):
                inputs.to(device).call(model)
                if need and all(n >= k for n, k in need.values()):
                    return
    finally:
        for h in hooks:
            h.remove()
    short = {name: (n, k) for name, (n, k) in need.items() if n < k}
    if short:
        name, (n, k) = max(short.items(), key=lambda t: t[1][1] - t[1][0])
        more = f" ({len(short)} layers are short)" if len(short) > 1 else ""
        raise QuantlensError(
            f"fix 'gptq': the calibration data gives layer {name} {n} input rows (tokens, or output positions of a convolution), "
            f"fewer than its input width {k}{more}: give --calib at least {k} tokens (or positions) per layer, or leave gptq out of --fixes")


def _upper_inverse_factor(h: Tensor, damp: float) -> Tensor:
    """``chol(H^-1)^T`` of the damped ``H`` (the published code's three steps)."""
    h = h.clone()
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += damp * torch.mean(torch.diag(h))
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise QuantlensError("gptq: the damped Hessian of the layer's inputs is not positive definite (inputs with NaN or inf?)")
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def gptq_quantize(w: Tensor, h: Tensor, quantizer: ScopedQuantizer, block: int = GPTQ_BLOCK, damp: float = GPTQ_DAMP,
                  act_order: bool = True) -> Tensor:
    """The GPTQ-quantized ``w [R, K]`` (its dtype is the arithmetic's) for the Hessian ``h [K, K]``
    (module docstring; ``quantizer`` sets each scope's scale at its first column)."""
    w = w.clone()
    h = h.to(w).clone()
    k = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k, device=w.device)
    pos = torch.argsort(perm)  # pos[original column] = its place in processing order
    w = w[:, perm]
    hinv = _upper_inverse_factor(h[perm][:, perm], damp)
    scope = [quantizer.scope_of(int(j)) for j in perm.tolist()]
    scope_pos = [pos[quantizer.columns(s).start:quantizer.columns(s).stop] for s in range(quantizer.scopes)]
    params: dict[int, tuple] = {}
    q = torch.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            s = scope[i1 + i]
            if s not in params:
                params[s] = quantizer.params(_current(w, w1, err1, hinv, i1, i2, i, scope_pos[s]))
            col = w1[:, i]
            qc = quantizer.quantize(col.unsqueeze(1), params[s]).flatten()
            q[:, i1 + i] = qc
            e = (col - qc) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = e
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return q[:, pos]


def _current(w: Tensor, w1: Tensor, err1: Tensor, hinv: Tensor, i1: int, i2: int, i: int, cols: Tensor) -> Tensor:
    """The current values of the (permuted) columns ``cols``, none quantized yet, in their
    original order: a column of this lazy block from ``w1``; a later one from ``w`` with the
    pending updates of this block's first ``i`` columns."""
    cols = cols.to(w.device)
    assert bool((cols >= i1 + i).all()), "a scope's scale is set at its first column"
    out = torch.empty(w.shape[0], len(cols), dtype=w.dtype, device=w.device)
    here = cols < i2
    out[:, here] = w1[:, cols[here] - i1]
    later = cols[~here]
    if len(later):
        out[:, ~here] = w[:, later] - err1[:, :i].matmul(hinv[i1:i1 + i][:, later])
    return out


@register_fix("gptq", order=25)
class GPTQ:
    """GPTQ on each chosen layer with its calibration inputs (module docstring). A module called
    more than once is skipped (its one weight serves inputs of several calls)."""

    def __init__(self, ctx: FixContext, block: int = GPTQ_BLOCK, damp: float = GPTQ_DAMP, act_order: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        self.ctx, self.block, self.damp, self.act_order, self.dtype = ctx, block, damp, act_order, dtype

    @classmethod
    def not_applicable(cls, spec: QuantSpec) -> Optional[str]:
        return None  # every format and integer grid: the quantizer is the format's own

    def apply(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        if self.ctx.calib is None:
            raise QuantlensError("fix 'gptq' needs calibration data (its Hessian is built from the layer's inputs)")
        specs: dict[str, QuantSpec] = {}
        for name in layers:
            spec = layer_weight_spec(self.ctx, "gptq", name)
            layer = graph.layer(name)
            if spec is None or graph.shared(layer):
                continue
            check_layer_kind("gptq", name, graph.module(layer))
            specs[name] = spec
        if not specs:
            return graph
        stats = input_stats(graph, list(specs), self.ctx.calib, self.ctx.device)
        weights = {}
        for name, spec in specs.items():
            w = weight_of(graph, name).detach()
            m = weight_matrix(w)
            st = stats[name]
            if st.n < m.shape[1]:
                raise QuantlensError(
                    f"fix 'gptq' on layer {name}: the calibration data gives {st.n} input rows (tokens, or output positions of a "
                    f"convolution), fewer than the layer's input width {m.shape[1]}: its Hessian needs at least {m.shape[1]}")
            h = (2.0 * st.xx / st.n).to(device=w.device, dtype=self.dtype)
            q = gptq_quantize(m.to(self.dtype), h, ScopedQuantizer.for_weight(w, spec), self.block, self.damp, self.act_order)
            weights[name] = q.reshape(w.shape).to(w.dtype)
        return prequantize(graph, "gptq", weights)

    def restore(self, graph: LayerGraph, layers: Sequence[str]) -> LayerGraph:
        """Saved GPTQ weights (export's rebuild): marked prequantized, not recomputed."""
        return mark_prequantized(graph, self.ctx, layers)
