"""Model -> :class:`LayerGraph` through ``torch.export`` (non-strict): the capture for models
that torch.fx cannot trace (Hugging Face transformers, data-dependent Python).

1. ``torch.export.export(copy, args, kwargs, strict=False)`` on the first batch, every input
   dimension left to export to decide (``Dim.AUTO``: batch size and sequence length may vary
   between batches). That training-IR graph keeps ``linear`` and ``conv`` whole; it must be
   functional (no in-place op, so cached activations stay valid): when it holds an in-place
   or other mutating op, a mutated buffer or input, or a higher-order op,
   ``run_decompositions({})`` makes it so. The pass also runs for a program with BatchNorm or
   dropout (their training-IR forms are not the ones the folding below knows; skipping it
   blindly changed layers and cells); a program with none of these (a Llama) skips it
   (:func:`_already_functional`; on SmolLM2-135M it was ~60% of the capture), same cells.
2. The graph is unlifted (parameters are ``get_attr``) and its pytree calling convention is
   replaced by flat placeholders; :meth:`LayerGraph.flat` / :meth:`LayerGraph.output` convert.
3. Every ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` whose weight is a parameter, and
   every ``aten.addmm(bias, x, W)`` with a parameter ``W`` (GPT-2's ``Conv1D``: a Linear with
   weight ``W^T``), becomes a ``call_module`` of a real ``nn.Linear`` / ``nn.Conv1d`` /
   ``nn.Conv2d`` named by the module that made the call (``nn_module_stack``): so layer names
   are module qualified names, as with fx and hooks.
4. BatchNorm in inference form (``_native_batch_norm_legit_no_training``) that is a layer's
   only user is folded into it; the activation that is its only user is fused (ATen forms of
   the activations in :mod:`quantlens.graph.capture`).

Example:
    >>> import torch, torch.nn as nn                                 # doctest: +SKIP
    >>> from quantlens.core.inputs import Inputs
    >>> g = export_capture(nn.Sequential(nn.Linear(4, 4), nn.GELU()), Inputs((torch.randn(2, 4),)))
    >>> [(l.name, l.act) for l in g.layers]
    [('0', 'GELU')]
"""

from __future__ import annotations

import copy
import inspect
import operator
import re
from typing import Any, Optional

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

from quantlens.core.quiet import quiet
from quantlens.errors import QuantlensError
from quantlens.graph.layers import LayerGraph, discover_layers, fuse_bn, set_submodule
from quantlens.graph.layers import fetch_attr

__all__ = ["export_capture", "export_program", "program_graph", "check_no_cache", "quiet"]

_aten = torch.ops.aten
_LINEAR = {_aten.linear.default}
_CONV = {_aten.conv1d.default: 1, _aten.conv2d.default: 2, _aten.conv1d.padding: 1, _aten.conv2d.padding: 2}
_DROP = {_aten._assert_tensor_metadata.default}


def _cache_error(kind: str) -> QuantlensError:
    return QuantlensError(
        f"the model returns a KV-cache object ({kind}): build it with `use_cache=False` "
        "(e.g. AutoModelForCausalLM.from_pretrained(..., use_cache=False) or model.config.use_cache = False)"
    )


def check_no_cache(out: Any) -> None:
    """Refuse an output that holds a KV-cache object (it is state, not a result)."""
    for leaf in pytree.tree_leaves(out, is_leaf=lambda v: type(v).__name__.endswith("Cache")):
        if type(leaf).__name__.endswith("Cache"):
            raise _cache_error(type(leaf).__name__)
    if hasattr(out, "past_key_values") and getattr(out, "past_key_values", None) is not None:
        raise QuantlensError("the model returns past_key_values (a KV cache): build it with `use_cache=False`")


def _dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Every dimension of every tensor argument left to export (``Dim.AUTO``), by parameter name."""
    auto = torch.export.Dim.AUTO

    def spec(v: Any) -> Any:
        return {d: auto for d in range(v.dim())} if isinstance(v, Tensor) and v.dim() else None

    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    return {name: pytree.tree_map(spec, value) for name, value in bound.arguments.items()}


def _export(model: nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    with quiet():
        try:
            ep = torch.export.export(model, args, kwargs, dynamic_shapes=_dynamic_shapes(model, args, kwargs), strict=False)
        except Exception:
            ep = torch.export.export(model, args, kwargs, strict=False)  # static shapes: every batch like the first
        # the training IR is not only unfunctional where it mutates; its BatchNorm is
        # ``aten.batch_norm`` (not the inference form folded below) and some activations keep
        # other ATen names, so skipping this pass blindly changed layers and cells
        # (tests/graph/test_archgen.py): it is skipped only for a program that needs none of it
        return ep if _already_functional(ep) else ep.run_decompositions({})


#: training-IR ops whose inference form differs in a way the capture reads (BatchNorm folding,
#: dropout left in the graph): a program holding one of them is decomposed
_DECOMPOSE_NAMES = ("batch_norm", "dropout", "instance_norm", "group_norm", "_native_batch_norm")


def _already_functional(ep: torch.export.ExportedProgram) -> bool:
    """Whether ``run_decompositions({})`` can be skipped (about 60% of a SmolLM2-135M capture):
    no mutated buffer or input, every call an ATen operator (no higher-order op) that mutates
    nothing, and none of :data:`_DECOMPOSE_NAMES`; ``operator.getitem`` is allowed."""
    sig = ep.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate:
        return False
    for n in ep.graph.nodes:
        if n.op != "call_function" or n.target is operator.getitem:
            continue
        t = n.target
        if not isinstance(t, torch._ops.OpOverload) or t.namespace != "aten" or t._schema.is_mutable:
            return False
        if any(k in t._schema.name for k in _DECOMPOSE_NAMES):
            return False
    return True


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return str(list(stack.values())[-1][0])


def _param(gm: fx.GraphModule, a: Any) -> Optional[Tensor]:
    if isinstance(a, fx.Node) and a.op == "get_attr":
        v = fetch_attr(gm, str(a.target))
        return v if isinstance(v, Tensor) else None
    return None


def _pair(v: Any, n: int) -> Any:
    if isinstance(v, str):
        return v
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return tuple(v * n if len(v) == 1 else v)


def _make_module(node: fx.Node, gm: fx.GraphModule) -> Optional[tuple[nn.Module, Any, bool]]:
    """``(module, input node, weight shared elsewhere)`` for a layer op node, else None."""
    if node.op != "call_function":
        return None
    if node.target in _LINEAR:
        x, w_node = node.args[0], node.args[1]
        b_node = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        w, b = _param(gm, w_node), _param(gm, b_node)
        if w is None or w.dim() != 2 or (b_node is not None and b is None):
            return None
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        m.weight, m.bias = _as_param(w), _as_param(b) if b is not None else None
        return m, x, _shared(w_node)
    if node.target in _CONV:
        nd = _CONV[node.target]
        x, w_node = node.args[0], node.args[1]
        a = list(node.args) + [None] * 7
        b_node = a[2]
        w, b = _param(gm, w_node), _param(gm, b_node)
        if w is None or w.dim() != nd + 2 or (b_node is not None and b is None):
            return None
        stride = _pair(a[3] if a[3] is not None else 1, nd)
        padding = _pair(a[4] if a[4] is not None else 0, nd)
        dilation = _pair(a[5] if a[5] is not None else 1, nd)
        groups = int(a[6] if a[6] is not None else 1)
        cls = nn.Conv1d if nd == 1 else nn.Conv2d
        m = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding, dilation=dilation,
                groups=groups, bias=b is not None, device="meta")
        m.weight, m.bias = _as_param(w), _as_param(b) if b is not None else None
        return m, x, _shared(w_node)
    if node.target == _aten.addmm.default:
        b_node, x, w_node = node.args[0], node.args[1], node.args[2]
        w, b = _param(gm, w_node), _param(gm, b_node)
        if w is None or b is None or node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            return None
        m = nn.Linear(w.shape[0], w.shape[1], device="meta")
        m.weight, m.bias = nn.Parameter(w.detach().t().contiguous(), requires_grad=False), _as_param(b)
        return m, x, False
    return None


def _shared(w_node: fx.Node) -> bool:
    """Whether the weight is also read by something other than a layer op (a tied embedding)."""
    return any(u.target not in _LINEAR and u.target not in _CONV for u in w_node.users)


def _as_param(t: Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)


def _holder_free(gm: fx.GraphModule, path: str, m: nn.Module) -> bool:
    """Whether ``path`` can hold ``m``: absent, or a bare holder of exactly ``m``'s parameters."""
    try:
        old = gm.get_submodule(path)
    except AttributeError:
        return True
    if any(True for _ in old.children()) or type(old) in (nn.Linear, nn.Conv1d, nn.Conv2d):
        return False
    own = dict(old.named_parameters(recurse=False)) | dict(old.named_buffers(recurse=False))
    mine = {k: v for k, v in m.named_parameters(recurse=False)}
    return set(own) <= set(mine) and all(own[k] is mine[k] for k in own)


def _lift_layers(gm: fx.GraphModule) -> dict[str, str]:
    """Replace layer ops by ``call_module`` of real layer modules; returns target -> layer name."""
    names: dict[str, str] = {}
    by_weight: dict[int, str] = {}
    for node in list(gm.graph.nodes):
        made = _make_module(node, gm)
        if made is None:
            continue
        m, x, shared = made
        m.eval()
        path = _module_path(node) or str(node.args[1].target).rpartition(".")[0] or node.name  # type: ignore[union-attr]
        wkey = id(node.args[1 if node.target != _aten.addmm.default else 2])
        target = by_weight.get(wkey) if node.target != _aten.addmm.default else None
        if target is None or type(gm.get_submodule(target)) is not type(m):
            if shared:
                m.weight = nn.Parameter(m.weight.detach().clone(), requires_grad=False)
            target = path if _holder_free(gm, path, m) else _free_name(gm, "ql_" + path.replace(".", "_"))
            set_submodule(gm, target, m)
            names[target] = path
            if node.target != _aten.addmm.default:
                by_weight[wkey] = target
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(target, (x,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    return names


def _free_name(gm: nn.Module, base: str) -> str:
    name, k = base, 1
    while hasattr(gm, name):
        name, k = f"{base}_{k}", k + 1
    return name


def _fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold ``getitem(_native_batch_norm_legit_no_training(layer(x), w, b, mean, var, m, eps), 0)``."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != _aten._native_batch_norm_legit_no_training.default:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        users = list(node.users)
        if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
            continue
        w, b, mean, var = (_param(gm, a) if a is not None else None for a in node.args[1:5])
        if mean is None or var is None:
            continue
        eps = float(node.args[6])
        layer = gm.get_submodule(str(src.target))
        c = mean.shape[0]
        bn = (nn.BatchNorm1d if isinstance(layer, (nn.Conv1d, nn.Linear)) else nn.BatchNorm2d)(c, eps=eps).eval()
        with torch.no_grad():
            bn.running_mean.copy_(mean), bn.running_var.copy_(var)
            bn.weight.copy_(w if w is not None else torch.ones(c)), bn.bias.copy_(b if b is not None else torch.zeros(c))
        bn.to(mean.device)
        fused = fuse_bn(layer, bn)
        if fused is None or sum(n.op == "call_module" and n.target == src.target for n in gm.graph.nodes) != 1:
            continue
        for p in fused.parameters():
            p.requires_grad_(False)
        set_submodule(gm, str(src.target), fused)
        for u in users:
            u.replace_all_uses_with(src)
            gm.graph.erase_node(u)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()


def _plain_graph(gm: fx.GraphModule) -> None:
    """Flat placeholders in and a flat tuple out (no pytree codegen), no guard or metadata asserts."""
    for node in list(gm.graph.nodes):
        if (node.op == "call_module" and str(node.target).startswith("_guards")) or node.target in _DROP:
            gm.graph.erase_node(node)
    gm.graph._codegen = fx.graph.CodeGen()
    for name in [n for n, _ in gm.named_children() if n.startswith("_guards")]:
        delattr(gm, name)


def export_capture(model: nn.Module, sample: Any) -> LayerGraph:
    """Capture ``model`` (a copy) with ``torch.export`` on the first batch's :class:`Inputs`."""
    return program_graph(export_program(model, sample), type(model).__name__)


def export_program(model: nn.Module, sample: Any) -> torch.export.ExportedProgram:
    """The functional ATen program of ``model`` (a copy, eval mode, on the model's own weight
    storage: no copy of the weights) on ``sample``: step 1 of the module docstring, what the
    capture cache saves (``torch.export.save``)."""
    from quantlens.graph.shared import weights_memo

    with quiet():  # a program's module carries pytree specs whose copy warns
        m = copy.deepcopy(model, weights_memo(model)).eval()  # the model's weights, not a copy of them
    for p in m.parameters():
        p.requires_grad_(False)
    try:
        return _export(m, tuple(sample.args), dict(sample.kwargs))
    except Exception as e:  # export names the output type it cannot flatten: a cache is the user's to switch off
        cache = re.search(r"\.(\w+Cache)'>", str(e))
        if cache:
            raise _cache_error(cache.group(1)) from None
        raise


def program_graph(ep: torch.export.ExportedProgram, class_name: str) -> LayerGraph:
    """Steps 2-4 of the module docstring: ``ep`` -> a :class:`LayerGraph` (``ep`` is left as it was)."""
    unlifted = ep.module()
    in_spec, out_spec = unlifted._in_spec, unlifted._out_spec
    _plain_graph(unlifted)
    gm = fx.GraphModule(unlifted, unlifted.graph, class_name=class_name)  # a plain module (eval() works)
    names = _lift_layers(gm)
    _fold_batchnorm(gm)
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.eval()
    layers = discover_layers(gm, names)
    if not layers:
        raise QuantlensError("the model has no quantizable layer: quantlens analyses Conv1d, Conv2d and Linear layers")
    return LayerGraph(gm, layers, method="export", in_spec=in_spec, out_spec=out_spec)
