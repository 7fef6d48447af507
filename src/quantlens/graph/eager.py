"""Layers of a model torch.fx cannot trace, found by following tensors through one forward pass.

Without a graph, the traced path's two rewrites are recovered from what one eager forward
pass does (a :class:`~torch.overrides.TorchFunctionMode` sees every torch function call,
module forward hooks see the layers):

* **BatchNorm folding.** A conv/linear whose output tensor has exactly one consumer, an
  eval-mode ``F.batch_norm`` whose running mean belongs to a BatchNorm module called once,
  is replaced by the fused module (``W' = W * g / sqrt(v + eps)``,
  ``b' = (b - m) * g / sqrt(v + eps) + beta``; :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`)
  and that BatchNorm by ``nn.Identity``.
* **Activation fusion.** When the layer's (folded) output has exactly one consumer and it is
  one of the supported activations (module, functional or method form: ``F.relu``,
  ``Tensor.relu``, ``torch.sigmoid``, ...), the layer's output is quantized after that call.

A layer module called more than once is neither folded nor fused (its first call is the
layer, as before). The folded copy is checked against the model on the sample batch; if the
outputs differ (a consumer the pass could not see), folding is undone and a note says so.

Example:
    >>> eg = capture_eager(copy.deepcopy(model).eval(), (x,))      # doctest: +SKIP
    >>> [(l.name, l.bn, l.act) for l in eg.layers]                  # doctest: +SKIP
    [('conv', 'bn', 'ReLU'), ('fc', None, None)]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from quantlens.errors import QuantlensError
from quantlens.core.inputs import as_inputs
from quantlens.core.numerics import analysis_mode
from quantlens.graph.export import check_no_cache
from quantlens.graph.layers import ACT_FUNCTIONS, ACT_METHODS, BN_TYPES, INPLACE_FUNCTIONS, fuse_bn, is_layer_module, set_submodule

__all__ = ["EagerLayer", "EagerGraph", "capture_eager", "ACT_FUNCTIONS", "ActivationWatch"]

# the torch functions an eager forward calls for each supported activation (modules call the
# functional forms): the traced path's tables, with methods and in-place forms as callables
ACT_FUNCTIONS: dict[Any, str] = {
    **ACT_FUNCTIONS,
    **{f: ACT_FUNCTIONS[g] for f, g in INPLACE_FUNCTIONS.items()},
    **{getattr(Tensor, m): name for m, name in ACT_METHODS.items()},
}
# metadata reads are not consumers of a tensor's values
_METADATA = {"__get__", "size", "dim", "numel", "stride", "is_contiguous", "element_size", "nelement", "ndimension",
             "data_ptr", "is_floating_point", "__len__", "type", "get_device", "is_complex", "storage_offset"}


def _tensors(x: Any) -> Iterator[Tensor]:
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


@dataclass
class EagerLayer:
    """One layer found by :func:`capture_eager`: its module in the copy, its folded BN and fused activation."""

    name: str
    module: nn.Module
    bn: Optional[str] = None
    act: Optional[str] = None
    act_func: Optional[Callable] = None


@dataclass
class EagerGraph:
    """The prepared copy of the model, its layers in call order, and notes for the user."""

    model: nn.Module
    layers: list[EagerLayer]
    notes: list[str] = field(default_factory=list)


# a watched tensor's value: (id, version); an in-place call (``relu_``, ``+=``,
# ``F.relu(x, inplace=True)``, whose result is its input) starts a new version
_Key = tuple[int, int]


@dataclass
class _Use:
    func: Any
    args: tuple
    kwargs: dict
    out: Any
    out_key: Optional[_Key] = None  # the result's key when it is watched (BN outputs, in-place results)


class _Recorder(TorchFunctionMode):
    """Records, for every watched tensor value, the torch calls that consume it.

    A value is a tensor (by identity) at a version: an in-place call consumes the current
    value and its result is a new value of the same tensor, whose consumers are recorded
    apart (``nn.ReLU(inplace=True)`` after a conv: the conv's output has one consumer, the
    ReLU, and the next layer consumes the ReLU's result).
    """

    def __init__(self) -> None:
        super().__init__()
        self.uses: dict[_Key, list[_Use]] = {}
        self.version: dict[int, int] = {}
        self.keep: list[Any] = []  # watched tensors stay alive, so their ids stay unique

    def watch(self, t: Tensor) -> _Key:
        key = (id(t), self.version.setdefault(id(t), 0))
        self.uses.setdefault(key, [])
        self.keep.append(t)
        return key

    def key(self, t: Tensor) -> Optional[_Key]:
        return (id(t), self.version[id(t)]) if id(t) in self.version else None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") in _METADATA:
            return out
        for t in {id(t): t for t in _tensors((args, kwargs))}.values():
            key = self.key(t)
            if key is None:
                continue
            use = _Use(func, tuple(args), dict(kwargs), out)
            self.uses[key].append(use)
            if out is t:  # in place: later consumers read a new value
                self.version[id(t)] += 1
                use.out_key = self.watch(t)
            elif func is F.batch_norm and isinstance(out, Tensor):
                use.out_key = self.watch(out)
        return out


class ActivationWatch(TorchFunctionMode):
    """Applies a callback to the result of an activation call whose input is an armed tensor.

    ``arm(t, func, cb)``: when ``func`` is next called with ``t`` (by identity) as its first
    argument, its result ``r`` is replaced by ``cb(r)``. Several tensors may be armed at once
    (the float pass arms every fused layer's output). An in-place activation (``y.relu_()``,
    ``nn.ReLU(inplace=True)``) returns its input: ``cb(r)`` is then written back into it, so
    that every alias of the tensor (``z = y; z.relu_(); conv(y)``) reads the callback's result.
    """

    def __init__(self) -> None:
        super().__init__()
        self.armed: dict[int, tuple[Tensor, Callable, Callable[[Tensor], Tensor]]] = {}

    def arm(self, pending: Tensor, func: Callable, on_result: Callable[[Tensor], Tensor]) -> None:
        self.armed[id(pending)] = (pending, func, on_result)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.armed and args and isinstance(args[0], Tensor):
            hit = self.armed.get(id(args[0]))
            if hit is not None and hit[0] is args[0] and func is hit[1]:
                del self.armed[id(args[0])]
                r = hit[2](out)
                if out is args[0] and r is not out:
                    out.copy_(r)
                    return out
                return r
        return out


def _act_name(u: _Use) -> str:
    """The activation's name; ``nn.ReLU6`` calls ``F.hardtanh(x, 0, 6)``."""
    name = ACT_FUNCTIONS[u.func]
    if u.func is F.hardtanh:
        lo = u.kwargs.get("min_val", u.args[1] if len(u.args) > 1 else -1.0)
        hi = u.kwargs.get("max_val", u.args[2] if len(u.args) > 2 else 1.0)
        if lo == 0.0 and hi == 6.0:
            return "ReLU6"
    return name


def _record(model: nn.Module, sample: Any) -> tuple[Any, list[tuple[str, nn.Module, _Key]], dict[str, int], _Recorder]:
    """One forward pass: (output, [(layer name, module, first output's key)], call counts, recorder)."""
    names = {m: n for n, m in model.named_modules() if is_layer_module(m)}
    calls: dict[str, int] = {}
    first: list[tuple[str, nn.Module, _Key]] = []
    rec = _Recorder()

    def hook(m: nn.Module, args: Any, out: Any) -> None:
        n = names[m]
        calls[n] = calls.get(n, 0) + 1
        if calls[n] == 1 and isinstance(out, Tensor):
            first.append((n, m, rec.watch(out)))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with analysis_mode(), rec:
            out = sample.call(model)
    finally:
        for h in handles:
            h.remove()
    return out, first, calls, rec


def _same_output(a: Any, b: Any) -> bool:
    ta, tb = list(_tensors(a)), list(_tensors(b))
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return False
        if x.is_floating_point():
            scale = float(x.detach().abs().max()) if x.numel() else 0.0
            if not torch.allclose(x.detach().float(), y.detach().float(), rtol=1e-4, atol=1e-5 * max(scale, 1e-12)):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def capture_eager(model: nn.Module, sample: Any) -> EagerGraph:
    """Layers of ``model`` (an eval-mode copy the caller owns: it is rewritten in place) in call order.

    ``sample``: the first batch's :class:`~quantlens.core.inputs.Inputs` (or a tuple of tensors)."""
    sample = as_inputs(sample)
    reference, first, calls, rec = _record(model, sample)
    check_no_cache(reference)
    if not first:
        raise QuantlensError("the model has no quantizable layer: quantlens analyses Conv1d, Conv2d and Linear modules")
    bn_names = {m: n for n, m in model.named_modules() if isinstance(m, BN_TYPES)}
    bn_by_mean = {id(m.running_mean): m for m in bn_names if m.running_mean is not None}
    bn_calls: dict[int, int] = {}
    for uses in list(rec.uses.values()):
        for u in uses:
            if u.func is F.batch_norm and len(u.args) > 1 and isinstance(u.args[1], Tensor):
                bn_calls[id(u.args[1])] = bn_calls.get(id(u.args[1]), 0) + 1
    layers: list[EagerLayer] = []
    folds: list[tuple[str, str, nn.Module]] = []
    for name, module, out in first:
        layer = EagerLayer(name, module)
        layers.append(layer)
        if calls[name] != 1:
            continue
        uses = rec.uses.get(out, [])
        tail = out
        if len(uses) == 1 and uses[0].func is F.batch_norm:
            u = uses[0]
            bn = bn_by_mean.get(id(u.args[1])) if len(u.args) > 1 else None
            training = u.kwargs.get("training", u.args[5] if len(u.args) > 5 else True)
            if bn is not None and not training and bn_calls.get(id(bn.running_mean)) == 1:
                fused = fuse_bn(module, bn)
                if fused is not None:
                    folds.append((name, bn_names[bn], fused))
                    layer.bn = bn_names[bn]
                    tail = u.out_key
        if layer.bn is None and len(uses) == 1 and uses[0].func is F.batch_norm:
            continue  # an unfoldable BN sits between the layer and any activation
        tuses = rec.uses.get(tail, []) if tail is not None else []
        if len(tuses) == 1 and tuses[0].func in ACT_FUNCTIONS and tuses[0].args and id(tuses[0].args[0]) == tail[0]:
            layer.act = _act_name(tuses[0])
            layer.act_func = tuses[0].func
    notes: list[str] = []
    if folds:
        folded = copy.deepcopy(model)
        for name, bn_name, fused in folds:
            set_submodule(folded, name, fused)
            set_submodule(folded, bn_name, nn.Identity())
        with analysis_mode():
            folded_out = sample.call(folded)
        if _same_output(reference, folded_out):
            model = folded
        else:
            notes.append("BatchNorm folding changed the model's float output (a use of a layer's output that the "
                         "forward pass did not show), so no BatchNorm is folded")
            for l in layers:
                if l.bn is not None:
                    l.bn, l.act, l.act_func = None, None, None
        by_name = dict(model.named_modules())
        for l in layers:
            l.module = by_name[l.name]
    return EagerGraph(model, layers, notes)
