"""engine/program.py: a slice of an FX graph run in place equals the compiled GraphModule, bitwise."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import fx, nn

from quantlens.engine.program import Program


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 4)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 8))

    def forward(self, x: torch.Tensor) -> dict:
        h = torch.cat([self.a(x), self.b(x)], dim=-1)  # a list argument, a kwarg
        h = h * self.scale  # get_attr
        y = h.view(h.shape[0], 2, 4).softmax(dim=-1)  # call_method with node arguments
        return {"y": y, "parts": (h[:, 1:3], torch.relu(h))}  # a slice, a nested output


def _traced() -> fx.GraphModule:
    torch.manual_seed(0)
    return fx.symbolic_trace(_Net())


def _nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]


def test_whole_graph_equals_the_compiled_module() -> None:
    gm = _traced()
    x = torch.randn(5, 6)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    p = Program(gm, _nodes(gm), ["x"], out.args[0])
    want, got = gm(x), p(x)
    assert torch.equal(got["y"], want["y"])
    assert all(torch.equal(a, b) for a, b in zip(got["parts"], want["parts"]))


def test_a_slice_reads_its_frontier_and_replace_and_after_apply() -> None:
    gm = _traced()
    x = torch.randn(3, 6)
    nodes = {n.name: n for n in gm.graph.nodes}
    start = nodes["cat"]
    tail = [n for n in _nodes(gm) if n.op == "get_attr" or list(gm.graph.nodes).index(n) >= list(gm.graph.nodes).index(start)]
    plus = lambda t: t + 1  # noqa: E731
    p = Program(gm, tail, ["a", "b"], nodes["output"].args[0], replace={"cat": lambda first: torch.cat(first, dim=-1) * 0},
                after={"mul": plus})
    a, b = gm.a(x), gm.b(x)
    got = p(a, b)
    h = torch.cat([a, b], dim=-1) * 0 * gm.scale + 1  # cat replaced, then mul followed by +1
    assert torch.equal(got["parts"][1], torch.relu(h))
    assert torch.equal(got["y"], h.view(3, 2, 4).softmax(dim=-1))


def test_values_are_freed_after_their_last_use() -> None:
    seen: list = []

    class Spy(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen.append(weakref.ref(t))
            return t + 1

    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s1, self.s2, self.s3 = Spy(), Spy(), Spy()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.s3(self.s2(self.s1(x)))

    gm = fx.symbolic_trace(Chain())
    out = next(n for n in gm.graph.nodes if n.op == "output")
    p = Program(gm, _nodes(gm), ["x"], out.args[0])
    y = p(torch.zeros(4))
    gc.collect()
    assert seen[1]() is None  # s1's output, read only by s2: gone
    assert torch.equal(y, torch.full((4,), 3.0))


def test_wrong_number_of_inputs_and_unsupported_nodes() -> None:
    gm = _traced()
    out = next(n for n in gm.graph.nodes if n.op == "output")
    p = Program(gm, _nodes(gm), ["x"], out.args[0])
    with pytest.raises(TypeError, match="takes 1 inputs, got 2"):
        p(torch.randn(2, 6), torch.randn(2, 6))
    with pytest.raises(ValueError, match="placeholder"):
        Program(gm, list(gm.graph.nodes)[:1], [], None)
