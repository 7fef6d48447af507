"""Clipping fixes in named formats, against a scope-by-scope brute-force oracle.

Oracle: for each scope of the format (a block of 32 for MX, 16 for NVFP4, a group for int-g, a
row for -channel, the tensor for per-tensor FP8/INT), try every clip factor of the grid on that
scope alone, quantize it alone with ``quantlens.fake_quantize`` (a ``[1, N]`` weight: one
scope), keep the factor of least squared error. For NVFP4 the scope is quantized with the whole
weight's tensor scale ``s2`` (the module's rule) and the scope holding the tensor's max is kept.
"""

from __future__ import annotations

import pytest
import torch

from quantlens import QuantlensError
from quantlens.fixes import FixContext, make_fix, not_applicable
from quantlens.fixes.format_clip import FORMAT_GRID, clip_applies, format_mse_clip
from quantlens.quant.scopes import scope_rows
from quantlens.quant.formats import fake_quantize, get_format
from quantlens.quant.formats.nvfp4 import nvfp4_global_scale
from quantlens.quant.padded import quantize_padded
from quantlens.quant.spec import QuantSpec


def _weight(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g) * 0.05
    w.view(-1)[:: 37] *= 12  # outliers in many scopes
    return w


@pytest.mark.parametrize("fmt,shape", [("mxfp4", (4, 64)), ("mxfp4", (3, 40)), ("nvfp4", (4, 48)), ("int4-g32", (4, 64)),
                                       ("fp8-e4m3-channel", (5, 20)), ("fp8-e4m3-block128", (256, 256)), ("int4", (6, 7, 3, 3))])
def test_scope_rows_round_trip_and_scope_sizes(fmt, shape):
    w = _weight(shape)
    rows, back = scope_rows(w, fmt)
    assert torch.equal(back(rows), w)
    f = get_format(fmt)
    per = {"block": f.block, "tile": f.block * f.block, "row": w.reshape(w.shape[0], -1).shape[1], "tensor": w.numel()}[f.scope]
    assert rows.shape[1] == per


def _oracle(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """The clipped weight, scope by scope (module docstring)."""
    f = get_format(fmt)
    m = w.reshape(w.shape[0], -1).clone()
    out = m.clone()
    s2 = nvfp4_global_scale(w.abs().max()) if f.family == "nvfp4" else None
    n = f.block if f.scope == "block" else m.shape[1]
    rows_per = m.shape[0] if f.scope == "tensor" else 1
    for r in range(0, m.shape[0], rows_per):
        for k0 in range(0, m.shape[1], n):
            x = m[r:r + rows_per, k0:k0 + n]
            amax = x.abs().max()
            if s2 is not None and amax >= w.abs().max():
                continue  # the scope that sets s2 stays whole
            best, best_c = None, 1.0
            for c in FORMAT_GRID.tolist():
                xc = x.clamp(-amax * c, amax * c)
                pad = (-x.shape[1]) % n if f.scope == "block" else 0
                q = fake_quantize(torch.nn.functional.pad(xc, (0, pad)), f, global_scale=s2)[:, : x.shape[1]]  # one scope
                err = float(((q - x).double() ** 2).sum())
                if best is None or err < best:
                    best, best_c = err, c
            out[r:r + rows_per, k0:k0 + n] = x.clamp(-amax * best_c, amax * best_c)
    return out.reshape(w.shape)


@pytest.mark.parametrize("fmt,shape", [("mxfp4", (4, 64)), ("mxfp4", (3, 40)), ("nvfp4", (4, 48)), ("int4-g16", (3, 32)),
                                       ("fp8-e4m3-channel", (4, 24)), ("int3", (4, 24)), ("mxfp6", (2, 64))])
def test_mse_clip_equals_the_scope_by_scope_oracle(fmt, shape):
    w = _weight(shape, seed=3)
    assert torch.equal(format_mse_clip(w, fmt), _oracle(w, fmt))


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "int4-g32", "mxfp8"])
def test_mse_clip_never_adds_error_and_nvfp4_keeps_its_tensor_scale(fmt):
    w = _weight((8, 64), seed=5)
    wc = format_mse_clip(w, fmt)
    naive = ((quantize_padded(w, fmt, "weight") - w) ** 2).sum()
    fixed = ((quantize_padded(wc, fmt, "weight") - w) ** 2).sum()
    assert fixed <= naive
    assert bool((wc.abs() <= w.abs()).all())
    if fmt == "nvfp4":
        assert wc.abs().max() == w.abs().max()
    if fmt in ("nvfp4", "int4-g32"):  # scales that follow amax closely: clipping a block's outlier pays here
        assert fixed < 0.98 * naive


def test_importance_weights_the_search():
    w = _weight((2, 32), seed=7)
    imp = torch.ones_like(w)
    assert torch.equal(format_mse_clip(w, "mxfp4", imp), format_mse_clip(w, "mxfp4"))
    imp[:, 0] = 0.0  # an input never active: its error costs nothing
    w2 = w.clone()
    w2[:, 0] = 10.0
    clipped = format_mse_clip(w2, "mxfp4", imp)
    assert float(clipped[:, 0].max()) < 10.0


def test_which_fixes_apply_to_which_format():
    assert clip_applies("sawb", "nvfp4") is not None and "integer" in clip_applies("sawb", "nvfp4")
    assert clip_applies("sawb", "int4-g128") is None and clip_applies("mse", "mxfp4") is None
    assert "nothing to clip" in clip_applies("mse", "bf16")
    assert not_applicable("sawb", QuantSpec(format="mxfp4")) is not None
    assert not_applicable("sawb", QuantSpec(bits=4)) is None
    assert not_applicable("equalize", QuantSpec(format="bf16")) is None
    with pytest.raises(QuantlensError, match="nothing to clip"):
        format_mse_clip(torch.randn(2, 4), "bf16")


def test_fixes_clip_a_format_layer_as_the_oracle_and_refuse_what_does_not_apply():
    from support.models import tiny_data, tiny_net

    from quantlens.core.layer_config import LayerQuant, QuantConfig
    from quantlens.graph import capture

    g = capture(tiny_net())
    names = [l.name for l in g.layers]
    cfg = QuantConfig(tuple((n, LayerQuant(weight=QuantSpec(format="mxfp4"), act=None)) for n in names))
    out = make_fix("mse", FixContext(cfg, tiny_data(1))).apply(g, names)
    for n in names:
        w = g.module(g.layer(n)).weight.detach()
        assert torch.equal(out.module(out.layer(n)).weight.detach(), _oracle(w, "mxfp4")), n
    out = make_fix("percentile", FixContext(cfg, tiny_data(1), percentile=90.0)).apply(g, names)
    changed = [n for n in names if not torch.equal(out.module(out.layer(n)).weight, g.module(g.layer(n)).weight)]
    assert changed
    with pytest.raises(QuantlensError, match="fix 'sawb' on layer .*integer grids"):
        make_fix("sawb", FixContext(cfg, tiny_data(1))).apply(g, names[:1])
    out = make_fix("mse_output", FixContext(cfg, tiny_data(1))).apply(g, names)
    assert any(not torch.equal(out.module(out.layer(n)).weight, g.module(g.layer(n)).weight) for n in names)
