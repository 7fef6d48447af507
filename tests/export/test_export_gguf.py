"""``quantlens export --format gguf`` and ``quantlens verify --gguf``.

Oracles nobody here wrote: ``gguf.GGUFReader`` and ``gguf.quants.dequantize`` read the file back;
the SmolLM2 demo's GGUF, written by llama.cpp's convert_hf_to_gguf.py, holds the names and the
Q/K row order our writer must reproduce (transformers un-permuted it when it loaded the model).
"""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
import torch
from support.single_thread import one_thread  # noqa: F401  (module fixture: one intra-op thread)

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from quantlens.cli import main  # noqa: E402
from quantlens.core.layer_config import LayerQuant, QuantConfig  # noqa: E402
from quantlens.errors import QuantlensError  # noqa: E402
from quantlens.export.gguf import GgufTensor, export_gguf, tensor_data  # noqa: E402
from quantlens.quant.formats import fake_quantize  # noqa: E402
from quantlens.quant.spec import QuantSpec  # noqa: E402
from quantlens.runtime.gguf_check import GgufVerifyResult, verify_gguf  # noqa: E402

PLAN = {
    "model.layers.0.self_attn.q_proj": "gguf-q4_k", "model.layers.0.self_attn.k_proj": "gguf-q6_k",
    "model.layers.0.self_attn.v_proj": "gguf-q8_0", "model.layers.0.self_attn.o_proj": "gguf-q4_0",
    "model.layers.0.mlp.gate_proj": "gguf-q4_1", "model.layers.0.mlp.up_proj": "gguf-q5_0",
    "model.layers.0.mlp.down_proj": "gguf-mxfp4", "model.layers.1.self_attn.q_proj": "bf16",
    "model.layers.1.self_attn.k_proj": "fp16", "lm_head": "gguf-q8_0",
}
TYPES = {"gguf-q4_k": "Q4_K", "gguf-q6_k": "Q6_K", "gguf-q8_0": "Q8_0", "gguf-q4_0": "Q4_0", "gguf-q4_1": "Q4_1",
         "gguf-q5_0": "Q5_0", "gguf-mxfp4": "MXFP4", "bf16": "BF16", "fp16": "F16"}
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}

MODEL_FILE = """
import torch, transformers

def llama(hidden=256, tie=True):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=tie, rope_theta=10000.0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # norms off 1, outliers below
        m.model.layers[0].mlp.down_proj.weight[3, 7] = 1.5
    return m

def untied():
    return llama(tie=False)

def narrow():
    return llama(hidden=160)
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "gguf_models.py").write_text(textwrap.dedent(MODEL_FILE))
    import importlib.util

    spec = importlib.util.spec_from_file_location("gguf_models", d / "gguf_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return str(d / "gguf_models.py"), mod


def config(plan: dict, path=None, act=None) -> QuantConfig:  # noqa: ANN001
    c = QuantConfig(tuple((n, LayerQuant(weight=QuantSpec(format=f), act=act)) for n, f in plan.items()))
    if path is not None:
        c.to_json(path)
    return c


def gguf_name(layer: str) -> str:
    if layer == "lm_head":
        return "output.weight"
    i = layer.split(".")[2]
    return f"blk.{i}.{GGUF_NAMES['.'.join(layer.split('.')[3:])]}.weight"


def hf_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order back to HF's, written out: row (h, i, j) of ggml is row (h, j, i) of HF."""
    rows = w.shape[0]
    half = rows // heads // 2
    out = np.empty_like(w)
    for h in range(heads):
        for i in range(half):
            for j in range(2):
                out[h * 2 * half + j * half + i] = w[h * 2 * half + 2 * i + j]
    return out


def read(path) -> dict:  # noqa: ANN001
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


# ---------------------------------------------------------------- the file


def test_every_tensor_has_its_type_and_the_simulated_values(models, tmp_path):
    _, mod = models
    model = mod.llama()
    res = export_gguf(model, config(PLAN, tmp_path / "qc.json"), tmp_path / "out")
    tensors = read(res.path)
    params = dict(model.named_parameters(remove_duplicate=False))
    for layer, fmt in PLAN.items():
        t = tensors[gguf_name(layer)]
        assert t.tensor_type.name == TYPES[fmt], layer
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(params[f"{layer}.weight"].shape)
        if layer.endswith("q_proj"):
            values = hf_rows(values, 4)
        elif layer.endswith("k_proj"):
            values = hf_rows(values, 2)
        sim = fake_quantize(params[f"{layer}.weight"].detach(), fmt).numpy()
        assert np.array_equal(values, sim), layer
    # what the plan leaves float is F32 and the float weights; the tied lm_head is written (it is planned)
    v = tensors["blk.1.attn_v.weight"]
    assert v.tensor_type.name == "F32"
    assert np.array_equal(np.asarray(v.data), params["model.layers.1.self_attn.v_proj.weight"].detach().numpy())
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32" and "token_embd.weight" in tensors
    assert res.type_counts["Q8_0"] == 2 and len(tensors) == len(res.tensors) == 21


def test_verify_finds_every_type_and_value_equal(models, tmp_path):
    _, mod = models
    model = mod.llama()
    res = export_gguf(model, config(PLAN, tmp_path / "qc.json"), tmp_path / "out")
    r = verify_gguf(res.path, model, tmp_path / "qc.json")
    assert r.all_types_match and r.all_values_equal and r.max_abs_diff == 0.0
    assert {t.name for t in r.tensors if t.fmt} == {gguf_name(n) for n in PLAN}
    d = json.loads(r.to_json())
    assert d["schema"] == "quantlens/verify-gguf-v1" and d["flagged"] is False
    assert GgufVerifyResult.from_json(r.to_json()).tensors == r.tensors


def test_a_tied_lm_head_outside_the_plan_is_not_written(models, tmp_path):
    _, mod = models
    plan = {k: v for k, v in PLAN.items() if k != "lm_head"}
    res = export_gguf(mod.llama(), config(plan), tmp_path / "tied")
    assert "output.weight" not in read(res.path)
    res = export_gguf(mod.untied(), config(plan), tmp_path / "untied")
    assert read(res.path)["output.weight"].tensor_type.name == "F32"


def test_metadata_as_the_converter_writes_it(models, tmp_path):
    _, mod = models
    res = export_gguf(mod.llama(), config(PLAN), tmp_path / "out", model_name="tiny")
    f = gguf.GGUFReader(str(res.path)).fields
    want = {"general.architecture": "llama", "general.name": "tiny", "llama.block_count": 2, "llama.context_length": 128,
            "llama.embedding_length": 256, "llama.feed_forward_length": 512, "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 64, "llama.vocab_size": 96,
            "llama.rope.freq_base": 10000.0, "general.quantization_version": 2}
    for k, v in want.items():
        assert f[k].contents() == pytest.approx(v) if isinstance(v, float) else f[k].contents() == v, k
    assert f["llama.attention.layer_norm_rms_epsilon"].contents() == pytest.approx(1e-6)
    assert "tokenizer.ggml.tokens" not in f


def test_the_tokenizer_is_copied_from_a_gguf(models, tmp_path):
    _, mod = models
    src = tmp_path / "tok.gguf"
    w = gguf.GGUFWriter(str(src), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(96)])
    w.add_token_types([1] * 96)
    w.add_bos_token_id(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    res = export_gguf(mod.llama(), config(PLAN), tmp_path / "out", tokenizer_gguf=src)
    f = gguf.GGUFReader(str(res.path)).fields
    assert f["tokenizer.ggml.model"].contents() == "gpt2" and f["tokenizer.ggml.tokens"].contents()[5] == "t5"
    assert f["tokenizer.ggml.bos_token_id"].contents() == 1


def test_the_tensor_type_file_is_one_exact_lower_case_pattern_per_planned_tensor(models, tmp_path):
    _, mod = models
    res = export_gguf(mod.llama(), config(PLAN), tmp_path / "out")
    lines = res.type_file.read_text().splitlines()
    names = list(read(res.path))
    assert len(lines) == len(PLAN)
    seen = {}
    for line in lines:
        assert line == line.lower() and " " not in line and line.count("=") == 1
        pattern, qtype = line.split("=")
        hits = [n for n in names if re.search(pattern, n)]
        assert len(hits) == 1, line  # no overlap: each pattern matches its tensor alone
        seen[hits[0]] = qtype
    assert seen == {gguf_name(n): TYPES[f].lower() for n, f in PLAN.items()}


@pytest.mark.slow
def test_names_and_q_k_order_equal_llama_cpp_converter_on_smollm2():
    smollm = pytest.importorskip("quantlens.demo.smollm")
    if not smollm.available():
        pytest.skip("the SmolLM2 demo is not installed")
    model = smollm.model()
    source = read(smollm.gguf_path())
    from quantlens.export.gguf_llama import gguf_names, permute_heads

    names = gguf_names(model)
    for hf in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
               "model.layers.0.self_attn.v_proj.weight", "model.layers.29.self_attn.q_proj.weight",
               "model.layers.29.self_attn.k_proj.weight", "model.layers.29.mlp.down_proj.weight",
               "model.layers.29.input_layernorm.weight", "model.norm.weight"):
        t = GgufTensor(names[hf], hf, "F32", heads=permute_heads(model, names[hf]))
        ours, _ = tensor_data(model, t)
        s = source[names[hf]]
        theirs = gguf.quants.dequantize(np.asarray(s.data), s.tensor_type).reshape(ours.shape)
        assert np.array_equal(ours, theirs), hf


# ---------------------------------------------------------------- bad input, one line each


def one_line(fn, *args, **kw) -> str:  # noqa: ANN001
    with pytest.raises(QuantlensError) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("fmt", ["int4-g128", "nvfp4", "fp8-e4m3", "mxfp4"])
def test_a_format_gguf_cannot_hold_names_the_layer_and_what_it_can(models, tmp_path, fmt):
    _, mod = models
    msg = one_line(export_gguf, mod.llama(), config({"model.layers.0.mlp.up_proj": fmt}), tmp_path / "out")
    assert "model.layers.0.mlp.up_proj" in msg and fmt in msg and "gguf-q4_k" in msg and "bf16" in msg
    assert not (tmp_path / "out" / "model.gguf").exists()


def test_an_int_grid_without_a_format_is_refused(models, tmp_path):
    _, mod = models
    cfg = QuantConfig.uniform(["model.layers.0.mlp.up_proj"], w_bits=4, a_bits=None)
    assert "has no GGUF type" in one_line(export_gguf, mod.llama(), cfg, tmp_path / "out")


def test_a_k_quant_needs_rows_of_256(models, tmp_path):
    _, mod = models
    msg = one_line(export_gguf, mod.narrow(), config({"model.layers.0.self_attn.o_proj": "gguf-q4_k"}), tmp_path / "out")
    assert "multiple of 256" in msg and "rows of 160" in msg and "gguf-q8_0" in msg and "gguf-q6_k" not in msg


def test_a_family_the_writer_does_not_know(tmp_path):
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    msg = one_line(export_gguf, transformers.GPT2LMHeadModel(cfg), config({}), tmp_path / "out")
    assert "LlamaForCausalLM" in msg and "GPT2LMHeadModel" in msg and "gpt2" in msg
    assert "no transformers config" in one_line(export_gguf, torch.nn.Linear(4, 4), config({}), tmp_path / "out")


def test_an_output_that_exists(models, tmp_path):
    _, mod = models
    export_gguf(mod.llama(), config(PLAN), tmp_path / "out")
    assert "exists" in one_line(export_gguf, mod.llama(), config(PLAN), tmp_path / "out")


def test_fixes_are_refused(models, tmp_path):
    _, mod = models
    lq = LayerQuant(weight=QuantSpec(format="gguf-q8_0"), act=None, fixes=("bias_correction",))
    cfg = QuantConfig((("model.layers.0.mlp.up_proj", lq),))
    assert "fixes" in one_line(export_gguf, mod.llama(), cfg, tmp_path / "out")


def test_activation_formats_are_not_written_and_said(models, tmp_path):
    _, mod = models
    with pytest.warns(Warning, match="GGUF stores weights only"):
        res = export_gguf(mod.llama(), config(PLAN, act=QuantSpec(bits=8, symmetric=False)), tmp_path / "out")
    assert "not stored" in json.loads(res.info_path.read_text())["activations"]


def test_a_plan_json_over_formats_is_read(models, tmp_path):
    _, mod = models
    rows = [{"layer": n, "w_bits": 8, "format": f} for n, f in PLAN.items()]
    (tmp_path / "plan.json").write_text(json.dumps({"schema": "quantlens/plan-v1", "a_bits": None, "layers": rows}))
    model = mod.llama()
    res = export_gguf(model, tmp_path, tmp_path / "out")
    assert {t.source[: -len(".weight")]: t.fmt for t in res.tensors if t.fmt} == PLAN
    r = verify_gguf(res.path, model, tmp_path / "plan.json")
    assert r.all_types_match and r.all_values_equal


# ---------------------------------------------------------------- the commands


def test_cli_export_then_verify(models, tmp_path, capsys):
    path, _ = models
    config(PLAN, tmp_path / "qc.json")
    rc = main(["export", "--format", "gguf", "--model", f"{path}:llama", "--config", str(tmp_path / "qc.json"),
               "--out", str(tmp_path / "out")])
    assert rc == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.gguf", "tensor_types.txt", "export.json"}
    rc = main(["verify", "--gguf", str(tmp_path / "out" / "model.gguf"), "--out", str(tmp_path / "v")])
    assert rc == 0
    d = json.loads((tmp_path / "v" / "verify.json").read_text())
    assert d["all_types_match"] and d["all_values_equal"] and d["num_planned"] == len(PLAN)


def test_cli_verify_names_the_tensors_whose_types_differ(models, tmp_path, capsys):
    path, _ = models
    config(PLAN, tmp_path / "qc.json")
    other = dict(PLAN, **{"model.layers.0.self_attn.v_proj": "gguf-q4_0", "model.layers.1.mlp.up_proj": "gguf-q8_0"})
    config(other, tmp_path / "other.json")
    assert main(["export", "--format", "gguf", "--model", f"{path}:llama", "--config", str(tmp_path / "qc.json"),
                 "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    rc = main(["verify", "--gguf", str(tmp_path / "out" / "model.gguf"), "--config", str(tmp_path / "other.json"),
               "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "2 tensor(s) differ from the plan" in err
    assert "blk.0.attn_v.weight is Q8_0 (plan: Q4_0)" in err and "blk.1.ffn_up.weight is F32 (plan: Q8_0)" in err
    assert json.loads((tmp_path / "v" / "verify.json").read_text())["flagged"] is True


def test_cli_verify_needs_onnx_or_gguf(tmp_path, capsys):
    assert main(["verify", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gguf" in err and "--onnx" in err
