"""``quantlens export --format onnx-qdq`` and ``quantlens verify``: onnxruntime against the simulation.

Oracle: onnxruntime (nobody here wrote it) running the exported QDQ graph. With graph
optimizations off it executes each QuantizeLinear/DequantizeLinear as written, which must give
the simulation's values (float summation order aside: documented in docs/export.md); with all
optimizations it fuses integer kernels that round their requantization differently, which
must stay close (agreement and SQNR floors).
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from support.models import tiny_data, tiny_net
from support.single_thread import one_thread  # noqa: F401  (module fixture: one intra-op thread)

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import TensorProto  # noqa: E402

from quantlens.network.measure import NetworkMeasurer  # noqa: E402
from quantlens.cli import main  # noqa: E402
from quantlens.errors import QuantlensError  # noqa: E402
from quantlens.export import export as export_weights  # noqa: E402
from quantlens.export.onnx import export_onnx, export_qnet  # noqa: E402
from quantlens.core.guard import state_fingerprint  # noqa: E402
from quantlens.core.layer_config import QuantConfig  # noqa: E402
from quantlens.runtime.ort import RuntimeSession  # noqa: E402
from quantlens.runtime.verify import VerifyResult, compare_outputs  # noqa: E402
from quantlens.core.workload import Workload


@pytest.fixture(scope="module")
def measurer():
    return NetworkMeasurer(Workload(tiny_net(), tiny_data(n_batches=2)))


def _run_both(path, qnet, data):
    opt, plain = RuntimeSession(path, optimized=True), RuntimeSession(path, optimized=False)
    sim, rt, pl = [], [], []
    for x, _ in data:
        sim.append(qnet.gm(x)[0].detach())
        rt.append(opt.run((x,)))
        pl.append(plain.run((x,)))
    return torch.cat(sim), torch.cat(rt), torch.cat(pl), opt


@pytest.mark.slow
@pytest.mark.parametrize("granularity, bits", [("per-tensor", 8), ("per-channel", 4), ("per-group-4", 4), ("per-channel", 6), ("per-tensor", 3)])
def test_onnxruntime_equals_the_simulation(measurer, tmp_path, granularity, bits):
    data = tiny_data(n_batches=2)
    cfg = QuantConfig.uniform(measurer.names, w_bits=bits, granularity=granularity)
    qnet = measurer.build(cfg)
    res = export_qnet(qnet, tmp_path, (data[0][0],))
    sim, rt, plain, _ = _run_both(res.path, qnet, data)
    exact = compare_outputs(sim, plain)
    assert exact.agreement == 1.0 and (exact.max_abs == 0.0 or exact.sqnr_db > 60), exact  # QDQ as written: the simulation
    fused = compare_outputs(sim, rt)
    assert fused.agreement >= 0.85 and fused.sqnr_db > 25, fused  # integer kernels: requantization rounding only
    model = onnx.load(res.path)
    inits = {t.name: t for t in model.graph.initializer}
    weights = [t for n, t in inits.items() if n.endswith(".wint")]
    assert len(weights) == len(measurer.names)
    assert {t.data_type for t in weights} == {TensorProto.INT4 if bits <= 4 else TensorProto.INT8}
    dq = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(".wint")}
    attrs = {a.name: a.i for a in dq[[n for n in dq if "ql_layer_1." in n][0]].attribute}
    want = {"per-tensor": {}, "per-channel": {"axis": 0}, "per-group-4": {"axis": 1, "block_size": 4}}[granularity]
    assert attrs == want
    # a QuantizeLinear for each activation quantizer of the simulation, with its scale and zero point (the
    # exporter merges the identical pairs on two edges that leave the same tensor: dw and side read one x)
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    got = {(float(consts[n.input[1]]), int(consts[n.input[2]])) for n in q_nodes}
    want_q = {(float(q.scale), int(q.zero_point)) for q in list(qnet.in_q.values()) + list(qnet.out_q.values())}
    assert got == want_q and len(q_nodes) in (2 * len(measurer.names), 2 * len(measurer.names) - 1)


@pytest.mark.slow
def test_weights_on_the_b_bit_grid_with_the_b_bit_scale(measurer, tmp_path):
    data = tiny_data(n_batches=1)
    qnet = measurer.build(QuantConfig.uniform(measurer.names, w_bits=5, granularity="per-channel"))
    res = export_qnet(qnet, tmp_path, (data[0][0],))
    model = onnx.load(res.path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    name = [n for n in inits if n.endswith("ql_layer_0.wint")][0]
    q, s = inits[name], inits[name + "_scale"]
    assert q.min() >= -16 and q.max() <= 15
    w = q.astype(np.float32) * s.reshape(-1, 1, 1, 1)
    assert torch.equal(torch.from_numpy(w), qnet.weights["stem"].weight)


@pytest.mark.slow
def test_float_fallback_keep_float_and_16_bits(measurer, tmp_path):
    data = tiny_data(n_batches=2)
    cfg = QuantConfig.uniform(measurer.names, w_bits=8).with_layer("fc2", w_bits=16, a_bits=16)
    model = tiny_net()
    before = state_fingerprint(model)
    res = export_onnx(model, cfg, tmp_path, data=data, calib=data, keep_float=["dw"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "dw" not in res.layers and "fc2" not in res.layers and len(res.layers) == len(measurer.names) - 2
    g = onnx.load(res.path).graph
    assert not any(n.endswith("ql_layer_3.wint") for n in (t.name for t in g.initializer))  # dw is layer 3
    info = json.loads(res.info_path.read_text())
    assert info["schema"] == "quantlens/export-v1" and info["keep_float"] == ["dw"]
    from quantlens.export.rebuild import load_quantized

    qnet, eff = load_quantized(model, cfg, calib=data, keep_float=["dw"])
    sim, _, plain, _ = _run_both(res.path, qnet, data)
    assert compare_outputs(sim, plain).agreement == 1.0


def _tiny_files(tmp_path, cfg=None):
    """A user module, a fix-like directory (quant_config.json with ranges + weights.safetensors)."""
    mod = tmp_path / "user_tiny.py"
    from pathlib import Path

    here = Path(__file__).resolve().parents[1]
    mod.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(here)!r})
        import torch
        from support.models import tiny_data, tiny_net

        def model():
            return tiny_net()

        def data():
            return tiny_data(n_batches=2)

        def wrong():
            return [(torch.randn(4, 3, 5, 5), torch.zeros(4, dtype=torch.long))]
    """))
    m = NetworkMeasurer(Workload(tiny_net(), tiny_data(n_batches=2)))
    cfg = cfg or QuantConfig.uniform(m.names, w_bits=4, granularity="per-channel").with_layer("b1", fixes=("sawb",))
    run = tmp_path / "run"
    run.mkdir()
    export_weights(m.build(cfg), run, extra={"model": f"{mod}:model", "data": f"{mod}:data"})
    return str(mod), run


@pytest.mark.slow
def test_cli_export_then_verify(tmp_path, capsys):
    mod, run = _tiny_files(tmp_path)
    assert main(["export", "--model", f"{mod}:model", "--config", str(run / "quant_config.json"), "--out", str(run / "onnx")]) == 0
    assert (run / "onnx" / "model.onnx").is_file()
    assert main(["verify", "--onnx", str(run / "onnx" / "model.onnx"), "--data", f"{mod}:data", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "runtime check" in out and "agreement" in out
    v = json.loads((run / "verify.json").read_text())
    assert v["schema"] == "quantlens/verify-v1" and v["num_samples"] == 16
    assert v["rounding"]["plain_vs_simulation"]["agreement"] == 1.0
    assert {"predicted_degradation", "runtime_degradation", "difference", "difference_interval", "agreement", "sqnr_db", "flagged"} <= set(v)
    lo, hi = v["difference_interval"]
    assert lo <= v["difference"] <= hi
    assert v["flagged"] == (not (lo <= 0 <= hi))
    r = VerifyResult.from_json(run / "verify.json")
    assert r.to_dict() == v


def test_verify_result_flags_a_difference_beyond_its_interval():
    from quantlens.runtime.verify import Comparison

    c = Comparison(1.0, 40.0, 0.1)
    r = VerifyResult("top1", True, 100, 0.9, 0.88, 0.80, (0.85, 0.91), (0.03, 0.12), c, c, c, 0.88)
    assert r.predicted == pytest.approx(0.02) and r.runtime == pytest.approx(0.10) and r.difference == pytest.approx(0.08)
    assert r.flagged and not r.within_simulated_interval
    assert not VerifyResult("top1", True, 100, 0.9, 0.88, 0.88, (0.85, 0.91), (-0.01, 0.01), c, c, c, 0.88).flagged


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown-layer", "names unknown layer(s) nope"),
        ("wide-bits", "layer stem: 12-bit weights cannot go to onnx-qdq"),
        ("act-bits", "layer stem: 6-bit activations cannot go to onnx-qdq"),
        ("keep-float-unknown", "--keep-float names layer(s) the config does not quantize: zzz"),
        ("out-is-file", "exists and is not a directory"),
        ("bad-onnx", "onnxruntime cannot load"),
        ("wrong-data", "the ONNX model expects [N, 3, 8, 8]"),
        ("no-export-json", "no export.json beside it"),
    ],
)
@pytest.mark.slow
def test_user_errors_are_one_line(tmp_path, capsys, case, message):
    m = NetworkMeasurer(Workload(tiny_net(), tiny_data(n_batches=1)))
    cfg = {
        "unknown-layer": QuantConfig.uniform(m.names + ["nope"], w_bits=8),
        "wide-bits": QuantConfig.uniform(m.names, w_bits=8).with_layer("stem", w_bits=12),
        "act-bits": QuantConfig.uniform(m.names, w_bits=8).with_layer("stem", a_bits=6),
    }.get(case)
    if case == "unknown-layer":
        mod, run = _tiny_files(tmp_path)
        raw = json.loads((run / "quant_config.json").read_text())
        raw["layers"]["nope"] = raw["layers"]["stem"]
        (run / "quant_config.json").write_text(json.dumps(raw))
    else:
        mod, run = _tiny_files(tmp_path, cfg)
    onnx_dir = run / "onnx"
    if case in ("bad-onnx", "wrong-data", "no-export-json"):
        assert main(["export", "--model", f"{mod}:model", "--config", str(run), "--out", str(onnx_dir)]) == 0
        capsys.readouterr()
        if case == "bad-onnx":
            (onnx_dir / "model.onnx").write_bytes(b"not an onnx file")
        if case == "no-export-json":
            (onnx_dir / "export.json").unlink()
        data = f"{mod}:wrong" if case == "wrong-data" else f"{mod}:data"
        rc = main(["verify", "--onnx", str(onnx_dir / "model.onnx"), "--model", f"{mod}:model", "--data", data, "--out", str(tmp_path / "v")])
    else:
        out = tmp_path / "afile" if case == "out-is-file" else onnx_dir
        if case == "out-is-file":
            out.write_text("x")
        extra = ["--keep-float", "zzz"] if case == "keep-float-unknown" else []
        rc = main(["export", "--model", f"{mod}:model", "--config", str(run), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err, err
    assert err.count("\n") == 1


def test_export_needs_calib_without_saved_ranges(tmp_path):
    data = tiny_data(n_batches=1)
    cfg = QuantConfig.uniform(["stem"], w_bits=8)
    with pytest.raises(QuantlensError, match="no activation ranges"):
        export_onnx(tiny_net(), cfg, tmp_path, data=data)


@pytest.mark.slow
@pytest.mark.parametrize("flagged", [False, True])
def test_report_runtime_check_section(tmp_path, flagged):
    from support.report_helpers import synthetic_result, write_run

    from quantlens.report import write_report
    from quantlens.runtime.verify import Comparison

    write_run(synthetic_result(), tmp_path)
    c = Comparison(0.995, 41.5, 0.02)
    diff = (0.03, 0.12) if flagged else (-0.01, 0.01)
    VerifyResult("top1", True, 450, 0.9, 0.88, 0.80 if flagged else 0.88, (0.85, 0.91), diff, c, Comparison(1.0, float("inf"), 0.0),
                 c, 0.88, {"QLinearConv": 3, "Conv": 1}).to_json(tmp_path / "verify.json")
    html = write_report(tmp_path).read_text()
    sec = html[html.index('<section id="runtime">'):]
    sec = sec[: sec.index("</section>")]
    assert "88.00%" in sec and "99.50%" in sec and "41.5 dB" in sec and "identical" in sec and "QLinearConv x3" in sec
    assert ("Flagged" in sec) == flagged and ("within sampling noise" in sec) != flagged
    (tmp_path / "verify.json").write_text(json.dumps({"schema": "quantlens/verify-v1", "metric": "top1"}))
    html = write_report(tmp_path).read_text()
    assert '<section id="runtime">' not in html and "verify.json could not be read" in html


@pytest.mark.slow
def test_mixed_plan_int4_and_int8_layers(measurer, tmp_path):
    data = tiny_data(n_batches=2)
    cfg = QuantConfig.uniform(measurer.names, w_bits=8, granularity="per-channel").with_layer("b1", w_bits=4).with_layer("fc1", w_bits=3)
    qnet = measurer.build(cfg)
    res = export_qnet(qnet, tmp_path, (data[0][0],))
    assert {n: f.storage for n, f in res.layers.items() if f.storage == "int4"} == {"b1": "int4", "fc1": "int4"}
    g = onnx.load(res.path).graph
    types = {t.name.rsplit(".", 2)[-2]: t.data_type for t in g.initializer if t.name.endswith(".wint")}
    assert types["ql_layer_1"] == TensorProto.INT4 and types["ql_layer_0"] == TensorProto.INT8
    sim, _, plain, _ = _run_both(res.path, qnet, data)
    assert compare_outputs(sim, plain).agreement == 1.0
