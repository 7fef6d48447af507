"""The embedded demo: a small CNN trained on scikit-learn's bundled handwritten digits.

Three conv+BN+ReLU blocks and a linear head, trained (seeded, 15 epochs on the 1,347 training
digits) once and shipped with quantlens as ``weights/digits-cnn-v2.safetensors``
(:mod:`.shipped`): :func:`model` loads them, so every machine analyses the same network.
``model(retrain=True)`` trains anew in a few seconds, which gives the shipped weights only on
the CPU and library build they were trained on. The 450 held-out digits, with their labels,
are the analysis data. No network access.

The functions double as ``MOD:FN`` targets: ``--model quantlens.demo:model
--data quantlens.demo:data``.

Example:
    >>> from quantlens.demo.digits import model, data       # doctest: +SKIP
    >>> ql.analyze(model(), data())                  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantlens.demo import shipped

__all__ = ["DigitsCNN", "model", "data", "calib", "train_data", "TRAIN_VERSION", "TRAINED_BY"]

TRAIN_VERSION = "digits-cnn-v2"  # the shipped weights' file name
TRAINED_BY = "quantlens.demo.digits._train(epochs=15, seed=0)"


class DigitsCNN(nn.Module):
    """conv(1->16)-BN-ReLU, conv(16->32)-BN-ReLU, maxpool, conv(32->64)-BN-ReLU, avgpool, linear(64->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    tr, te = train_test_split(idx, test_size=450, random_state=0, stratify=d.target)
    return x[tr], y[tr], x[te], y[te]


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def train_data(batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 1,347 training digits as batches."""
    x, y, _, _ = _split()
    return _batches(x, y, batch_size)


def data(batch_size: int = 150) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 450 held-out digits with labels, as batches (the demo's analysis data)."""
    _, _, x, y = _split()
    return _batches(x, y, batch_size)


def calib(batch_size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A calibration set: 256 training digits."""
    x, y, _, _ = _split()
    return _batches(x[:256], y[:256], batch_size)


def _train(epochs: int = 15, seed: int = 0) -> DigitsCNN:
    """Seeded training on one intra-op thread (the same weights whatever the thread count; another
    CPU or library build may still round differently)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_single_thread(epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train_single_thread(epochs: int, seed: int) -> DigitsCNN:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _, _ = _split()
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 32):
            b = perm[i : i + 32]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
        sched.step()
    return net.eval()


def model(retrain: bool = False, path: Optional[Path] = None) -> DigitsCNN:
    """The trained digits CNN (eval mode): the shipped weights (or the safetensors file
    ``path``); ``retrain=True`` trains it anew instead, with a one-line warning that this
    reproduces the shipped weights only on the CPU and library build they were trained on."""
    if retrain:
        shipped.warn_retrain(TRAIN_VERSION)
        return _train()
    return shipped.load(DigitsCNN(), TRAIN_VERSION, path)
