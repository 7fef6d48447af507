"""A first-order (Fisher) estimate of every cell from one forward and backward pass per batch,
checked against exact cones.

For layer ``i`` quantized alone at ``b`` bits (weights, input and output quantizers as in the
sweep) the output changes by ``d``; with ``g = grad_y log softmax(y)[c]`` at a label
``c ~ softmax(y)`` drawn from the model itself, ``E_c[(g . d)^2] = d^T F d`` (``F``: the Fisher
information of the output distribution), so ``1/2 E[(g . d)^2]`` is the second-order increase of
``KL(p(y) || p(y_q))``: the HAWQ / ModelOpt kind of sensitivity. Its three noise sources are
taken as independent (their cross terms dropped), so over the ``N`` samples ``n``::

    est(i, b) = 1/(2N) [ sum_n (mu_b . S_n)^2 + sum_k r_b,k^2 D_k + s_in^2/12 A_in + s_out^2/12 A_out ]

* weights: ``dW_b = Q_b(W) - W`` is known without any pass; ``mu_b,c`` is its mean over output
  channel ``c`` and ``r_b = dW_b - mu_b`` the rest. ``S_n,c = sum_k G_n,c,k`` (``G_n``: the
  sample's weight gradient) is exact per sample: ``S_n,c = sum_p g_z,n,c(p) P_n,c(p)`` with ``g_z``
  the gradient at the layer's pre-activation output and ``P`` the patch sums of its input (the
  input summed over each group's channels, then a box filter). The rest is taken on the Fisher
  diagonal (rounding errors are nearly independent): ``D_k = sum_batches (sum_n G_n,k)^2``, the
  batch gradient squared, unbiased for ``sum_n G_n,k^2`` because ``E_c[G_n] = 0`` for a label
  drawn from the model.
* activations: a uniform quantizer of step ``s`` adds noise of variance ``s^2/12`` to every
  non-zero value (zero is exact); ``A_in = sum_n sum_j g_x,n,j^2 [x_n,j != 0]`` with ``g_x`` the
  gradient at the layer's own input edge (other consumers of that tensor stay float), ``A_out``
  likewise at its output after the activation. The steps come from the ranges, so the same pass
  also calibrates the quantizers (the sweep's observers, fed the same values).

Every bit-width comes from the same pass: only ``mu_b`` and ``r_b`` depend on ``b``.

Memory at LLM size: the logits' gradient is computed :data:`LOGIT_ROWS` rows at a time in
float64 on a detached copy, then one backward from the logits (bit for bit the whole-tensor
computation), and a token batch runs in micro-batches of :data:`MICRO_TOKENS` tokens
(:func:`micro_batch`: equal to the whole batch up to float32 summation order). Each batch is
folded into per-bit-width sums when it ends (:func:`_fold_batch`: ``sum_k r_b,k^2 D_k`` and
``G_true . dW_b`` are linear in ``D`` and ``G_true``), so what stays weight-sized is the batch's
gradient (and, for nll, the batch's ``G_true``): ``4 P`` (``8 P``) bytes for ``P`` swept parameters.
For nll the true labels' backward runs first, retaining the graph, and the sampled one last,
which frees the graph as it goes (:func:`gradient_pass_bytes`: what the check of memory counts).

A language model scored by a token metric (nll, perplexity, token_kl, token_agreement) has one
output distribution per position: ``y`` is ``[batch, seq, vocab]`` logits, a label ``c_t`` is
drawn at every counted position (the attention mask's; padding adds nothing) and ``g`` is the
gradient of ``sum_t log softmax(y_t)[c_t]``. The labels are independent, so ``E[(g . d)^2]`` is
the sum of the positions' ``d_t^T F_t d_t`` and ``N`` counts tokens: ``est`` is the expected
increase of the mean per-token KL. Integer inputs (token ids) need no gradient: a layer whose
input depends on no parameter gets a fresh leaf there.

``nll`` and ``perplexity`` score the data's own next tokens, not the model's: their change
has a first-order term, signed, that the KL does not. The weight error is known, so it is
added exactly to first order (one more backward per batch, to the weights only)::

    est(i, b) += (G_true . dW_b) / N_true

with ``G_true`` the weight gradient of the summed nll of the ``N_true`` counted next tokens
(the metric's own, :class:`~quantlens.metrics.tokens.NLL`). ``est`` is then the expected nll
change per token (perplexity ranks the same way); the activations keep their second-order term.

It is always checked: at one bit-width (:func:`check_bits`: 4 if swept, else the lowest), among
the estimate's top ``k`` layers, the ``k`` below them and ``k`` random others, those of cheapest
cones that fit in ``budget`` times the estimate's time are measured exactly with their cones in
one float pass per batch (:mod:`quantlens.sweep.check`); the result reports the Spearman
correlation between estimate and exact degradation over those cells and the overlap of the top
``k`` among them. Below :data:`TRUST_SPEARMAN` (or with fewer than 3 cells) the summary says
the estimate cannot be trusted for this model.

Example:
    >>> r = ql.analyze(model, data, method="estimate")                       # doctest: +SKIP
    >>> r.extra["estimate"]["spearman"], r.extra["estimate"]["trusted"]  # doctest: +SKIP
    (0.91, True)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from quantlens.quant.formats import get_format
from quantlens.sweep.results import bits_label
from quantlens.sweep.collect import layer_info
from quantlens.core import jsonio
from quantlens.core.inputs import Inputs
from quantlens.data.batches import extract_output, input_ids, iterate
from quantlens.errors import QuantlensError
from quantlens.graph.layers import LayerGraph, transposed_linear
from quantlens.graph.layers import fetch_attr
from quantlens.engine.memory import check_fits, trim_heap, tune_heap
from quantlens.metrics.task import make_metric, token_mask
from quantlens.core.numerics import analysis_mode, exact_float32
from quantlens.quant.observers import MinMaxObserver
from quantlens.quant.quantizer import make_observer
from quantlens.metrics.tokens import NLL, check_logits
from quantlens.sweep.results import Cell, SweepResult
from quantlens.engine.runner import ConeRunner
from quantlens.engine.cost import cone_shares
from quantlens.sweep.check import candidates, choose, measure

__all__ = ["TRUST_SPEARMAN", "MICRO_TOKENS", "micro_batch", "spearman", "check_bits", "check_budget", "first_order", "timed_first_order", "estimate_sweep",
           "gradient_pass_bytes", "check_gradient_pass", "GRAPH_PER_SAMPLE"]

TRUST_SPEARMAN = 0.7
Shares = Callable[[Any, Any], "dict[int, float]"]
NO_GRADIENT = "--estimate needs gradients through the model ({why}); the exact sweep is the fallback: drop --estimate"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 points or no spread.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
    0.8
    """
    if len(x) < 3:
        return float("nan")

    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda k: v[k])
        r = [0.0] * len(v)
        k = 0
        while k < len(order):
            j = k
            while j + 1 < len(order) and v[order[j + 1]] == v[order[k]]:
                j += 1
            for m in range(k, j + 1):
                r[order[m]] = (k + j) / 2
            k = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def check_bits(w_bits: Sequence) -> "int | str":
    """The column the check measures: 4 bits if swept (the usual target), else the lowest swept;
    in a sweep over formats, the format of fewest effective bits (the first column)."""
    if any(isinstance(b, str) for b in w_bits):
        return w_bits[0]
    return 4 if 4 in w_bits else min(w_bits)


def _with_leaf_weight(m: nn.Module) -> nn.Module:
    """A shallow copy of layer module ``m`` (its own forward, its bias) whose weight is a new leaf
    that shares ``m.weight``'s storage and requires grad: ``m`` itself is not changed, and each
    call of a module called twice gets its own gradient."""
    s = copy.copy(m)
    s._parameters = {**m._parameters, "weight": m.weight.detach().requires_grad_(True)}
    return s


def _edge(x: Tensor) -> Tensor:
    """Layer input ``x`` on the layer's own edge: a view when it carries a gradient (from the
    inputs or an earlier layer), else a new leaf (nothing upstream needs its gradient: token
    embeddings of integer ids)."""
    if not x.is_floating_point():
        return x
    return x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)


def _tapped(graph: LayerGraph, ids: Sequence[int]) -> tuple[fx.GraphModule, list[nn.Module]]:
    """The float network ``gm(*flat) -> (output, (x_i...), (z_i...), (o_i...))`` where ``x_i`` is
    layer ``i``'s input on its own edge (:func:`_edge`: its gradient is ``i``'s alone), ``z_i`` its
    output before the activation and ``o_i`` after; each layer computes with its own weight leaf
    (:func:`_with_leaf_weight`)."""
    gm, layers = graph.gm, {graph.layers[i].node: graph.layers[i] for i in ids}
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    modules: dict[str, Any] = {}
    taps: dict[str, tuple[fx.Node, fx.Node]] = {}
    qls: list[nn.Module] = []
    for n in gm.graph.nodes:
        if n.op == "output":
            continue
        if n.name in layers:
            x = env[n.args[0].name]  # type: ignore[union-attr]
            tap = g.call_function(_edge, (x,))
            ql = _with_leaf_weight(gm.get_submodule(layers[n.name].module_name))
            modules[f"ql_est_{len(qls)}"] = ql
            qls.append(ql)
            env[n.name] = g.call_module(f"ql_est_{len(qls) - 1}", (tap,))
            taps[n.name] = (tap, env[n.name])
            continue
        env[n.name] = g.node_copy(n, lambda a: env[a.name])
        if n.op == "call_module":
            modules[str(n.target)] = gm.get_submodule(str(n.target))
        elif n.op == "get_attr":
            modules[str(n.target)] = fetch_attr(gm, str(n.target))
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    order = [graph.layers[i] for i in ids]
    g.output((fx.node.map_arg(out.args[0], lambda a: env[a.name]), tuple(taps[l.node][0] for l in order),
              tuple(taps[l.node][1] for l in order), tuple(env[l.output_node] for l in order)))
    return fx.GraphModule(modules, g, class_name="EstimateTaps"), qls


def _patch_summer(m: nn.Module) -> Optional[nn.Module]:
    """For a convolution with ``g`` groups, a shallow copy of it with weight ``ones[g, 1, *k]``: fed
    the input summed over each group's channels ``[N, g, *in]``, it gives ``P``, the sum of the input
    patch each output position reads, ``[N, g, *out]`` (a box filter; the module's own forward, so a
    subclass's padding too). None for a Linear."""
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return None
    w = m.weight
    s = copy.copy(m)
    s._parameters = {"weight": w.new_ones((m.groups, 1, *m.kernel_size)), "bias": None if m.bias is None else w.new_zeros(m.groups)}
    return s


def channel_sums(m: nn.Module, summer: Optional[nn.Module], gz: Tensor, x: Tensor) -> Tensor:
    """``S_n,c = sum_p g_z,n,c(p) P_n,c(p)``, ``[N, out channels]``."""
    n = gz.shape[0]
    if summer is not None:
        g = m.groups  # type: ignore[union-attr]
        # depthwise (one input channel per group): the input itself, no copy summing one value
        p = summer(x if x.shape[1] == g else x.reshape(n, g, -1, *x.shape[2:]).sum(2))
        return torch.einsum("ngcp,ngp->ngc", gz.reshape(n, g, -1, p[0, 0].numel()), p.reshape(n, g, -1)).reshape(n, -1)
    return torch.einsum("npc,np->nc", gz.reshape(n, -1, gz.shape[-1]), x.sum(-1).reshape(n, -1))


class _TapSums:
    """Tensor hooks that fold each layer's gradients into its sums as the backward reaches them:
    ``s_sq[k] += sum_n (mu_b . S_n)^2`` (:func:`channel_sums` of ``g_z`` and ``x``) at ``z_k``, and
    with ``act`` ``a_out[k] += A_out`` (:func:`_nonzero_sq` of ``g_o`` and ``o``) at ``o_k``. The same
    values as summing after the backward from retained ``.grad`` tensors, bit for bit; but only the
    gradients the backward itself holds are alive (SmolLM2, 256 tokens: 211 layers' ``g_z`` and
    ``g_o`` were ~0.4 GB). ``z_seen[k]``: whether ``z_k``'s gradient came."""

    def __init__(self, xs: Sequence[Tensor], zs: Sequence[Tensor], os_: Sequence[Tensor], mods: Sequence[nn.Module],
                 summers: Sequence[Optional[nn.Module]], mu: Sequence[Tensor], s_sq: list, a_out: list, act: bool) -> None:
        self.z_seen = [False] * len(zs)
        for k, (x, z, o) in enumerate(zip(xs, zs, os_)):
            if z.requires_grad:
                z.register_hook(self._on_z(k, x.detach(), mods[k], summers[k], mu[k], s_sq))
            if act and o.requires_grad:
                o.register_hook(self._on_o(k, o.detach(), a_out))

    def _on_z(self, k: int, x: Tensor, m: nn.Module, summer: Optional[nn.Module], mu: Tensor, s_sq: list) -> Any:
        def hook(g: Tensor) -> None:
            with torch.no_grad():
                v = (channel_sums(m, summer, g, x).float() @ mu).double()  # bf16 models: mu is float32
                s_sq[k] = s_sq[k] + v.pow(2).sum(0)
            self.z_seen[k] = True
        return hook

    @staticmethod
    def _on_o(k: int, o: Tensor, a_out: list) -> Any:
        def hook(g: Tensor) -> None:
            with torch.no_grad():
                a_out[k] = a_out[k] + _nonzero_sq(g, o)
        return hook


def _nonzero_sq(g: Optional[Tensor], v: Tensor) -> Tensor:
    """``sum_j g_j^2 [v_j != 0]`` (0 without a gradient), as the dot product of ``g [v != 0]`` and ``g``.

    The mask is written in ``g``'s dtype (``torch.ne`` into a float tensor, 1 or 0) and multiplied
    by ``g`` in place: the same values as ``g * (v != 0)`` (a bool operand promoted), bit for bit,
    at half the time (no mixed-dtype multiply, one buffer fewer). ``g`` is not changed: it may be
    shared (a view's gradient is its base's)."""
    if g is None:
        return v.new_zeros((), dtype=torch.float64)
    m = torch.ne(v, 0, out=torch.empty_like(g, memory_format=torch.contiguous_format)).mul_(g)
    return torch.linalg.vecdot(m.reshape(-1), g.reshape(-1)).double()


def _rows(t: Tensor, m: nn.Module) -> Tensor:
    """``t`` (a weight-shaped tensor) as ``[out channels, values]`` (a transposed Linear keeps its
    output channels on the last axis)."""
    t = t.t() if transposed_linear(m) else t
    return t.reshape(t.shape[0], -1)


def _channel_means(w: Tensor, m: nn.Module) -> Tensor:
    """The mean of a weight-shaped tensor per output channel (float32, one read pass)."""
    return _rows(w, m).float().mean(1)


def _diagonal_rest(dw: Tensor, mu: Tensor, diag: Tensor, d_rows: Tensor, m: nn.Module) -> float:
    """``sum_k r_k^2 D_k`` with ``r = dW - mu`` per output channel, as
    ``sum_c [sum_k dW^2 D - 2 mu_c sum_k dW D + mu_c^2 sum_k D]`` (``d_rows``: ``sum_k D`` per channel)."""
    e = _rows(dw.float(), m)
    t = e * _rows(diag, m)
    a, b = torch.linalg.vecdot(t, e).double(), t.sum(1).double()
    mu = mu.double()
    return float((a - 2 * mu * b + mu * mu * d_rows).sum())


def _backward(y: Tensor, g: Tensor, inputs: list, retain_graph: bool = False) -> None:
    """``torch.autograd.backward(y, g, inputs=inputs)``, as the backward of the scalar ``sum(y * g)``:
    the gradient reaching ``y`` is ``1 * g``, ``g`` bit for bit. Given a gradient tensor,
    ``torch.autograd.backward`` imports ``torch.fx.experimental.symbolic_shapes`` (and sympy) to
    check its shape: about 0.5 s of CPU once per process, which the exact sweep never pays. The
    price: ``y * g`` and the gradient ``1 * g``, one ``y``-sized tensor each, briefly."""
    torch.autograd.backward((y * g).sum(), inputs=inputs, retain_graph=retain_graph)


FOLD_CHUNK = 1 << 21  # values per float64 step of _dot64: 16 MB per operand


def _dot64(a: Tensor, b: Tensor, step: int = FOLD_CHUNK) -> Tensor:
    """``a . b`` over all values in float64, ``step`` values at a time (no float64 copy of a whole
    weight: 226 MB for SmolLM2's lm_head)."""
    a, b = a.reshape(-1), b.reshape(-1)
    total = a.new_zeros((), dtype=torch.float64)
    for k in range(0, a.numel(), step):
        total += torch.linalg.vecdot(a[k:k + step].double(), b[k:k + step].double())
    return total


def _fold_batch(sweep: Any, i: int, bits: Sequence, m: nn.Module, mu: Tensor, g: Tensor, g_true: Optional[Tensor],
                rest: Tensor, true_dot: Tensor) -> None:
    """Add one batch of layer ``i`` to its per-bit-width sums, then zero its gradients for the next
    batch: ``rest[j] += sum_k r_j,k^2 g_k^2`` (:func:`_diagonal_rest` with the batch's ``D = g^2``)
    and, with ``g_true``, ``true_dot[j] += g_true . dW_j``. Both are linear in ``D_k = sum_batches
    g_k^2`` and in ``G_true``, so the sums over batches equal the formulas on the summed tensors up
    to summation order (float32 ``D`` over batches before, float64 sums of per-batch terms now),
    with no ``D`` or ``G_true`` kept across batches. ``dW_j`` is quantized again per batch."""
    d = g * g
    d_rows = _rows(d, m).sum(1).double()
    w = sweep.runner.float_weight(i)
    for j, b in enumerate(bits):
        dw = sweep.quantize(i, b).weight - w
        rest[j] += _diagonal_rest(dw, mu[:, j], d, d_rows, m)
        if g_true is not None:
            true_dot[j] += _dot64(g_true, dw)
        del dw
    del d
    g.zero_()  # the next batch adds into them: 0 + g is g (no fresh pages)
    if g_true is not None:
        g_true.zero_()


def _unit(metric: Any) -> str:
    """What ``est`` measures for the sweep's metric (see module docstring)."""
    if isinstance(metric, NLL):
        return "expected nll change per token (nats)"
    return "expected KL increase per token (nats)" if getattr(metric, "per_token", False) else "expected KL increase (nats)"


LOGIT_ROWS = 64  # rows (tokens) of the logits per float64 step: 64 x 49152 x 8 B = 25 MB at SmolLM2's vocabulary


def _output_rows(y: Tensor, inputs: Any, per_token: Optional[str]) -> tuple[Tensor, Optional[Tensor]]:
    """The output distributions as rows ``[distributions, entries]`` (a view of ``y`` where it can
    be) and the counted ones: one per sample (the output flattened), or with ``per_token`` (the
    token metric's name) one per position of ``[batch, seq, vocab]`` logits, padding (by the
    attention mask) not counted (``None``: every row counts)."""
    if per_token:
        check_logits(per_token, y)
        mask = token_mask(y, inputs)
        return y.reshape(-1, y.shape[-1]), None if mask is None else mask.reshape(-1)
    return y.reshape(y.shape[0], -1), None


def _sampled_output_gradient(rows: Tensor, keep: Optional[Tensor], gen: torch.Generator,
                             step: int = LOGIT_ROWS) -> tuple[Tensor, int]:
    """``g = d/dy sum_{kept r} log softmax(y_r)[c_r]`` with ``c_r ~ softmax(y_r)`` drawn from the
    model (``rows``: ``y`` as ``[R, entries]``, no graph needed), in ``y``'s dtype, and the number
    of counted rows. Per kept row ``g_r = onehot(c_r) - softmax(y_r)``, 0 elsewhere.

    Computed ``step`` rows at a time in float64, each by autograd on the rows alone: the same
    kernels, row for row, as the whole ``[R, entries]`` float64 log-softmax and its backward (bit
    for bit), at ``step x entries`` float64 values instead of several ``R x entries`` copies. Every
    row is drawn, kept or not, in row order: ``torch.multinomial`` (one sample per row) consumes the
    generator row by row, so the draws equal one call over all rows (tested)."""
    g = torch.empty_like(rows)
    with torch.enable_grad():
        for a in range(0, rows.shape[0], step):
            leaf = rows[a:a + step].detach().double().requires_grad_(True)
            c = torch.multinomial(F.softmax(leaf.detach(), 1).cpu(), 1, generator=gen).reshape(-1).to(leaf.device)
            ll = F.log_softmax(leaf, 1).gather(1, c[:, None]).reshape(-1)
            if keep is not None:
                ll = ll[keep[a:a + step]]
            g[a:a + step] = torch.autograd.grad(ll.sum(), leaf)[0]
    return g, (int(rows.shape[0]) if keep is None else int(keep.sum()))


def _true_nll_gradient(metric: NLL, y: Tensor, labels: Any, inputs: Any, step: int = LOGIT_ROWS) -> tuple[Tensor, int]:
    """``d/dy`` of the summed nll of the data's own next tokens (the metric's counted tokens:
    :meth:`~quantlens.metrics.tokens.NLL.targets`), in ``y``'s dtype and shape, and their number:
    per counted position ``t``, ``softmax(y_t) - onehot(label_{t+1})``, 0 elsewhere. ``step`` rows
    at a time in float64, as :func:`_sampled_output_gradient` (bit for bit the metric's own
    ``cross_entropy`` on all rows and its backward)."""
    keep, tgt = metric.targets(y, labels, inputs)
    g = torch.zeros(y.shape, dtype=y.dtype, device=y.device)
    pos = keep.nonzero()  # row-major: the order of y[:, :-1][keep]
    at = pos[:, 0] * y.shape[1] + pos[:, 1]
    rows, flat = y.detach().reshape(-1, y.shape[-1]), g.view(-1, y.shape[-1])
    with torch.enable_grad():
        for a in range(0, int(at.numel()), step):
            idx = at[a:a + step]
            leaf = rows.index_select(0, idx).double().requires_grad_(True)
            nll = F.cross_entropy(leaf, tgt[a:a + step], reduction="none").sum()
            flat.index_copy_(0, idx, torch.autograd.grad(nll, leaf)[0].to(g.dtype))
    return g, int(at.numel())


MICRO_TOKENS = 256  # tokens per backward of a token model: its autograd graph and tapped gradients grow with them


def micro_batch(inputs: Inputs, per_token: Optional[str], micro: Optional[int] = None) -> Optional[int]:
    """Samples per forward and backward of the estimate: ``micro`` if given (0: the whole batch);
    else for a token metric on ``[batch, seq]`` token ids, ``max(1, MICRO_TOKENS // seq)``
    sequences, and the whole batch (None) otherwise.

    A batch's micro-batches draw the same labels (rows in order) and sum to the same statistics:
    ``D_k`` squares the batch's weight gradient summed over them, the other terms are sums over
    samples. They differ from one backward of the whole batch only in float32 summation order
    (the weight gradient's reduction over tokens is split)."""
    if micro is not None:
        return micro or None
    ids = input_ids(inputs) if per_token else None
    if ids is None or ids.dim() != 2:
        return None
    return max(1, MICRO_TOKENS // max(1, int(ids.shape[1])))


def _micro_batches(inputs: Inputs, labels: Any, size: Optional[int]) -> list[tuple[Inputs, Any]]:
    """``(inputs, labels)`` cut along the batch into consecutive parts of ``size`` samples (every
    tensor whose first dimension is the batch; views, no copies); the whole batch if ``size`` is
    None or not smaller."""
    b = inputs.batch_size
    if size is None or size >= b:
        return [(inputs, labels)]
    from torch.utils import _pytree as pytree

    parts = []
    for a in range(0, b, size):
        cut = lambda t, a=a: t[a:a + size] if isinstance(t, Tensor) and t.dim() and t.shape[0] == b else t  # noqa: E731
        parts.append((Inputs(tuple(pytree.tree_map(cut, list(inputs.args))), pytree.tree_map(cut, dict(inputs.kwargs))),
                      pytree.tree_map(cut, labels)))
    return parts


def first_order(sweep: Any, data: Iterable[Any], seed: int = 0, micro: Optional[int] = None) -> dict[tuple[int, int], float]:
    """``est(i, b)`` for every swept cell (see module docstring), from one forward and one
    backward pass per batch (per micro-batch of ``micro`` samples: :func:`micro_batch`). If the
    sweep's activation quantizers are not calibrated yet, the same pass calibrates them (so the
    check needs no calibration pass of its own)."""
    return timed_first_order(sweep, data, seed, micro)[0]


def timed_first_order(sweep: Any, data: Iterable[Any], seed: int = 0,
                      micro: Optional[int] = None) -> tuple[dict[tuple[int, int], float], float]:
    """:func:`first_order` and the seconds its forward passes took (the float network once per
    batch: what the check's cost model scales, :mod:`quantlens.sweep.check`)."""
    runner = sweep.runner
    if not isinstance(runner, ConeRunner):
        raise QuantlensError(NO_GRADIENT.format(why="the model is run through forward hooks, not a traced graph"))
    tune_heap()  # freed activations go back to the heap for the next micro-batch, not to the kernel
    ids = list(sweep.layer_ids)
    bits = list(sweep.config.columns)
    spec = sweep.config.act_spec()
    calibrate = spec is not None and not all(runner.in_q[i].enabled for i in ids)
    ins = {i: make_observer(spec) for i in ids} if calibrate else {}
    outs = {i: make_observer(spec) for i in ids} if calibrate else {}
    gm, qls = _tapped(runner.graph, ids)
    mods = [runner.graph.module(runner.layers[i]) for i in ids]
    summers = [_patch_summer(m) for m in mods]
    dev = sweep.device
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    a_in, a_out = [zero] * len(ids), [zero] * len(ids)
    # per bit-width: sum over batches of sum_k r_b,k^2 S_k^2 (the batch's D folded in) and of G_true . dW_b
    rest = [torch.zeros(len(bits), dtype=torch.float64, device=dev) for _ in ids]
    true_dot = [torch.zeros(len(bits), dtype=torch.float64, device=dev) for _ in ids]
    # mu_b per output channel, one column per bit-width: sum_n (mu_b . S_n)^2 for all b at once
    w_mean = [_channel_means(runner.float_weight(i), mods[k]) for k, i in enumerate(ids)]
    mu = [torch.stack([_channel_means(sweep.quantize(i, b).weight, mods[k]) - w_mean[k] for b in bits], 1)
          for k, i in enumerate(ids)]
    s_sq = [torch.zeros(len(bits), dtype=torch.float64, device=dev) for _ in ids]
    metric = make_metric(sweep.metric_spec)
    per_token = metric.name if getattr(metric, "per_token", False) else None
    signed = isinstance(metric, NLL)  # the data's own next tokens: a first-order, signed term too
    g_true: list[Optional[Tensor]] = [None] * len(ids)
    leaves = [q.weight for q in qls]
    n_total = n_true = 0
    forward_s = 0.0
    gen = torch.Generator().manual_seed(seed)
    whole = micro == 0 or not all(isinstance(o, MinMaxObserver) for o in ins.values())  # a histogram: one update per batch
    for inputs, labels in iterate(data, "data"):
        inputs = inputs.to(sweep.device)
        for part, part_labels in _micro_batches(inputs, labels, None if whole else micro_batch(inputs, per_token, micro)):
            with torch.enable_grad(), exact_float32():
                t_in = time.perf_counter()
                try:
                    out, xs, zs, os_ = gm(*runner.graph.flat(part))
                except Exception:  # noqa: BLE001 - a graph captured for whole batches only
                    if part is inputs or n_total:
                        raise
                    return timed_first_order(sweep, data, seed, micro=0)  # nothing drawn or summed yet
                y = extract_output(runner.graph.output(out), sweep.output_key)
                forward_s += time.perf_counter() - t_in
                if not y.requires_grad:
                    raise QuantlensError(NO_GRADIENT.format(why="the output does not depend differentiably on the layers"))
                if signed:  # the data's own next tokens first, retaining the graph for the sampled labels' backward
                    g_y, count = _true_nll_gradient(metric, y, part_labels, part, LOGIT_ROWS)
                    if count:  # into g_true's own tensors: the sampled gradients set aside meanwhile
                        sampled = [q.grad for q in leaves]
                        for q, g in zip(leaves, g_true):
                            q.grad = g
                        _backward(y, g_y, leaves, retain_graph=True)
                        g_true = [q.grad for q in leaves]
                        for q, g in zip(leaves, sampled):
                            q.grad = g
                        del sampled
                    n_true += count
                    del g_y
                # the logits' gradient, in float64 chunks of a detached copy; then one backward from y that
                # frees the graph as it goes (its saved activations, while the taps' gradients come)
                rows, keep = _output_rows(y.detach(), part, per_token)
                g_y, units = _sampled_output_gradient(rows, keep, gen, LOGIT_ROWS)
                del rows
                # each layer's sums in hooks, as its gradients come: no tap's gradient outlives its use
                sums = _TapSums(xs, zs, os_, mods, summers, mu, s_sq, a_out, spec is not None)
                # weight gradients add up in place in the leaves' .grad over the batch's micro-batches;
                # the inputs' gradients (activation noise only) are taken at the end: nothing may lie
                # upstream of an input for its hook to fire
                taps = [t for t in xs if t.requires_grad] if spec is not None else []
                _backward(y, g_y.view(y.shape), leaves + taps)
                g_x = {id(t): t.grad for t in taps}
                del g_y, taps
            with analysis_mode():
                for k, i in enumerate(ids):  # in topological order: the first layer cut off is the one named
                    if not sums.z_seen[k] or leaves[k].grad is None:
                        raise QuantlensError(NO_GRADIENT.format(why=f"no gradient reaches layer {runner.layers[i].name}"))
                    x = xs[k].detach()
                    if calibrate:
                        ins[i].update(x)
                        outs[i].update(os_[k].detach())
                    if spec is not None:
                        if g_x.get(id(xs[k])) is None:
                            raise QuantlensError(NO_GRADIENT.format(why=f"layer {runner.layers[i].name}'s input carries no gradient"))
                        a_in[k] = a_in[k] + _nonzero_sq(g_x[id(xs[k])], x)
            n_total += units
            del out, xs, zs, os_, g_x, y, sums
        trim_heap(0)  # the micro-batches' free pages back once per batch: the fold's temporaries do not fit their holes
        with analysis_mode():
            for k, q in enumerate(leaves):  # the batch's D_k = (its gradient)^2 and G_true, folded in per bit-width
                _fold_batch(sweep, ids[k], bits, mods[k], mu[k], q.grad, g_true[k] if signed else None, rest[k], true_dot[k])
        trim_heap(0)  # and the fold's (weights quantized again): the next batch's graph would grow the heap on top of them
    for q in leaves:
        q.grad = None
    trim_heap()  # once, after the pass: each micro-batch reuses the pages the one before freed
    if calibrate:
        for i in ids:
            runner.in_q[i].set(spec, ins[i])
            runner.out_q[i].set(spec, outs[i])
    est = {}
    for k, i in enumerate(ids):
        act = 0.0
        if spec is not None:
            act = float(runner.in_q[i].scale) ** 2 / 12 * float(a_in[k]) + float(runner.out_q[i].scale) ** 2 / 12 * float(a_out[k])
        for j, b in enumerate(bits):
            est[(i, b)] = 0.5 * (float(s_sq[k][j]) + float(rest[k][j]) + act) / n_total
            if signed and n_true:
                est[(i, b)] += float(true_dot[k][j]) / n_true
    return est, forward_s


def estimate_sweep(sweep: Any, data: Iterable[Any], k: int = 5, seed: int = 0, model_name: str = "",
                   check_at: Optional[int] = None, budget: float = 0.25, shares: Optional[Shares] = None) -> SweepResult:
    """Estimate every cell, then measure exactly at ``check_at`` (default :func:`check_bits`) the
    cells the check chooses within ``budget`` times the estimate's time (top ``k``, the ``k`` at
    the boundary and ``k`` random layers, cheapest cones first: :mod:`quantlens.sweep.check`), in
    one float pass per batch; report the check in ``extra["estimate"]``. ``shares``: the cost
    model, ``(sweep, inputs) -> {layer id: share of a forward pass}`` (default: the cones' work,
    :func:`quantlens.engine.cost.cone_shares`)."""
    if sweep.config.a_format is not None:
        raise QuantlensError(f"--estimate models integer activations (their noise s^2/12), not {sweep.config.a_format}: "
                             "run the exact sweep with --a-format, or --estimate with --a-bits")
    check_budget(budget)
    cols = sweep.config.columns
    b_chk = check_bits(cols) if check_at is None else check_at
    if b_chk not in cols:
        raise QuantlensError(f"the estimate's check at {bits_label(b_chk)} needs that "
                             f"{'format' if isinstance(b_chk, str) else 'bit-width'} in the sweep ({list(cols)})")
    t0 = time.perf_counter()
    sweep.qweights.clear()  # not alive during the gradient pass (4 bytes x parameters x formats); the check quantizes its own
    trim_heap()
    check_gradient_pass(sweep, data)
    est, forward_s = timed_first_order(sweep, data, seed)
    trim_heap(0)  # the gradient pass's pages back before the check's float passes
    t_est = time.perf_counter() - t0
    ranked = sorted(sweep.layer_ids, key=lambda i: -est[(i, b_chk)])
    inputs = next(iter(iterate(data, "data")))[0].to(sweep.device)
    share = (shares or _cone_shares)(sweep, inputs)
    cands = candidates(ranked, k, {i: share[i] * forward_s for i in ranked}, seed)
    taken = choose(cands, budget * t_est)
    chosen = [c.layer for c in taken]
    t1 = time.perf_counter()
    exact = measure(sweep, data, chosen, b_chk, model_name)
    t_exact = time.perf_counter() - t1
    names = {i: sweep.runner.layers[i].name for i in sweep.layer_ids}
    xs = [est[(i, b_chk)] for i in chosen]
    ys = [exact.cell(names[i], b_chk).degradation for i in chosen]
    by_est = sorted(chosen, key=lambda i: -est[(i, b_chk)])[:k]
    by_exact = sorted(chosen, key=lambda i: -exact.cell(names[i], b_chk).degradation)[:k]
    rho = spearman(xs, ys)
    cells = []
    for i in sweep.layer_ids:
        for b in cols:
            if b == b_chk and i in chosen:
                cells.append(dataclasses.replace(exact.cell(names[i], b), estimate=est[(i, b)]))
            else:
                nan = jsonio.NAN
                spec = sweep.config.weight_spec(b)
                cells.append(Cell(layer=names[i], w_bits=get_format(b).bits if isinstance(b, str) else b, a_bits=sweep.config.a_bits,
                                  noise=nan, sqnr_db=nan, metric=nan, degradation=nan, estimate=est[(i, b)], samples=0,
                                  format=spec.format_name))
    picked = set(chosen)
    info = {"k": k, "check_bits": b_chk, "spearman": rho,
            "topk_overlap": {b_chk: len(set(by_est) & set(by_exact)) / max(1, len(by_est))},
            "trusted": bool(rho >= TRUST_SPEARMAN), "checked_cells": len(xs), "candidate_cells": len(cands),
            "estimate_s": t_est, "check_s": t_exact, "budget": budget, "budget_s": budget * t_est,
            "forward_s": forward_s, "predicted_check_s": sum(c.cost_s for c in taken),
            "candidates": [{"layer": names[c.layer], "why": c.why, "rank": c.rank, "cost_s": c.cost_s, "checked": c.layer in picked}
                           for c in cands],
            "unit": _unit(make_metric(sweep.metric_spec))}
    rest = copy.copy(sweep)  # the other layers' info (weight statistics) once, without ranges
    rest.layer_ids = [i for i in sweep.layer_ids if i not in picked]
    measured = {l.name: l for l in exact.layers + tuple(layer_info(rest, rest.new_state([])))}
    infos = tuple(measured[names[i]] for i in sweep.layer_ids)
    return dataclasses.replace(exact, layers=infos, cells=tuple(cells), engine="estimate", config=sweep.config.to_dict(),
                               elapsed_s=time.perf_counter() - t0, extra={**exact.extra, "estimate": info})


GRAPH_PER_SAMPLE = 3.0
"""The autograd state of one sample in the gradient pass, as a multiple of what the float pass
keeps for it (:attr:`~quantlens.engine.sweep.Sweep.sample_bytes`: the layers' inputs and outputs
and three outputs): the saved activations, the taps' gradients and the logits' chunks (SmolLM2, one
256-token window: 0.52 GB of float-pass values, 1.6 GB measured above the pass's weight gradients)."""


def gradient_pass_bytes(sweep: Any, inputs: Inputs) -> tuple[int, int, int]:
    """What the gradient pass needs (:func:`check_gradient_pass`): ``(fixed, per_sample, samples)``.
    ``fixed`` is per swept weight of ``P`` bytes ``P`` (its gradient summed over the batch) and ``P``
    more for nll/perplexity (the true labels' gradient over the batch): :func:`_fold_batch` keeps
    nothing weight-sized across batches;
    ``per_sample`` is :data:`GRAPH_PER_SAMPLE` times the float pass's bytes per sample; ``samples``
    the samples per backward (:func:`micro_batch`)."""
    weights = sum(w.numel() * w.element_size() for w in (sweep.runner.float_weight(i) for i in sweep.layer_ids))
    metric = make_metric(sweep.metric_spec)
    per_token = metric.name if getattr(metric, "per_token", False) else None
    fixed = (2 if isinstance(metric, NLL) else 1) * weights
    micro = micro_batch(inputs, per_token)
    samples = inputs.batch_size if micro is None else min(micro, inputs.batch_size)
    return fixed, int(GRAPH_PER_SAMPLE * getattr(sweep, "sample_bytes", 0)), samples


def check_gradient_pass(sweep: Any, data: Iterable[Any]) -> None:
    """One line before the gradient pass if it would not fit in memory (:func:`~quantlens.engine.memory.check_fits`
    on :func:`gradient_pass_bytes`, measured on the first batch)."""
    inputs = next(iter(iterate(data, "data")))[0]
    fixed, per_sample, samples = gradient_pass_bytes(sweep, inputs)
    ids = input_ids(inputs)
    tokens = int(ids.shape[-1]) if ids is not None and ids.dim() == 2 else 0
    check_fits(fixed, per_sample, samples, "the estimate's gradient pass", tokens, fixed_what="weight gradients")


def check_budget(budget: Any) -> float:
    """``budget`` as a positive share of the estimate's time (``inf``: every candidate); one line if not."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise QuantlensError(f"the check's budget must be a share of the estimate's time above 0 (0.25: a quarter; "
                             f"inf: every candidate), got {budget!r}")
    return float(budget)


def _cone_shares(sweep: Any, inputs: Any) -> dict[int, float]:
    return cone_shares(sweep.runner.graph, inputs, sweep.layer_ids)
