"""An independent oracle: the naive per-layer loop built from PyTorch's fake-quantize ops.

For each layer and bit-width it edits a copy of the folded fx graph (fake-quantize nodes on
the layer's input edge and after its activation, the weight replaced by
``torch.fake_quantize_per_tensor_affine`` of it) and runs a full forward pass per batch.
It shares nothing with quantlens's engine but the capture, whose float output it checks
against the model's own on every batch (BN folding changes the last bits, not more).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import fx

from quantlens.graph import capture


def _node_values(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    vals: dict[str, torch.Tensor] = {}

    class Grab(fx.Interpreter):
        def run_node(self, n):
            v = super().run_node(n)
            vals[n.name] = v
            return v

    Grab(gm).run(x)
    return vals


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def _act_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    # float32 arithmetic, as the documented rule computes it (a double-precision scale can
    # differ in the last bit and move values across a rounding boundary)
    lo, hi = min(0.0, lo), max(0.0, hi)
    qmax = 2**bits - 1
    scale = (_f32(hi) - _f32(lo)) / _f32(qmax)
    scale = scale if float(scale) > 0 else _f32(1.0)
    zp = int(min(max(float(torch.round(-_f32(lo) / scale)), 0), qmax))
    return float(scale), zp


def _weight_scale(w: torch.Tensor, bits: int) -> float:
    s = w.abs().max().float() / _f32(2 ** (bits - 1) - 1)
    return float(s) if float(s) > 0 else 1.0


def naive_sweep(model, data, w_bits, a_bits=8, layer_names=None, metric=None, only=None):
    """{(layer, bits): (noise, sqnr_db, top1_agreement_with_float)} by full forward passes.

    ``only``: quantize just that source of the layer (``weights``, ``input`` or ``output``).
    With ``metric`` (a registered name), each value also carries the metric of the quantized
    output against the float one and the layer's relative output mean shift
    ``mean_c |E[o_q - o]_c| / std(o)_c`` (channels with ``std > 1e-12``):
    ``(noise, sqnr_db, agreement, metric, mean_shift)``.
    """
    from quantlens.metrics.task import make_metric

    g = capture(model)
    gm = g.gm
    # the capture must compute the model (so that a capture error cannot hide behind the
    # oracle sharing it): the folded graph's float output against the model's own
    with torch.no_grad():
        for x, _ in data if not model.training else []:
            want, got = model(x.clone()), gm(x)
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())), "capture changed the model"
    layers = [l for l in g.layers if layer_names is None or l.name in layer_names]
    # calibration ranges: min/max of each layer's input and output over the data
    ranges: dict[str, list[float]] = {}
    for x, _ in data:
        vals = _node_values(gm, x)
        for l in layers:
            conv = next(n for n in gm.graph.nodes if n.name == l.node)
            for key, name in (("in", conv.args[0].name), ("out", l.output_node)):
                v = vals[name]
                r = ranges.setdefault(f"{l.name}:{key}", [math.inf, -math.inf])
                r[0], r[1] = min(r[0], float(v.min())), max(r[1], float(v.max()))
    out = {}
    for l in layers:
        for b in w_bits:
            q = copy.deepcopy(gm)
            mod = q.get_submodule(l.name)
            w = mod.weight.detach()
            qmax = 2 ** (b - 1) - 1
            s = _weight_scale(w, b)
            if only in (None, "weights"):
                mod.weight.data = torch.fake_quantize_per_tensor_affine(w, s, 0, -qmax - 1, qmax)
            if a_bits is not None and only != "weights":
                nodes = {n.name: n for n in q.graph.nodes}
                conv, o = nodes[l.node], nodes[l.output_node]
                si, zi = _act_qparams(*ranges[f"{l.name}:in"], a_bits)
                so, zo = _act_qparams(*ranges[f"{l.name}:out"], a_bits)
                if only in (None, "input"):
                    with q.graph.inserting_before(conv):
                        qi = q.graph.call_function(
                            torch.fake_quantize_per_tensor_affine, (conv.args[0], si, zi, 0, 2**a_bits - 1)
                        )
                    conv.args = (qi,) + tuple(conv.args[1:])
                if only in (None, "output"):
                    with q.graph.inserting_after(o):
                        qo = q.graph.call_function(torch.fake_quantize_per_tensor_affine, (o, so, zo, 0, 2**a_bits - 1))
                    o.replace_all_uses_with(qo)
                    qo.args = (o, so, zo, 0, 2**a_bits - 1)
                q.recompile()
            noise = signal = 0.0
            agree = n = 0
            met = make_metric(metric) if metric is not None else None
            shift = fsum = fsq = None
            cnt = 0
            for x, labels in data:
                y32, yq32 = gm(x), q(x)
                y, yq = y32.double(), yq32.double()
                noise += float(((y - yq) ** 2).reshape(len(y), -1).sum())
                signal += float((y**2).reshape(len(y), -1).sum())
                agree += int((y.argmax(1) == yq.argmax(1)).sum())
                n += len(y)
                if met is not None:
                    met.update(y32, yq32, labels)
                    o = _node_values(gm, x)[l.output_node].double()
                    oq = _node_values(q, x)[qo.name if a_bits is not None else l.output_node].double()
                    axis = o.dim() - 1 if l.op == "Linear" else 1
                    dims = [d for d in range(o.dim()) if d != axis]
                    d = (oq - o).sum(dims)
                    shift = d if shift is None else shift + d
                    fsum = o.sum(dims) if fsum is None else fsum + o.sum(dims)
                    fsq = (o * o).sum(dims) if fsq is None else fsq + (o * o).sum(dims)
                    cnt += o.numel() // o.shape[axis]
            sqnr = 10 * math.log10(signal / noise) if noise > 0 else math.inf
            if met is None:
                out[(l.name, b)] = (noise / n, sqnr, agree / n)
                continue
            std = (fsq / cnt - (fsum / cnt) ** 2).clamp(min=0).sqrt()
            ok = std > 1e-12
            ms = float(((shift / cnt).abs()[ok] / std[ok]).mean()) if bool(ok.any()) else math.nan
            out[(l.name, b)] = (noise / n, sqnr, agree / n, met.compute(), ms)
    return out
