"""``export --format onnx-qdq`` of configurations in named formats: FP8 and integer formats run in
onnxruntime as the simulation computes them; MX, NVFP4 and FP8 tiles are refused in one line.

Oracle: onnxruntime (no graph optimizations: the QDQ graph as written) against quantlens's
simulated network, output bit for bit; each weight's codes times its scale, read back from the
ONNX file, equal to the simulated weight bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.models import tiny_data, tiny_net
from support.single_thread import one_thread  # noqa: F401  (module fixture: one intra-op thread)

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import TensorProto, numpy_helper  # noqa: E402

from quantlens.core.layer_config import LayerQuant, QuantConfig  # noqa: E402
from quantlens.core.workload import Workload  # noqa: E402
from quantlens.errors import QuantlensError  # noqa: E402
from quantlens.export import export as export_weights  # noqa: E402
from quantlens.export.onnx import export_onnx, export_qnet  # noqa: E402
from quantlens.network.measure import NetworkMeasurer  # noqa: E402
from quantlens.quant.spec import QuantSpec  # noqa: E402
from quantlens.runtime.ort import RuntimeSession  # noqa: E402

FP8_ACT = QuantSpec(format="fp8-e4m3", symmetric=False)
INT8_ACT = QuantSpec(bits=8, symmetric=False)
MIXED = {  # layer: (weight format, activations)
    "stem": ("fp8-e4m3", FP8_ACT),
    "b1": ("fp8-e5m2-channel", FP8_ACT),
    "b2": ("int4-channel", INT8_ACT),
    "dw": ("int8", INT8_ACT),
    "pw": ("int4-g4", None),  # a 1x1 convolution: groups along its input channels
    "side": ("bf16", None),
    "fc1": ("int8-g4", FP8_ACT),
    "fc2": ("fp8-e4m3-channel", QuantSpec(format="fp8-e5m2", symmetric=False)),
}
STORAGE = {"stem": TensorProto.FLOAT8E4M3FN, "b1": TensorProto.FLOAT8E5M2, "b2": TensorProto.INT4, "dw": TensorProto.INT8,
           "pw": TensorProto.INT4, "fc1": TensorProto.INT8, "fc2": TensorProto.FLOAT8E4M3FN}


@pytest.fixture(scope="module")
def measurer():
    return NetworkMeasurer(Workload(tiny_net(), tiny_data(n_batches=2)))


def _config(layers: dict) -> QuantConfig:
    return QuantConfig(tuple((n, LayerQuant(weight=QuantSpec(format=f), act=a)) for n, (f, a) in layers.items()))


def _check_equal(path, qnet, data) -> None:
    plain = RuntimeSession(path, optimized=False)
    for x, _ in data:
        sim = qnet.gm(x)[0].detach()
        assert torch.equal(torch.from_numpy(np.asarray(plain.run((x,)))).float(), sim.float())


def _codes(model) -> dict:
    """``{layer index: (codes as float32, scale, data type)}`` of each weight DequantizeLinear."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0].endswith(".wint"):
            t = inits[n.input[0]]
            idx = int(n.input[0].rsplit(".", 1)[0].rsplit("_", 1)[1])
            out[idx] = (numpy_helper.to_array(t).astype(np.float32), numpy_helper.to_array(inits[n.input[1]]), t.data_type)
    return out


@pytest.mark.slow
def test_a_mixed_format_config_runs_in_onnxruntime_as_simulated(measurer, tmp_path):
    data = tiny_data(n_batches=2)
    qnet = measurer.build(_config(MIXED))
    res = export_qnet(qnet, tmp_path, (data[0][0],))
    _check_equal(res.path, qnet, data)
    model = onnx.load(res.path)
    codes = _codes(model)
    for name, want in STORAGE.items():
        layer = qnet.graph.layer(name)
        q, s, dtype = codes[layer.index]
        assert dtype == want, name
        wq = qnet.weights[name].weight
        f = res.layers[name]
        if f.block_size is not None:
            s = np.repeat(s, f.block_size, axis=1).reshape(q.shape)
        elif f.axis == 0:
            s = s.reshape(-1, *([1] * (q.ndim - 1)))
        assert torch.equal(torch.from_numpy(q * s), wq), name
    assert res.layers["side"].storage is None and res.layers["pw"].block_size == 4
    assert res.layers["fc2"].to_dict()["a_format"] == "fp8-e5m2" and res.layers["stem"].to_dict()["format"] == "fp8-e4m3"
    q8 = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zp_types = {next(t.data_type for t in model.graph.initializer if t.name == n.input[2]) if any(t.name == n.input[2] for t in model.graph.initializer)
                else None for n in q8}
    assert TensorProto.FLOAT8E4M3FN in zp_types or any(
        c.op_type == "Constant" and c.attribute[0].t.data_type == TensorProto.FLOAT8E4M3FN for c in model.graph.node)


@pytest.mark.slow
def test_a_saved_format_config_rebuilds_and_exports(measurer, tmp_path):
    data = tiny_data(n_batches=2)
    qnet = measurer.build(_config({k: MIXED[k] for k in ("stem", "b1", "side", "fc1", "fc2")}))
    (tmp_path / "run").mkdir()
    export_weights(qnet, tmp_path / "run")
    res = export_onnx(tiny_net(), tmp_path / "run", tmp_path / "onnx", data=data)
    assert {n: f.format for n, f in res.layers.items()} == {"stem": "fp8-e4m3", "b1": "fp8-e5m2-channel", "side": "bf16",
                                                             "fc1": "int8-g4", "fc2": "fp8-e4m3-channel"}
    _check_equal(res.path, qnet, data)


@pytest.mark.parametrize("layers, message", [
    ({"fc1": ("mxfp4", None)}, "layer fc1: mxfp4 weights cannot go to onnx-qdq, which holds int2..int8 weights"),
    ({"fc2": ("nvfp4", None)}, "layer fc2: nvfp4 weights cannot go to onnx-qdq"),
    ({"b1": ("fp8-e4m3-block128", None)}, "fp8-e4m3-block128"),
    ({"b1": ("int4-g8", None)}, "layer b1: int4-g8 weights cannot go to onnx-qdq: its groups of 8 run along the flattened"),
    ({"fc1": ("int4-g8", None)}, "its input width 12 is not a multiple of the group of 8"),
    ({"fc1": ("int16", None)}, "layer fc1: int16 weights cannot go to onnx-qdq"),
    ({"fc1": ("int8", QuantSpec(format="mxfp8", symmetric=False))}, "layer fc1: mxfp8 activations (scales computed from each batch)"),
    ({"fc1": ("int8", QuantSpec(format="fp8-e4m3-channel", symmetric=False))}, "fp8-e4m3-channel activations"),
])
def test_formats_onnx_qdq_cannot_hold_are_refused_in_one_line(measurer, tmp_path, layers, message):
    from quantlens.export.qdq import layer_formats

    try:
        qnet = measurer.build(_config(layers))
    except QuantlensError as e:  # the format's own refusal (a 128x128 tile on a convolution)
        assert message in str(e) and "\n" not in str(e)
        return
    with pytest.raises(QuantlensError) as e:
        layer_formats(qnet)
    assert message in str(e.value) and "\n" not in str(e.value)


MLP = '''
import torch
from torch import nn


class Block(nn.Module):
    """A norm feeding two siblings (fused: one format), then a down projection."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.norm = nn.LayerNorm(32)
        self.gate, self.up, self.down = nn.Linear(32, 64), nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, x):
        h = self.norm(x)
        return self.down(torch.relu(self.gate(h)) * self.up(h))


def model():
    return Block().eval()


def data():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 32, generator=g) * 2, None) for _ in range(2)]
'''


@pytest.mark.slow
def test_cli_plan_over_formats_then_export_and_verify(tmp_path, capsys):
    import json

    from quantlens.cli import main

    f = tmp_path / "mlp.py"
    f.write_text(MLP)
    out = tmp_path / "p"
    base = ["--model", f"{f}:model", "--data", f"{f}:data", "--metric", "mse"]
    assert main(["plan", *base, "--formats", "int4-channel,fp8-e4m3,bf16", "--budget", "7", "--a-format", "fp8-e4m3",
                 "--out", str(out), "--no-progress"]) == 0
    cfg = json.loads((out / "quant_config.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert {n: l["format"] for n, l in cfg["layers"].items()} == plan["formats"]
    assert {l["a_format"] for l in cfg["layers"].values()} == {"fp8-e4m3"}
    assert main(["export", "--model", f"{f}:model", "--config", str(out), "--out", str(out / "onnx")]) == 0
    assert main(["verify", "--onnx", str(out / "onnx" / "model.onnx"), "--data", f"{f}:data", "--metric", "mse", "--out", str(out)]) == 0
    v = json.loads((out / "verify.json").read_text())
    assert v["rounding"]["plain_vs_simulation"]["max_abs"] == 0.0
    capsys.readouterr()
    assert main(["plan", *base, "--formats", "nvfp4,bf16", "--budget", "5", "--a-bits", "none", "--out", str(tmp_path / "q"),
                 "--no-progress"]) == 0
    assert main(["export", "--model", f"{f}:model", "--config", str(tmp_path / "q"), "--out", str(tmp_path / "q" / "onnx")]) == 2
    err = capsys.readouterr().err
    assert "nvfp4 weights cannot go to onnx-qdq, which holds" in err and err.count("\n") == 1


def test_torch_decomposed_fp8_quantize_rounds_to_integers_so_the_export_module_computes_the_simulation():
    """torch's ``quantized_decomposed.quantize_per_tensor`` to float8 rounds ``x / s`` to an integer
    before the cast (0.3 / 0.5 = 0.6 -> 1 -> 0.5), where E4M3 rounds to 0.625 (-> 0.3125), as
    onnxruntime's QuantizeLinear does; the export module uses it only to write the graph."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    from quantlens.export.qdq_formats import ActFP8QDQ
    from quantlens.quant.quantizer import ActQuantizer

    x = torch.tensor([[0.3, -1000.0, 7.1, 0.0151]])
    qd = torch.ops.quantized_decomposed
    theirs = qd.dequantize_per_tensor(qd.quantize_per_tensor(x, 0.5, 0, -448, 448, torch.float8_e4m3fn), 0.5, 0, -448, 448,
                                      torch.float8_e4m3fn)
    assert theirs.tolist() == [[0.5, -224.0, 7.0, 0.0]]
    q = ActQuantizer()
    q.set_format("fp8-e4m3", 224.0)  # s = 224 / 448 = 0.5
    mod = ActFP8QDQ(q)
    assert mod(x).tolist() == [[0.3125, -224.0, 7.0, 0.0146484375]]
