"""Graph capture: BN folding keeps the float function, layers and activations are found."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from support.models import NoLayers, tiny_data, tiny_net

from quantlens.errors import QuantlensError
from quantlens.engine.cone import build_cone, cone_nodes
from quantlens.graph import capture


from support.helpers import rel_err as _rel


def test_bn_folding_preserves_float_output():
    m = tiny_net()
    g = capture(m)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in g.gm.modules())
    for x, _ in tiny_data():
        assert _rel(g.gm(x), m(x)) < 1e-5


def test_linear_bn1d_folding():
    m = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 2))
    m[1].running_mean.normal_(); m[1].running_var.uniform_(0.5, 2)
    m.eval()
    g = capture(m)
    assert [l.act for l in g.layers] == ["ReLU", None]
    x = torch.randn(4, 5)
    assert _rel(g.gm(x), m(x)) < 1e-5


def test_layers_in_topological_order_with_activations():
    g = capture(tiny_net())
    got = [(l.name, l.op, l.kind, l.act) for l in g.layers]
    assert got == [
        ("stem", "Conv2d", "conv", "ReLU"),  # functional F.relu after folded BN
        ("b1", "Conv2d", "conv", "ReLU"),  # method .relu()
        ("b2", "Conv2d", "conv", None),  # its user is the residual add
        ("dw", "Conv2d", "depthwise", "ReLU6"),  # module activation
        ("pw", "Conv2d", "conv", "Sigmoid"),  # torch.sigmoid
        ("side", "Conv2d", "conv", None),
        ("fc1", "Linear", "linear", "GELU"),
        ("fc2", "Linear", "linear", None),
    ]
    assert [l.index for l in g.layers] == list(range(8))


def test_conv1d_and_qualified_names():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.SiLU())
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.block(x).mean(-1))

    g = capture(Net().eval())
    assert [(l.name, l.act) for l in g.layers] == [("block.0", "SiLU"), ("head", None)]


def test_inplace_activations_do_not_corrupt_cache():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Conv2d(2, 2, 1)).eval()
    g = capture(m)
    assert m[1].inplace  # the user's model keeps its setting
    assert not g.gm.get_submodule("1").inplace


def test_cone_of_a_branch():
    g = capture(tiny_net())
    names = [n.name for n in cone_nodes(g, g.layer("side"))]
    assert names[0] == "side" and "pw" not in names and "fc2" in names
    cone = build_cone(g, g.layer("side"))
    full = build_cone(g, g.layer("side"), full=True)
    assert cone.size < full.size


def test_no_quantizable_layer():
    with pytest.raises(QuantlensError, match="no quantizable layer"):
        capture(NoLayers())


def test_not_a_module():
    with pytest.raises(QuantlensError, match="nn.Module"):
        capture(lambda x: x)  # type: ignore[arg-type]


def test_unknown_layer_name():
    g = capture(tiny_net())
    with pytest.raises(QuantlensError, match="no layer named"):
        g.layer("nope")


def test_module_called_twice_is_two_layers():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))

    g = capture(Shared().eval())
    assert [l.name for l in g.layers] == ["fc", "fc:1", "out"]
    assert g.module(g.layers[1]) is g.module(g.layers[0])


class _PaddedConv(nn.Conv2d):
    """Like a library's 'same'-padding conv: a subclass with its own forward."""

    def forward(self, x):
        return F.conv2d(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def test_layer_subclasses_are_layers():
    from support.models import tiny_data

    import quantlens as ql

    m = nn.Sequential(_PaddedConv(3, 4, 2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    m[1].running_mean.normal_()
    g = capture(m)
    assert [(l.name, l.act) for l in g.layers] == [("0", "ReLU"), ("4", None)]
    x = tiny_data(1)[0][0]
    assert _rel(g.gm(x), m(x)) < 1e-5
    r = ql.analyze(m, tiny_data(1), w_bits=(8,), metric="kl", a_bits=None)
    r2 = ql.analyze(m, tiny_data(1), w_bits=(8,), metric="kl", a_bits=None, engine="naive")
    assert r.cells[0].noise == pytest.approx(r2.cells[0].noise, rel=1e-5) and r.cells[0].noise > 0
