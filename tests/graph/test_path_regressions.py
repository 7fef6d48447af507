"""Regressions found by the generated networks of tests/graph/test_archgen.py: in-place operations,
an ``nn.Identity`` slot and ``F.relu6`` are quantized as the model computes them on every path
(cone on the fx capture, hooks, cone on the torch.export capture)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from support.oracle import naive_sweep

import quantlens as ql
from quantlens.graph import capture

BITS = (3, 8)


def _data(shape, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, *shape, generator=g), None) for _ in range(n)]


PATHS = {"cone": dict(engine="cone", capture="fx"), "hooks": dict(engine="hooks"),
         "export": dict(engine="cone", capture="export")}


def _assert_oracle(model, data, path, acts):
    ref = naive_sweep(model, data, BITS)
    r = ql.analyze(model, data, w_bits=BITS, metric="agreement", **PATHS[path])
    assert [l.activation for l in r.layers] == acts
    for c in r.cells:
        noise, _, agree = ref[(c.layer, c.w_bits)]
        assert abs(c.noise - noise) <= 1e-5 * noise, (path, c.layer, c.w_bits, c.noise, noise)
        assert c.metric == agree


def _bn(n):
    bn = nn.BatchNorm2d(n)
    g = torch.Generator().manual_seed(n)
    bn.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
    bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return bn


@pytest.mark.parametrize("path", list(PATHS))
def test_inplace_relu_module_is_fused(path):
    # torchvision's ResNets: conv, BN, nn.ReLU(inplace=True). The hook engine saw the ReLU's
    # result (its input, changed) consumed by the next layer too, so it did not fuse the ReLU
    # and quantized the output before it: noise 1.5x-2.4x off at 8 bits.
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), _bn(4), nn.ReLU(inplace=True),
                      nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(256, 5)).eval()
    _assert_oracle(m, _data((3, 8, 8)), path, ["ReLU", "ReLU", None])


class _Statements(nn.Module):
    """In-place calls whose result is not assigned: the model reads the changed tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Linear(4, 5)

    def forward(self, x):
        y = self.a(x)
        y.relu_()
        z = self.b(y)
        z.add_(y)
        torch.sigmoid_(z)
        return self.fc(z.mean((2, 3)))


def test_capture_follows_inplace_statements():
    # fx records ``y.relu_()`` as a node without users and ``b(y)`` reading the conv: made
    # out of place, the ReLU (and the add, and the sigmoid) vanished from the captured graph
    m, x = _Statements().eval(), torch.randn(2, 3, 8, 8)
    g = capture(m)
    with torch.no_grad():
        assert torch.equal(g.gm(x), m(x))
    assert [(l.name, l.act) for l in g.layers] == [("a", "ReLU"), ("b", None), ("fc", None)]


@pytest.mark.parametrize("path", list(PATHS))
def test_inplace_statements_match_oracle(path):
    torch.manual_seed(1)
    _assert_oracle(_Statements().eval(), _data((3, 8, 8)), path, ["ReLU", None, None])


class _Alias(nn.Module):
    """``z = y; z.relu_()``: the next conv reads ``y``, which is the ReLU's result."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Linear(4, 5)

    def forward(self, x):
        y = self.a(x)
        z = y
        z = z.relu_()
        return self.fc((z + self.b(y)).mean((2, 3)))


@pytest.mark.parametrize("path", list(PATHS))
def test_inplace_activation_result_reaches_aliases(path):
    # the hook engine returned the quantized ReLU output from the call, but ``y`` kept the
    # float ReLU output: layer ``a``'s output quantization missed its second reader
    torch.manual_seed(2)
    _assert_oracle(_Alias().eval(), _data((3, 8, 8)), path, ["ReLU", None, None])


class _IdleSlot(nn.Module):
    """A configurable block with its BN switched off: conv, ``nn.Identity``, ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.act, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Identity(), nn.ReLU(), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.act(self.norm(self.a(x))).mean((2, 3)))


@pytest.mark.parametrize("path", list(PATHS))
def test_identity_between_layer_and_activation(path):
    # fx kept the Identity call as the conv's consumer, so the ReLU was not fused there while
    # the eager capture (which sees no call) fused it: the same model gave different cells
    torch.manual_seed(3)
    _assert_oracle(_IdleSlot().eval(), _data((3, 8, 8)), path, ["ReLU", None])


class _Relu6(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(F.relu6(self.a(x)).mean((2, 3)))


@pytest.mark.parametrize("path", list(PATHS))
def test_functional_relu6_is_fused(path):
    # torch.export writes F.relu6 as aten.relu6 (nn.ReLU6 as aten.hardtanh): it was not an
    # activation on the export capture
    torch.manual_seed(4)
    _assert_oracle(_Relu6().eval(), _data((3, 8, 8)), path, ["ReLU6", None])
