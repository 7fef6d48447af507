"""ONNX graphs with dynamic axes under torch.fx: an onnx2torch op that fx cannot trace through
is kept whole, as one ``call_module`` node.

Why: an ONNX file exported with a dynamic batch or sequence axis computes its shapes at run
time (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``). onnx2torch turns each ONNX node
into one small module, and several of them branch in Python on their input tensors: ``OnnxReshape``
asks ``torch.any(shape == 0)`` of the target shape (ONNX's 0 means "copy that input dimension"),
``OnnxGather`` checks the indices' dtype, ``Div`` asks whether its operands are floating point.
fx's symbolic trace cannot branch on a proxy (``TraceError: ... control flow``), and
``torch.export`` turns the target shape, a tensor built from the input's sizes, into unbacked
integers it cannot reason about (``GuardOnDataDependentSymNode: ... Eq(u2, 1)``); so such a file
fell to the forward-hook engine (a full forward pass per cell). A static-shape Conv net does not
hit this: its Reshape targets are constants, which fx reads as real tensors.

What: :func:`call_onnx_op` is the capture tracer's ``call_module`` for onnx2torch modules. It
traces through the module as before; only when that raises, it removes the nodes that attempt
made and records the module as a leaf (one ``call_module`` node) instead.

Why it is exact: a leaf runs the converter's own ``forward`` on the real tensors of each batch,
the same code the converted model runs eagerly, so its value is the converted model's whatever
the batch size or sequence length (a last partial batch included); nothing is specialised to
the first batch. A module that fx does trace is traced as before (fx never sees concrete sizes,
so what it records holds for every shape): a graph that fx traced before is traced the same.
(A static graph that fx could not trace, e.g. one with a Div of two activations or a Gather of an
embedding, fell to torch.export or to hooks before and is now traced by fx too.)
An onnx2torch module is one ONNX node, so a leaf hides no layer; one that holds a layer, a
BatchNorm or an activation (onnx2torch wraps a padded Conv in ``nn.Sequential``, which is
``torch.nn``'s and traced as usual) is never made a leaf.

Example:
    >>> from quantlens.graph import capture                          # doctest: +SKIP
    >>> from quantlens.model_files import load_onnx
    >>> g = capture(load_onnx("conv.onnx"))   # tests/graph/test_onnx_dynamic.py's ConvNet, dynamic batch
    >>> g.method, [str(n.target) for n in g.gm.graph.nodes if "Reshape" in str(n.target)]
    ('fx', ['Reshape', 'Reshape_1'])
"""

from __future__ import annotations

from typing import Any, Callable

from torch import fx, nn

__all__ = ["is_onnx_op", "call_onnx_op"]


def is_onnx_op(m: nn.Module, keep: tuple[type, ...]) -> bool:
    """Whether ``m`` is an onnx2torch op module holding none of the ``keep`` types (layers,
    BatchNorm, activations: what capture must see)."""
    return type(m).__module__.startswith("onnx2torch.") and not any(isinstance(s, keep) for s in m.modules())


def call_onnx_op(tracer: fx.Tracer, m: nn.Module, call: Callable[[], Any], leaves: set[nn.Module]) -> Any:
    """``call()`` (the tracer's usual ``call_module``, which traces through ``m``); where that
    raises, the attempt undone, ``m`` added to ``leaves`` (the tracer's ``is_leaf_module`` then
    says yes) and ``call()`` again, which records one ``call_module`` node.

    ``get_attr`` nodes of the attempt stay (the tracer caches them for later reads of the same
    parameter); left without users, dead-code elimination drops them.
    """
    graph = tracer.graph
    before = len(graph.nodes)
    stack, calls = dict(tracer.module_stack), dict(tracer.num_calls)
    try:
        return call()
    except Exception:
        made = list(graph.nodes)[before:]
        for n in reversed(made):  # newest first: a node's users are erased before it is
            if n.op != "get_attr":
                graph.erase_node(n)
        tracer.module_stack.clear()
        tracer.module_stack.update(stack)
        tracer.num_calls = calls
    leaves.add(m)
    return call()
