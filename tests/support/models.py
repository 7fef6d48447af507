"""Tiny models for tests: a residual add, a concat, a depthwise conv, functional activations."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyNet(nn.Module):
    """conv-bn-relu -> [residual block] -> depthwise + pointwise -> concat -> pool -> linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.b1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b1_bn = nn.BatchNorm2d(8)
        self.b2 = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw_bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.side = nn.Conv2d(8, 4, 1)
        self.act6 = nn.ReLU6()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, num_classes)
        g = torch.Generator().manual_seed(0)
        for bn in (self.stem_bn, self.b1_bn, self.dw_bn):
            bn.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(8, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(8, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        r = self.b1_bn(self.b1(x)).relu()
        r = self.b2(r)
        x = F.relu(x + r)  # residual add
        d = self.act6(self.dw_bn(self.dw(x)))  # depthwise
        p = torch.sigmoid(self.pw(d))
        s = self.side(x)
        c = torch.cat([p, s], dim=1)  # concat
        v = F.adaptive_avg_pool2d(c, 1).flatten(1)
        h = F.gelu(self.fc1(v))
        return self.fc2(h)


class DictOut(nn.Module):
    """Returns an HF-style dict output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()

    def forward(self, x: torch.Tensor) -> dict:
        y = self.net(x)
        return {"aux": y.sum(1), "logits": y}


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        if h.mean() > -1.0:  # always true, but fx cannot know
            h = h * 1.0
        return self.fc(h.mean((2, 3)))


class NoLayers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class NaNOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3))) * float("nan")


def tiny_data(n_batches: int = 3, batch: int = 8, seed: int = 0, classes: int = 10, hw: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, hw, hw, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def user_file(tmp_path: Path, n_batches: int, batch: int = 8, hw: int = 8, name: str = "user_models.py") -> str:
    """A ``.py`` file for ``--model FILE:model --data FILE:data``: the tiny net and ``tiny_data(...)``."""
    p = tmp_path / name
    p.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from support.models import tiny_data, tiny_net

        def model():
            return tiny_net()

        def data():
            return tiny_data(n_batches={n_batches}, batch={batch}, hw={hw})
    """))
    return str(p)
