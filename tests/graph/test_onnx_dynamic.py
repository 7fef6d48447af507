"""ONNX files with dynamic axes (``torch.onnx.export(..., dynamic_axes=...)``, what model zoos ship)
are captured by torch.fx and run on the cone engine, not the forward-hook fallback.

Such a file computes its Reshape targets at run time (Shape -> Gather -> Concat -> Reshape); the
onnx2torch modules that branch on them are kept whole by the capture (quantlens.graph.onnx_ops).
The oracle is tests/oracle.py (a full forward per cell through PyTorch's fake-quantize ops) and the
hook engine (which runs the converted model itself, no capture); every data set ends with a smaller
batch than the one the file was exported with, and the transformer's sequence length varies too.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F
from support.helpers import close
from support.oracle import naive_sweep
from torch import nn

import quantlens as ql
from quantlens.graph import capture
from quantlens.core.inputs import Inputs

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnx2torch") is None:  # imported by quantlens (it stands in for torchvision)
    pytest.skip("needs onnx2torch", allow_module_level=True)

BITS = (3, 8)


class ConvNet(nn.Module):
    """Conv+BN+ReLU, a residual add, a depthwise conv, Flatten, and reshapes to the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc1, self.fc2 = nn.Linear(8 * 8 * 8, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.c1(x)))
        h = h + F.relu(self.c2(h))
        h = torch.flatten(F.relu(self.dw(h)), 1)
        h = F.relu(self.fc1(h))
        n = h.shape[0]
        return self.fc2(h.reshape(n, 4, 8).reshape(n, 32))


class Attention(nn.Module):
    """Embedding, one attention block (heads split and merged by reshape/transpose), a GELU MLP,
    LayerNorm, mean pooling. Linears see ``[batch * seq, d]`` so that ONNX writes them as Gemm."""

    def __init__(self, vocab: int = 50, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.emb = heads, nn.Embedding(vocab, d)
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        b, t, d = x.shape
        h = x.reshape(b * t, d)
        qkv = self.qkv(h).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, -1) @ v
        h = h + self.o(a.transpose(1, 2).reshape(b * t, d))
        h = self.ln(h + self.down(F.gelu(self.up(h))))
        return self.head(h.reshape(b, t, d).mean(1))


def _bn(m: nn.BatchNorm2d) -> None:
    g = torch.Generator().manual_seed(1)
    m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _export(model: nn.Module, x: torch.Tensor, path, axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": axes})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_dynamic")
    torch.manual_seed(0)
    conv = ConvNet().eval()
    _bn(conv.bn)
    _export(conv, torch.randn(4, 3, 8, 8), d / "conv.onnx", {0: "batch"})
    _export(conv, torch.randn(4, 3, 8, 8), d / "conv_static.onnx", {})  # the same net, static shapes
    _export(Attention().eval(), torch.randint(0, 50, (2, 6)), d / "attn.onnx", {0: "batch", 1: "seq"})
    return d


def _load(path) -> nn.Module:
    from quantlens.data.model_files import load_model_file

    return load_model_file(path)


def _conv_data():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(n, 3, 8, 8, generator=g), None) for n in (8, 8, 3)]  # a last partial batch


def _token_data():
    g = torch.Generator().manual_seed(3)
    return [(torch.randint(0, 50, shape, generator=g), None) for shape in ((4, 7), (4, 9), (3, 5))]


def _onnx_leaves(g) -> list[str]:
    return [type(g.gm.get_submodule(str(n.target))).__name__ for n in g.gm.graph.nodes
            if n.op == "call_module" and type(g.gm.get_submodule(str(n.target))).__module__.startswith("onnx2torch.")]


def _analyze_on_cone(model: nn.Module, data) -> ql.SweepResult:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ql.QuantlensWarning)  # no fallback to hooks
        r = ql.analyze(model, data, w_bits=BITS, metric="agreement")
    assert r.engine == "cone"
    return r


def _assert_oracle(r: ql.SweepResult, model: nn.Module, data) -> None:
    """The cone's cells are the naive oracle's (noise and SQNR to 1e-5, agreement exactly) and the
    hook engine's (the converted model run as it is: no capture involved)."""
    ref = naive_sweep(model, data, BITS)
    hooks = ql.analyze(model, data, w_bits=BITS, metric="agreement", engine="hooks")
    assert hooks.engine == "hooks" and [l.name for l in hooks.layers] == [l.name for l in r.layers]
    assert len(r.cells) == len(r.layers) * len(BITS)
    for c in r.cells:
        noise, sqnr, agree = ref[(c.layer, c.w_bits)]
        h = hooks.cell(c.layer, c.w_bits)
        assert close(c.noise, noise, 1e-5) and close(c.sqnr_db, sqnr, 1e-5), (c.layer, c.w_bits, c.noise, noise)
        assert c.metric == agree, (c.layer, c.w_bits, c.metric, agree)
        assert close(c.noise, h.noise, 1e-5) and c.metric == h.metric, (c.layer, c.w_bits, c.noise, h.noise)


def test_dynamic_batch_conv_net_is_captured_by_fx(files):
    g = capture(_load(files / "conv.onnx"))
    assert g.method == "fx"
    assert [(l.name, l.act) for l in g.layers] == [("c1/Conv", "ReLU"), ("c2/Conv", "ReLU"), ("dw/Conv", "ReLU"),
                                                  ("fc1/Gemm", "ReLU"), ("fc2/Gemm", None)]
    assert _onnx_leaves(g) == ["OnnxReshape", "OnnxReshape"]  # the rest traced through, as before
    g.gm.graph.lint()  # the failed attempts left no dangling node
    assert not any(n.target is torch.any for n in g.gm.graph.nodes)
    # the graph computes the batch size, not the first batch's: exact on other sizes
    model = _load(files / "conv.onnx")
    for n in (1, 3, 5):
        x = torch.randn(n, 3, 8, 8)
        with torch.no_grad():
            assert torch.allclose(g.gm(x), model(x), rtol=1e-5, atol=1e-6)
    # a static export traces through its Reshapes (constant targets) and keeps no leaf
    assert _onnx_leaves(capture(_load(files / "conv_static.onnx"))) == []


def test_dynamic_batch_conv_net_runs_on_the_cone_engine_with_the_oracles_cells(files):
    from quantlens.data.model_files import check_onnx

    model, data = _load(files / "conv.onnx"), _conv_data()
    assert check_onnx(files / "conv.onnx", model, Inputs((data[-1][0],))) < 1e-4  # onnxruntime's model at batch 3
    r = _analyze_on_cone(model, data)
    assert r.num_samples == 19
    _assert_oracle(r, model, data)


def test_dynamic_batch_and_sequence_attention_runs_on_the_cone_engine_with_the_oracles_cells(files):
    from quantlens.data.model_files import check_onnx

    model, data = _load(files / "attn.onnx"), _token_data()
    for x, _ in data:
        assert check_onnx(files / "attn.onnx", model, Inputs((x,))) < 1e-4
    g = capture(model)
    assert g.method == "fx" and [l.name for l in g.layers] == ["qkv/Gemm", "o/Gemm", "up/Gemm", "down/Gemm", "head/Gemm"]
    assert "OnnxReshape" in _onnx_leaves(g)
    r = _analyze_on_cone(model, data)
    assert r.num_samples == 11
    _assert_oracle(r, model, data)
