"""Run a slice of a captured FX graph in place, without compiling it: the cones' executor.

A cone is a slice of the captured graph (on SmolLM2-135M, 1,833 of its 2,010 nodes for block 0's
q/k/v). Compiled as its own ``GraphModule`` (a ``node_copy`` per node, then Python code generation
and ``compile``), each cone cost 0.1-0.3 s before its first batch: on a sweep of one format, about
a fifth of the time of measuring it on 256 tokens. A :class:`Program` runs the same nodes of the
captured graph, in the same order, on the same arguments::

    v[n] = target_n(*args_n(v), **kwargs_n(v))      for n in the slice, in topological order
    v[n] = after_n(v[n])                             where a quantizer follows n
    v[m] = None                                      after the last use of m (as compiled code does)

so its values are bitwise those of the compiled module, at a few microseconds per node and no
compilation. ``replace`` swaps a node's call for another callable on the node's first argument
(a layer's quantized twin), ``after`` applies a callable to a node's value before its users read
it (an output quantizer).

Example:
    >>> import torch, torch.nn as nn
    >>> from torch import fx
    >>> gm = fx.symbolic_trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    >>> relu = [n for n in gm.graph.nodes if n.op == "call_module"][1]
    >>> p = Program(gm, [relu], ["_0"], relu)
    >>> p(torch.tensor([-1.0, 2.0]))
    tensor([0., 2.])
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import fx, nn

from quantlens.graph.layers import fetch_attr

__all__ = ["Program"]


class _Ref:
    """A reference to the value of the node at index ``i`` in a program's value list."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i


def _template(x: Any, index: Mapping[str, int]) -> Any:
    """``x`` (a node's args or kwargs) with every ``fx.Node`` as a :class:`_Ref`."""
    if isinstance(x, fx.Node):
        return _Ref(index[x.name])
    if isinstance(x, (list, tuple)):
        t = [_template(b, index) for b in x]
        return tuple(t) if isinstance(x, tuple) and not hasattr(x, "_fields") else (type(x)(*t) if isinstance(x, tuple) else t)
    if isinstance(x, dict):
        return {k: _template(b, index) for k, b in x.items()}
    if isinstance(x, slice):
        return slice(_template(x.start, index), _template(x.stop, index), _template(x.step, index))
    return x


def _bind(x: Any, v: list) -> Any:
    """``x`` with each :class:`_Ref` replaced by its value in ``v`` (containers rebuilt)."""
    if isinstance(x, _Ref):
        return v[x.i]
    if isinstance(x, list):
        return [_bind(b, v) for b in x]
    if isinstance(x, tuple):
        t = [_bind(b, v) for b in x]
        return type(x)(*t) if hasattr(x, "_fields") else tuple(t)
    if isinstance(x, dict):
        return {k: _bind(b, v) for k, b in x.items()}
    if isinstance(x, slice):
        return slice(_bind(x.start, v), _bind(x.stop, v), _bind(x.step, v))
    return x


def _method(name: str) -> Callable[..., Any]:
    def call(obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, name)(*args, **kwargs)

    return call


class Program:
    """``Program(root, nodes, inputs, outputs)(*values of inputs) -> outputs``.

    ``root``: the module the nodes' ``call_module`` and ``get_attr`` targets live in; ``nodes``:
    the slice to run, in topological order (the attributes its calls read are fetched once, here;
    ``get_attr`` nodes among ``nodes`` are skipped);
    ``inputs``: names of the nodes whose values are passed in (the frontier); ``outputs``: a
    structure (tuples, lists, dicts) of nodes of the slice or of ``inputs``, returned with their
    values. ``replace[name](x)`` computes node ``name`` from its first argument instead of its own
    target; ``after[name]`` is applied to node ``name``'s value before any user reads it."""

    def __init__(self, root: nn.Module, nodes: Sequence[fx.Node], inputs: Sequence[str], outputs: Any,
                 replace: Optional[Mapping[str, Callable[[Any], Any]]] = None,
                 after: Optional[Mapping[str, Callable[[Any], Any]]] = None) -> None:
        replace, after = dict(replace or {}), dict(after or {})
        calls = []
        for n in nodes:
            if n.op == "get_attr":
                continue
            if n.name in replace:
                calls.append((n, replace[n.name], (n.args[0],), {}))
            elif n.op == "call_module":
                calls.append((n, root.get_submodule(str(n.target)), n.args, n.kwargs))
            elif n.op == "call_method":
                calls.append((n, _method(str(n.target)), n.args, n.kwargs))
            elif n.op == "call_function":
                calls.append((n, n.target, n.args, n.kwargs))
            else:
                raise ValueError(f"a program runs call nodes and attributes, got {n.op} node {n.name}")
        # the attributes the calls read, fetched once here
        attrs: dict[str, fx.Node] = {}
        for _, _, args, kwargs in calls:
            fx.node.map_arg((args, kwargs), lambda a: attrs.setdefault(a.name, a) if a.op == "get_attr" else a)
        names = list(inputs) + list(attrs) + [n.name for n, _, _, _ in calls]
        index = {name: i for i, name in enumerate(names)}
        self.n_inputs, self.size = len(inputs), len(names)
        self.consts: dict[int, Any] = {index[name]: fetch_attr(root, str(n.target)) for name, n in attrs.items()}
        self.modules: list[nn.Module] = [fn for _, fn, _, _ in calls if isinstance(fn, nn.Module)]
        steps: list[tuple] = []
        for n, fn, args, kwargs in calls:
            a, k = _template(tuple(args), index), _template(dict(kwargs), index)
            nested: set[int] = set()
            _collect([x for x in a if not isinstance(x, _Ref)], nested)
            _collect(k, nested)
            flat = None if nested else [(p, x.i) for p, x in enumerate(a) if isinstance(x, _Ref)]
            post = after.get(n.name)
            if isinstance(post, nn.Module):
                self.modules.append(post)
            steps.append((index[n.name], fn, a, k if k else None, flat, post))
        # liveness: free each computed value after its last reader (outputs are kept)
        self.outputs = _template(outputs, index)
        kept = set()
        _collect(self.outputs, kept)
        last: dict[int, int] = {}
        for s, (_, _, a, k, _, _) in enumerate(steps):
            used: set[int] = set()
            _collect(a, used)
            _collect(k, used)
            for i in used:
                last[i] = s
        frees: list[list[int]] = [[] for _ in steps]
        for i, s in last.items():
            if i not in kept and i >= self.n_inputs and i not in self.consts:
                frees[s].append(i)
        self.steps = [(*st, tuple(f)) for st, f in zip(steps, frees)]

    def to(self, device: Union[str, torch.device]) -> "Program":
        """Its attribute values and modules on ``device`` (the modules in place); returns itself."""
        for i, c in self.consts.items():
            if isinstance(c, torch.Tensor):
                self.consts[i] = c.to(device)
        for m in self.modules:
            m.to(device)
        return self

    def __call__(self, *inputs: Any) -> Any:
        if len(inputs) != self.n_inputs:
            raise TypeError(f"the program takes {self.n_inputs} inputs, got {len(inputs)}")
        v: list = [None] * self.size
        v[: self.n_inputs] = inputs
        for i, c in self.consts.items():
            v[i] = c
        for out, fn, a, k, flat, post, frees in self.steps:
            if flat is not None:
                args = list(a)
                for p, i in flat:
                    args[p] = v[i]
                y = fn(*args, **k) if k else fn(*args)
            else:
                y = fn(*_bind(a, v), **_bind(k, v)) if k else fn(*_bind(a, v))
            v[out] = y if post is None else post(y)
            del y
            for i in frees:
                v[i] = None
        return _bind(self.outputs, v)


def _collect(x: Any, into: set) -> None:
    """The value indices that ``x`` (a template) refers to."""
    if isinstance(x, _Ref):
        into.add(x.i)
    elif isinstance(x, (list, tuple)):
        for b in x:
            _collect(b, into)
    elif isinstance(x, dict):
        for b in x.values():
            _collect(b, into)
    elif isinstance(x, slice):
        _collect(x.start, into)
        _collect(x.stop, into)
        _collect(x.step, into)
