"""export --format compressed-tensors and verify --checkpoint on a tiny random Llama (seeded; no trained bits).

The checkpoint holds the simulation's own values: int and FP8 layers reload bit for bit; NVFP4
reloads within compressed-tensors' bfloat16 product (relative 2^-9 per weight); MXFP4 exactly.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")  # the [lm] extra; CI installs it (dev)

from quantlens.core.layer_config import LayerQuant, QuantConfig  # noqa: E402
from quantlens.errors import QuantlensError  # noqa: E402
from quantlens.export.compressed_tensors import export_compressed_tensors, simulate  # noqa: E402
from quantlens.export.ct_schemes import pack_fp4, pack_int  # noqa: E402
from quantlens.quant.spec import PerChannel, PerGroup, QuantSpec  # noqa: E402
from quantlens.runtime.ct_check import load_checkpoint, verify_compressed_tensors  # noqa: E402
from quantlens.runtime.verify import VerifyResult  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=True, use_cache=False)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (2, 16), generator=g), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
            for _ in range(2)]


def fmt(name: str) -> LayerQuant:
    return LayerQuant(weight=QuantSpec(format=name), act=None)


def mixed(fp4: bool = True) -> QuantConfig:
    """int4 groups (a format and bits), fp8 (channel, tensor), nvfp4 / mxfp4, bf16, int8 channel, one float layer."""
    L = {}
    for i in range(2):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj"):
            L[p + "self_attn." + n] = fmt("int4-g16") if i == 0 else LayerQuant(w_bits=4, a_bits=None, granularity=PerGroup(32))
        L[p + "self_attn.o_proj"] = fmt("fp8-e4m3-channel" if i == 0 else "fp8-e4m3")
        for n in ("gate_proj", "up_proj"):
            L[p + "mlp." + n] = fmt(("nvfp4" if i == 0 else "mxfp4") if fp4 else "int8-g32")
    L["model.layers.0.mlp.down_proj"] = fmt("bf16")  # model.layers.1.mlp.down_proj: not configured (float)
    L["lm_head"] = LayerQuant(w_bits=8, a_bits=None, granularity=PerChannel())
    return QuantConfig(tuple(L.items()))


@pytest.fixture(scope="module")
def exported(llama, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct") / "ckpt"
    return export_compressed_tensors(llama, mixed(), out, data=data), simulate(llama, mixed(), data)


def test_checkpoint_layout(exported):
    res, _ = exported
    cfg = json.loads((res.path / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "mixed-precision" and qc["quantization_status"] == "compressed"
    targets = [t for g in qc["config_groups"].values() for t in g["targets"]]
    assert len(targets) == len(set(targets)) and not any(t.startswith("re:") for t in targets)  # exact names, no overlap
    assert sorted(qc["ignore"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    formats = {g["format"] for g in qc["config_groups"].values()}
    assert formats == {"pack-quantized", "float-quantized", "nvfp4-pack-quantized", "mxfp4-pack-quantized"}
    assert cfg["tie_word_embeddings"] is False  # lm_head is quantized, the embedding stays float
    info = json.loads((res.path / "export.json").read_text())
    assert info["format"] == "compressed-tensors" and info["layers"]["model.layers.0.mlp.gate_proj"]["format"] == "nvfp4"


def test_reload_equals_simulation(exported):
    res, qnet = exported
    model, notes = load_checkpoint(res.path)
    for name, lq in qnet.config.layers:
        got, want = model.get_submodule(name).weight.detach(), qnet.weights[name].weight
        if lq.weight.format == "nvfp4":  # q * fl(s_b / gs) in bfloat16: the documented rounding
            assert not torch.equal(got, want)
            assert bool(((got - want).abs() <= want.abs() * 2**-8).all()), name
        else:
            assert torch.equal(got, want), name
    assert any("cast" in n for n in notes)  # the FP4 layers came back as bfloat16 and were cast to float32


def test_plain_from_pretrained_in_bfloat16(exported, data):
    """What the export's note says: the FP4 checkpoint runs as transformers loads it, in bfloat16."""
    res, _ = exported
    model = transformers.AutoModelForCausalLM.from_pretrained(str(res.path), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        y = model(**data[0]).logits
    assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all())


def test_logits_equal_simulation_without_fp4(llama, data, tmp_path):
    """int4 / int8 / fp8 / bf16 / float only: the checkpoint in transformers gives the simulation's logits."""
    export_compressed_tensors(llama, mixed(fp4=False), tmp_path / "ckpt", data=data)
    r = verify_compressed_tensors(tmp_path / "ckpt", llama, data)
    assert r.runtime_vs_plain.sqnr_db == float("inf")  # the stored weights are exactly the simulated ones
    assert r.runtime_vs_simulation.max_abs <= 1e-4 and r.runtime_vs_simulation.agreement == 1.0
    assert not r.flagged
    assert r.runtime_metric == pytest.approx(r.simulated_metric, rel=1e-6)


def test_verify_mixed_with_fp4(exported, llama, data, tmp_path):
    res, _ = exported
    r = verify_compressed_tensors(res.path, llama, data)
    assert r.source == "compressed-tensors" and r.metric_name == "perplexity"
    assert r.runtime_vs_simulation.sqnr_db > 40 and r.runtime_vs_simulation.agreement >= 0.95
    assert not r.flagged
    r.to_json(tmp_path / "verify.json")
    back = VerifyResult.from_json(tmp_path / "verify.json")
    assert back.runtime_metric == r.runtime_metric and back.source == "compressed-tensors"
    assert json.loads((tmp_path / "verify.json").read_text())["rounding"]["note"].startswith("plain = the float model")


def test_packing_matches_compressed_tensors():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    g = torch.Generator().manual_seed(2)
    for bits in (4, 8):
        q = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (3, 64), generator=g).to(torch.int8)
        assert torch.equal(pack_int(q, bits), pack_to_int32(q, bits))
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
    v = grid[torch.randint(0, len(grid), (4, 32), generator=g)]
    assert torch.equal(pack_fp4(v), pack_fp4_to_uint8(v))


# ---- bad input: one line each -------------------------------------------------------------------------------


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_refuses_a_format_it_cannot_hold(llama, data, tmp_path):
    cfg = QuantConfig((("model.layers.0.self_attn.o_proj", fmt("int3-channel")),))
    with pytest.raises(QuantlensError) as e:
        export_compressed_tensors(llama, cfg, tmp_path / "a", data=data)
    msg = _one_line(e)
    assert "model.layers.0.self_attn.o_proj" in msg and "int3-channel" in msg and "holds int4/int8" in msg
    for bad, what in ((fmt("fp8-e5m2"), "fp8-e5m2"), (LayerQuant(w_bits=4, a_bits=None, symmetric=False), "asymmetric")):
        with pytest.raises(QuantlensError, match=what):
            export_compressed_tensors(llama, QuantConfig((("model.layers.0.self_attn.o_proj", bad),)), tmp_path / what, data=data)


def test_refuses_fused_siblings_with_different_formats(llama, data, tmp_path):
    cfg = QuantConfig((("model.layers.0.mlp.gate_proj", fmt("nvfp4")), ("model.layers.0.mlp.up_proj", fmt("fp8-e4m3"))))
    with pytest.raises(QuantlensError) as e:
        export_compressed_tensors(llama, cfg, tmp_path / "b", data=data)
    msg = _one_line(e)
    assert "fused siblings" in msg and "gate_proj nvfp4" in msg and "up_proj fp8-e4m3" in msg
    half = QuantConfig((("model.layers.0.self_attn.q_proj", fmt("int4-g16")),))  # k/v float: also a mismatch
    with pytest.raises(QuantlensError, match="k_proj float"):
        export_compressed_tensors(llama, half, tmp_path / "c", data=data)


def test_refuses_a_non_empty_directory(llama, data, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(QuantlensError) as e:
        export_compressed_tensors(llama, mixed(), tmp_path / "full", data=data)
    assert "exists and is not empty" in _one_line(e)


def test_refuses_a_model_that_is_not_a_causal_lm(data, tmp_path):
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(QuantlensError) as e:
        export_compressed_tensors(net, QuantConfig((("0", fmt("int8-channel")),)), tmp_path / "d", data=[torch.ones(2, 4)])
    assert "causal LM" in _one_line(e)


def test_refuses_quantized_activations(llama, data, tmp_path):
    cfg = QuantConfig((("model.layers.0.self_attn.o_proj", LayerQuant(w_bits=8, a_bits=8)),))
    with pytest.raises(QuantlensError) as e:
        export_compressed_tensors(llama, cfg, tmp_path / "e", data=data)
    assert "weight-only" in _one_line(e) and "--a-bits none" in str(e.value)


# ---- the command line ---------------------------------------------------------------------------------------

USER_FILE = '''
import torch, transformers
torch.set_num_threads(1)

def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, use_cache=False, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()

def data():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (2, 16), generator=g), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
            for _ in range(2)]
'''


def test_cli_export_and_verify(tmp_path, capsys, monkeypatch):
    from quantlens.cli import main

    (tmp_path / "ct_user.py").write_text(USER_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    names = [f"model.layers.0.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")]
    cfg = QuantConfig(tuple((n, fmt("int4-g32")) for n in names) + (("model.layers.0.self_attn.o_proj", fmt("fp8-e4m3")),))
    cfg.to_json(tmp_path / "quant_config.json", extra={"data": "ct_user:data"})
    ckpt = tmp_path / "ckpt"
    assert main(["export", "--format", "compressed-tensors", "--model", "ct_user:model", "--config", str(tmp_path / "quant_config.json"),
                 "--out", str(ckpt)]) == 0
    assert "4 quantized Linear layers (int4-g32 x3, fp8-e4m3 x1) in 2 config groups" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:  # the float lm_head stays tied: stored once
        keys = set(f.keys())
        assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert main(["verify", "--checkpoint", str(ckpt), "--data", "ct_user:data", "--out", str(tmp_path / "v")]) == 0
    printed = capsys.readouterr().out
    assert "transformers (compressed-tensors)" in printed and "within the interval" in printed
    v = json.loads((tmp_path / "v" / "verify.json").read_text())
    assert v["source"] == "compressed-tensors" and v["metric"] == "perplexity" and not v["flagged"]
    assert v["rounding"]["runtime_vs_plain"]["identical"]
    rc = main(["export", "--format", "compressed-tensors", "--model", "ct_user:model", "--config", str(tmp_path / "quant_config.json"),
               "--out", str(ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "exists and is not empty" in err[0]
    rc = main(["verify", "--onnx", "x.onnx", "--checkpoint", str(ckpt), "--data", "ct_user:data", "--out", str(tmp_path / "w")])
    assert rc == 2 and "exactly one of --onnx" in capsys.readouterr().err


def test_reads_a_plan_over_formats(tmp_path):
    from quantlens.experiments.plan import LayerPlan, PlanResult
    from quantlens.export.compressed_tensors import read_plan_or_config

    nan = float("nan")
    layers = (LayerPlan("a", 10, 4, 0.1, 0.0, "nvfp4", 4.5), LayerPlan("b", 10, 16, 0.0, 0.0, "bf16", 16.0))
    PlanResult("perplexity", 10.0, 6.0, 100, None, layers, 0.1, 10.1, None, nan, nan, nan).to_json(tmp_path / "plan.json")
    cfg, source = read_plan_or_config(tmp_path)
    assert source is None and cfg.layer("a").weight.format == "nvfp4" and cfg.layer("b").weight.format == "bf16"
    assert cfg.layer("a").act is None
    bits = PlanResult("perplexity", 10.0, 6.0, 100, None, (LayerPlan("a", 10, 4, 0.1, 0.0),), 0.1, 10.1, None, nan, nan, nan)
    bits.to_json(tmp_path / "bits.json")
    with pytest.raises(QuantlensError, match="plan over bit-widths"):
        read_plan_or_config(tmp_path / "bits.json")


def test_report_runtime_section_names_the_checkpoint(tmp_path):
    from support.report_helpers import synthetic_result, write_run

    from quantlens.report import write_report
    from quantlens.runtime.ct_check import PLAIN_NAME, ROUNDING_NOTE, RUNTIME_NAME
    from quantlens.runtime.verify import Comparison

    write_run(synthetic_result(), tmp_path)
    c = Comparison(0.998, 52.6, 0.35)
    same = Comparison(1.0, float("inf"), 0.0)
    VerifyResult("perplexity", False, 8, 18.2, 20.98, 20.97, (20.5, 21.4), (-0.02, 0.003), c, same, c, 20.98,
                 source="compressed-tensors", extra={"runtime_name": RUNTIME_NAME, "plain_name": PLAIN_NAME,
                                                     "rounding_note": ROUNDING_NOTE}).to_json(tmp_path / "verify.json")
    html = write_report(tmp_path).read_text()
    sec = html[html.index('<section id="runtime">'):]
    sec = sec[: sec.index("</section>")]
    assert "transformers (compressed-tensors)" in sec and "token agreement" in sec and "52.6 dB" in sec
    assert "onnxruntime" not in sec and "within sampling noise" in sec


@pytest.mark.parametrize("spec", ["int4", "int8-channel", "int4-g32", "int8-g16", "fp8-e4m3", "fp8-e4m3-channel", "fp8-e4m3-block128",
                                  "mxfp4", "mxfp4-rceil", "nvfp4", "bits4-channel", "bits8-tensor", "bits4-g32"])
def test_each_scheme_decompresses_to_the_simulated_weight(spec):
    """compressed-tensors' own decompressor, on each scheme's tensors, gives the simulated weight
    (NVFP4: within its bfloat16 product); fp8 block128 on a shape that is not a multiple of 128."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme

    from quantlens.export.ct_schemes import ct_weight
    from quantlens.quant.quantizer import quantize_weight

    g = torch.Generator().manual_seed(3)
    w = torch.randn(200 if "block128" in spec else 24, 160 if "block128" in spec else 64, generator=g) * 0.05
    w[0, :16] = 0.0  # an all-zero block
    if spec.startswith("bits"):
        b, gran = spec[4], spec.split("-")[1]
        q = QuantSpec(bits=int(b), granularity={"channel": PerChannel(), "tensor": None, "g32": PerGroup(32)}[gran] or QuantSpec().granularity)
    else:
        q = QuantSpec(format=spec)
    ct = ct_weight("layer", w, q)
    want = quantize_weight(w, q).weight
    scheme = QuantizationScheme(targets=["layer"], weights=ct.weights, format=ct.format)
    got = BaseCompressor.get_value_from_registry(ct.format).decompress(dict(ct.tensors), scheme)["weight"].float()
    if spec == "nvfp4":
        assert bool(((got - want).abs() <= want.abs() * 2**-8).all())
    else:
        assert torch.equal(got, want), float((got - want).abs().max())
