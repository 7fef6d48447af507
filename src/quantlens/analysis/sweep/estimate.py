"""A first-order (Fisher) estimate of every cell, checked against exact cones.

One forward and one backward pass per batch give, for every layer ``i``, the gradient ``g_n``
of a sampled log-likelihood with respect to the layer's (post-activation) output ``o_n``; the
layer alone, quantized at ``b`` bits (weights, input and output quantizers as in the sweep),
gives its output error ``d_n = o_q,n - o_n``. The estimate is the expected KL increase::

    est(i, b) = mean_n 1/2 (g_n . d_n)^2,   g_n = grad_o log softmax(y_n)[c_n],   c_n ~ softmax(y_n)

``E_c[(g . d)^2] = d^T F d`` with ``F`` the Fisher information of the output distribution, so
this is the second-order change of ``KL(p(y) || p(y_q))`` when only layer ``i`` is quantized
(the HAWQ / ModelOpt kind of sensitivity), at the cost of one backward pass and each layer's own
op, instead of each layer's downstream cone.

It is always checked: the estimate's ``k`` worst cells per bit-width and ``k`` random others are
measured exactly with cones; the result reports the Spearman correlation between estimate and
exact degradation over those cells and the overlap of the top-``k``. Below
:data:`TRUST_SPEARMAN` the summary says the estimate cannot be trusted for this model.

Example:
    >>> r = ql.analyze(model, data, estimate=True)                       # doctest: +SKIP
    >>> r.extra["estimate"]["spearman"], r.extra["estimate"]["trusted"]  # doctest: +SKIP
    (0.91, True)
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import fx

from ...errors import QuantlensError
from ...graph.cone import QuantLayer, build_cache_module, fetch_attr, input_node
from ... import jsonio
from ...memory import trim_heap
from ...data import extract_output, iterate
from .results import Cell, SweepResult
from .runner import ConeRunner

__all__ = ["TRUST_SPEARMAN", "spearman", "first_order", "estimate_sweep"]

TRUST_SPEARMAN = 0.7
NO_GRADIENT = ("--estimate needs gradients through the model ({why}); the exact sweep is the fallback: drop --estimate")


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


def _segment(runner: ConeRunner, i: int) -> tuple[fx.GraphModule, list[str], QuantLayer]:
    """The layer's own op, activation and quantizers: ``gm(*[cache[f] for f in frontier]) -> o_q``."""
    graph, layer = runner.graph, runner.layers[i]
    gm, nodes = graph.gm, graph.nodes()
    path = []
    n = nodes[layer.output_node]
    while n.name != layer.node:
        path.append(n)
        n = next(a for a in n.all_input_nodes if a.op != "get_attr")
    path.append(n)
    path.reverse()
    inside = {p.name for p in path}
    frontier: list[str] = []
    for p in path:
        for a in p.all_input_nodes:
            if a.name not in inside and a.op != "get_attr" and a.name not in frontier:
                frontier.append(a.name)
    qlayer = QuantLayer(gm.get_submodule(layer.module_name))
    modules: dict[str, Any] = {"ql_layer": qlayer, "ql_in_q": runner.in_q[i], "ql_out_q": runner.out_q[i]}
    g = fx.Graph()
    env: dict[str, fx.Node] = {f: g.placeholder(f) for f in frontier}
    for p in gm.graph.nodes:
        if p.op == "get_attr" and any(u.name in inside for u in p.users):
            env[p.name] = g.node_copy(p, lambda a: env[a.name])
            modules[str(p.target)] = fetch_attr(gm, str(p.target))
    for p in path:
        if p.name == layer.node:
            new = g.call_module("ql_layer", (g.call_module("ql_in_q", (env[p.args[0].name],)),))  # type: ignore[union-attr]
        else:
            new = g.node_copy(p, lambda a: env[a.name])
            if p.op == "call_module":
                modules[str(p.target)] = gm.get_submodule(str(p.target))
        env[p.name] = new
    g.output(g.call_module("ql_out_q", (env[layer.output_node],)))
    return fx.GraphModule(modules, g, class_name=f"Segment_{layer.index}"), frontier, qlayer


def first_order(sweep: Any, data: Iterable[Any], seed: int = 0) -> dict[tuple[int, int], float]:
    """``est(i, b)`` for every swept cell (see module docstring)."""
    runner = sweep.runner
    if not isinstance(runner, ConeRunner):
        raise QuantlensError(NO_GRADIENT.format(why="the model is run through forward hooks, not a traced graph"))
    ids = list(sweep.layer_ids)
    outs = [runner.layers[i].output_node for i in ids]
    ins = [input_node(runner.graph, runner.layers[i]) for i in ids]
    gm, keep = build_cache_module(runner.graph, outs + ins)
    segs = {i: _segment(runner, i) for i in ids}
    sums = {(i, b): 0.0 for i in ids for b in sweep.config.w_bits}
    n_total = 0
    gen = torch.Generator().manual_seed(seed)
    for inputs, _ in iterate(data, "data"):
        inputs = inputs.to(sweep.device)
        floats = [t for t in inputs.tensors() if t.is_floating_point()]
        if not floats:
            raise QuantlensError(NO_GRADIENT.format(why="its inputs are integers, so nothing carries a gradient"))
        with torch.enable_grad():
            for t in floats:
                t.requires_grad_(True)
            flat, values = gm(*runner.graph.flat(inputs))
            out = runner.graph.output(flat)
            vals = dict(zip(keep, values))
            y = extract_output(out, sweep.output_key)
            if not y.requires_grad or any(not vals[o].requires_grad for o in outs):
                raise QuantlensError(NO_GRADIENT.format(why="a layer's output does not depend differentiably on the inputs"))
            logits = y.reshape(y.shape[0], -1).double()
            c = torch.multinomial(F.softmax(logits.detach(), 1).cpu(), 1, generator=gen).reshape(-1).to(logits.device)
            loss = F.log_softmax(logits, 1).gather(1, c[:, None]).sum()
            grads = torch.autograd.grad(loss, [vals[o] for o in outs], allow_unused=True)
        with torch.no_grad():
            for i, o_name, g in zip(ids, outs, grads):
                if g is None:
                    raise QuantlensError(NO_GRADIENT.format(why=f"no gradient reaches layer {runner.layers[i].name}"))
                seg, frontier, ql = segs[i]
                args = [vals[f].detach() if f in vals else None for f in frontier]
                if any(a is None for a in args):  # the segment reads a value the cache module did not keep
                    raise QuantlensError(NO_GRADIENT.format(why=f"layer {runner.layers[i].name} reads more than its input"))
                o = vals[o_name].detach()
                for b in sweep.config.w_bits:
                    ql.set_weight(sweep.qweights[(i, b)].weight)
                    d = (seg(*args) - o).double()
                    s = (g.double() * d).reshape(d.shape[0], -1).sum(1)
                    sums[(i, b)] += float(0.5 * (s * s).sum())
        n_total += int(y.shape[0])
        del vals, values, out, flat, grads
        trim_heap()
    return {k: v / n_total for k, v in sums.items()}


def estimate_sweep(sweep: Any, data: Iterable[Any], recipe_analyze: Any, k: int = 5, seed: int = 0,
                   model_name: str = "") -> SweepResult:
    """Estimate every cell, re-measure the estimate's top ``k`` and ``k`` random layers per
    bit-width exactly (``recipe_analyze(layers) -> SweepResult``), and report the check."""
    t0 = time.perf_counter()
    est = first_order(sweep, data, seed)
    t_est = time.perf_counter() - t0
    names = {i: sweep.runner.layers[i].name for i in sweep.layer_ids}
    rng = random.Random(seed)
    chosen: dict[int, list[str]] = {}
    for b in sweep.config.w_bits:
        ranked = sorted(sweep.layer_ids, key=lambda i: -est[(i, b)])
        top = [names[i] for i in ranked[:k]]
        rest = [names[i] for i in ranked[k:]]
        chosen[b] = top + rng.sample(rest, min(k, len(rest)))
    layers = sorted({n for v in chosen.values() for n in v}, key=lambda n: [names[i] for i in sweep.layer_ids].index(n))
    t1 = time.perf_counter()
    exact = recipe_analyze(layers)
    t_exact = time.perf_counter() - t1
    xs, ys, overlap = [], [], {}
    by_name = {v: i for i, v in names.items()}
    for b in sweep.config.w_bits:
        pts = [(est[(by_name[n], b)], exact.cell(n, b).degradation) for n in chosen[b]]
        xs += [p[0] for p in pts]
        ys += [p[1] for p in pts]
        est_top = set(chosen[b][:k])
        exact_top = set(sorted(chosen[b], key=lambda n: -exact.cell(n, b).degradation)[:k])
        overlap[b] = len(est_top & exact_top) / max(1, len(est_top))
    rho = spearman(xs, ys)
    nan = jsonio.NAN
    cells = []
    for i in sweep.layer_ids:
        for b in sweep.config.w_bits:
            c = exact.find(names[i], b)
            if c is not None and names[i] in chosen[b]:
                cells.append(dataclasses.replace(c, estimate=est[(i, b)]))
            else:
                cells.append(Cell(layer=names[i], w_bits=b, a_bits=sweep.config.a_bits, noise=nan, sqnr_db=nan, metric=nan,
                                  degradation=nan, estimate=est[(i, b)]))
    info = {"k": k, "spearman": rho, "topk_overlap": overlap, "trusted": bool(rho >= TRUST_SPEARMAN),
            "checked_cells": len(xs), "estimate_s": t_est, "check_s": t_exact, "unit": "expected KL increase (nats)"}
    infos = {l.name: l for l in exact.layers}
    all_infos = tuple(infos.get(l.name, l) for l in sweep.layer_info(sweep.new_state([])))
    return dataclasses.replace(exact, layers=all_infos, cells=tuple(cells), model=model_name or exact.model,
                               engine="estimate", extra={**exact.extra, "estimate": info})
