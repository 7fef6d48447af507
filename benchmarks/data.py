"""Benchmark data: seeded synthetic images (generated lazily, so memory does not grow with N)
and random crops of the real photos that ship with scikit-image and scikit-learn.

Example:
    >>> data = SyntheticImages(n=4, batch=2, size=32)
    >>> [x.shape[0] for x, _ in data]
    [2, 2]
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SyntheticImages", "photos", "photo_crops"]

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]


class SyntheticImages:
    """``n`` seeded N(0, 1) images in batches of ``batch``; regenerated on every iteration.

    Re-iterable and constant in memory: batch ``k`` is drawn from its own generator seeded
    with ``seed + k``, so every pass (and every process) sees the same values.
    """

    def __init__(self, n: int, batch: int, size: int = 224, seed: int = 0, channels: int = 3) -> None:
        self.n, self.batch, self.size, self.seed, self.channels = n, batch, size, seed, channels

    def __len__(self) -> int:
        return (self.n + self.batch - 1) // self.batch

    def __iter__(self) -> Iterator[tuple[Tensor, Optional[Tensor]]]:
        for k, start in enumerate(range(0, self.n, self.batch)):
            b = min(self.batch, self.n - start)
            g = torch.Generator().manual_seed(self.seed + k)
            yield torch.randn(b, self.channels, self.size, self.size, generator=g), None


def photos() -> list[Tensor]:
    """The bundled colour photos as float tensors ``[3, H, W]`` in [0, 1]."""
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    arrays = [getattr(skd, name)() for name in PHOTOS] + list(load_sample_images().images)
    return [torch.from_numpy(a[..., :3].copy()).permute(2, 0, 1).float() / 255.0 for a in arrays]


def photo_crops(n: int, batch: int, size: int = 224, seed: int = 0) -> list[tuple[Tensor, None]]:
    """``n`` random crops (side 50-100% of the photo's short side, resized to ``size``),
    scaled for EfficientNet-Lite as ``(x * 255 - 127) / 128``, in batches of ``batch``."""
    imgs = photos()
    g = torch.Generator().manual_seed(seed)
    crops = []
    for k in range(n):
        im = imgs[k % len(imgs)]
        h, w = im.shape[1:]
        side = int(min(h, w) * (0.5 + 0.5 * float(torch.rand((), generator=g))))
        side = max(side, min(size, h, w))
        top = int(torch.randint(0, h - side + 1, (), generator=g))
        left = int(torch.randint(0, w - side + 1, (), generator=g))
        crop = im[:, top : top + side, left : left + side].unsqueeze(0)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if float(torch.rand((), generator=g)) < 0.5:
            crop = crop.flip(-1)
        crops.append((crop[0] * 255.0 - 127.0) / 128.0)
    x = torch.stack(crops)
    return [(x[i : i + batch], None) for i in range(0, n, batch)]


def docstrings(n: int, seed: int = 0) -> list[str]:
    """``n`` first sentences of the standard library's docstrings (real English text that ships
    with every Python), seeded order."""
    import importlib
    import inspect
    import random

    texts: list[str] = []
    for mod in ("json", "collections", "os", "inspect", "functools", "itertools", "pathlib", "re", "string", "textwrap",
                "statistics", "random", "heapq", "bisect", "shutil", "tempfile", "argparse", "logging", "csv", "datetime"):
        m = importlib.import_module(mod)
        for name in sorted(dir(m)):
            doc = inspect.getdoc(getattr(m, name, None)) if not name.startswith("_") else None
            if doc and len(doc) > 40:
                texts.append(doc.split("\n\n")[0].replace("\n", " ")[:300])
    random.Random(seed).shuffle(texts)
    return texts[:n]


def docstring_batches(tokenizer: Any, n: int, batch: int, seed: int = 0) -> list[dict]:
    """``n`` docstring sentences in tokenizer batches (dicts of input_ids / attention_mask, padded per batch)."""
    texts = docstrings(n, seed)
    return [dict(tokenizer(texts[i : i + batch], return_tensors="pt", padding=True, truncation=True, max_length=128))
            for i in range(0, len(texts), batch)]
