"""Quantizer conventions against the tools themselves: onnxruntime's quantize_static and torch.ao's observers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.single_thread import one_thread_demo  # noqa: F401  (module fixture: one intra-op thread)

from quantlens.quant.spec import PerChannel, QuantSpec
from quantlens.errors import QuantlensError
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.quant.conventions import conventions, get_convention
from quantlens.quant.observers import MinMaxObserver as QLMinMax
from quantlens.quant.quantizer import ActQuantizer, quantize_weight
from quantlens.core.workload import Workload


def test_registry_and_grids():
    assert conventions() == ["onnxruntime", "quantlens", "tflite", "torch-ao"]
    assert get_convention("onnxruntime").grid(4, True) == (-8, 7, True)
    assert get_convention("onnxruntime").grid(8, True) == (-127, 127, True)
    assert get_convention("tflite").grid(8, True) == (-127, 127, False)
    assert get_convention("torch-ao").grid(8, False) == (0, 127, False)
    s = QuantSpec(bits=4, convention="onnxruntime")
    w = torch.tensor([-1.0, 0.3, 0.5])
    q = quantize_weight(w, s)
    assert float(q.scale) == pytest.approx(1.0 / 7.5)  # onnxruntime's int4 rule, not quantlens's max/7
    assert torch.equal(torch.round(q.weight / q.scale), torch.tensor([-7.0, 2.0, 4.0]))
    assert QuantSpec.from_dict(s.to_dict()) == s and "convention" not in QuantSpec(bits=4).to_dict()
    lq = LayerQuant(4, 8, convention="tflite")
    assert LayerQuant.from_dict(lq.to_dict()) == lq
    with pytest.raises(QuantlensError, match="unknown convention 'tf'"):
        LayerQuant(8, 8, convention="tf")


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_ao_weight_observers(bits, per_channel):
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 4, 3, 3, generator=g)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if per_channel:
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=qmin, quant_max=qmax)
    else:
        obs = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=qmin, quant_max=qmax)
    obs(w)
    scale, zp = obs.calculate_qparams()
    spec = QuantSpec(bits=bits, granularity=PerChannel() if per_channel else QuantSpec().granularity, convention="torch-ao")
    q = quantize_weight(w, spec)
    assert torch.allclose(q.scale.reshape(-1), scale.reshape(-1).float(), rtol=1e-6, atol=0)
    assert int(zp.abs().max()) == 0
    ref = (torch.fake_quantize_per_channel_affine(w, scale.float(), zp.int(), 0, qmin, qmax) if per_channel
           else torch.fake_quantize_per_tensor_affine(w, float(scale), int(zp), qmin, qmax))
    assert torch.allclose(q.weight, ref, rtol=0, atol=1e-6)


def test_torch_ao_activation_observer_reduced_range():
    from torch.ao.quantization.observer import MinMaxObserver

    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    obs = MinMaxObserver(dtype=torch.quint8, reduce_range=True)
    obs(x)
    scale, zp = obs.calculate_qparams()
    o = QLMinMax()
    o.update(x)
    q = ActQuantizer.from_spec(LayerQuant(8, 8, convention="torch-ao").act_spec(), o)
    assert (q.qmin, q.qmax) == (0, 127)
    assert float(q.scale) == pytest.approx(float(scale), rel=1e-6) and int(q.zero_point) == int(zp)


@pytest.fixture(scope="module")
def ort_models(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from quantlens.demo import digits as demo
    from quantlens.runtime.tool_quant import ort_quantize_static

    d = tmp_path_factory.mktemp("ort")
    model, calib = demo.model(), demo.calib()
    return {b: ort_quantize_static(model, calib, d / f"w{b}", w_bits=b) for b in (8, 4)}


def _ort_weight_scales(path) -> list[float]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and len(inits[n.input[0]].dims) >= 2:
            out.append(float(numpy_helper.to_array(inits[n.input[1]])))
    return sorted(out)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_onnxruntime_quantize_static_scales_and_accuracy(ort_models, bits):
    """The onnxruntime convention gives quantize_static's weight scales, and predicts its accuracy within 1 point."""
    from quantlens.demo import digits as demo
    from quantlens.network.measure import NetworkMeasurer
    from quantlens.runtime.ort import RuntimeSession

    data = demo.data()
    m = NetworkMeasurer(Workload(demo.model(), data, demo.calib()))
    pred = {}
    for conv in ("onnxruntime", "quantlens"):
        qnet = m.build(QuantConfig.uniform(m.names, w_bits=bits, convention=conv))
        pred[conv] = (sorted(float(q.scale) for q in qnet.weights.values()), m(QuantConfig.uniform(m.names, w_bits=bits, convention=conv)))
    ort_scales = _ort_weight_scales(ort_models[bits])
    assert np.allclose(pred["onnxruntime"][0], ort_scales, rtol=1e-5, atol=0), (pred["onnxruntime"][0], ort_scales)
    if bits == 4:  # quantlens's own rule differs: max/7 against max/7.5
        assert not np.allclose(pred["quantlens"][0], ort_scales, rtol=1e-3)
    s = RuntimeSession(ort_models[bits])
    correct = sum(int((s.run((x,)).argmax(1) == y).sum()) for x, y in data)
    ort_top1 = correct / sum(len(y) for _, y in data)
    assert abs(pred["onnxruntime"][1].metric - ort_top1) <= 0.01


def test_verify_accepts_a_model_quantized_by_the_tool(ort_models, tmp_path, capsys):
    import json

    from quantlens.cli import main

    rc = main(["verify", "--onnx", str(ort_models[4]), "--model", "quantlens.demo:model", "--data", "quantlens.demo:data",
               "--calib", "quantlens.demo:calib", "--w-bits", "4", "--convention", "onnxruntime", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    v = json.loads((tmp_path / "verify.json").read_text())
    assert v["source"] == "tool (onnxruntime)" and v["convention"] == "onnxruntime"
    assert abs(v["difference"]) <= 0.01 and v["agreement"] >= 0.97


def test_sweep_under_a_convention_matches_the_whole_network_measurement():
    """A sweep cell made with --convention onnxruntime is the one-layer network quantized under that convention."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from support.models import tiny_data, tiny_net

    import quantlens as ql
    from quantlens.sweep.api import make_config
    from quantlens.network.measure import NetworkMeasurer

    data = tiny_data(n_batches=2)
    sweep = ql.analyze(tiny_net(), data, config=make_config([4], 8, convention="onnxruntime"), metric="agreement")
    assert sweep.config["weight"]["convention"] == "onnxruntime"
    m = NetworkMeasurer(Workload(tiny_net(), data, metric="agreement"))
    for layer in ("stem", "fc1"):
        one = m(QuantConfig(((layer, LayerQuant(4, 8, convention="onnxruntime")),)))
        cell = sweep.cell(layer, 4)
        assert cell.sqnr_db == pytest.approx(one.sqnr_db, abs=1e-3)
        other = m(QuantConfig(((layer, LayerQuant(4, 8)),)))
        assert abs(other.sqnr_db - one.sqnr_db) > 1e-3  # the convention changes the network
