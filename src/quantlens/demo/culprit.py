"""The culprit story of the paper (section 4.2) planted in the demo CNN.

:func:`model` is the trained digits CNN (:mod:`quantlens.demo.digits`) with large outliers planted in
about 0.5% of ``conv2``'s weights: 23 of its 4,608 weights are set to ``+-20 max|W|``. As in
the paper's ResNext26 ``conv4``, where clipping the outliers costs nothing in float, the
outliers sit where the float network does not need them: on the input channel of ``conv2``
fed by a ``conv1`` channel that is switched off (its BatchNorm scale is 0 and its shift
negative, so its ReLU output is always 0, a dead ReLU channel as training often leaves). The
planted model is the float reference; its float function equals the demo's with that one
channel off. At 8 bits the outliers stretch ``conv2``'s per-tensor range about 20-fold.

    quantlens fix --model quantlens.demo.culprit:model --data quantlens.demo:data \\
        --calib quantlens.demo:calib --w-bits 8 --out culprit

Example:
    >>> from quantlens.demo.culprit import model     # doctest: +SKIP
    >>> int((model().conv2.weight.abs() > 1).sum())  # doctest: +SKIP
    23
"""

from __future__ import annotations

import torch

from quantlens.demo import digits as demo

__all__ = ["model", "plant_outliers", "DEAD_CHANNEL", "FRACTION", "FACTOR"]

DEAD_CHANNEL = 0
FRACTION = 0.005
FACTOR = 20.0


def plant_outliers(net: demo.DigitsCNN, channel: int = DEAD_CHANNEL, fraction: float = FRACTION, factor: float = FACTOR, seed: int = 0) -> demo.DigitsCNN:
    """Switch ``conv1`` channel ``channel`` off and plant outliers on ``conv2``'s weights that read it (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.bn1.weight[channel] = 0.0
        net.bn1.bias[channel] = -1.0
        w = net.conv2.weight
        n = max(1, int(round(fraction * w.numel())))
        cols = w[:, channel].reshape(-1)
        if n > cols.numel():
            raise ValueError(f"cannot plant {n} outliers on {cols.numel()} weights")
        idx = torch.randperm(cols.numel(), generator=g)[:n]
        signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        big = factor * float(w.abs().max())
        sub = w[:, channel].clone().reshape(-1)
        sub[idx] = signs * big
        w[:, channel] = sub.reshape(w[:, channel].shape)
    return net


def model() -> demo.DigitsCNN:
    """The trained demo CNN with the planted outliers (eval mode)."""
    return plant_outliers(demo.model()).eval()
