"""Weights that already sit on a quantization grid (a dequantized checkpoint) are recognised, random ones are not.

Oracle: weights built on a known grid (symmetric or with a float minimum, groups or rows), and
the `gguf` package's own Q4_1 / Q8_0 quantize-dequantize of random weights (llama.cpp's layouts).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantlens.quant.grids import Grid, detect_grid


def _on_grid(rows, k, bits, group, symmetric, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = group or k
    if symmetric:
        q = torch.randint(-(2 ** (bits - 1) - 1), 2 ** (bits - 1), (rows, k // n, n), generator=g).float()
        q[..., 0] = 2 ** (bits - 1) - 1  # each group reaches its amax
    else:
        q = torch.randint(0, 2**bits, (rows, k // n, n), generator=g).float()
        q[..., 0], q[..., 1] = 0.0, 2**bits - 1
    d = torch.rand(rows, k // n, 1, generator=g) * 0.1 + 0.01
    lo = 0.0 if symmetric else -torch.rand(rows, k // n, 1, generator=g)
    return (q * d + lo).reshape(rows, k)


@pytest.mark.parametrize("bits, group, symmetric", [(4, 32, False), (4, 32, True), (8, 32, True), (3, 64, True),
                                                    (4, 128, False), (6, 0, True), (2, 16, False)])
def test_a_weight_built_on_a_grid_is_recognised(bits, group, symmetric):
    w = _on_grid(96, 256, bits, group, symmetric)
    got = detect_grid(w)
    assert got is not None and (got.bits, got.group, got.symmetric) == (bits, group, symmetric) and got.share == 1.0
    assert Grid.from_name(got.name) == Grid(bits, group, symmetric, got.share) or Grid.from_name(got.name).name == got.name


@pytest.mark.parametrize("shape", [(64, 576), (16, 3, 3, 3), (10, 32), (49, 1536)])
def test_float_weights_are_not_on_a_grid(shape):
    assert detect_grid(torch.randn(*shape, generator=torch.Generator().manual_seed(1))) is None
    assert detect_grid(torch.randn(*shape).to(torch.bfloat16).float()) is None  # bf16 values are not a scaled grid either


def test_short_rows_and_zero_weights_are_not_examined():
    assert detect_grid(torch.randn(4, 8)) is None
    assert detect_grid(torch.zeros(8, 64)) is None


def test_gguf_q4_1_and_q8_0_as_llama_cpp_writes_them():
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    q41 = torch.from_numpy(dequantize(quantize(w, T.Q4_1), T.Q4_1).copy())
    g = detect_grid(q41)
    assert g is not None and g.name == "int4-g32-asym" and g.describe() == "4-bit groups of 32 with a float minimum"
    q80 = torch.from_numpy(dequantize(quantize(w, T.Q8_0), T.Q8_0).copy())
    g = detect_grid(q80)
    assert g is not None and g.name == "int8-g32" and g.share >= 0.9
    _ = gguf


def test_a_sweep_records_the_grid_and_the_summary_says_so(capsys):
    from rich.console import Console

    import quantlens as ql
    from quantlens.cli.common import print_summary
    from quantlens.report.insights import grid_sentence, insights
    from quantlens.report.fmt import Units

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    with torch.no_grad():
        net[0].weight.copy_(_on_grid(64, 64, 4, 32, False, seed=1))
        net[2].weight.copy_(_on_grid(64, 64, 4, 32, False, seed=2))
    data = [(torch.randn(16, 64), None) for _ in range(2)]
    r = ql.analyze(net, data, w_bits=[4], a_bits=None, metric="mse")
    assert [l.weight.grid for l in r.layers] == ["int4-g32-asym", "int4-g32-asym", ""]
    again = ql.SweepResult.from_json(r.to_json())
    assert [l.weight.grid for l in again.layers] == ["int4-g32-asym", "int4-g32-asym", ""]
    text = grid_sentence(r)
    assert text.startswith("2 of 3 layers' weights already sit on a quantization grid: 2 on int4-g32-asym "
                           "(4-bit groups of 32 with a float minimum)") and "lossless" in text
    assert any(i.text == text for i in insights(r, 4, Units.for_metric("mse")))
    print_summary(r, out=Console(width=200))
    assert "already sit on a quantization grid" in capsys.readouterr().out
    assert grid_sentence(ql.analyze(torch.nn.Sequential(torch.nn.Linear(64, 8)).eval(), data, w_bits=[4], a_bits=None, metric="mse")) is None
