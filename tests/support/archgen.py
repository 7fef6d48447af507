"""A seeded generator of small random networks, for checking that every capture path and
engine gives the oracle's cells (tests/graph/test_archgen.py).

Each net is written as Python source (its ``forward``), so that a failure prints the net.
It covers what real networks write:

* Conv2d (plain, depthwise, grouped; 1x1 and 3x3; stride 1 or 2; with or without bias), Conv1d
  nets, Linear heads (a hidden Linear sometimes, with BN and an activation);
* BatchNorm after a conv or a Linear (random running statistics, so folding matters; affine
  or not), an ``nn.Identity`` slot between a layer and its activation;
* modules at the top level and inside containers (nested names ``s1.conv4``), an
  ``nn.Sequential`` block called as a whole, squeeze-and-excitation gates (1x1 convs on the
  pooled tensor, a sigmoid, a product);
* activations in module form (``nn.ReLU(inplace=True)`` included, one ``nn.ReLU`` module shared
  by several call sites as torchvision's ResNets do), functional form (``F.relu(h, inplace=True)``
  included), method form (``h.relu()``) and in-place method/function form, assigned or as a
  statement (``h = h.relu_()``, ``h.relu_()``, ``torch.relu_(h)``);
* residual adds (``h = h + s``, ``h += s``, ``s += h``, ``h.add_(s)``, ``torch.add``), concats,
  a conv output with two consumers (one of them an activation, sometimes in place after the
  other read it), max/avg pooling (module and functional).

:func:`generate` returns a :class:`GenNet`: the model (eval mode), its source, the input shape
and the layers every capture must find, with their fused activation (the generator knows
which activation is a conv's only consumer).

Example:
    >>> net = generate(3)
    >>> net.model(torch.randn(2, *net.input_shape)).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GenNet", "generate", "CLASSES"]

CLASSES = 5

# activation name -> (module factory taking inplace, functional source templates)
_ACTS: dict[str, tuple] = {
    "ReLU": (lambda ip: nn.ReLU(inplace=ip), ["F.relu({x})", "F.relu({x}, inplace=True)", "torch.relu({x})", "{x}.relu()"]),
    "ReLU6": (lambda ip: nn.ReLU6(inplace=ip), ["F.relu6({x})", "F.relu6({x}, inplace=True)"]),
    "LeakyReLU": (lambda ip: nn.LeakyReLU(0.1, inplace=ip), ["F.leaky_relu({x}, 0.1)", "F.leaky_relu({x}, 0.1, inplace=True)"]),
    "SiLU": (lambda ip: nn.SiLU(inplace=ip), ["F.silu({x})"]),
    "Hardswish": (lambda ip: nn.Hardswish(inplace=ip), ["F.hardswish({x})"]),
    "GELU": (lambda ip: nn.GELU(), ["F.gelu({x})"]),
    "Sigmoid": (lambda ip: nn.Sigmoid(), ["torch.sigmoid({x})", "{x}.sigmoid()"]),
    "Tanh": (lambda ip: nn.Tanh(), ["torch.tanh({x})", "{x}.tanh()"]),
}
# in-place method / function forms: statement form changes {x} and discards the result
_INPLACE: dict[str, list[str]] = {
    "ReLU": ["{x}.relu_()", "torch.relu_({x})"],
    "Sigmoid": ["{x}.sigmoid_()", "torch.sigmoid_({x})"],
    "Tanh": ["{x}.tanh_()", "torch.tanh_({x})"],
}


@dataclass(frozen=True)
class GenNet:
    """One generated network: ``model`` (eval mode), its ``forward`` source, the input shape
    (without the batch dimension) and the expected ``(layer name, fused activation)`` in order."""

    seed: int
    model: nn.Module
    source: str
    input_shape: tuple[int, ...]
    layers: tuple[tuple[str, Optional[str]], ...]


class _Builder:
    def __init__(self, seed: int, dims: int) -> None:
        self.rng = random.Random(seed)
        self.dims = dims
        self.mods: dict[str, nn.Module] = {}
        self.lines: list[str] = []
        self.layers: list[list] = []  # [name, act] in call order
        self.n = 0
        self.shared_relu: Optional[nn.Module] = None
        self.scope = ""  # "s3." while a block's modules live in a container (nested names)

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def add(self, prefix: str, module: nn.Module) -> str:
        """Register ``module`` under a fresh name in the current scope; returns its qualified name."""
        name = self.scope + self.fresh(prefix)
        self.mods[name] = module
        return name

    def emit(self, line: str) -> None:
        self.lines.append(line)

    # ---- pieces ---------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, out: str, allow_act: bool = True, stride: int = 1) -> tuple[str, Optional[str]]:
        """``out = conv(x)`` [BN] [activation]; returns (out, activation fused or None)."""
        r = self.rng
        k = r.choice([1, 3])
        groups = 1
        if cin == cout and r.random() < 0.3:
            groups = cin  # depthwise
        elif cin % 2 == 0 and cout % 2 == 0 and r.random() < 0.2:
            groups = 2  # grouped
        bn = r.random() < 0.5
        bias = r.random() < 0.5 if not bn else r.random() < 0.3
        Conv = nn.Conv2d if self.dims == 2 else nn.Conv1d
        name = self.add("conv", Conv(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias))
        self.layers.append([name, None])
        self.emit(f"{out} = self.{name}({x})")
        if bn:
            BN = nn.BatchNorm2d if self.dims == 2 else nn.BatchNorm1d
            bname = self.add("bn", BN(cout, affine=r.random() < 0.8))
            self.emit(f"{out} = self.{bname}({out})")
        if r.random() < 0.15:  # a switched-off slot, as configurable blocks write
            self.emit(f"{out} = self.{self.add('idle', nn.Identity())}({out})")
        act = None
        if allow_act and r.random() < 0.75:
            act, _ = self.activation(out)
            self.layers[-1][1] = act
        return out, act

    def activation(self, x: str) -> tuple[str, bool]:
        """An activation applied to ``x`` in place of ``x`` (any form); returns its name and
        whether it changes the tensor in place."""
        r = self.rng
        kind = r.choice(list(_ACTS))
        factory, funcs = _ACTS[kind]
        form = r.choice(["module", "module", "functional", "inplace"] + (["shared"] if kind == "ReLU" else []))
        if form == "inplace" and kind not in _INPLACE:
            form = "functional"
        if form == "module":
            name = self.add("act", factory(r.random() < 0.5))
            self.emit(f"{x} = self.{name}({x})")
            return kind, getattr(self.mods[name], "inplace", False)
        elif form == "shared":
            if self.shared_relu is None:
                self.shared_relu = nn.ReLU(inplace=r.random() < 0.7)
                self.mods["relu"] = self.shared_relu
            self.emit(f"{x} = self.relu({x})")
            return kind, self.shared_relu.inplace
        if form == "functional":
            call = r.choice(funcs).format(x=x)
            self.emit(f"{x} = {call}")
            return kind, "inplace=True" in call
        call = r.choice(_INPLACE[kind]).format(x=x)
        self.emit(call if r.random() < 0.5 else f"{x} = {call}")
        return kind, True

    def block(self, h: str, c: int) -> tuple[str, int]:
        """One random block from ``h`` (``c`` channels); returns the new (variable, channels)."""
        r = self.rng
        kind = r.choice(["conv", "residual", "residual", "concat", "branch", "pool", "sequential", "excite"])
        if kind == "sequential":
            # a container called as a whole: conv, [BN], activation module (names "seq4.0")
            c2 = r.choice([4, 6, 8])
            Conv, BN = (nn.Conv2d, nn.BatchNorm2d) if self.dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
            parts: list[nn.Module] = [Conv(c, c2, 3, padding=1, bias=r.random() < 0.5)]
            if r.random() < 0.5:
                parts.append(BN(c2))
            act = r.choice(["ReLU", "ReLU6", "SiLU", "Hardswish"])
            parts.append(_ACTS[act][0](r.random() < 0.5))
            name = self.add("seq", nn.Sequential(*parts))
            self.layers.append([f"{name}.0", act])
            out = self.fresh("h")
            self.emit(f"{out} = self.{name}({h})")
            return out, c2
        if kind == "excite":
            # squeeze and excitation: two 1x1 layers on the pooled tensor gate the channels
            axes = "(2, 3)" if self.dims == 2 else "-1"
            s = self.fresh("e")
            self.emit(f"{s} = {h}.mean({axes}, keepdim=True)")
            s, _ = self.conv(s, c, 2, s)
            g, _ = self.conv(s, 2, c, self.fresh("g"), allow_act=False)
            self.emit(f"{g} = torch.sigmoid({g})")
            self.layers[-1][1] = "Sigmoid"
            out = self.fresh("h")
            self.emit(f"{out} = {h} * {g}")
            return out, c
        if kind == "conv":
            c2 = r.choice([4, 6, 8])
            stride = 2 if self.size > 2 and r.random() < 0.3 else 1
            self.size //= stride
            out, _ = self.conv(h, c, c2, self.fresh("h"), stride=stride)
            return out, c2
        if kind == "residual":
            s = h
            y, _ = self.conv(s, c, c, self.fresh("y"))
            if r.random() < 0.6:
                y, _ = self.conv(y, c, c, self.fresh("y"))
            form = r.choice(["{y} = {y} + {s}", "{y} = {s} + {y}", "{y} += {s}", "{s} += {y}; {y} = {s}",
                             "{y}.add_({s})", "{y} = torch.add({y}, {s})"])
            self.emit(form.format(y=y, s=s))
            if r.random() < 0.5:
                self.activation(y)
            return y, c
        if kind == "concat":
            ca = r.choice([2, 4])
            a, _ = self.conv(h, c, ca, self.fresh("a"))
            if r.random() < 0.5:
                b, cb = h, c  # the identity branch: h has a second consumer
            else:
                b, _ = self.conv(h, c, 4, self.fresh("b"))
                cb = 4
            out = self.fresh("h")
            self.emit(f"{out} = torch.cat([{a}, {b}], 1)" if r.random() < 0.5 else f"{out} = torch.cat(({b}, {a}), dim=1)")
            return out, ca + cb
        if kind == "branch":
            # a conv output with two consumers: an activation and another conv
            y, _ = self.conv(h, c, c, self.fresh("y"), allow_act=False)
            b = self.fresh("b")
            if r.random() < 0.5:
                b, _ = self.conv(y, c, c, b)
                self.activation(y)  # (in place possibly: after the conv read y)
            else:
                z = self.fresh("z")
                self.emit(f"{z} = {y}")
                conv_y = len(self.layers) - 1
                act, inplace = self.activation(z)
                if inplace:  # z is y: the activation is the conv's only consumer, and the next conv reads its result
                    self.layers[conv_y][1] = act
                b, _ = self.conv(y, c, c, b)
                y = z
            out = self.fresh("h")
            self.emit(f"{out} = {y} + {b}" if r.random() < 0.5 else f"{out} = torch.cat([{y}, {b}], 1)")
            return out, (c if "+" in self.lines[-1] else 2 * c)
        # pool
        if self.size <= 2:
            return h, c
        self.size //= 2
        d = self.dims
        form = r.choice([f"F.max_pool{d}d({{x}}, 2)", f"F.avg_pool{d}d({{x}}, 2)", "module"])
        if form == "module":
            name = self.add("pool", r.choice([nn.MaxPool2d, nn.AvgPool2d] if d == 2 else [nn.MaxPool1d, nn.AvgPool1d])(2))
            self.emit(f"{h} = self.{name}({h})")
        else:
            self.emit(f"{h} = " + form.format(x=h))
        return h, c

    def head(self, h: str, c: int) -> None:
        r = self.rng
        axes = "(2, 3)" if self.dims == 2 else "-1"
        form = r.choice(["mean", "gap", "flatten"])
        if form == "mean":
            self.emit(f"h = {h}.mean({axes})")
            feat = c
        elif form == "gap":
            name = self.add("gap", nn.AdaptiveAvgPool2d(1) if self.dims == 2 else nn.AdaptiveAvgPool1d(1))
            self.emit(f"h = torch.flatten(self.{name}({h}), 1)")
            feat = c
        else:
            self.emit(f"h = {h}.flatten(1)")
            feat = c * self.size ** self.dims
        if r.random() < 0.4:
            hidden = r.choice([6, 8])
            name = self.add("fc", nn.Linear(feat, hidden, bias=r.random() < 0.7))
            self.layers.append([name, None])
            self.emit(f"h = self.{name}(h)")
            if r.random() < 0.4:
                bname = self.add("bn", nn.BatchNorm1d(hidden))
                self.emit(f"h = self.{bname}(h)")
            if r.random() < 0.7:
                self.layers[-1][1] = self.activation("h")[0]
            feat = hidden
        self.mods["head"] = nn.Linear(feat, CLASSES)
        self.layers.append(["head", None])
        self.emit("return self.head(h)")


def _randomize(model: nn.Module, rng: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=rng) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=rng) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=rng) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=rng) - 0.5)


def generate(seed: int) -> GenNet:
    """The network of ``seed`` (same seed, same network)."""
    torch.manual_seed(seed)
    r = random.Random(seed)
    dims = 1 if r.random() < 0.2 else 2
    b = _Builder(seed * 7919 + 1, dims)
    b.size = 8 if dims == 2 else 16
    cin = 3
    c = b.rng.choice([4, 6, 8])
    h, _ = b.conv("x", cin, c, "h0")  # the stem: no block writes the caller's input in place
    for k in range(b.rng.randint(2, 4)):
        b.scope = f"s{k}." if b.rng.random() < 0.4 else ""  # nested module names: s0.conv5
        h, c = b.block(h, c)
    b.scope = ""
    b.head(h, c)
    scope = {"torch": torch, "F": F}
    source = "def forward(self, x):\n" + "".join(f"    {line}\n" for line in b.lines)
    exec(compile(source, f"<archgen net {seed}>", "exec"), scope)
    # a class per net: torch.fx traces the class's forward
    model = type(f"GenNet{seed}", (nn.Module,), {"forward": scope["forward"]})()
    for name, m in b.mods.items():
        parent, _, child = name.rpartition(".")
        if parent and not hasattr(model, parent):
            model.add_module(parent, nn.Module())
        (model.get_submodule(parent) if parent else model).add_module(child, m)
    _randomize(model, torch.Generator().manual_seed(seed))
    shape = (cin, 8, 8) if dims == 2 else (cin, 16)
    return GenNet(seed, model.eval(), source, shape, tuple((n, a) for n, a in b.layers))
