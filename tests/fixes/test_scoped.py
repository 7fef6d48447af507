"""The scales-then-values split of every format (fixes/scoped.py) against the formats' own quantizer, bit for bit."""

from __future__ import annotations

import pytest
import torch

from quantlens import QuantlensError
from quantlens.fixes.scoped import ScopedQuantizer
from quantlens.quant.quantizer import quantize_weight
from quantlens.quant.spec import PerChannel, PerGroup, PerTensor, QuantSpec


def _w(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.05
    w.view(-1)[::37] *= 12
    w[0] = 0  # an all-zero row: zero scales
    return w


@pytest.mark.parametrize("fmt,shape", [
    ("int4", (8, 64)), ("int4-channel", (8, 64)), ("int4-g32", (8, 64)), ("int4-g32", (8, 40)), ("int8-g128", (5, 300)),
    ("fp8-e4m3", (8, 64)), ("fp8-e5m2-channel", (8, 64)), ("fp8-e4m3-block128", (256, 384)), ("fp8-e4m3-block128", (200, 300)),
    ("mxfp4", (8, 64)), ("mxfp4", (8, 70)), ("mxfp4-rceil", (8, 64)), ("mxfp6", (8, 64)), ("mxfp6-e3m2", (8, 64)),
    ("mxfp8", (8, 64)), ("nvfp4", (8, 64)), ("nvfp4", (8, 40)), ("bf16", (8, 64)), ("fp16", (8, 64)),
    ("int4-g16", (6, 4, 3, 3)), ("mxfp4", (6, 4, 3, 3)),
])
def test_every_format_split_equals_quantize_weight(fmt, shape):
    w = _w(shape)
    spec = QuantSpec(bits=4, format=fmt)
    assert torch.equal(ScopedQuantizer.for_weight(w, spec).quantize_all(w), quantize_weight(w, spec).weight)


@pytest.mark.parametrize("spec,shape", [
    (QuantSpec(bits=4, granularity=PerTensor()), (8, 64)), (QuantSpec(bits=4, granularity=PerChannel()), (8, 64)),
    (QuantSpec(bits=3, granularity=PerGroup(16)), (8, 64)), (QuantSpec(bits=4, granularity=PerGroup(2)), (6, 4, 3, 3)),
    (QuantSpec(bits=4, granularity=PerChannel(), symmetric=False), (8, 64)),
    (QuantSpec(bits=4, granularity=PerChannel(), estimator="mse"), (8, 64)),
])
def test_integer_grid_split_equals_quantize_weight(spec, shape):
    w = _w(shape, seed=1)
    assert torch.equal(ScopedQuantizer.for_weight(w, spec).quantize_all(w), quantize_weight(w, spec).weight)


def test_tiles_need_a_two_dimensional_weight():
    with pytest.raises(QuantlensError, match="2-D weights"):
        ScopedQuantizer.for_weight(torch.randn(128, 2, 8, 8), QuantSpec(bits=8, format="fp8-e4m3-block128"))
